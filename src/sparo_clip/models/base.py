"""ReadoutCLIP: two OpenCLIP towers, each ending in a read-out head (the skeleton of every model here).

:class:`~sparo_clip.models.sparo.SparoCLIP` and :class:`~sparo_clip.models.baselines.BaselineCLIP` derive from it and
differ only in the read-out each tower uses. The base gives them OpenCLIP's contract (``forward``, logit
scale and bias, via ``CustomTextCLIP``), the text key mask of the tower family (:mod:`sparo_clip.models.towers`),
``forward_intermediates`` and LiT-style locking with one meaning on both towers.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import numpy as np
import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from sparo_clip.models.towers import add_logits, text_key_mask, text_mask_rule, unlock_last_blocks

_logger = logging.getLogger(__name__)


def as_cfg_dict(cfg: Any) -> dict[str, Any]:
    """A deep copy of a tower config given as a dict or a dataclass (``CLIPVisionCfg``, ``CLIPTextCfg``)."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    raise ValueError(f"expected a config dict, got {type(cfg).__name__}")


LAYER_NORMS_LOCKED = (
    "lock_text_tower(freeze_layer_norm=False): LayerNorms are locked with their group, as OpenCLIP's CLIP locks "
    "them (its CLIP raises for False; open_clip_train passes False unless --lock-text-freeze-layer-norm)"
)

TORCHSCRIPT_UNSUPPORTED = (
    "TorchScript is not supported for SPARO / read-out models (torch.jit.script is deprecated in torch "
    "and removed from OpenCLIP's main branch): use torch.compile(model) (open_clip_train: --torchcompile) "
    "or torch.export instead"
)


def _has_projection(tower: nn.Module) -> bool:
    """Whether a text tower keeps its own projection (then that projection is its last lock group)."""
    if isinstance(tower, TextTransformer):
        return tower.text_projection is not None
    if isinstance(tower, HFTextEncoder):
        return not isinstance(tower.proj, nn.Identity)
    return True


