"""SPARO-DINO model configuration: one dataclass per concern, registered as JSON files, validated early.

A config names a timm ViT (any ``timm`` ViT name plus keyword overrides), the read-out (``cls``: the class
token, DINO's own; ``sparo``: our :class:`~sparo_clip.models.readout.SparoReadout` over all final tokens), the SPARO
settings (the same :class:`~sparo_clip.models.config.SparoCfg` as for CLIP), the DINO projection head and the crop
sizes. Nothing behaves by a config's name: everything comes from its fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparo_clip.models.config import SparoCfg, parse_cfg

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
READOUTS = ("cls", "sparo")
HEAD_INPUTS = ("unit", "sqrt_dim", "layernorm")


def _positive_int(owner: str, name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name}={value!r} is not valid: expected a positive integer")


@dataclass
class HeadCfg:
    """DINO projection head (lightly's ``DINOProjectionHead``): MLP -> bottleneck -> L2 norm -> weight-normed
    prototypes. Defaults are DINO's reference (2048 hidden, 256 bottleneck, 65536 prototypes)."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    output_dim: int = 65536
    batch_norm: bool = False
    norm_last_layer: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "bottleneck_dim", "output_dim"):
            _positive_int("head", name, getattr(self, name))


@dataclass
class DinoCfg:
    """A DINO encoder: timm ViT backbone + read-out, the projection head, and its crop sizes.

    Attributes:
        backbone: any timm ViT model name (built with ``num_classes=0, global_pool='', dynamic_img_size=True``).
        backbone_kwargs: overrides passed to ``timm.create_model`` (e.g. ``img_size``, ``depth``).
        readout: ``cls`` (class token) or ``sparo`` (SPARO slots over all final tokens, flattened).
        sparo_cfg: the read-out settings (``readout == 'sparo'`` only); ``reduce_depth`` drops final blocks.
        head: the projection head.
        global_crop_size: side of the two global crops (and of the evaluation images).
        local_crop_size: side of the local crops.
        head_input: how the flattened slots enter the projection head (``readout == 'sparo'``): ``unit`` as the
            read-out gives them (unit norm), ``sqrt_dim`` scaled by sqrt(L * V) (the norm a LayerNorm'd class
            token has, about sqrt(D)), ``layernorm`` through a LayerNorm over the L * V units. The evaluation
            features are the slots themselves in every case.
    """

    backbone: str = "vit_small_patch16_224"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    readout: str = "cls"
    sparo_cfg: SparoCfg | None = None
    head: HeadCfg = field(default_factory=HeadCfg)
    global_crop_size: int = 224
    local_crop_size: int = 96
    head_input: str = "unit"

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"dino backbone={self.backbone!r} is not valid: expected a timm ViT model name")
        if not isinstance(self.backbone_kwargs, dict):
            raise ValueError(f"dino backbone_kwargs must be a JSON object, got {self.backbone_kwargs!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"dino readout={self.readout!r} is not valid: allowed {list(READOUTS)}")
        if self.readout == "sparo":
            self.sparo_cfg = SparoCfg.from_dict(self.sparo_cfg)
        elif self.sparo_cfg is not None:
            raise ValueError(
                "dino sparo_cfg is given but readout='cls': drop sparo_cfg or set readout='sparo'"
            )
        if self.head_input not in HEAD_INPUTS:
            raise ValueError(f"dino head_input={self.head_input!r} is not valid: allowed {list(HEAD_INPUTS)}")
        if self.head_input != "unit" and self.readout != "sparo":
            raise ValueError(
                "dino head_input rescales SPARO slots: it needs readout='sparo' (or head_input='unit')"
            )
        if isinstance(self.head, dict):
            self.head = parse_cfg(HeadCfg, self.head, "head")
        for name in ("global_crop_size", "local_crop_size"):
            _positive_int("dino", name, getattr(self, name))

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> DinoCfg:
        """Build from a JSON-style dict, naming unknown keys and the allowed ones."""
        if not isinstance(cfg, dict):
            raise ValueError(f"dino config must be a JSON object, got {type(cfg).__name__}")
        return parse_cfg(cls, cfg, "dino config")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.sparo_cfg is None:
            out.pop("sparo_cfg")
        if self.head_input == "unit":  # the 0.1.0 layout, which checkpoints record (they keep loading)
            out.pop("head_input")
        return out

    def cls_twin(self) -> DinoCfg:
        """The same backbone and head with DINO's class-token read-out and every block kept."""
        return dataclasses.replace(
            self, readout="cls", sparo_cfg=None, head=dataclasses.replace(self.head), head_input="unit"
        )


def list_configs() -> list[str]:
    """Names of the registered DINO configs (the JSON files under ``dino/configs``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> DinoCfg:
    """A registered config by name, or a JSON file by path, with optional top-level overrides.

    Raises:
        ValueError: unknown name (lists the registered ones), unreadable JSON, or invalid fields.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(
                f"DINO model {str(name_or_path)!r} is neither a JSON file nor a registered config: "
                f"registered {list_configs()}"
            )
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"DINO config {path}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"DINO config {path}: expected a JSON object")
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return DinoCfg.from_dict(cfg)
