"""Configs of the read-out baselines: one dataclass per top-level model-config key, validated with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BottleneckCfg", "CodebookCfg", "TextPoolCfg"]


def _positive_int(key: str, name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        extra = " or null (default)" if allow_none else ""
        raise ValueError(f"{key}.{name}={value!r} is not valid: expected a positive integer{extra}")


@dataclass
class BottleneckCfg:
    """``bottleneck_cfg``: each tower projects to ``bottleneck_dim``, then ``Linear(bottleneck_dim, embed_dim)``.

    Attributes:
        bottleneck_dim: output width of the towers (their projections).
        bias: whether the map to ``embed_dim`` has a bias.
    """

    bottleneck_dim: int = 512
    bias: bool = True

    def __post_init__(self) -> None:
        _positive_int("bottleneck_cfg", "bottleneck_dim", self.bottleneck_dim)
        if not isinstance(self.bias, bool):
            raise ValueError(f"bottleneck_cfg.bias={self.bias!r} is not valid: expected true or false")


@dataclass
class CodebookCfg:
    """``codebook_cfg``: FDT-style read-out over a learned codebook shared by both towers (Chen et al., CVPR 2023).

    The code width is ``bottleneck_cfg.bottleneck_dim`` when a bottleneck is configured, else ``embed_dim``.

    Attributes:
        num_codes: number of learned codes.
        temperature: token-code scores (already scaled by ``code_dim ** -0.5``) are divided by it.
    """

    num_codes: int = 16384
    temperature: float = 1000.0

    def __post_init__(self) -> None:
        _positive_int("codebook_cfg", "num_codes", self.num_codes)
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 or t == float("inf"):
            raise ValueError(f"codebook_cfg.temperature={t!r} is not valid: expected a finite number > 0")


@dataclass
class TextPoolCfg:
    """``text_pool_cfg``: attentional pooling of the text tokens (keys masked after end-of-text).

    Attributes:
        heads: attention heads of the pooler; ``None`` means the text tower's heads.
    """

    heads: int | None = None

    def __post_init__(self) -> None:
        _positive_int("text_pool_cfg", "heads", self.heads, allow_none=True)
