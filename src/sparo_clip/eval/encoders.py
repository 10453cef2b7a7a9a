"""Image encoders for frozen-feature probes (kNN, linear): every OpenCLIP model, and encoders that other packages
register under a name prefix (``dino:CKPT`` is registered by :mod:`sparo_clip.dino`), so evaluation never
imports the packages that train them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sparo_clip.errors import ConfigError
from sparo_clip.eval.common import ModelSpec, load_context

OPEN_CLIP_SCHEMAS = ("local-dir", "hf-hub")  # OpenCLIP's own name prefixes


@dataclass
class ImageEncoder:
    """Images (B, 3, H, W) -> slots (B, L, V) fp32, with the encoder's own evaluation transform.

    Attributes:
        weights: the file the weights come from (None: random or a pretrained tag); keys the feature cache.
    """

    encode: Callable[[torch.Tensor], torch.Tensor]
    transform: Callable
    num_slots: int
    is_sparo: bool
    device: torch.device
    weights: str | None = None
    identity: list = field(default_factory=list)  # what else makes its features differ (name, precision)


# prefix -> loader(the rest of the name, the resolved spec)
EncoderLoader = Callable[[str, ModelSpec], ImageEncoder]
_LOADERS: dict[str, EncoderLoader] = {}


def register_image_encoder(prefix: str, loader: EncoderLoader) -> None:
    """Let ``--model PREFIX:REST`` name an encoder built by ``loader(REST, spec)``."""
    if prefix in OPEN_CLIP_SCHEMAS or not prefix.isidentifier():
        raise ValueError(
            f"image encoder prefix {prefix!r}: must be a name and not one of {OPEN_CLIP_SCHEMAS}"
        )
    _LOADERS[prefix] = loader


def registered_prefixes() -> list[str]:
    return sorted(_LOADERS)


def _prefixed(model: str) -> tuple[str, str] | None:
    prefix, sep, rest = model.partition(":")
    return (prefix, rest) if sep and prefix in _LOADERS else None


def load_image_encoder(spec: ModelSpec) -> ImageEncoder:
    """The encoder ``spec.model`` names (a registered ``PREFIX:...`` or any OpenCLIP model) on ``spec.device``."""
    prefixed = _prefixed(spec.model)
    if prefixed is None:
        ctx = load_context(spec)
        identity = [spec.model, spec.pretrained, ctx.precision]
        return ImageEncoder(
            ctx.image_slots,
            ctx.preprocess,
            ctx.num_slots,
            ctx.is_sparo,
            ctx.device,
            spec.pretrained,
            identity,
        )
    prefix, rest = prefixed
    if spec.pretrained is not None:
        raise ConfigError(f"--pretrained is not used with --model {prefix}:FILE (the file holds the weights)")
    return _LOADERS[prefix](rest, spec.resolved(registered_model=False))
