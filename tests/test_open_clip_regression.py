"""OpenCLIP's regression pattern, held by our suite for our models.

OpenCLIP 3.3.0's ``tests/test_inference.py::test_inference_with_data`` checks a model's text and image outputs
against recorded ones, then that its tuple and dict forwards agree, then that a TorchScript wrapper gives outputs
of the right shape. It treats every class other than ``CLIP`` / ``CustomTextCLIP`` as dict-returning, so it
cannot run on SPARO models; this file runs the same checks on them, written for this project: recorded outputs
(``fixtures/regression_outputs.json``), the same outputs after every way a model is saved and loaded
(``pretrained=FILE``, ``local-dir:``, an offline ``hf-hub:`` cache), tuple against dict forward, and the
TorchScript-free paths (a plain and a ``torch.compile``-d wrapper; TorchScript itself is refused with a message).
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

import sparo_clip

from .hub_helpers import go_offline, put_in_hub_cache
from .regression_helpers import MODELS, outputs, seeded_inputs, seeded_model

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "regression_outputs.json").read_text())


class _Wrapper(torch.nn.Module):
    """OpenCLIP's test wraps a model with a 2-way head on its features; ours does the same, unscripted."""

    def __init__(self, model: torch.nn.Module, output_dict: bool) -> None:
        super().__init__()
        self.model, self.output_dict = model, output_dict
        self.head = torch.nn.Linear(model.embed_dim, 2)

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        self.model.output_dict = self.output_dict
        out = self.model(image, text)
        features = out["image_features"] if self.output_dict else out[0]
        return {"test_output": self.head(features)}


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    """(name, seeded model, images, text, its outputs): built once per model; tests restore what they change."""
    name = request.param
    model = seeded_model(name)
    images, text = seeded_inputs(name)
    return name, model, images, text, outputs(model, images, text)


@pytest.mark.golden
def test_outputs_equal_the_recorded_ones(case):
    name, _, _, _, out = case
    torch.testing.assert_close(out["text"], torch.tensor(RECORDED[name]["text"]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["image"], torch.tensor(RECORDED[name]["image"]), atol=1e-5, rtol=1e-4)


def test_tuple_and_dict_forwards_agree_with_the_encoders(case):
    _, model, images, text, out = case
    assert torch.equal(out["image_features"], out["image"]) and torch.equal(out["text_features"], out["text"])
    model.output_dict = True
    try:
        with torch.no_grad():
            as_dict = model(images, text)
    finally:
        model.output_dict = False
    assert isinstance(as_dict, dict) and not isinstance(out["image_features"], dict)
    for key in ("image_features", "text_features", "logit_scale"):
        assert torch.equal(as_dict[key], out[key]), key


def test_every_save_and_load_gives_the_same_outputs(case, tmp_path, monkeypatch):
    name, model, images, text, out = case
    torch.save(model.state_dict(), tmp_path / "model.pt")
    sparo_clip.save_pretrained(model, tmp_path / "folder")
    put_in_hub_cache(tmp_path / "hub", "me/regression", tmp_path / "folder")
    go_offline(monkeypatch, tmp_path / "hub")
    loaded = {
        "pretrained=FILE": open_clip.create_model(name, pretrained=str(tmp_path / "model.pt")),
        "sparo_clip pretrained=FILE": sparo_clip.create_model(name, pretrained=str(tmp_path / "model.pt")),
        "local-dir:": open_clip.create_model(f"local-dir:{tmp_path / 'folder'}"),
        "hf-hub:": open_clip.create_model("hf-hub:me/regression"),
    }
    for how, again in loaded.items():
        again_out = outputs(again.eval(), images, text)
        for key, value in out.items():
            assert torch.equal(again_out[key], value), f"{how}: {key}"


def test_torchscript_free_paths_give_the_same_outputs(case):
    name, model, images, text, _ = case
    with pytest.raises(NotImplementedError, match="TorchScript is not supported"):
        torch.jit.script(_Wrapper(model, output_dict=False))
    results = []
    for output_dict in (True, False):  # the wrapper sets model.output_dict: False (the model's own) last
        torch.manual_seed(0)  # the same head for both
        wrapper = _Wrapper(model, output_dict).eval()
        with torch.no_grad():
            results.append(wrapper(images, text)["test_output"])
            if not output_dict:  # traced by Dynamo, run as traced (no C++ compiler needed)
                torch._dynamo.reset()
                compiled = torch.compile(wrapper, backend=lambda gm, example_inputs: gm.forward)
                results.append(compiled(images, text)["test_output"])
                torch._dynamo.reset()
    assert results[0].shape == (len(images), 2)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-6, rtol=1e-5)
