"""Parameter-matched SPARO configs: parity_config, the ``sparo-clip parity`` CLI and the generated registry."""

import json

import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.commands import parity as parity_command
from sparo_clip.commands.cli import main as cli_main
from sparo_clip.models import parity
from sparo_clip.models.registry import CONFIG_DIR


def _count(name, override=None):
    with torch.device("meta"):
        model = sparo_clip.create_model(name, override_config=override, device="meta")
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("base", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_parity_config_reproduces_the_hand_made_configs(base):
    """The hand-made SPARO configs are exactly what parity_config picks (reduce_depth 1, L = V = 64)."""
    config = parity.parity_config(base)
    assert parity.config_text(config) == (CONFIG_DIR / f"{base}-SPARO.json").read_text()


def test_reduce_depth_is_the_smallest_that_fits():
    r = parity.parity_search("test-CLIP", L=4, V=16)
    depth = r.config["sparo_cfg"]["reduce_depth"]
    assert depth == 1 and r.base_params == _count("test-CLIP") == 3_385_089
    fits = {"embed_dim": 64, "sparo_cfg": r.config["sparo_cfg"]}
    assert _count("test-CLIP", fits) == r.params <= r.base_params
    too_big = {"embed_dim": 64, "sparo_cfg": {**r.config["sparo_cfg"], "reduce_depth": depth - 1}}
    assert _count("test-CLIP", too_big) > r.base_params
    assert r.config == sparo_clip.resolve_model_config("test-SPARO")  # the registered tiny config


def test_sparo_fields_pass_through_and_small_read_outs_need_no_reduction():
    r = parity.parity_search("test-CLIP", L=2, V=8, heads=1, slot_norm="sqrtsem:norm")
    assert r.config["embed_dim"] == 16
    sparo = r.config["sparo_cfg"]
    picked = {k: sparo[k] for k in ("num_slots", "slot_dim", "heads", "slot_norm")}
    assert picked == {"num_slots": 2, "slot_dim": 8, "heads": 1, "slot_norm": "sqrtsem:norm"}
    assert sparo["reduce_depth"] == 0  # a 2 x 8 read-out is smaller than the projections it replaces
    assert _count("test-CLIP", {"embed_dim": 16, "sparo_cfg": sparo}) == r.params <= r.base_params


@pytest.mark.parametrize(
    "base, kwargs, error, message",
    [
        ("test-CLIP", {"L": 64, "V": 64}, ValueError, "no reduce_depth in 0..1 keeps SPARO (L=64, V=64)"),
        ("test-CLIP", {"reduce_depth": 1}, ValueError, "does not take sparo_cfg.reduce_depth"),
        ("test-CLIP", {"num_slots": 8}, ValueError, "use L="),
        ("test-CLIP", {"bogus": 1}, ValueError, "unknown sparo_cfg key(s) ['bogus']"),
        ("test-CLIP", {"L": 4, "V": 16, "heads": 3}, ValueError, "heads=3 does not divide num_slots=4"),
        ("no-such-model", {}, ValueError, "unknown model 'no-such-model'"),
        ("test-SPARO", {}, ValueError, "test-SPARO is already a SPARO config"),
        ("RN50", {}, NotImplementedError, "ModifiedResNet"),
    ],
)
def test_parity_errors_are_clear(base, kwargs, error, message):
    with pytest.raises(error) as info:
        parity.parity_config(base, **kwargs)
    assert message in str(info.value)


def test_cli_prints_config_and_both_counts(tmp_path, capsys):
    assert cli_main(["parity", "test-CLIP", "--L", "4", "--V", "16"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == parity.parity_config("test-CLIP", L=4, V=16)
    assert "test-CLIP: 3,385,089 parameters" in err and "reduce_depth 1: 3,294,881 parameters" in err
    target = tmp_path / "cfg.json"
    args = ["test-CLIP", "--L", "2", "--V", "8", "--heads", "1", "--no-share-kv", "--output", str(target)]
    assert parity_command.main(args) == 0
    written = json.loads(target.read_text())
    assert written["sparo_cfg"]["share_kv"] is False and written["sparo_cfg"]["heads"] == 1
    assert parity_command.main(["test-CLIP", "--L", "64", "--V", "64"]) == 2
    assert "error: no reduce_depth" in capsys.readouterr().err


def test_registry_bases_are_openai_style_vits():
    bases = set(parity.registry_bases())
    assert {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-S-16-alt", "ViT-L-14-336", "ViT-bigG-14"} <= bases
    excluded = {"ViT-B-16-SigLIP", "ViT-L-14-CLIPA", "ViT-H-14-worldwide", "ViT-SO400M-14-SigLIP", "RN50"}
    assert not bases & excluded  # timm/HF towers, other tokenizers, average pooling
    assert all(parity.openai_style_vit(open_clip.get_model_config(b)) for b in bases)


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_generated_registry_is_up_to_date_and_within_budget():
    """model_configs/*-SPARO.json are what the generator writes now, and none exceeds its base."""
    results = parity.generate_registry()
    manifest = (CONFIG_DIR / parity.MANIFEST).read_text().splitlines()
    assert [line for line in manifest if not line.startswith("#")] == sorted(results)
    hand_made = {"ViT-B-32-SPARO.json", "ViT-B-16-SPARO.json", "ViT-L-14-SPARO.json"}
    bases = [*parity.registry_bases(), *parity.tokenizer_id_bases(), *parity.EXTRA_BASES]
    assert not hand_made & set(results) and len(results) == len(bases) - 3
    for name, r in results.items():
        assert (CONFIG_DIR / name).read_text() == parity.config_text(r.config), (
            f"{name} is stale: run python -m sparo_clip.models.parity --write-registry"
        )
        registered = name.removesuffix(".json")
        assert open_clip.get_model_config(registered) == r.config
        assert _count(registered) == r.params <= r.base_params, registered  # built through the registry


def test_cli_override_carries_the_tokenizer_ids_a_non_causal_text_tower_needs(capsys):
    non_causal = {"text_cfg": {"no_causal_mask": True, "pool_type": "last"}}
    assert (
        parity_command.main(["test-CLIP", "--L", "4", "--V", "16", "--override", json.dumps(non_causal)]) == 2
    )
    assert "needs text_cfg.eos_id and text_cfg.pad_id set in the config" in capsys.readouterr().err
    ids = {"text_cfg": {**non_causal["text_cfg"], "pad_id": 1, "eos_id": 1}}
    assert parity_command.main(["test-CLIP", "--L", "4", "--V", "16", "--override", json.dumps(ids)]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["text_cfg"]["pad_id"] == config["text_cfg"]["eos_id"] == 1
    assert parity_command.main(["test-CLIP", "--override", "[1]"]) == 2
    assert "--override must be a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize(
    "base, pad_id, eos_id",
    [
        ("ViT-B-16-SigLIP", 1, 1),  # T5 c4-en sentencepiece, padded with end-of-text
        ("ViT-B-16-SigLIP-i18n-256", 1, 1),  # mc4
        ("ViT-B-16-SigLIP2", 0, 1),  # Gemma
        ("ViT-L-14-CLIPA", 0, 102),  # BERT uncased, [SEP] stripped into padding
        ("ViT-H-14-worldwide", 1, 2),  # XLM-V (causal, eos pooling; OpenCLIP sets eos_id 2 only)
        ("ViT-L-14-worldwide", 0, 1),  # mT5
    ],
)
def test_parity_config_by_name_fills_the_tokenizer_ids_of_open_clips_own_configs(base, pad_id, eos_id):
    """These bases leave pad_id / eos_id unset (OpenCLIP's defaults 0 / 2 fit none of their tokenizers)."""
    assert not {"pad_id"} <= set(open_clip.get_model_config(base)["text_cfg"])
    config = parity.parity_config(base)
    assert (config["text_cfg"]["pad_id"], config["text_cfg"]["eos_id"]) == (pad_id, eos_id)
    assert open_clip.get_model_config(f"{base}-SPARO") == config  # shipped, so `sparo-clip list` shows it


def test_an_explicit_override_of_the_ids_wins():
    config = parity.parity_config("ViT-B-16-SigLIP", override={"text_cfg": {"pad_id": 0}})
    assert (config["text_cfg"]["pad_id"], config["text_cfg"]["eos_id"]) == (0, 1)


def test_building_without_the_ids_names_the_tokenizers_values():
    with pytest.raises(ValueError, match=r"timm/ViT-B-16-SigLIP uses pad_id=1, eos_id=1"):
        sparo_clip.create_model(
            "ViT-B-16-SigLIP", override_config={"embed_dim": 4096, "sparo_cfg": {}}, device="meta"
        )
