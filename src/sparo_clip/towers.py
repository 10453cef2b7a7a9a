"""Small helpers on OpenCLIP's towers shared by every read-out that reads token sequences."""

from __future__ import annotations

from typing import Any

import torch
from open_clip.transformer import TextTransformer


def eot_key_mask(text: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
    """(B, N) bool: True up to and including each caption's end-of-text token.

    End-of-text is ``text.argmax(-1)`` (OpenAI tokenizer), or the first ``eos_id`` when given. Every row
    keeps at least position 0, so no row is ever fully masked.
    """
    eot = text.argmax(dim=-1) if eos_id is None else (text == eos_id).int().argmax(dim=-1)
    return torch.arange(text.shape[1], device=text.device)[None, :] <= eot[:, None]


def text_hidden_states(
    tower: TextTransformer, text: torch.Tensor, key_mask: torch.Tensor | None = None, trim: bool = True
) -> torch.Tensor:
    """Tokens of an OpenCLIP ``TextTransformer`` after its blocks, before ``ln_final``: (B, n, width).

    With a causal tower and ``trim``, the tower runs only up to the longest caption of the batch
    (``n = max(key_mask.sum(1))``): positions after end-of-text cannot change earlier ones under the causal
    mask, and the read-outs mask them, so the result equals the full computation.
    """
    if tower.cls_emb is not None:
        raise NotImplementedError("text towers with a class embedding (text_cfg.embed_cls) are not supported")
    causal = tower.attn_mask is not None
    if trim and causal and key_mask is not None:
        text = text[:, : int(key_mask.sum(dim=1).max())]
    n = text.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(text).to(cast_dtype) + tower.positional_embedding[:n].to(cast_dtype)
    return tower.transformer(x, attn_mask=tower.attn_mask[:n, :n] if causal else None)


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
