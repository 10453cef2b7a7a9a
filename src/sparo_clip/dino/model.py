"""SPARO-DINO encoder: a timm ViT backbone with a class-token or SPARO read-out, and the DINO network.

The read-out is the project's one :class:`~sparo_clip.models.readout.SparoReadout`, over all final tokens of the
backbone (class token included, after the backbone's final norm), exactly as for the CLIP image tower; the
slots are flattened (unit norm overall) and fed to the projection head in place of the class token.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparo_clip.checkpoints.files import load_checkpoint_file
from sparo_clip.checkpoints.loading import check_finite_weights
from sparo_clip.dino.config import DinoCfg
from sparo_clip.dino.lightly_api import require_lightly
from sparo_clip.errors import CheckpointError
from sparo_clip.models.readout import SparoReadout
from sparo_clip.models.towers import drop_last_blocks

logger = logging.getLogger(__name__)


def build_backbone(cfg: DinoCfg) -> nn.Module:
    """The timm ViT returning all tokens after its final norm, with ``reduce_depth`` final blocks dropped."""
    import timm

    kwargs = {"num_classes": 0, "global_pool": "", "dynamic_img_size": True, **cfg.backbone_kwargs}
    try:
        backbone = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"dino backbone {cfg.backbone!r} with {cfg.backbone_kwargs}: {e}") from e
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "forward_features"):
        raise ValueError(f"dino backbone {cfg.backbone!r} is not a timm VisionTransformer (no .blocks)")
    drop_last_blocks(
        backbone, cfg.sparo_cfg.reduce_depth if cfg.sparo_cfg is not None else 0, "dino backbone"
    )
    return backbone


class DinoEncoder(nn.Module):
    """timm ViT + read-out. ``forward`` gives the head's input; :meth:`slots` the evaluation features."""

    def __init__(self, cfg: DinoCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        width = self.backbone.embed_dim
        self.readout: SparoReadout | None = None
        if cfg.readout == "sparo":
            tower_heads = self.backbone.blocks[0].attn.num_heads
            self.readout = SparoReadout.from_cfg(cfg.sparo_cfg, width, tower_heads, "vision")
        elif getattr(self.backbone, "cls_token", None) is None:
            raise ValueError(f"dino readout='cls' needs a class token; backbone {cfg.backbone!r} has none")

    @property
    def num_slots(self) -> int:
        return 1 if self.readout is None else self.readout.num_slots

    @property
    def feature_dim(self) -> int:
        """Width of the vector the projection head reads (D for cls, L * V for sparo)."""
        if self.readout is None:
            return self.backbone.embed_dim
        return self.readout.num_slots * self.readout.slot_dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, D) all tokens after the backbone's final norm."""
        return self.backbone.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, F): the class token, or the flattened unit-norm slots."""
        x = self.tokens(images)
        if self.readout is None:
            return x[:, 0]
        return self.readout(x).flatten(1).to(x.dtype)

    def slots(
        self, images: torch.Tensor, return_attn: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Evaluation features as slots (B, L, V), fp32; the class token is one unit-norm slot.

        With ``return_attn`` (sparo only) also the attention (B, L, N) over all tokens.
        """
        x = self.tokens(images)
        if self.readout is None:
            if return_attn:
                raise ValueError("attention maps need readout='sparo'; this encoder reads the class token")
            return F.normalize(x[:, 0].float(), dim=-1)[:, None, :]
        return self.readout(x, return_attn=return_attn)

    def grid_size(self, images: torch.Tensor) -> tuple[int, int]:
        """Patch grid (rows, cols) of the given images."""
        ph, pw = self.backbone.patch_embed.patch_size
        return images.shape[-2] // ph, images.shape[-1] // pw


def _projection_head(lightly: Any, input_dim: int, cfg: DinoCfg, freeze_last_layer: int = 1) -> nn.Module:
    """lightly's DINO head. Its weight-normed prototype layer uses torch's deprecated ``weight_norm``; the
    FutureWarning that raises is silenced here only, while the head is built."""
    h = cfg.head
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return lightly.DINOProjectionHead(
            input_dim=input_dim,
            hidden_dim=h.hidden_dim,
            bottleneck_dim=h.bottleneck_dim,
            output_dim=h.output_dim,
            batch_norm=h.batch_norm,
            freeze_last_layer=freeze_last_layer,
            norm_last_layer=h.norm_last_layer,
        )


