import json

import open_clip
import open_clip.factory as oc_factory
import pytest
import torch

import sparo_clip
from sparo_clip import integration
from sparo_clip.models import registry

PARAM_BUDGETS = {"ViT-B-32-SPARO": ("ViT-B-32", 151_277_313), "ViT-B-16-SPARO": ("ViT-B-16", 149_620_737)}


def test_configs_listed_and_baselines_untouched():
    names = open_clip.list_models()
    for n in ("ViT-B-32-SPARO", "ViT-B-16-SPARO", "ViT-L-14-SPARO", "tiny-SPARO", "tiny-CLIP", "test-SPARO"):
        assert n in names
    assert "ViT-B-32" in names and "sparo_cfg" not in open_clip.get_model_config("ViT-B-32")
    assert set(sparo_clip.sparo_model_names()) >= {"ViT-B-32-SPARO", "tiny-SPARO", "test-SPARO"}
    assert "tiny-CLIP" not in sparo_clip.sparo_model_names()


@pytest.mark.parametrize("name", ["ViT-B-32-SPARO", "ViT-B-16-SPARO", "ViT-L-14-SPARO"])
def test_paper_configs(name):
    cfg = open_clip.get_model_config(name)
    s = cfg["sparo_cfg"]
    assert cfg["embed_dim"] == 4096 == s["num_slots"] * s["slot_dim"]
    assert (s["num_slots"], s["slot_dim"], s["reduce_depth"], s["share_kv"], s["slot_norm"]) == (
        64,
        64,
        1,
        True,
        "cont:const",
    )
    assert s["share_queries"] is False


@pytest.mark.parametrize("name", sorted(PARAM_BUDGETS))
def test_parameter_parity(name):
    base, budget = PARAM_BUDGETS[name]
    with torch.device("meta"):
        n_sparo = sum(p.numel() for p in open_clip.create_model(name, device="meta").parameters())
        n_base = sum(p.numel() for p in open_clip.create_model(base, device="meta").parameters())
    assert n_base == budget
    assert n_sparo <= budget


def test_tokenizer_for_sparo_configs():
    tok = open_clip.get_tokenizer("ViT-B-32-SPARO")
    assert tok(["a photo"]).shape == (1, 77)
    assert open_clip.get_tokenizer("tiny-SPARO")(["a photo"]).shape == (1, 16)  # tiny-SPARO.json: context 16


def test_hook_installed_idempotent_and_dispatches():
    assert integration.hook_installed()
    before = oc_factory.CLIP
    integration.install_factory_hook(registry.select_builder)
    assert oc_factory.CLIP is before  # not wrapped twice
    cfg = open_clip.get_model_config("test-SPARO")
    assert isinstance(oc_factory.CLIP(**cfg), sparo_clip.SparoCLIP)
    plain = oc_factory.CLIP(**open_clip.get_model_config("test-CLIP"))
    assert type(plain) is open_clip.CLIP
    assert open_clip.__version__ == registry.OPEN_CLIP_VERSION
    # force_custom_text routes through the CustomTextCLIP name: still SPARO
    assert isinstance(open_clip.create_model("test-SPARO", force_custom_text=True), sparo_clip.SparoCLIP)


def test_hooked_names_stay_real_classes_for_lookup_and_subclassing():
    """After the import, open_clip.factory.CLIP still answers attribute lookup and can be subclassed."""
    assert oc_factory.CLIP.encode_text is open_clip.model.CLIP.encode_text
    assert issubclass(oc_factory.CLIP, open_clip.model.CLIP)
    assert oc_factory.CustomTextCLIP.lock_text_tower is open_clip.model.CustomTextCLIP.lock_text_tower

    class Mine(oc_factory.CLIP):  # a third party's subclass is an ordinary class: no dispatch
        def extra(self) -> str:
            return "mine"

    cfg = open_clip.get_model_config("test-CLIP")
    model = Mine(**cfg)
    assert type(model) is Mine and model.extra() == "mine"
    assert isinstance(model, open_clip.model.CLIP) and isinstance(model, oc_factory.CLIP)
    assert not isinstance(open_clip.create_model("test-CLIP"), Mine)
    # a SPARO config through the stand-in still builds a SparoCLIP, which is not a subclass of CLIP
    assert not isinstance(oc_factory.CLIP(**open_clip.get_model_config("test-SPARO")), open_clip.model.CLIP)


def test_config_files_are_valid_json():
    for f in registry.CONFIG_DIR.glob("*.json"):
        cfg = json.loads(f.read_text())
        assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg), f.name


def test_config_mixing_model_kinds_is_a_clear_error():
    with pytest.raises(ValueError, match=r"belong to different models"):
        sparo_clip.create_model("test-SPARO", override_config={"bottleneck_cfg": {"bottleneck_dim": 32}})
