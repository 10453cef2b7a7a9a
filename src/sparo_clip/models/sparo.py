"""SparoCLIP: OpenCLIP's towers with a SPARO read-out in place of their pooling and projections."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

from sparo_clip.errors import ConfigError
from sparo_clip.models.base import ReadoutCLIP, as_cfg_dict
from sparo_clip.models.config import SparoCfg, parse_cfg
from sparo_clip.models.readout import SparoReadout, select_slots
from sparo_clip.models.tokenizer_ids import known_text_ids
from sparo_clip.models.towers import (
    drop_last_blocks,
    text_tokens,
    text_width_heads,
    vision_tokens,
    vision_width_heads,
)

SlotSelection = torch.Tensor | Sequence[int] | None


_TEXT_POOLS = ("argmax", "eos", "last")


def sparo_tower_cfgs(
    vision_cfg: dict[str, Any], text_cfg: dict[str, Any], sparo: SparoCfg
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenCLIP tower configs a SPARO model builds: no pooling, no projection, fewer blocks.

    OpenCLIP ViT towers lose ``reduce_depth`` blocks here; timm and Hugging Face towers are cut after they
    are built (:func:`sparo_clip.models.towers.drop_last_blocks`).

    Raises:
        NotImplementedError: for towers that expose no token sequence (ModifiedResNet, attentional pool,
            CoCa-style text with a class token).
        ValueError: bad fields, or a ``reduce_depth`` that leaves a tower without blocks.
    """
    v = parse_cfg(CLIPVisionCfg, vision_cfg, "vision_cfg")
    t = parse_cfg(CLIPTextCfg, text_cfg, "text_cfg")
    if isinstance(v.layers, (list, tuple)) and not v.timm_model_name:
        raise NotImplementedError(
            "SPARO reads a tower's token sequence; the ModifiedResNet vision tower (vision_cfg.layers is a "
            "list) ends in an attention pool that is its read-out and exposes no tokens: use a ViT, timm "
            "ViT or timm CNN (e.g. ConvNeXt) vision tower"
        )
    if v.attentional_pool:
        raise NotImplementedError(
            "SPARO replaces the vision pooling; vision_cfg.attentional_pool must be false"
        )
    if t.embed_cls:
        raise NotImplementedError(
            "SPARO text read-out does not support text_cfg.embed_cls (CoCa-style towers)"
        )
    if not t.hf_model_name and t.pool_type not in _TEXT_POOLS:
        raise ConfigError(
            f"text_cfg.pool_type={t.pool_type!r}: SPARO finds end-of-text with 'argmax' (OpenAI tokenizer), "
            f"or 'eos' / 'last' (text_cfg.eos_id, text_cfg.pad_id); allowed: {list(_TEXT_POOLS)}"
        )
    if not t.hf_model_name and t.pool_type != "argmax" and (t.no_causal_mask or t.pool_type == "last"):
        # OpenCLIP's defaults (pad 0, eos 2) match none of the tokenizers of such towers
        missing = [k for k in ("eos_id", "pad_id") if k not in text_cfg]
        if missing:
            known = known_text_ids(text_cfg)
            hint = (
                f"its tokenizer {t.hf_tokenizer_name} uses pad_id={known.pad_id}, eos_id={known.eos_id}; "
                "sparo_clip.parity_config fills them"
                if known
                else "read them from the tokenizer, e.g. tokenizer.tokenizer.pad_token_id / eos_token_id"
            )
            raise ConfigError(
                f"text_cfg.pool_type={t.pool_type!r} needs text_cfg.{' and text_cfg.'.join(missing)} set in the "
                f"config: SPARO masks each caption by them ({hint})"
            )
    towers = [("text_cfg", t.layers)] if not t.hf_model_name else []
    if not v.timm_model_name:
        towers.insert(0, ("vision_cfg", v.layers))
    for name, layers in towers:
        if sparo.reduce_depth >= layers:
            raise ConfigError(
                f"sparo_cfg.reduce_depth={sparo.reduce_depth} must be smaller than {name}.layers={layers} "
                f"(allowed: 0..{layers - 1})"
            )
    vision = as_cfg_dict(vision_cfg)
    if v.timm_model_name:
        vision.update(timm_pool="", timm_proj="none")
    else:
        vision.update(layers=v.layers - sparo.reduce_depth, pool_type="none", output_tokens=False)
    text = as_cfg_dict(text_cfg)
    if t.hf_model_name:
        text.update(hf_proj_type="linear", hf_pooler_type="mean_pooler", output_tokens=False)
    else:
        text.update(
            layers=t.layers - sparo.reduce_depth, pool_type="none", proj_type="none", output_tokens=False
        )
    return vision, text


