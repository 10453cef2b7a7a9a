import pytest

import sparo_clip
from sparo_clip import SparoCfg


def _make(override):
    return sparo_clip.create_model("test-SPARO", override_config=override)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"embed_dim": 65}, r"embed_dim=65 must equal sparo_cfg.num_slots \* sparo_cfg.slot_dim"),
        ({"sparo_cfg": {"heads": 3}}, r"heads=3 does not divide num_slots=4.*\[1, 2, 4\]"),
        ({"sparo_cfg": {"slot_norm": "cont:max"}}, r"slot_norm='cont:max'.*\['cont', 'sem', 'sqrtsem'\]"),
        ({"sparo_cfg": {"slot_norm": "cont"}}, r"'<rep>:<weight>'"),
        ({"sparo_cfg": {"value_dim": 16}}, r"share_kv=true needs value_dim == attn_dim"),
        ({"sparo_cfg": {"value_dim": 16, "attn_dim": 8}}, r"share_kv=true needs value_dim == attn_dim"),
        (
            {"text_cfg": {"heads": 4}, "sparo_cfg": {"share_queries": True}},
            r"share_queries=true needs the same",
        ),
        ({"sparo_cfg": {"reduce_depth": 2}}, r"reduce_depth=2 must be smaller than vision_cfg.layers=2"),
        ({"sparo_cfg": {"reduce_depth": -1}}, r"reduce_depth=-1.*>= 0"),
        ({"sparo_cfg": {"num_slots": 0}}, r"num_slots=0.*positive integer"),
        ({"sparo_cfg": {"slots": 4}}, r"unknown sparo_cfg key\(s\) \['slots'\]: allowed keys are"),
        ({"vision_cfg": {"widht": 64}}, r"unknown vision_cfg key\(s\) \['widht'\]"),
        ({"text_cfg": {"pool_type": "first"}}, r"pool_type='first'.*allowed: \['argmax', 'eos', 'last'\]"),
    ],
)
def test_invalid_configs_fail_at_construction(override, match):
    with pytest.raises(ValueError, match=match):
        _make(override)


def test_share_queries_works_when_dims_agree():
    m = _make({"sparo_cfg": {"share_queries": True}})
    assert m.text_readout.query is m.image_readout.query


def test_explicit_attn_dim_makes_share_queries_valid_across_widths():
    m = _make({"text_cfg": {"heads": 4}, "sparo_cfg": {"share_queries": True, "attn_dim": 16}})
    assert m.image_readout.attn_dim == m.text_readout.attn_dim == 16


@pytest.mark.parametrize(
    "override, match",
    [
        ({"vision_cfg": {"layers": [1, 1, 1, 1], "width": 64}}, "ModifiedResNet"),
        ({"vision_cfg": {"attentional_pool": True}}, "attentional_pool"),
        ({"text_cfg": {"embed_cls": True}}, "embed_cls"),
    ],
)
def test_towers_sparo_cannot_read(override, match):
    with pytest.raises(NotImplementedError, match=match):
        _make(override)


def test_cfg_defaults_and_dims():
    cfg = SparoCfg()
    assert (cfg.num_slots, cfg.slot_dim, cfg.num_heads, cfg.slot_norm, cfg.reduce_depth) == (
        64,
        64,
        64,
        "cont:const",
        1,
    )
    assert cfg.resolve_dims(768, 12, "vision") == (64, 64)
    assert SparoCfg(share_kv=False, value_dim=32).resolve_dims(512, 8, "text") == (64, 32)
    assert SparoCfg.from_dict(cfg.to_dict()) == cfg


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        sparo_clip.create_model("nope", override_config={"embed_dim": 1})
