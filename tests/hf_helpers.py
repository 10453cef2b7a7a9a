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


WORDS = (
    "a an the of to and left right above below small large big two three one circle square triangle "
    "red green blue yellow purple orange shape shapes picture photo"
).split()


def save_tiny_bert_with_tokenizer(path: Path, context_length: int = 16) -> Path:
    """A 2-layer BERT with its own small WordPiece vocabulary (36 ids; [PAD] 0, [CLS] 2, [SEP] 3).

    Tokenizer files, model config and (seeded random) weights sit in one folder, as on the hub: ``AutoTokenizer``,
    ``AutoConfig`` and ``AutoModel.from_pretrained`` read it offline. OpenCLIP's tokenizer ids (up to 49,407) do
    not fit this tower's embedding.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ","]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(path / "vocab.txt"), model_max_length=context_length).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=context_length,
        pad_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config, add_pooling_layer=False).save_pretrained(path)  # config.json + model.safetensors
    return path
