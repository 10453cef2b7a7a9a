"""SPARO models keep the contracts OpenCLIP's CLIP keeps: feature dtypes and text-tower locking."""

import logging

import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.models.base import LAYER_NORMS_LOCKED


def _dtypes(model, size, tokenizer, autocast=False, image_dtype=torch.float32):
    images = torch.randn(2, 3, size, size).to(image_dtype)
    text = tokenizer(["a red circle", "two blue squares"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(images, text)
        return out[0].dtype, out[1].dtype, model.encode_image(images).dtype, model.encode_text(text).dtype


@pytest.mark.parametrize(
    "name, size, how",
    [
        *[("test-SPARO", 32, how) for how in ("fp32", ".to(bfloat16)", "pure_bf16", "bf16", "amp_bf16")],
        *[("test-noncausal-SPARO", 160, how) for how in (".to(bfloat16)", "amp_bf16")],
    ],
)
def test_features_follow_the_towers_dtype_as_clips_do(name, size, how, tokenizer):
    def build(model_name):
        if how == ".to(bfloat16)":
            return open_clip.create_model(model_name).to(torch.bfloat16)
        return open_clip.create_model(model_name, precision="fp32" if how == "amp_bf16" else how)

    image_dtype = torch.bfloat16 if how in (".to(bfloat16)", "pure_bf16", "bf16") else torch.float32
    expected = torch.float32 if how == "fp32" else torch.bfloat16
    clip = _dtypes(build("test-CLIP"), 32, tokenizer, how == "amp_bf16", image_dtype)
    sparo = _dtypes(build(name), size, tokenizer, how == "amp_bf16", image_dtype)
    assert clip == sparo == (expected,) * 4


def test_low_precision_features_are_the_fp32_ones_rounded(test_model, tokenizer):
    """Normalisation runs in fp32 inside; only the result is rounded to the tower's dtype."""
    text = tokenizer(["a red circle", "two blue squares"])
    with torch.no_grad():
        full = test_model.encode_text(text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, slots = (
                test_model.encode_text(text),
                test_model.encode_text(text, return_sparo=True, slots=[0, 2]),
            )
    assert low.dtype == slots.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), full, atol=2e-2, rtol=0)
    torch.testing.assert_close(slots.float().flatten(1).norm(dim=-1), torch.ones(2), atol=1e-2, rtol=0)


def test_lock_text_tower_without_freezing_layer_norms_says_why_in_one_line(test_model, caplog):
    clip = open_clip.create_model("test-CLIP")
    with pytest.raises(AssertionError, match="Unfreezing LayerNorm is not supported"):
        clip.lock_text_tower(0, freeze_layer_norm=False)  # OpenCLIP's CLIP refuses
    with caplog.at_level(logging.WARNING, logger="sparo_clip"):
        test_model.lock_text_tower(0, freeze_layer_norm=False)
    (record,) = [r for r in caplog.records if r.name.startswith("sparo_clip")]
    assert record.getMessage() == LAYER_NORMS_LOCKED and "\n" not in LAYER_NORMS_LOCKED
    assert not any(p.requires_grad for p in test_model.text.parameters())  # LayerNorms locked with the rest
    assert not test_model.text.ln_final.weight.requires_grad
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparo_clip"):
        sparo_clip.create_model("test-SPARO").lock_text_tower(0)  # the default: nothing to say
    assert not caplog.records
