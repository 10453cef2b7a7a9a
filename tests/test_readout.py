import itertools

import numpy as np
import pytest
import torch

from sparo_clip.models.config import SLOT_REPS, SLOT_WEIGHTS
from sparo_clip.models.readout import SparoReadout, normalize_slots, select_slots

from .reference import readout_reference

SLOT_NORMS = [f"{r}:{w}" for r, w in itertools.product(SLOT_REPS, SLOT_WEIGHTS)]


def _readout(**kw):
    cfg = dict(in_dim=24, num_slots=6, slot_dim=5, attn_dim=8)
    cfg.update(kw)
    m = SparoReadout(**cfg)
    with torch.no_grad():  # non-zero biases so the reference checks them
        for p in m.parameters():
            if p.ndim == 1:
                p.normal_()
    return m


@pytest.mark.parametrize("slot_norm", SLOT_NORMS)
def test_matches_float64_reference_every_slot_norm(slot_norm):
    m = _readout(slot_norm=slot_norm)
    x = torch.randn(3, 7, 24)
    ref, ref_attn = readout_reference(m, x)
    for return_attn in (False, True):
        out = m(x, return_attn=return_attn)
        slots = out[0] if return_attn else out
        np.testing.assert_allclose(slots.detach().double().numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(out[1].detach().double().numpy(), ref_attn, atol=2e-6)
    # the flattened vector has unit norm for every variant
    np.testing.assert_allclose(np.linalg.norm(ref.reshape(3, -1), axis=1), 1.0, atol=1e-10)


@pytest.mark.parametrize(
    "kw",
    [
        dict(heads=2),  # three slots share each key projection
        dict(heads=3, share_kv=False, value_dim=4),
        dict(heads=1, share_kv=False, value_dim=12, slot_norm="sqrtsem:softmax"),
    ],
)
def test_grouped_heads_and_separate_values_match_reference(kw):
    m = _readout(**kw)
    x = torch.randn(2, 5, 24)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    ref, ref_attn = readout_reference(m, x, mask)
    slots, attn = m(x, key_mask=mask, return_attn=True)
    np.testing.assert_allclose(slots.detach().double().numpy(), ref, atol=2e-5)
    np.testing.assert_allclose(attn.detach().double().numpy(), ref_attn, atol=2e-6)
    fused = m(x, key_mask=mask)
    np.testing.assert_allclose(fused.detach().double().numpy(), ref, atol=2e-5)


def test_key_mask_zero_weight_and_no_influence():
    m = _readout()
    x = torch.randn(2, 6, 24)
    mask = torch.tensor([[True, True, True, False, False, False], [True] * 6])
    slots, attn = m(x, key_mask=mask, return_attn=True)
    assert torch.all(attn[0, :, 3:] == 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 6))
    x2 = x.clone()
    x2[0, 3:] = 100 * torch.randn(3, 24)  # change masked tokens only
    torch.testing.assert_close(m(x2, key_mask=mask)[0], slots[0])
    torch.testing.assert_close(m(x2, key_mask=mask)[0], m(x, key_mask=mask)[0])


def test_softmax_weights_spend_one_output_unit_per_slot():
    assert _readout(slot_norm="cont:softmax").out.out_features == 6
    assert _readout(slot_norm="cont:sqrtsoftmax").out.out_features == 6
    assert _readout(slot_norm="cont:norm").out.out_features == 5


def test_norm_weights_stay_finite_for_large_logits():
    raw = torch.tensor([[[300.0, -200.0, 50.0], [1.0, 2.0, 3.0]]])
    for slot_norm in SLOT_NORMS:
        out = normalize_slots(raw, slot_norm)
        assert torch.isfinite(out).all(), slot_norm
        torch.testing.assert_close(out.flatten(1).norm(dim=-1), torch.ones(1))


def test_init_follows_reference():
    m = SparoReadout(64, num_slots=16, slot_dim=8, attn_dim=32, share_kv=False)
    assert torch.all(m.key.bias == 0) and torch.all(m.value.bias == 0) and torch.all(m.out.bias == 0)
    bound = (6 / (64 + 16 * 32)) ** 0.5  # xavier-uniform
    assert m.key.weight.abs().max() <= bound and m.key.weight.abs().max() > 0.9 * bound
    assert abs(m.query.std().item() - 1.0) < 0.15  # standard normal queries
    assert m.query.shape == (16, 1, 32)


def test_select_slots_indices_and_mask_agree_and_renormalise():
    slots = normalize_slots(torch.randn(4, 6, 5))
    a = select_slots(slots, [0, 2])
    b = select_slots(slots, torch.tensor([True, False, True, False, False, False]))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.flatten(1).norm(dim=-1), torch.ones(4))
    assert torch.all(a[:, [1, 3, 4, 5]] == 0)
    # kept slots keep their direction
    torch.testing.assert_close(F_normalize(a[:, 0]), F_normalize(slots[:, 0]))


def F_normalize(x):
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.mark.parametrize(
    "sel, msg",
    [([], "empty"), ([6], r"\[0, 5\]"), ([-1], r"\[0, 5\]"), (torch.zeros(6, dtype=torch.bool), "empty")],
)
def test_select_slots_errors(sel, msg):
    with pytest.raises(ValueError, match=msg):
        select_slots(torch.randn(1, 6, 5), sel)


def test_bad_readout_args():
    with pytest.raises(ValueError, match="divide"):
        SparoReadout(8, num_slots=6, slot_dim=2, attn_dim=4, heads=4)
    with pytest.raises(ValueError, match="share_kv"):
        SparoReadout(8, num_slots=6, slot_dim=2, attn_dim=4, value_dim=3)
    with pytest.raises(ValueError, match="slot_norm"):
        SparoReadout(8, num_slots=6, slot_dim=2, attn_dim=4, slot_norm="cont:max")
