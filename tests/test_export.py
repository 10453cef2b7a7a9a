"""TorchScript is refused with a clear message; torch.export and torch.compile of the encoders work."""

import shutil

import open_clip
import pytest
import torch
from torch import nn

import sparo_clip
from sparo_clip.training.entry import main as train_main

from .hf_helpers import save_tiny_bert
from .train_helpers import base_args, make_shards

FAMILIES = [("test-SPARO", 32), ("test-noncausal-SPARO", 160), ("test-convnext-SPARO", 160)]


class _Encoder(nn.Module):
    def __init__(self, model, which):
        super().__init__()
        self.model, self.which = model, which

    def forward(self, x):
        return self.model.encode_image(x) if self.which == "image" else self.model.encode_text(x)


def test_torchscript_is_refused_with_the_alternatives():
    with pytest.raises(NotImplementedError, match=r"TorchScript is not supported.*torch.compile"):
        sparo_clip.create_model("test-SPARO", jit=True)
    with pytest.raises(NotImplementedError, match=r"TorchScript is not supported"):
        sparo_clip.create_model_and_transforms(
            "test-CLIP", jit=True, override_config={"sparo_cfg": {}, "embed_dim": 4096}
        )
    with pytest.raises(NotImplementedError, match=r"use torch.compile\(model\)"):
        torch.jit.script(open_clip.create_model("test-SPARO"))
    assert isinstance(sparo_clip.create_model("test-CLIP", jit=True), torch.jit.ScriptModule)  # others script


def test_torchscript_flag_fails_before_training(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "ts", num_samples=8, torchscript=True)
    assert train_main(args) == 2
    assert "--torchscript: test-SPARO: TorchScript is not supported" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "ts").exists()


@pytest.mark.parametrize("name, size", [*FAMILIES, ("hf", 32)])
def test_exported_encoders_match_eager(name, size, tokenizer, tmp_path):
    """While torch.export traces, the text tower runs over the whole context (static shapes), trim_text or not:
    the exported encoder gives the eager (trimmed) result for captions of any length."""
    override = {}
    if name == "hf":  # a tiny BERT text tower, built offline from a local config
        save_tiny_bert(tmp_path)
        name, override["text_cfg"] = (
            "test-SPARO",
            {"hf_model_name": str(tmp_path), "hf_model_pretrained": False},
        )
    model = sparo_clip.create_model(name, override_config=override).eval()
    image, text = torch.randn(2, 3, size, size), tokenizer(["a red circle", "two blue squares left"])
    longer = tokenizer(["a small green triangle to the left of two red circles", ""])
    for which, x in (("image", image), ("text", text)):
        program = torch.export.export(_Encoder(model, which), (x,))
        for y in (x, longer) if which == "text" else (x,):
            with torch.no_grad():
                torch.testing.assert_close(
                    program.module()(y), _Encoder(model, which)(y), atol=1e-6, rtol=1e-5
                )


@pytest.mark.slow  # about 50 s on two CPU cores
@pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++") or shutil.which("gcc")),
    reason="torch.compile on CPU needs a C++ compiler",
)
def test_compiled_non_causal_text_encoder_matches_eager(tokenizer):
    torch._dynamo.reset()
    try:
        model = sparo_clip.create_model("test-noncausal-SPARO").eval()
        text = tokenizer(["a red circle", "two blue squares left of a green one"])
        with torch.no_grad():
            compiled = torch.compile(model.encode_text)(text)
            torch.testing.assert_close(compiled, model.encode_text(text), atol=1e-5, rtol=1e-5)
    finally:
        torch._dynamo.reset()
