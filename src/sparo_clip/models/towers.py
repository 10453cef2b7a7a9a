"""How each OpenCLIP tower family gives a read-out its token sequence and key mask.

Every read-out model (SPARO and the baselines) reads its towers through these functions, so a new tower
family is added here and nowhere else. Families (dispatch is on the tower's class, never on a model name):

- vision: OpenCLIP's ``VisionTransformer`` (all tokens after ``ln_post``) and timm trunks wrapped by
  OpenCLIP's ``TimmModel`` built with ``timm_pool=''`` and ``timm_proj='none'`` (ViT-like trunks give
  (B, N, C) after their final norm; CNN trunks give (B, C, H, W) after their head norm, flattened to
  (B, H * W, C)). OpenCLIP's ``ModifiedResNet`` ends in an attention pool that *is* its read-out and
  exposes no token sequence: not supported.
- text: OpenCLIP's ``TextTransformer``, causal or not (all positions after ``ln_final``), and Hugging Face
  encoders wrapped by ``HFTextEncoder`` (``last_hidden_state``). The key mask marks the positions a
  caption occupies; it is also applied inside non-causal towers, so padding never changes a feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from open_clip.hf_configs import arch_dict
from open_clip.hf_model import HFTextEncoder
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from sparo_clip.errors import ConfigError


# ----------------------------------------------------------------------------------- key masks
@dataclass(frozen=True)
class TextMaskRule:
    """How to find the positions a caption occupies, from the text tower's settings.

    Attributes:
        kind: ``argmax`` (end-of-text is the largest id: OpenAI tokenizer), ``eos`` (end-of-text is the first
            ``eos_id``; without one, the positions before the first ``pad_id``) or ``pad`` (every position
            whose id is not ``pad_id``: Hugging Face towers).
        eos_id: end-of-text id (``eos``).
        pad_id: padding id (``eos`` and ``pad``).
    """

    kind: str = "argmax"
    eos_id: int | None = None
    pad_id: int | None = None


def text_key_mask(text: torch.Tensor, rule: TextMaskRule) -> torch.Tensor:
    """(B, N) bool: True at the positions a caption occupies (end-of-text included).

    Every row keeps at least position 0, so no row is ever fully masked.
    """
    positions = torch.arange(text.shape[1], device=text.device)[None, :]
    if rule.kind == "pad":
        mask = text != rule.pad_id
    elif rule.kind == "eos":
        has_eos = (text == rule.eos_id).any(dim=1, keepdim=True)
        eos = (text == rule.eos_id).int().argmax(dim=1, keepdim=True)
        first_pad = torch.where(
            (text == rule.pad_id).any(dim=1, keepdim=True),
            (text == rule.pad_id).int().argmax(dim=1, keepdim=True),
            torch.full_like(eos, text.shape[1]),
        )
        mask = torch.where(has_eos, positions <= eos, positions < first_pad)
    else:
        mask = positions <= text.argmax(dim=-1, keepdim=True)
    return mask | (positions == 0)


def text_mask_rule(tower: nn.Module, text_cfg: Any) -> TextMaskRule:
    """The mask rule of a built text tower and its ``CLIPTextCfg`` (pool_type, eos_id, pad_id)."""
    if isinstance(tower, HFTextEncoder):
        if tower.config.pad_token_id is None:
            raise ValueError(
                f"the Hugging Face text tower ({tower.config.model_type}) has no pad_token_id in its config: "
                "SPARO masks padding by it; set it to the tokenizer's pad id"
            )
        return TextMaskRule("pad", pad_id=tower.config.pad_token_id)
    if text_cfg.pool_type == "argmax":
        return TextMaskRule("argmax")
    return TextMaskRule("eos", eos_id=text_cfg.eos_id, pad_id=text_cfg.pad_id)


# ----------------------------------------------------------------------------------- vision
def vision_tokens(visual: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The final token sequence of a vision tower built without pooling and projection: (B, N, C)."""
    if isinstance(visual, TimmModel):
        x = visual.trunk(image)
        return x.flatten(2).transpose(1, 2) if x.ndim == 4 else x  # CNN: (B, C, H, W) -> (B, HW, C)
    return visual(image)  # VisionTransformer with pool_type 'none' and no proj: after ln_post


