"""Generalised compositional zero-shot metrics on hand-built score matrices, against a float64 brute force."""

import itertools

import numpy as np
import pytest
import torch

from sparo_clip.eval.gczsl import gczsl_metrics, operating_points

COLOURS, SHAPES = 4, 3
COMPS = list(itertools.product(range(COLOURS), range(SHAPES)))  # class k = (colour, shape)
ATTR = torch.tensor([c for c, _ in COMPS])
OBJ = torch.tensor([s for _, s in COMPS])
UNSEEN = torch.tensor([(c + s) % 3 == 0 and c > 0 for c, s in COMPS])  # 3 held-out pairs, every colour kept


def _labels(per_class: int = 5) -> torch.Tensor:
    return torch.arange(len(COMPS)).repeat_interleave(per_class)


def _brute_force(logits: np.ndarray, labels: np.ndarray, unseen: np.ndarray) -> tuple[float, float]:
    """AUC and best HM from the equations: add each bias to the unseen columns, take the argmax, count."""
    logits = logits.astype(np.float64)
    is_unseen = unseen[labels]
    margins = np.sort(logits[:, ~unseen].max(1) - logits[:, unseen].max(1))
    between = (margins[1:] + margins[:-1]) / 2
    biases = np.concatenate([[margins[0] - 1.0], between, [margins[-1] + 1.0]])
    pts = []  # in bias order: the path the calibration bias traces
    for b in biases:
        pred = (logits + b * unseen[None, :]).argmax(1)
        right = pred == labels
        pts.append((right[is_unseen].mean(), right[~is_unseen].mean()))
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    auc = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    hm = max(2 * x * y / (x + y) if x + y > 0 else 0.0 for x, y in pts)
    return auc, hm


def test_perfect_classifier_has_auc_and_hm_one():
    labels = _labels()
    logits = torch.nn.functional.one_hot(labels, len(COMPS)).float() + 0.01 * torch.rand(
        len(labels), len(COMPS)
    )
    m = gczsl_metrics(logits, labels, UNSEEN, ATTR, OBJ)
    assert m["auc"] == pytest.approx(1.0)
    assert m["best_hm"] == m["hm"] == m["seen"] == m["unseen"] == pytest.approx(1.0)
    assert m["unseen_attribute"] == m["unseen_object"] == 1.0


def test_colour_only_classifier_knows_attributes_but_not_held_out_compositions():
    """Scores depend on the colour only, plus the training prior that favours seen pairs."""
    labels = _labels()
    colour_match = (ATTR[None, :] == ATTR[labels][:, None]).float()
    logits = colour_match + 0.1 * (~UNSEEN).float()[None, :] + 0.01 * torch.rand(len(labels), len(COMPS))
    m = gczsl_metrics(logits, labels, UNSEEN, ATTR, OBJ)
    assert m["unseen_attribute"] == 1.0
    assert m["unseen"] == 0.0 and m["hm"] == 0.0
    assert m["unseen_object"] < 0.5
    assert m["auc"] < 0.25  # far from a composition-aware classifier's 1
    assert m["seen"] < 0.6  # among the right colour's seen pairs it guesses


def test_auc_and_best_hm_match_a_float64_brute_force():
    gen = torch.Generator().manual_seed(0)
    labels = _labels(7)
    for trial in range(5):
        signal = torch.nn.functional.one_hot(labels, len(COMPS)).float() * (0.5 + trial * 0.3)
        logits = signal + torch.randn(len(labels), len(COMPS), generator=gen)
        m = gczsl_metrics(logits, labels, UNSEEN, ATTR, OBJ)
        auc, hm = _brute_force(logits.numpy(), labels.numpy(), UNSEEN.numpy())
        assert m["auc"] == pytest.approx(auc, abs=1e-12)
        assert m["best_hm"] == pytest.approx(hm, abs=1e-12)
        assert 0.0 < m["auc"] < 1.0


def test_the_curve_passes_every_decision_change_and_bias_zero():
    gen = torch.Generator().manual_seed(1)
    labels = _labels(4)
    logits = torch.randn(len(labels), len(COMPS), generator=gen)
    pts = operating_points(logits, labels, UNSEEN)
    assert torch.all(pts["seen"][1:] <= pts["seen"][:-1]) and torch.all(
        pts["unseen"][1:] >= pts["unseen"][:-1]
    )
    m = gczsl_metrics(logits, labels, UNSEEN, ATTR, OBJ, with_curve=True)
    assert m["best_seen"] == pts["seen"][0] and m["best_unseen"] == pts["unseen"][-1]
    # the bias-0 operating point lies on the curve
    on_curve = [(s, u) for s, u in zip(m["curve"]["seen"], m["curve"]["unseen"], strict=True)]
    assert any(s == pytest.approx(m["seen"]) and u == pytest.approx(m["unseen"]) for s, u in on_curve)
    assert m["curve"]["bias"][0] is None and m["curve"]["bias"][-1] is None  # -inf, +inf


def test_bad_inputs_are_refused():
    labels = _labels()
    logits = torch.zeros(len(labels), len(COMPS))
    with pytest.raises(ValueError, match="both seen and unseen"):
        gczsl_metrics(logits, labels, torch.zeros(len(COMPS), dtype=torch.bool), ATTR, OBJ)
    seen_only = labels[~UNSEEN[labels]]
    with pytest.raises(ValueError, match="seen-pair and unseen-pair images"):
        gczsl_metrics(logits[: len(seen_only)], seen_only, UNSEEN, ATTR, OBJ)
