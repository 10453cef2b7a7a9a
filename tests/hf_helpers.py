"""A tiny BERT config on disk: Hugging Face text towers are built from it offline (no hub)."""

from __future__ import annotations

from pathlib import Path


def save_tiny_bert(path: Path, context_length: int = 16) -> Path:
    """Write a 2-layer, 64-wide BERT config (OpenCLIP's vocabulary size, pad id 0) into ``path``."""
    from transformers import BertConfig

    BertConfig(
        vocab_size=49408,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=context_length,
        pad_token_id=0,
    ).save_pretrained(path)
    return path
