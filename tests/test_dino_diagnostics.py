"""DINO's collapse diagnostics on hand-built teacher outputs, the one-time warning, and per-parameter clipping."""

import math

import pytest
import torch

from sparo_clip.dino.diagnostics import (
    CollapseMonitor,
    TargetStats,
    clip_per_parameter,
    entropy,
    target_stats,
)

K = 16


def _stats(teacher, student=None, tt=0.04, st=0.1):
    student = teacher if student is None else student
    return target_stats(teacher, student, torch.zeros(1, K), tt, st)


def test_uniform_targets_have_both_entropies_at_log_k():
    s = _stats(torch.zeros(8, K))
    assert s.h_target == pytest.approx(math.log(K)) and s.h_mean == pytest.approx(math.log(K))
    assert s.information == pytest.approx(0.0, abs=1e-12)


def test_one_hot_targets_of_one_prototype_have_both_entropies_near_zero():
    logits = torch.zeros(8, K)
    logits[:, 3] = 10.0  # every image picks prototype 3, sharply
    s = _stats(logits)
    assert s.h_target < 1e-6 and s.h_mean < 1e-6


def test_informative_targets_spread_the_batch_and_stay_sharp_per_image():
    logits = torch.zeros(K, K)
    logits[torch.arange(K), torch.arange(K)] = 10.0  # image i picks prototype i
    s = _stats(logits)
    assert s.h_target < 1e-6 and s.h_mean == pytest.approx(math.log(K))
    assert s.information == pytest.approx(math.log(K))


def test_target_entropy_matches_a_float64_hand_computation():
    gen = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(5, K, generator=gen), torch.randn(5, K, generator=gen)
    center = torch.randn(1, K, generator=gen)
    s = target_stats(teacher, student, center, 0.07, 0.1)
    t = torch.softmax((teacher.double() - center.double()) / 0.07, -1)
    q = torch.softmax(student.double() / 0.1, -1)
    h = [-(row * row.log()).sum() for row in t]
    assert s.h_target == pytest.approx(float(sum(h) / 5))
    m = t.mean(0)
    assert s.h_mean == pytest.approx(float(-(m * m.log()).sum()))
    assert s.kl == pytest.approx(
        float(sum((a * (a.log() - b.log())).sum() for a, b in zip(t, q, strict=True)) / 5)
    )
    assert float(entropy(torch.tensor([[1.0, 0.0]]))[0]) == 0.0


def test_collapse_warning_fires_once_on_a_collapsed_run_and_never_on_a_healthy_one():
    log_k = math.log(K)
    uniform = TargetStats(log_k - 0.01, log_k, 0.0, log_k)
    healthy = TargetStats(0.5 * log_k, 0.97 * log_k, 0.3, log_k)
    one_hot = TargetStats(0.01, 0.02, 0.0, log_k)
    monitor = CollapseMonitor(patience=5)
    messages = [monitor.observe(step, uniform) for step in range(12)]
    fired = [m for m in messages if m]
    assert len(fired) == 1 and "collapse (uniform)" in fired[0] and "at step 4" in fired[0]
    assert f"H(t|x) = {uniform.h_target:.3f}" in fired[0] and f"H(mean t) = {uniform.h_mean:.3f}" in fired[0]
    assert [m for m in (monitor.observe(s, one_hot) for s in range(12, 20)) if m][0].startswith(
        "DINO collapse (one-prototype)"
    )
    calm = CollapseMonitor(patience=5)
    assert not any(calm.observe(step, healthy) for step in range(100))
    # a brief dip into a collapse mode, shorter than the patience, does not warn
    flaky = CollapseMonitor(patience=5)
    seq = [uniform] * 4 + [healthy] + [uniform] * 4
    assert not any(flaky.observe(step, s) for step, s in enumerate(seq))


def test_per_parameter_clipping_matches_a_hand_computation():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(3))
    c = torch.nn.Parameter(torch.zeros(1))  # no gradient: skipped
    a.grad = torch.tensor([3.0, 4.0])  # norm 5: scaled to norm 2
    b.grad = torch.tensor([0.5, 0.5, 0.5])  # norm 0.866: untouched
    norms = clip_per_parameter([a, b, c], max_norm=2.0)
    assert norms == pytest.approx([5.0, math.sqrt(0.75)])
    assert torch.allclose(a.grad, torch.tensor([3.0, 4.0]) * 2.0 / (5.0 + 1e-6))
    assert torch.equal(b.grad, torch.tensor([0.5, 0.5, 0.5])) and c.grad is None
    # a global clip would have shrunk b too (global norm sqrt(25 + 0.75) > 2)