class DinoNet(nn.Module):
    """Encoder + DINO projection head; multi-crop views of one size are run as one batch.

    ``cfg.head_input`` sets how SPARO slots enter the head (unit norm as they are, scaled by sqrt(L * V), or
    through a LayerNorm): the slots enter with unit norm while a LayerNorm'd class token has a norm of about
    sqrt(D), so the head's first layer would otherwise start with much smaller pre-activations.
    """

    def __init__(self, cfg: DinoCfg, freeze_last_layer: int = 1) -> None:
        super().__init__()
        lightly = require_lightly()
        self.encoder = DinoEncoder(cfg)
        dim = self.encoder.feature_dim
        self.head_norm = nn.LayerNorm(dim) if cfg.head_input == "layernorm" else None
        self.head_scale = dim**0.5 if cfg.head_input == "sqrt_dim" else 1.0
        self.head = _projection_head(lightly, dim, cfg, freeze_last_layer)

    def head_input(self, features: torch.Tensor) -> torch.Tensor:
        """What the head reads from the encoder's output (B, F)."""
        if self.head_norm is not None:
            return self.head_norm(features)
        return features * self.head_scale if self.head_scale != 1.0 else features

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Head outputs (B, K) per view, in the order given."""
        out: list[torch.Tensor | None] = [None] * len(views)
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            sizes.setdefault(tuple(v.shape[1:]), []).append(i)
        for idx in sizes.values():
            batch = torch.cat([views[i] for i in idx])
            result = self.head(self.head_input(self.encoder(batch))).chunk(len(idx))
            for i, r in zip(idx, result, strict=True):
                out[i] = r
        return out  # type: ignore[return-value]


def count_params(module: nn.Module) -> int:
    from sparo_clip.models.param_count import count_parameters

    return count_parameters(module)


def parity(cfg: DinoCfg) -> dict[str, Any]:
    """Parameters of the encoder (what is evaluated) and of encoder + head, against the CLS twin.

    Returns:
        ``encoder``, ``cls_encoder``, ``head``, ``cls_head``, ``ratio``
        (encoder / cls_encoder) and ``at_parity`` (the encoder has no more parameters than the twin's).
    """
    enc, twin = DinoEncoder(cfg), DinoEncoder(cfg.cls_twin())
    out: dict[str, Any] = {"encoder": count_params(enc), "cls_encoder": count_params(twin)}
    lightly = require_lightly()
    for key, dim in (("head", enc.feature_dim), ("cls_head", twin.feature_dim)):
        out[key] = count_params(_projection_head(lightly, dim, cfg))
    out["ratio"] = out["encoder"] / out["cls_encoder"]
    out["at_parity"] = out["encoder"] <= out["cls_encoder"]
    return out


def encoder_state(net_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's entries of a :class:`DinoNet` state dict (``encoder.`` prefix removed)."""
    return {k[len("encoder.") :]: v for k, v in net_state.items() if k.startswith("encoder.")}


def load_encoder(
    path: str | Path, which: str = "teacher", map_location: Any = "cpu", allow_nonfinite: bool = False
) -> DinoEncoder:
    """Rebuild the encoder of a DINO training checkpoint (the teacher by default; DINO evaluates it).

    Args:
        allow_nonfinite: load weights holding NaN or inf with a warning instead of refusing them.

    Raises:
        CheckpointError: unreadable file, not a DINO checkpoint (no ``dino_cfg`` / network), a config that
            cannot be built, tensors that do not fit it, or non-finite weights.
    """
    ckpt = load_checkpoint_file(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "dino_cfg" not in ckpt or which not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path} is not a DINO checkpoint with {which!r} (holds {keys})")
    try:
        encoder = DinoEncoder(DinoCfg.from_dict(ckpt["dino_cfg"]))
    except (ValueError, TypeError, AssertionError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: its dino_cfg cannot be built: {e}") from e
    state = ckpt[which]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: {which!r} is not a state dict")
    check_finite_weights(encoder_state(state), f"the {which} of checkpoint {path}", allow_nonfinite)
    try:
        encoder.load_state_dict(encoder_state(state))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: {which} does not fit its dino_cfg: {first}") from e
    return encoder.eval()
