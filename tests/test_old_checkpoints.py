"""Checkpoints written by earlier releases keep loading: files rebuilt from the layouts 0.1.0 recorded.

``fixtures/checkpoint_layouts.json`` was written by ``fixtures/record_layouts.py`` with 0.1.0's code (every key,
tensor shape and dtype, and the configs as saved). Each test rebuilds such a file with seeded values and loads it
through the public ways a user does, checking that every saved value arrives.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.dino import DinoNet, load_encoder
from sparo_clip.dino.config import DinoCfg

LAYOUTS = json.loads((Path(__file__).parent / "fixtures" / "checkpoint_layouts.json").read_text())


def rebuild(node: dict, gen: torch.Generator):
    """The object a layout describes, tensors filled with seeded values."""
    if "tensor" in node:
        dtype = getattr(torch, node["dtype"])
        if dtype.is_floating_point:
            return torch.randn(node["tensor"], generator=gen).to(dtype)
        return torch.randint(0, 3, node["tensor"], generator=gen).to(dtype)
    if "dict" in node:
        return {k: rebuild(v, gen) for k, v in node["dict"].items()}
    if "list" in node:
        return [rebuild(v, gen) for v in node["list"]]
    return node["value"]


def test_layouts_come_from_an_earlier_release():
    assert LAYOUTS["recorded_with"] == "0.1.0" != sparo_clip.__version__


def test_open_clip_train_checkpoint_of_0_1_loads_through_open_clip(tmp_path):
    ckpt = rebuild(LAYOUTS["open_clip_train epoch checkpoint (test-SPARO)"], torch.Generator().manual_seed(0))
    path = tmp_path / "epoch_1.pt"
    torch.save(ckpt, path)
    model, _, _ = open_clip.create_model_and_transforms("test-SPARO", pretrained=str(path))
    state = model.state_dict()
    assert set(state) == set(ckpt["state_dict"])
    for name, value in ckpt["state_dict"].items():
        assert torch.equal(state[name], value), name
    again = sparo_clip.create_model("test-SPARO", pretrained=str(path))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ckpt["state_dict"].items())


def test_dino_checkpoint_of_0_1_loads_as_encoder_and_network(tmp_path):
    ckpt = rebuild(LAYOUTS["DINO training checkpoint (tiny_sparo_dino)"], torch.Generator().manual_seed(1))
    path = tmp_path / "step.pt"
    torch.save(ckpt, path)
    encoder = load_encoder(path)  # the teacher, as the probes read it
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, ckpt["teacher"][f"encoder.{name}"]), name
    net = DinoNet(DinoCfg.from_dict(ckpt["dino_cfg"]))
    net.load_state_dict(ckpt["student"])  # strict: every name and shape of 0.1.0's network still fits


def test_save_pretrained_folder_of_0_1_loads_by_local_dir(tmp_path):
    config = LAYOUTS["save_pretrained open_clip_config.json (test-SPARO)"]
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(2)
    weights = sparo_clip.create_model("test-SPARO").state_dict()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "open_clip_model.safetensors"))
    model = open_clip.create_model(f"local-dir:{tmp_path}")
    assert isinstance(model, sparo_clip.SparoCLIP)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("kind", [k for k in LAYOUTS if k != "recorded_with"])
def test_every_recorded_kind_is_covered(kind):
    covered = {
        "open_clip_train epoch checkpoint (test-SPARO)",
        "DINO training checkpoint (tiny_sparo_dino)",
        "save_pretrained open_clip_config.json (test-SPARO)",
    }
    assert kind in covered
