"""SparoCLIP: OpenCLIP's own ViT and text towers with a SPARO read-out in place of their projections."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from torch import nn

from .config import SparoCfg
from .readout import SparoReadout, select_slots
from .towers import add_logits, eot_key_mask, text_hidden_states

SlotSelection = torch.Tensor | Sequence[int] | None


def _as_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    if hasattr(cfg, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(cfg)
    raise ValueError(f"expected a config dict, got {type(cfg).__name__}")


def _checked_cfg(cls: type, cfg: dict[str, Any], name: str) -> Any:
    try:
        return cls(**cfg)
    except TypeError as e:
        import dataclasses

        allowed = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(cfg) - set(allowed))
        raise ValueError(f"unknown {name} key(s) {unknown}: allowed keys are {allowed}") from e


def sparo_tower_cfgs(
    vision_cfg: dict[str, Any], text_cfg: dict[str, Any], sparo: SparoCfg
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenCLIP tower configs a SPARO model builds: fewer blocks, no pooling, no projection.

    Raises:
        NotImplementedError: for towers SPARO cannot read (ResNet, timm, Hugging Face, CoCa-style text).
        ValueError: when ``reduce_depth`` leaves a tower without blocks.
    """
    v = _checked_cfg(CLIPVisionCfg, vision_cfg, "vision_cfg")
    t = _checked_cfg(CLIPTextCfg, text_cfg, "text_cfg")
    if v.timm_model_name or isinstance(v.layers, (list, tuple)):
        kind = (
            f"timm model {v.timm_model_name!r}" if v.timm_model_name else "ModifiedResNet (layers is a list)"
        )
        raise NotImplementedError(
            f"SPARO reads the token sequence of an OpenCLIP VisionTransformer; the vision tower here is a {kind}"
        )
    if v.attentional_pool:
        raise NotImplementedError(
            "SPARO replaces the vision pooling; vision_cfg.attentional_pool must be false"
        )
    if t.hf_model_name:
        raise NotImplementedError(
            f"SPARO reads OpenCLIP's TextTransformer; Hugging Face text towers ({t.hf_model_name!r}) are not supported"
        )
    if t.embed_cls:
        raise NotImplementedError(
            "SPARO text read-out does not support text_cfg.embed_cls (CoCa-style towers)"
        )
    if t.pool_type not in ("argmax", "eos"):
        raise ValueError(
            f"text_cfg.pool_type={t.pool_type!r}: SPARO finds end-of-text with 'argmax' (OpenAI tokenizer) or "
            "'eos' (text_cfg.eos_id); allowed: ['argmax', 'eos']"
        )
    for name, layers in (("vision_cfg", v.layers), ("text_cfg", t.layers)):
        if sparo.reduce_depth >= layers:
            raise ValueError(
                f"sparo_cfg.reduce_depth={sparo.reduce_depth} must be smaller than {name}.layers={layers} "
                f"(allowed: 0..{layers - 1})"
            )
    vision = _as_dict(vision_cfg)
    vision.update(layers=v.layers - sparo.reduce_depth, pool_type="none", output_tokens=False)
    text = _as_dict(text_cfg)
    text.update(layers=t.layers - sparo.reduce_depth, pool_type="none", proj_type="none", output_tokens=False)
    return vision, text


