import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

import sparo_clip
from sparo_clip import SparoCLIP

from .reference import readout_reference


def test_factory_builds_sparo_and_leaves_baselines_alone():
    m = open_clip.create_model("test-SPARO")
    assert isinstance(m, SparoCLIP)
    base = open_clip.create_model("test-CLIP")
    assert type(base) is open_clip.CLIP
    assert m.visual.proj is None and m.text.text_projection is None
    assert len(m.visual.transformer.resblocks) == 1 and len(m.text.transformer.resblocks) == 1


def test_forward_contract_tuple_and_dict(test_model, batch):
    images, text = batch
    img, txt, scale = test_model(images, text)
    assert img.shape == txt.shape == (3, 64)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(scale, test_model.logit_scale.exp())
    m = open_clip.create_model("test-SPARO", output_dict=True)
    out = m(images, text)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert m(image=images)["text_features"] is None


def test_encode_matches_float64_reference_end_to_end(test_model, batch):
    images, text = batch
    m = test_model.double()
    with torch.no_grad():
        tokens = m.visual(images.double())
        ref, ref_attn = readout_reference(m.image_readout, tokens)
        feats, attn = m.encode_image(images.double(), return_attn=True)
    np.testing.assert_allclose(feats.numpy(), ref.reshape(3, -1), atol=1e-6)
    np.testing.assert_allclose(attn.numpy(), ref_attn, atol=1e-6)


def test_text_masking_and_eot(test_model, batch, tokenizer):
    _, text = batch
    feats, attn = test_model.encode_text(text, return_attn=True)
    assert attn.shape == (3, 4, 16)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4))
    eot = text.argmax(-1)
    for b in range(3):
        assert torch.all(attn[b, :, eot[b] + 1 :] == 0)
        assert torch.all(attn[b, :, eot[b]] > 0)  # end-of-text itself stays visible
    # tokens after end-of-text do not change the features
    garbage = text.clone()
    for b in range(3):
        garbage[b, eot[b] + 1 :] = torch.randint(1, 400, (16 - eot[b] - 1,))
    torch.testing.assert_close(test_model.encode_text(garbage), feats)


def test_trimmed_text_tower_equals_full_computation(batch):
    _, text = batch
    trimmed = sparo_clip.create_model("test-SPARO")
    full = sparo_clip.create_model("test-SPARO", override_config={"sparo_cfg": {"trim_text": False}})
    full.load_state_dict(trimmed.state_dict())
    a, attn_a = trimmed.encode_text(text, return_attn=True)
    b, attn_b = full.encode_text(text, return_attn=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attn_a, attn_b, atol=1e-6, rtol=1e-5)


def test_return_sparo_and_normalize(test_model, batch):
    images, text = batch
    slots = test_model.encode_image(images, return_sparo=True)
    assert slots.shape == (3, 4, 16)
    torch.testing.assert_close(slots.flatten(1), test_model.encode_image(images, normalize=True))
    s, attn = test_model.encode_text(text, return_sparo=True, return_attn=True)
    assert s.shape == (3, 4, 16) and attn.shape == (3, 4, 16)
    # the image-text cosine is the mean of per-slot cosines under cont:const
    img = test_model.encode_image(images, return_sparo=True)
    per_slot = F.cosine_similarity(img[:, None], s[None], dim=-1).mean(-1)
    torch.testing.assert_close(test_model.encode_image(images) @ test_model.encode_text(text).T, per_slot)


def test_slot_selection_in_encoders(test_model, batch):
    images, text = batch
    full = test_model.encode_image(images, return_sparo=True)
    sel = test_model.encode_image(images, slots=[1, 3])
    mask = test_model.encode_image(images, slots=torch.tensor([False, True, False, True]))
    torch.testing.assert_close(sel, mask)
    torch.testing.assert_close(sel.norm(dim=-1), torch.ones(3))
    expected = full.clone()
    expected[:, [0, 2]] = 0
    torch.testing.assert_close(sel, F.normalize(expected.flatten(1), dim=-1))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        test_model.encode_text(text, slots=[7])


