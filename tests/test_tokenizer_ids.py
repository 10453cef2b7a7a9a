"""The tokenizer-id table covers every OpenCLIP config whose text tower SPARO masks by pad / end-of-text ids."""

import json
from pathlib import Path

import open_clip

from sparo_clip.models import tokenizer_ids
from sparo_clip.models.parity import tokenizer_id_bases

OPEN_CLIP_CONFIGS = Path(open_clip.__file__).parent / "model_configs"


def _text_cfgs():
    for path in sorted(OPEN_CLIP_CONFIGS.glob("*.json")):
        yield path.stem, json.loads(path.read_text()).get("text_cfg", {})


def test_every_open_clip_config_that_needs_the_ids_names_a_known_tokenizer():
    """An OpenCLIP upgrade that ships a new non-causal / eos-pooled tokenizer fails here, not in a user's run."""
    needing = {name: cfg for name, cfg in _text_cfgs() if tokenizer_ids.needs_text_ids(cfg)}
    assert {"ViT-B-16-SigLIP", "ViT-B-16-SigLIP2", "ViT-L-14-CLIPA", "ViT-H-14-worldwide"} <= set(needing)
    unknown = {
        name: cfg.get("hf_tokenizer_name")
        for name, cfg in needing.items()
        if not tokenizer_ids.known_text_ids(cfg)
    }
    assert not unknown
    assert sorted(needing) == tokenizer_id_bases()  # and each ships a parity config
    assert set(tokenizer_ids.TOKENIZERS) == {
        cfg["hf_tokenizer_name"] for cfg in needing.values()
    }  # none stale


def test_missing_ids_are_only_those_unset_and_none_for_argmax_or_hf_towers():
    siglip = {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP", "pool_type": "last", "no_causal_mask": True}
    assert tokenizer_ids.missing_text_ids(siglip) == {"pad_id": 1, "eos_id": 1}
    assert tokenizer_ids.missing_text_ids({**siglip, "eos_id": 5}) == {"pad_id": 1}
    assert tokenizer_ids.missing_text_ids({**siglip, "pool_type": "argmax"}) == {}
    assert tokenizer_ids.missing_text_ids({**siglip, "hf_model_name": "bert-base-uncased"}) == {}
    assert tokenizer_ids.missing_text_ids({**siglip, "hf_tokenizer_name": "someone/else"}) == {}