class SparoCLIP(ReadoutCLIP):
    """CLIP whose towers end in SPARO read-outs (Vani et al., ECCV 2024).

    The towers are OpenCLIP's own (ViT, timm or Hugging Face vision/text towers, built by OpenCLIP's
    tower builders) with ``reduce_depth`` fewer blocks, no pooling and no projection. Each is followed by
    a :class:`SparoReadout` over its final tokens (:mod:`sparo_clip.models.towers`). ``forward`` keeps OpenCLIP's
    contract (dict or tuple, logit scale and bias), so OpenCLIP's losses, training loop, zero-shot
    evaluation and checkpoints work unchanged.
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: dict[str, Any] | CLIPVisionCfg,
        text_cfg: dict[str, Any] | CLIPTextCfg,
        sparo_cfg: dict[str, Any] | SparoCfg | None = None,
        **clip_options: Any,
    ) -> None:
        """Build the towers (OpenCLIP) and one read-out per tower.

        Args:
            embed_dim: L * V, the flattened slots' width.
            vision_cfg, text_cfg: OpenCLIP tower configs (before ``reduce_depth``).
            sparo_cfg: the read-out settings (:class:`SparoCfg`).
            **clip_options: OpenCLIP's model options (``quick_gelu``, ``init_logit_scale``,
                ``init_logit_bias``, ``nonscalar_logit_scale``, ``cast_dtype``, ``output_dict``), passed on.
        """
        sparo = SparoCfg.from_dict(sparo_cfg)
        if embed_dim != sparo.num_slots * sparo.slot_dim:
            raise ConfigError(
                f"embed_dim={embed_dim} must equal sparo_cfg.num_slots * sparo_cfg.slot_dim = "
                f"{sparo.num_slots} * {sparo.slot_dim} = {sparo.num_slots * sparo.slot_dim}"
            )
        vision_dict, text_dict = as_cfg_dict(vision_cfg), as_cfg_dict(text_cfg)
        vision_tower, text_tower = sparo_tower_cfgs(vision_dict, text_dict, sparo)
        vcfg, tcfg = CLIPVisionCfg(**vision_tower), CLIPTextCfg(**text_tower)
        # OpenCLIP builds the towers; their (unused) output width is kept small.
        super().__init__(
            embed_dim=embed_dim,
            tower_dim=vcfg.width,
            vision_cfg=vcfg,
            text_cfg=tcfg,
            mask_text_cfg=CLIPTextCfg(**text_dict),
            **clip_options,
        )
        if vcfg.timm_model_name:
            drop_last_blocks(self.visual, sparo.reduce_depth, "vision")
        else:
            self.visual.proj = None  # the read-out replaces the projection
        if tcfg.hf_model_name:
            drop_last_blocks(self.text, sparo.reduce_depth, "text")
            self.text.proj = nn.Identity()  # the read-out replaces the projection
        self.sparo_cfg = sparo
        self._model_cfg = {
            "embed_dim": embed_dim,
            "quick_gelu": bool(clip_options.get("quick_gelu", False)),
            "vision_cfg": vision_dict,
            "text_cfg": text_dict,
            "sparo_cfg": sparo.to_dict(),
        }
        if clip_options.get("init_logit_bias") is not None:
            self._model_cfg["init_logit_bias"] = float(clip_options["init_logit_bias"])
        if clip_options.get("nonscalar_logit_scale"):
            self._model_cfg["nonscalar_logit_scale"] = True

        v_width, v_heads = vision_width_heads(self.visual, vcfg.head_width)
        t_width, t_heads = text_width_heads(self.text)
        self.image_readout = SparoReadout.from_cfg(sparo, v_width, v_heads, "vision")
        self.text_readout = SparoReadout.from_cfg(sparo, t_width, t_heads, "text")
        if sparo.share_queries:
            v_dim, t_dim = self.image_readout.attn_dim, self.text_readout.attn_dim
            if v_dim != t_dim:
                raise ConfigError(
                    f"sparo_cfg.share_queries=true needs the same attn_dim in both towers, got vision {v_dim} "
                    f"(width {v_width} / {v_heads} heads) and text {t_dim} (width {t_width} / {t_heads} "
                    "heads): set sparo_cfg.attn_dim or share_queries=false"
                )
            self.text_readout.query = self.image_readout.query

    @property
    def model_cfg(self) -> dict[str, Any]:
        """The model config this model was built from (as in OpenCLIP's model_configs JSON)."""
        return copy.deepcopy(self._model_cfg)

    def image_head_parameters(self) -> list[nn.Parameter]:
        return list(self.image_readout.parameters())

    def text_head_parameters(self) -> list[nn.Parameter]:
        shared = self.image_readout.query if self.sparo_cfg.share_queries else None
        return [p for p in self.text_readout.parameters() if p is not shared]

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        no_wd = super().no_weight_decay()
        no_wd.update({"image_readout.query", "text_readout.query"})
        return no_wd

    # ----------------------------------------------------------------------------------- text
    def text_tokens(self, text: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the text tower to its final norm over the positions it needs: (B, n, width).

        With ``trim_text``, positions after the longest caption are not computed (they are masked for
        every caption, or cannot change earlier positions under a causal mask).
        """
        return text_tokens(self.text, text, key_mask, trim=self.sparo_cfg.trim_text)

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
        tokens = vision_tokens(self.visual, image)  # (B, N, width) after the tower's final norm
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