def test_every_parameter_gets_a_gradient(batch):
    images, text = batch
    for override in (
        {},
        {"sparo_cfg": {"share_kv": False, "share_queries": True, "slot_norm": "sem:softmax"}},
    ):
        m = sparo_clip.create_model("test-SPARO", override_config=override)
        img, txt, scale = m(images, text)
        ClipLoss()(img, txt, scale).backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
        assert not missing, missing


def test_grad_checkpointing_same_output_and_grads(test_model, batch):
    images, text = batch
    test_model.train()
    out = test_model(images, text)
    ClipLoss()(*out).backward()
    grads = {n: p.grad.clone() for n, p in test_model.named_parameters()}
    test_model.zero_grad()
    test_model.set_grad_checkpointing(True)
    out2 = test_model(images, text)
    ClipLoss()(*out2).backward()
    for a, b in zip(out, out2, strict=True):
        torch.testing.assert_close(a, b)
    for n, p in test_model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_siglip_logit_bias_and_loss(batch):
    images, text = batch
    m = sparo_clip.create_model("test-SPARO", override_config={"init_logit_bias": -10.0}, output_dict=True)
    out = m(images, text)
    assert out["logit_bias"].item() == -10.0
    loss = SigLipLoss()(**out)
    assert torch.isfinite(loss)
    loss.backward()
    assert m.logit_bias.grad is not None
    img, txt, scale, bias = sparo_clip.create_model("test-SPARO", override_config={"init_logit_bias": -10.0})(
        images, text
    )
    assert bias.item() == -10.0


def test_lock_towers(test_model):
    test_model.lock_image_tower()
    assert not any(p.requires_grad for p in test_model.visual.parameters())
    assert not any(p.requires_grad for p in test_model.image_readout.parameters())
    assert all(p.requires_grad for p in test_model.text_readout.parameters())
    m = open_clip.create_model("test-SPARO")
    m.lock_image_tower(unlocked_groups=2)  # last block + ln_post, and the read-out
    assert all(p.requires_grad for p in m.image_readout.parameters())
    assert all(p.requires_grad for p in m.visual.ln_post.parameters())
    assert not m.visual.conv1.weight.requires_grad
    assert m.visual.proj is None
    m.lock_text_tower()
    assert not any(p.requires_grad for p in m.text.parameters())
    assert not any(p.requires_grad for p in m.text_readout.parameters())


def test_no_weight_decay_names_exist(test_model):
    names = dict(test_model.named_parameters())
    nwd = test_model.no_weight_decay()
    assert {"image_readout.query", "text_readout.query", "visual.positional_embedding"} <= nwd
    assert all(n in names for n in nwd)


def test_forward_intermediates_matches_encoders(test_model, batch):
    images, text = batch
    out = test_model.forward_intermediates(images, text, output_logits=True)
    torch.testing.assert_close(out["image_features"], test_model.encode_image(images))
    torch.testing.assert_close(out["text_features"], test_model.encode_text(text))
    torch.testing.assert_close(out["image_logits"], test_model.get_logits(images, text)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_finite_for_empty_long_and_single_captions(test_model, tokenizer, dtype):
    long_caption = " ".join(["red circle"] * 40)  # truncated at the context length, no room left
    text = tokenizer(["", long_caption])
    assert text[1, -1] == text[1].max()  # truncation keeps end-of-text in the last position
    images = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=dtype):
        for b in (slice(0, 2), slice(0, 1), slice(1, 2)):
            img, txt, _ = test_model(images[b], text[b])
            assert torch.isfinite(img).all() and torch.isfinite(txt).all()
            _, attn = test_model.encode_text(text[b], return_attn=True)
            assert torch.isfinite(attn).all()
    zeros = torch.zeros(1, 16, dtype=torch.long)  # even an all-padding row keeps position 0 visible
    assert torch.isfinite(test_model.encode_text(zeros)).all()


def test_pure_low_precision_model_runs(batch):
    images, text = batch
    m = open_clip.create_model("test-SPARO", precision="bf16")
    img, txt, _ = m(images.bfloat16(), text)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
