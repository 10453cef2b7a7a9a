"""SPARO read-out configuration: one dataclass holding every knob, validated with clear errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

from sparo_clip.errors import ConfigError

T = TypeVar("T")

SLOT_REPS = ("cont", "sem", "sqrtsem")
SLOT_WEIGHTS = ("const", "norm", "softmax", "sqrtsoftmax")


def parse_slot_norm(slot_norm: str) -> tuple[str, str]:
    """Split ``"<rep>:<weight>"`` into its two parts, raising ValueError for anything else."""
    parts = slot_norm.split(":") if isinstance(slot_norm, str) else []
    if len(parts) != 2 or parts[0] not in SLOT_REPS or parts[1] not in SLOT_WEIGHTS:
        raise ConfigError(
            f"sparo_cfg.slot_norm={slot_norm!r} is not valid: expected '<rep>:<weight>' with rep in "
            f"{list(SLOT_REPS)} and weight in {list(SLOT_WEIGHTS)} (default 'cont:const')"
        )
    return parts[0], parts[1]


def parse_cfg(cls: type[T], value: dict[str, Any] | T | None, key: str) -> T | None:
    """Build ``cls`` from a config dict (``None`` = feature off), naming unknown keys and the allowed ones."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a dict (or null), got {type(value).__name__}: {value!r}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {key} key(s) {unknown}: allowed keys are {allowed}")
    return cls(**value)


@dataclass
class SparoCfg:
    """Every knob of the SPARO read-out (shared by the vision and text towers).

    Attributes:
        num_slots: L, the number of slots (one attention head with a learned query each).
        slot_dim: V, the output width of every slot. ``embed_dim`` of the model is ``L * V``.
        attn_dim: d, key/query width; ``None`` means tower width / tower heads (per tower).
        value_dim: width of the values; ``None`` means ``attn_dim``. Must equal it with ``share_kv``.
        heads: number of key/value projections; ``L / heads`` slots share one, each with its own query.
            ``None`` means ``L`` (every slot its own head).
        share_kv: values are the keys (no value projection).
        share_queries: the text read-out uses the vision read-out's queries.
        slot_norm: ``"<rep>:<weight>"``, rep in {cont, sem, sqrtsem}, weight in
            {const, norm, softmax, sqrtsoftmax}.
        reduce_depth: number of final transformer blocks dropped from each tower (parameter parity).
        trim_text: run the text tower only up to the longest caption of the batch. Exact: positions
            after end-of-text never change earlier ones (causal towers; non-causal towers mask them in
            every block) and are masked in the read-out. While ``torch.compile`` or ``torch.export`` traces
            the model, the tower runs over the whole context (same features, one graph, static shapes).
    """

    num_slots: int = 64
    slot_dim: int = 64
    attn_dim: int | None = None
    value_dim: int | None = None
    heads: int | None = None
    share_kv: bool = True
    share_queries: bool = False
    slot_norm: str = "cont:const"
    reduce_depth: int = 1
    trim_text: bool = True

    def __post_init__(self) -> None:
        for name in ("num_slots", "slot_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"sparo_cfg.{name}={value!r} is not valid: expected a positive integer")
        for name in ("attn_dim", "value_dim", "heads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(
                    f"sparo_cfg.{name}={value!r} is not valid: expected a positive integer or null (default)"
                )
        if (
            not isinstance(self.reduce_depth, int)
            or isinstance(self.reduce_depth, bool)
            or self.reduce_depth < 0
        ):
            raise ConfigError(
                f"sparo_cfg.reduce_depth={self.reduce_depth!r} is not valid: expected an integer >= 0"
            )
        if self.num_slots % self.num_heads != 0:
            raise ConfigError(
                f"sparo_cfg.heads={self.heads} does not divide num_slots={self.num_slots}: allowed heads are "
                f"the divisors of num_slots {[h for h in range(1, self.num_slots + 1) if self.num_slots % h == 0]}"
            )
        parse_slot_norm(self.slot_norm)
        if self.share_kv and self.value_dim is not None and self.attn_dim is not None:
            if self.value_dim != self.attn_dim:
                raise ConfigError(
                    f"sparo_cfg.share_kv=true needs value_dim == attn_dim (values are the keys), got "
                    f"value_dim={self.value_dim}, attn_dim={self.attn_dim}: set share_kv=false or drop value_dim"
                )

    @property
    def num_heads(self) -> int:
        return self.num_slots if self.heads is None else self.heads

    @property
    def rep(self) -> str:
        return parse_slot_norm(self.slot_norm)[0]

    @property
    def weight(self) -> str:
        return parse_slot_norm(self.slot_norm)[1]

    def resolve_dims(self, width: int, tower_heads: int, tower: str) -> tuple[int, int]:
        """(attn_dim, value_dim) for a tower of the given width and number of attention heads."""
        attn_dim = self.attn_dim if self.attn_dim is not None else width // tower_heads
        value_dim = self.value_dim if self.value_dim is not None else attn_dim
        if self.share_kv and value_dim != attn_dim:
            raise ConfigError(
                f"sparo_cfg.share_kv=true needs value_dim == attn_dim for the {tower} tower, got "
                f"value_dim={value_dim}, attn_dim={attn_dim}: set share_kv=false or change value_dim"
            )
        return attn_dim, value_dim

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | SparoCfg | None) -> SparoCfg:
        """Build from a config dict (``None``: the defaults), naming unknown keys and the allowed ones."""
        return parse_cfg(cls, cfg, "sparo_cfg") or cls()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