def vit_hidden_states(visual: VisionTransformer, image: torch.Tensor) -> torch.Tensor:
    """Tokens of an OpenCLIP ``VisionTransformer`` after its blocks, before ``ln_post``: (B, 1 + P, width).

    Uses the tower's ``_embeds`` (patch + class + positional embeddings, ``ln_pre``; open_clip_torch 3.3).
    """
    return visual.transformer(visual._embeds(image))


def vision_width_heads(visual: nn.Module, head_width: int) -> tuple[int, int]:
    """(token width, attention heads) of a vision tower; towers without attention count width / head_width."""
    if isinstance(visual, TimmModel):
        width = visual.trunk.num_features
        attn = getattr(block_list(visual)[-1], "attn", None)
        heads = getattr(attn, "num_heads", None)
        return width, heads if heads else max(1, width // head_width)
    return visual.transformer.width, visual.transformer.width // head_width


# ----------------------------------------------------------------------------------- text
def trimmed_length(key_mask: torch.Tensor | None) -> int | None:
    """How many positions a text tower must run for this batch: the longest caption's, or None for all.

    The length is read from the data (a Python ``int``), which ``torch.compile`` and ``torch.export`` can only
    trace by breaking the graph (one break per call, and a recompilation per new length). While either traces
    (``torch.compiler.is_compiling()``), the tower runs over the whole context instead: the same features
    (the positions after the longest caption are masked for every caption, or cannot change earlier ones
    under a causal mask), one graph, static shapes.
    """
    if key_mask is None or torch.compiler.is_compiling():
        return None
    return int(key_mask.sum(dim=1).max())


def text_hidden_states(
    tower: TextTransformer, text: torch.Tensor, key_mask: torch.Tensor | None = None, trim: bool = True
) -> torch.Tensor:
    """Tokens of an OpenCLIP ``TextTransformer`` after its blocks, before ``ln_final``: (B, n, width).

    With a ``key_mask``, a non-causal tower attends only the masked-in keys (so padding never changes a
    token), and with ``trim`` the tower runs only up to the longest caption of the batch
    (:func:`trimmed_length`): later positions are masked for every caption (non-causal) or cannot
    change earlier ones (causal), so the result equals the full computation.
    """
    if tower.cls_emb is not None:
        raise NotImplementedError("text towers with a class embedding (text_cfg.embed_cls) are not supported")
    causal = tower.attn_mask is not None
    n = trimmed_length(key_mask) if trim else None
    if n is not None:
        text, key_mask = text[:, :n], key_mask[:, :n]
    n = text.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(text).to(cast_dtype) + tower.positional_embedding[:n].to(cast_dtype)
    if causal:
        attn_mask = tower.attn_mask[:n, :n]
    elif key_mask is not None:  # additive (B * heads, n, n), the layout OpenCLIP's blocks take
        attn_mask = torch.zeros(key_mask.shape, dtype=x.dtype, device=x.device)
        attn_mask = attn_mask.masked_fill(~key_mask, float("-inf"))[:, None, :].expand(-1, n, -1)
        attn_mask = attn_mask.repeat_interleave(tower.heads, dim=0)
    else:
        attn_mask = None
    return tower.transformer(x, attn_mask=attn_mask)


def text_tokens(
    tower: nn.Module, text: torch.Tensor, key_mask: torch.Tensor | None = None, trim: bool = True
) -> torch.Tensor:
    """The final token sequence of a text tower (after its final norm): (B, n, width), n <= text length."""
    if isinstance(tower, HFTextEncoder):
        n = trimmed_length(key_mask) if trim else None
        if n is not None:
            text, key_mask = text[:, :n], key_mask[:, :n]
        mask = (text != tower.config.pad_token_id) if key_mask is None else key_mask
        return tower.transformer(input_ids=text, attention_mask=mask.long()).last_hidden_state
    return tower.ln_final(text_hidden_states(tower, text, key_mask, trim=trim))


def text_width_heads(tower: nn.Module) -> tuple[int, int]:
    """(token width, attention heads) of a text tower."""
    if isinstance(tower, HFTextEncoder):
        names = arch_dict.get(tower.config.model_type, {}).get("config_names", {})
        width = getattr(tower.config, names.get("width", "hidden_size"))
        return width, getattr(tower.config, names.get("heads", "num_attention_heads"))
    return tower.width, tower.heads


# ----------------------------------------------------------------------------------- depth
def block_list(tower: nn.Module) -> nn.Sequential | nn.ModuleList:
    """The sequence of blocks whose last ones ``reduce_depth`` removes (the trunk's final blocks)."""
    if isinstance(tower, (VisionTransformer, TextTransformer)):
        return tower.transformer.resblocks
    if isinstance(tower, HFTextEncoder):
        encoder = getattr(tower.transformer, "encoder", tower.transformer)
        names = arch_dict.get(tower.config.model_type, {}).get("config_names", {})
        for attr in (names.get("layer_attr"), "layer", "layers", "block"):
            if attr and isinstance(getattr(encoder, attr, None), nn.ModuleList):
                return getattr(encoder, attr)
        raise NotImplementedError(
            f"Hugging Face model type {tower.config.model_type!r}: no list of layers found on its encoder"
        )
    if isinstance(tower, TimmModel) or isinstance(
        getattr(tower, "blocks", None), (nn.Sequential, nn.ModuleList)
    ):
        trunk = getattr(tower, "trunk", tower)  # OpenCLIP's wrapper of a timm model, or a timm model itself
        if isinstance(getattr(trunk, "blocks", None), (nn.Sequential, nn.ModuleList)):
            return trunk.blocks  # ViT-like
        stages = getattr(trunk, "stages", None)
        if stages is not None and isinstance(
            getattr(stages[-1], "blocks", None), (nn.Sequential, nn.ModuleList)
        ):
            return stages[-1].blocks  # CNN-like: the last stage's blocks
        raise NotImplementedError(
            f"timm trunk {type(trunk).__name__} has neither `blocks` nor `stages[-1].blocks`: SPARO cannot "
            "tell its final blocks (set sparo_cfg.reduce_depth=0 is not enough either; use a ViT- or "
            "ConvNeXt-style trunk)"
        )
    raise NotImplementedError(f"no block list known for tower {type(tower).__name__}")


def unlock_last_blocks(tower: nn.Module, k: int) -> None:
    """Make the last ``k`` blocks trainable, with everything after them (final norms) joining the last one.

    Used for timm and Hugging Face towers, whose own lock groups differ by architecture (timm's ViT puts its
    final norm in a group of its own; OpenCLIP's HF lock has no layer name for BERT).
    """
    if k <= 0:
        return
    blocks = list(block_list(tower))
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    last = {id(p) for p in blocks[-1].parameters()}
    for b in blocks[max(len(blocks) - k, 0) :]:
        b.requires_grad_(True)
    after_last = False
    for p in tower.parameters():  # registration order: stem, blocks, then final norms / heads
        if id(p) in last:
            after_last = True
        elif after_last and id(p) not in in_blocks:
            p.requires_grad = True


def drop_last_blocks(tower: nn.Module, n: int, where: str) -> None:
    """Remove the last ``n`` blocks of a built tower (``where`` names its config in errors)."""
    blocks = block_list(tower)
    if n >= len(blocks):
        raise ConfigError(
            f"sparo_cfg.reduce_depth={n} must be smaller than the {len(blocks)} final blocks of the {where} "
            f"tower (allowed: 0..{len(blocks) - 1})"
        )
    if n == 0:
        return
    for _ in range(n):
        del blocks[len(blocks) - 1]
    if isinstance(tower, HFTextEncoder):  # HF encoders read their depth from the config in places
        names = arch_dict.get(tower.config.model_type, {}).get("config_names", {})
        setattr(tower.config, names.get("layers", "num_hidden_layers"), len(blocks))


def add_logits(
    output: dict[str, Any],
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    output_logits: bool,
    output_logit_scale_bias: bool,
) -> dict[str, Any]:
    """Complete a ``forward_intermediates`` dict with logits / scale / bias, as OpenCLIP's models do."""
    scale = logit_scale.exp()
    if output_logits:
        logits = scale * output["image_features"] @ output["text_features"].T
        if logit_bias is not None:
            logits = logits + logit_bias
        output["image_logits"], output["text_logits"] = logits, logits.T
    if output_logit_scale_bias:
        output["logit_scale"] = scale
        if logit_bias is not None:
            output["logit_bias"] = logit_bias
    return output
