"""SPARO-DINO model: configs, encoder outputs, parity, the missing-lightly error."""

from __future__ import annotations

import sys

import pytest
import torch

from sparo_clip.dino import DinoEncoder, DinoNet, list_configs, load_config, parity
from sparo_clip.dino.lightly_api import require_lightly


def test_registered_configs():
    names = list_configs()
    for name in ("vit_small_patch16_dino", "vit_small_patch16_sparo_dino", "tiny_dino", "tiny_sparo_dino"):
        assert name in names
    cfg = load_config("vit_small_patch16_sparo_dino")
    assert cfg.readout == "sparo" and cfg.sparo_cfg.num_slots == 64 and cfg.sparo_cfg.reduce_depth == 1
    assert cfg.cls_twin().readout == "cls" and cfg.cls_twin().sparo_cfg is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"readout": "gap"}, "readout='gap'"),
        ({"colour": 1}, "unknown dino config key"),
        ({"head": {"output_dim": 0}}, "head.output_dim=0"),
        ({"sparo_cfg": {"num_slots": 6, "heads": 4}}, "heads=4"),
        ({"readout": "cls", "sparo_cfg": {"num_slots": 4}}, "readout='cls'"),
    ],
)
def test_bad_configs_name_the_field(overrides, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_config(
            "tiny_sparo_dino" if "sparo_cfg" in overrides or "readout" in overrides else "tiny_dino",
            overrides,
        )
    with pytest.raises(ValueError, match="registered"):
        load_config("nope")


def test_encoder_reads_all_tokens_with_the_project_readout():
    enc = DinoEncoder(load_config("tiny_sparo_dino")).eval()
    assert len(enc.backbone.blocks) == 3  # reduce_depth=1 of 4
    for size in (32, 16):  # global and local crops (dynamic image size)
        x = torch.randn(2, 3, size, size)
        tokens = enc.tokens(x)
        assert tokens.shape == (2, 1 + (size // 8) ** 2, 64)
        feats = enc(x)
        torch.testing.assert_close(feats, enc.readout(tokens).flatten(1))
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))
    slots, attn = enc.slots(torch.randn(2, 3, 32, 32), return_attn=True)
    assert slots.shape == (2, 8, 8) and attn.shape == (2, 8, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 8))
    cls = DinoEncoder(load_config("tiny_dino")).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(cls(x), cls.tokens(x)[:, 0])
    assert cls.slots(x).shape == (2, 1, 64)


def test_multicrop_net_matches_per_view_forward():
    net = DinoNet(load_config("tiny_sparo_dino")).eval()
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 32, 32)]
    out = net(views)
    for v, o in zip(views, out, strict=True):
        torch.testing.assert_close(o, net.head(net.encoder(v)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_sparo_dino", "vit_small_patch16_sparo_dino"])
def test_sparo_encoders_are_at_parameter_parity_with_their_cls_twin(name):
    p = parity(load_config(name))
    assert p["at_parity"] and p["encoder"] <= p["cls_encoder"]
    assert p["ratio"] > 0.75  # and not far below: the dropped block pays for the read-out


def test_missing_lightly_is_one_line_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightly.loss", None)
    with pytest.raises(ImportError, match=r"pip install sparo-clip\[dino\]"):
        require_lightly()


def test_dino_subcommand_prints_parity_and_rejects_unknown_configs(capsys):
    import json

    from sparo_clip.commands import cli

    assert cli.main(["dino", "parity", "tiny_sparo_dino"]) == 0
    assert json.loads(capsys.readouterr().out)["at_parity"] is True
    assert cli.main(["dino", "parity", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "registered" in err[0]
