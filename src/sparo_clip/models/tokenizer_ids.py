"""Pad and end-of-text ids of the tokenizers OpenCLIP's own non-causal and ``eos``-pooled configs name.

SPARO masks each caption by these ids (:class:`sparo_clip.models.towers.TextMaskRule`); OpenCLIP's config
defaults (``pad_id`` 0, ``eos_id`` 2) match none of these tokenizers, and its configs leave them unset. They are
tokenizer facts, so they are looked up by the config's ``text_cfg.hf_tokenizer_name`` (never by a model's name)
and checked without the hub: every fact below says where it comes from (open_clip_torch 3.3.0's tokenizer code, or
the vocabulary convention of the tokenizer's family), and ``tests/test_tokenizer_ids.py`` checks that every
OpenCLIP 3.3.0 config that needs them is covered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenizerIds:
    """The ids SPARO's text key mask needs, and the fact they rest on."""

    pad_id: int
    eos_id: int
    why: str


FAMILIES: dict[str, TokenizerIds] = {
    "siglip-c4-en": TokenizerIds(
        1,
        1,
        "T5 sentencepiece (c4-en, 32k); OpenCLIP 3.3's SigLipTokenizer pads with end-of-text: pad = eos = 1",
    ),
    "siglip-mc4": TokenizerIds(
        1,
        1,
        "T5 sentencepiece (mc4, 250k); OpenCLIP 3.3's SigLipTokenizer pads with end-of-text: pad = eos = 1",
    ),
    "siglip2-gemma": TokenizerIds(
        0, 1, "Gemma sentencepiece (256k) with add_eos_token; OpenCLIP 3.3's SigLipTokenizer: pad 0, eos 1"
    ),
    "bert-uncased": TokenizerIds(
        0,
        102,
        "BERT WordPiece: [PAD] 0, [SEP] 102; CLIPA's strip_sep_token turns [SEP] into padding, so a caption "
        "ends before its first pad",
    ),
    "xlm-v": TokenizerIds(1, 2, "XLM-R / fairseq order: <s> 0, <pad> 1, </s> 2, <unk> 3"),
    "mt5": TokenizerIds(0, 1, "T5 order: <pad> 0, </s> 1, <unk> 2"),
}

_SIGLIP2 = [
    "ViT-B-16-SigLIP2", "ViT-B-16-SigLIP2-256", "ViT-B-16-SigLIP2-384", "ViT-B-16-SigLIP2-512",
    "ViT-B-32-SigLIP2-256", "ViT-L-16-SigLIP2-256", "ViT-L-16-SigLIP2-384", "ViT-L-16-SigLIP2-512",
    "ViT-SO400M-14-SigLIP2", "ViT-SO400M-14-SigLIP2-378", "ViT-SO400M-16-SigLIP2-256",
    "ViT-SO400M-16-SigLIP2-384", "ViT-SO400M-16-SigLIP2-512", "ViT-gopt-16-SigLIP2-256",
    "ViT-gopt-16-SigLIP2-384",
]  # fmt: skip

# text_cfg.hf_tokenizer_name -> tokenizer family (the names OpenCLIP 3.3.0's configs use)
TOKENIZERS: dict[str, str] = {
    "timm/ViT-B-16-SigLIP": "siglip-c4-en",
    "timm/ViT-B-16-SigLIP-i18n-256": "siglip-mc4",
    **{f"timm/{name}": "siglip2-gemma" for name in _SIGLIP2},
    "bert-base-uncased": "bert-uncased",
    "facebook/xlm-v-base": "xlm-v",
    "google/mt5-base": "mt5",
}


def needs_text_ids(text_cfg: dict[str, Any]) -> bool:
    """Whether SPARO masks this OpenCLIP text tower by ``pad_id`` / ``eos_id`` (not by ``argmax``, not HF)."""
    return not text_cfg.get("hf_model_name") and text_cfg.get("pool_type", "argmax") in ("eos", "last")


def known_text_ids(text_cfg: dict[str, Any]) -> TokenizerIds | None:
    """The ids of the tokenizer a text config names (``hf_tokenizer_name``), or None when it is not known."""
    family = TOKENIZERS.get(text_cfg.get("hf_tokenizer_name") or "")
    return FAMILIES[family] if family else None


def missing_text_ids(text_cfg: dict[str, Any]) -> dict[str, int]:
    """The known ids a text config leaves unset (``{}`` when it sets them, needs none, or names no known tokenizer)."""
    ids = known_text_ids(text_cfg) if needs_text_ids(text_cfg) else None
    if ids is None:
        return {}
    known = {"pad_id": ids.pad_id, "eos_id": ids.eos_id}
    return {k: v for k, v in known.items() if k not in text_cfg}