class ReadoutCLIP(CustomTextCLIP):
    """Two OpenCLIP towers (built by OpenCLIP's own builders) with a read-out head on each.

    Subclasses build their heads after ``super().__init__``, implement ``encode_image`` / ``encode_text``,
    and list their heads' parameters in :meth:`image_head_parameters` / :meth:`text_head_parameters`.

    Locking (``--lock-image-unlocked-groups`` / ``--lock-text-unlocked-layers``) means the same on both
    towers: ``n`` trailing groups stay trainable, the tower's projection or, where a read-out replaces it,
    the read-out being the last group. ``n = 0`` freezes tower and head, ``n = 1`` trains the head only,
    ``n = 2`` also the last block (with the final norm), and so on.

    Args:
        embed_dim: width of the features the model outputs.
        tower_dim: output width OpenCLIP gives the towers' projections (if they keep one).
        vision_cfg / text_cfg: OpenCLIP tower configs (already adapted by the subclass).
        mask_text_cfg: the text config whose ``pool_type`` / ``eos_id`` / ``pad_id`` define the text key
            mask (default ``text_cfg``; a subclass that removes the tower's pooling passes the original).
        Others: as OpenCLIP's ``CustomTextCLIP``.
    """

    def __init__(
        self,
        embed_dim: int,
        tower_dim: int,
        vision_cfg: dict[str, Any] | CLIPVisionCfg,
        text_cfg: dict[str, Any] | CLIPTextCfg,
        quick_gelu: bool = False,
        init_logit_scale: float = np.log(1 / 0.07),
        init_logit_bias: float | None = None,
        nonscalar_logit_scale: bool = False,
        cast_dtype: torch.dtype | None = None,
        output_dict: bool = False,
        mask_text_cfg: dict[str, Any] | CLIPTextCfg | None = None,
    ) -> None:
        super().__init__(
            embed_dim=tower_dim,
            vision_cfg=vision_cfg,
            text_cfg=text_cfg,
            quick_gelu=quick_gelu,
            init_logit_scale=init_logit_scale,
            init_logit_bias=init_logit_bias,
            nonscalar_logit_scale=nonscalar_logit_scale,
            cast_dtype=cast_dtype,
            output_dict=output_dict,
        )
        self.embed_dim = embed_dim
        mask_cfg = text_cfg if mask_text_cfg is None else mask_text_cfg
        tcfg = mask_cfg if isinstance(mask_cfg, CLIPTextCfg) else CLIPTextCfg(**mask_cfg)
        self.mask_rule = text_mask_rule(self.text, tcfg)

    def __prepare_scriptable__(self) -> nn.Module:
        """Called by ``torch.jit.script``: refuse with the reason and the alternatives."""
        raise NotImplementedError(TORCHSCRIPT_UNSUPPORTED)

    # ----------------------------------------------------------------------------------- heads
    def image_head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the image read-out head (locked with the image tower's last group)."""
        return []

    def text_head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the text read-out head (locked with the text tower's last group)."""
        return []

    def text_key_mask(self, text: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: True at the positions each caption occupies, end-of-text included."""
        return text_key_mask(text, self.mask_rule)

    # ----------------------------------------------------------------------------------- locking
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """LiT-style lock: the last ``unlocked_groups`` groups stay trainable, the read-out being the last."""
        visual = self.visual
        if isinstance(visual, VisionTransformer) and visual.proj is None:
            # VisionTransformer.lock lists `proj` as its last group: the read-out stands in for it.
            visual.proj = nn.Parameter(torch.empty(0))
            try:
                visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)
            finally:
                visual.proj = None
        elif isinstance(visual, TimmModel):
            # timm's own groups differ by architecture (its ViT puts the final norm in a group of its own)
            visual.lock(0, freeze_bn_stats=freeze_bn_stats)
            visual.head.requires_grad_(unlocked_groups > 0)  # a projection, if kept, is the last group
            unlock_last_blocks(visual, unlocked_groups - 1)
        else:
            visual.lock(unlocked_groups, freeze_bn_stats=freeze_bn_stats)
        for p in self.image_head_parameters():
            p.requires_grad = unlocked_groups > 0

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Lock as :meth:`lock_image_tower` does: the last ``unlocked_layers`` groups stay trainable."""
        own = _has_projection(self.text) or unlocked_layers == 0
        tower_groups = unlocked_layers if own else unlocked_layers - 1
        if isinstance(self.text, HFTextEncoder):
            # OpenCLIP's HF lock needs a per-architecture layer name (absent for BERT): lock all, then
            # unlock the last blocks found by the tower adapter (a projection is trained with the head).
            self.text.lock(0, freeze_layer_norm)
            self.text.proj.requires_grad_(unlocked_layers > 0)
            unlock_last_blocks(self.text, unlocked_layers - 1)
        else:
            # OpenCLIP's TextTransformer locks LayerNorms with their group (as its CLIP does) and asserts
            # freeze_layer_norm, which open_clip_train passes as False unless --lock-text-freeze-layer-norm.
            if not freeze_layer_norm:
                _logger.warning(LAYER_NORMS_LOCKED)
            self.text.lock(tower_groups, True)
        for p in self.text_head_parameters():
            p.requires_grad = unlocked_layers > 0

    # ----------------------------------------------------------------------------------- intermediates
    def forward_intermediates(
        self,
        image: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        normalize: bool = True,
        intermediates_only: bool = False,
        output_logits: bool = False,
        output_logit_scale_bias: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """OpenCLIP's ``forward_intermediates``, with this model's read-outs for the final features."""
        text_in = text if hasattr(self.text, "forward_intermediates") else None
        output = super().forward_intermediates(image=image, text=text_in, intermediates_only=True, **kwargs)
        if intermediates_only:
            return output
        if image is not None:
            output["image_features"] = self.encode_image(image, normalize=normalize)
        if text is not None:
            output["text_features"] = self.encode_text(text, normalize=normalize)
        return add_logits(output, self.logit_scale, self.logit_bias, output_logits, output_logit_scale_bias)