class SparoCLIP(CustomTextCLIP):
    """CLIP whose towers end in SPARO read-outs (Vani et al., ECCV 2024).

    The towers are OpenCLIP's ``VisionTransformer`` and ``TextTransformer`` (built by OpenCLIP's own
    tower builders via ``CustomTextCLIP``) with ``reduce_depth`` fewer blocks, no pooling and no
    projection. Each is followed by a :class:`SparoReadout`. ``forward`` keeps OpenCLIP's contract
    (dict or tuple, logit scale and bias), so OpenCLIP's losses, training loop, zero-shot evaluation
    and checkpoints work unchanged.
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: dict[str, Any] | CLIPVisionCfg,
        text_cfg: dict[str, Any] | CLIPTextCfg,
        sparo_cfg: dict[str, Any] | SparoCfg | None = None,
        quick_gelu: bool = False,
        init_logit_scale: float = np.log(1 / 0.07),
        init_logit_bias: float | None = None,
        nonscalar_logit_scale: bool = False,
        cast_dtype: torch.dtype | None = None,
        output_dict: bool = False,
    ) -> None:
        sparo = SparoCfg.from_dict(sparo_cfg)
        if embed_dim != sparo.num_slots * sparo.slot_dim:
            raise ValueError(
                f"embed_dim={embed_dim} must equal sparo_cfg.num_slots * sparo_cfg.slot_dim = "
                f"{sparo.num_slots} * {sparo.slot_dim} = {sparo.num_slots * sparo.slot_dim}"
            )
        vision_dict, text_dict = sparo_tower_cfgs(_as_dict(vision_cfg), _as_dict(text_cfg), sparo)
        vcfg, tcfg = CLIPVisionCfg(**vision_dict), CLIPTextCfg(**text_dict)
        v_heads = vcfg.width // vcfg.head_width
        v_dims = sparo.resolve_dims(vcfg.width, v_heads, "vision")
        t_dims = sparo.resolve_dims(tcfg.width, tcfg.heads, "text")
        if sparo.share_queries and v_dims[0] != t_dims[0]:
            raise ValueError(
                f"sparo_cfg.share_queries=true needs the same attn_dim in both towers, got vision {v_dims[0]} "
                f"(width {vcfg.width} / {v_heads} heads) and text {t_dims[0]} (width {tcfg.width} / {tcfg.heads} "
                "heads): set sparo_cfg.attn_dim or share_queries=false"
            )
        # OpenCLIP builds the towers; their (unused) output width is kept small.
        super().__init__(
            embed_dim=vcfg.width,
            vision_cfg=vcfg,
            text_cfg=tcfg,
            quick_gelu=quick_gelu,
            init_logit_scale=init_logit_scale,
            init_logit_bias=init_logit_bias,
            nonscalar_logit_scale=nonscalar_logit_scale,
            cast_dtype=cast_dtype,
            output_dict=output_dict,
        )
        self.visual.proj = None  # the read-out replaces the projection
        self.embed_dim = embed_dim
        self.sparo_cfg = sparo
        self._model_cfg = {
            "embed_dim": embed_dim,
            "quick_gelu": quick_gelu,
            "vision_cfg": _as_dict(vision_cfg),
            "text_cfg": _as_dict(text_cfg),
            "sparo_cfg": sparo.to_dict(),
        }
        if init_logit_bias is not None:
            self._model_cfg["init_logit_bias"] = float(init_logit_bias)
        if nonscalar_logit_scale:
            self._model_cfg["nonscalar_logit_scale"] = True

        common = dict(
            num_slots=sparo.num_slots,
            slot_dim=sparo.slot_dim,
            heads=sparo.num_heads,
            share_kv=sparo.share_kv,
            slot_norm=sparo.slot_norm,
        )
        self.image_readout = SparoReadout(vcfg.width, attn_dim=v_dims[0], value_dim=v_dims[1], **common)
        self.text_readout = SparoReadout(tcfg.width, attn_dim=t_dims[0], value_dim=t_dims[1], **common)
        if sparo.share_queries:
            self.text_readout.query = self.image_readout.query
        self._eos_id = tcfg.eos_id if tcfg.pool_type == "eos" else None

    @property
    def model_cfg(self) -> dict[str, Any]:
        """The model config this model was built from (as in OpenCLIP's model_configs JSON)."""
        return copy.deepcopy(self._model_cfg)

    # ----------------------------------------------------------------------------------- locking
    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """LiT-style lock. The image read-out stands in for the tower's ``proj``, its last group."""
        # VisionTransformer.lock lists `proj` as its last group; give it a placeholder while it runs.
        self.visual.proj = nn.Parameter(torch.empty(0))
        try:
            self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)
        finally:
            self.visual.proj = None
        self.image_readout.requires_grad_(unlocked_groups > 0)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Lock the text tower; the text read-out (its projection) stays trainable only if layers are unlocked."""
        self.text.lock(unlocked_layers, freeze_layer_norm)
        shared = self.sparo_cfg.share_queries
        for name, p in self.text_readout.named_parameters():
            if not (shared and name == "query"):
                p.requires_grad = unlocked_layers > 0

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        no_wd = super().no_weight_decay()
        no_wd.update({"image_readout.query", "text_readout.query"})
        return no_wd

    # ----------------------------------------------------------------------------------- text
    def text_key_mask(self, text: torch.Tensor) -> torch.Tensor:
        """(B, N) bool: True up to and including each caption's end-of-text token."""
        return eot_key_mask(text, self._eos_id)

    def text_tokens(self, text: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the text tower to ``ln_final`` over all positions it needs: (B, n, width).

        With a causal tower and ``trim_text``, positions after the longest caption's end-of-text are
        not computed (they cannot change earlier positions and the read-out masks them).
        """
        return self.text.ln_final(
            text_hidden_states(self.text, text, key_mask, trim=self.sparo_cfg.trim_text)
        )

    # ----------------------------------------------------------------------------------- encoders
    def _finish(
        self,
        slots: torch.Tensor,
        attn: torch.Tensor | None,
        normalize: bool,
        return_sparo: bool,
        return_attn: bool,
        slots_sel: SlotSelection,
    ) -> Any:
        if slots_sel is not None:
            slots = select_slots(slots, slots_sel)
        out = slots if return_sparo else slots.flatten(1)
        if normalize and not return_sparo:
            out = F.normalize(out, dim=-1)
        return (out, attn) if return_attn else out

    def encode_image(
        self,
        image: torch.Tensor,
        normalize: bool = False,
        return_sparo: bool = False,
        return_attn: bool = False,
        slots: SlotSelection = None,
    ) -> Any:
        """Image features (B, L * V), unit norm by construction.

        Args:
            image: (B, 3, H, W).
            normalize: L2-normalise (a no-op up to rounding: SPARO features already have unit norm).
            return_sparo: return the slots (B, L, V) instead of the flat features.
            return_attn: also return the attention weights (B, L, N) over CLS + patch tokens.
            slots: keep only these slots (indices or a (L,) bool mask), renormalised to unit norm.
        """
        tokens = self.visual(image)  # (B, N, width) after ln_post
        out = self.image_readout(tokens, return_attn=return_attn)
        slots_out, attn = out if return_attn else (out, None)
        return self._finish(slots_out, attn, normalize, return_sparo, return_attn, slots)

    def encode_text(
        self,
        text: torch.Tensor,
        normalize: bool = False,
        return_sparo: bool = False,
        return_attn: bool = False,
        slots: SlotSelection = None,
    ) -> Any:
        """Text features (B, L * V), unit norm by construction.

        Same options as :meth:`encode_image`; attention is (B, L, N) over the context positions,
        zero beyond each caption's end-of-text token.
        """
        key_mask = self.text_key_mask(text)
        tokens = self.text_tokens(text, key_mask)  # (B, n, width)
        n = tokens.shape[1]
        out = self.text_readout(tokens, key_mask=key_mask[:, :n], return_attn=return_attn)
        slots_out, attn = out if return_attn else (out, None)
        if attn is not None and n < text.shape[1]:
            attn = F.pad(attn, (0, text.shape[1] - n))  # trimmed positions carry zero weight
        return self._finish(slots_out, attn, normalize, return_sparo, return_attn, slots)

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
        """OpenCLIP's ``forward_intermediates``, with SPARO features in place of the pooled ones."""
        output = super().forward_intermediates(
            image=image, text=text, normalize=False, intermediates_only=intermediates_only, **kwargs
        )
        if intermediates_only:
            return output
        if "image_features" in output:  # the tower's tokens after ln_post
            output["image_features"] = self.image_readout(output["image_features"]).flatten(1)
        if "text_features" in output:  # the tower's tokens after ln_final
            mask = self.text_key_mask(text)
            output["text_features"] = self.text_readout(output["text_features"], key_mask=mask).flatten(1)
        if normalize:
            for key in ("image_features", "text_features"):
                if key in output:
                    output[key] = F.normalize(output[key], dim=-1)
        return add_logits(output, self.logit_scale, self.logit_bias, output_logits, output_logit_scale_bias)
