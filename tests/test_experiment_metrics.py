"""The main job's metrics: read from eval results, recomputed from saved items under weights, compared over seeds."""

import math

import numpy as np
import pytest
import torch

from sparo_clip.eval.gczsl import gczsl_metrics
from sparo_clip.experiment.metrics import PRIMARY, SECONDARY, _gczsl_stats, metric_values, run_intervals
from sparo_clip.experiment.seeds import compare
from sparo_clip.experiment.stats import holm, paired_t_pvalue, t_interval


def _comp_items(seed: int, signal: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(12).repeat_interleave(6)
    logits = signal * torch.nn.functional.one_hot(labels, 12).float() + torch.randn(72, 12, generator=gen)
    unseen = torch.tensor([k % 4 == 1 for k in range(12)])
    ids = torch.arange(12)
    return {"logits": logits, "labels": labels, "unseen": unseen, "attributes": ids // 3, "objects": ids % 3}


def test_weighted_compositional_metrics_equal_gczsl_on_the_resampled_matrix():
    items = _comp_items(0, 1.0)
    stats = _gczsl_stats(items)
    rng = np.random.default_rng(1)
    for _ in range(5):
        idx = rng.integers(0, 72, 72)
        fast = stats(np.bincount(idx, minlength=72).astype(float))
        m = gczsl_metrics(
            items["logits"][idx], items["labels"][idx], items["unseen"], items["attributes"], items["objects"]
        )
        for key in ("auc", "best_hm", "seen", "unseen"):
            assert fast[key] == pytest.approx(m[key], abs=1e-12), key


def _results(binding_seen, auc, value=0.5):
    groups = {g: {"mean": value, "swap_att": value} for g in ("seen", "novel")}
    r1 = {"image_to_text_R@1": value, "text_to_image_R@1": value}
    return {
        "binding": {"groups": {"seen": {"swap_att": binding_seen}, "novel": {"swap_att": value}}},
        "compositional": {"auc": auc, "best_hm": value, "unseen": value, "seen": value},
        "sugarcrepe": {"groups": groups},
        "retrieval": {"groups": {"seen": r1, "novel": r1}},
    }


def test_metric_values_read_every_metric_and_mark_a_missing_group():
    values = metric_values(_results(0.8, 0.3))
    assert values["clean binding, seen pairs"] == 0.8 and values["compositional zero-shot AUC"] == 0.3
    assert set(values) == set(PRIMARY) | set(SECONDARY)
    no_novel = _results(0.8, 0.3)
    del no_novel["binding"]["groups"]["novel"]
    assert math.isnan(metric_values(no_novel)["clean binding, one held-out pair"])


def test_comparison_over_seeds_against_a_hand_computation():
    clip = {0: (0.60, 0.30), 1: (0.55, 0.35), 2: (0.70, 0.20)}
    sparo = {0: (0.66, 0.31), 1: (0.58, 0.33), 2: (0.78, 0.24)}
    per_seed = {
        s: {"CLIP": metric_values(_results(*clip[s], value=0.5 + s / 10)),
            "SPARO": metric_values(_results(*sparo[s], value=0.5 + s / 10 + 0.01 * (s + 1)))}
        for s in clip
    }  # fmt: skip
    rows = compare(per_seed)
    binding = rows["clean binding, seen pairs"]
    d = [0.06, 0.03, 0.08]
    assert binding.diff.mean == pytest.approx(np.mean(d)) and binding.diff.low == pytest.approx(
        t_interval(d).low
    )
    assert binding.p == pytest.approx(paired_t_pvalue(d)) and binding.p_holm is None  # primary: not corrected
    secondary = {label: rows[label].p for label in SECONDARY}
    adjusted = holm(secondary)
    assert all(rows[k].p_holm == pytest.approx(adjusted[k]) for k in SECONDARY if not math.isnan(adjusted[k]))
    assert "SPARO ahead" in binding.reading("CLIP", "SPARO") or "no difference" in binding.reading(
        "CLIP", "SPARO"
    )


def test_run_intervals_resample_classes_and_clusters(tmp_path):
    comp = _comp_items(4, 2.0)
    correct = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0] * 5, dtype=torch.bool)
    n = len(correct)
    matching = {"correct": correct, "task": torch.zeros(n, dtype=torch.long), "tasks": ["swap_att"],
                "group": torch.tensor([0, 1] * (n // 2)), "groups": ["novel", "seen"],
                "cluster": torch.arange(n) // 2}  # fmt: skip
    retrieval = {"i2t_rank": torch.tensor([0, 1, 0, 3]), "t2i_rank": torch.tensor([0, 0, 2, 0]),
                 "text_image": torch.arange(4), "image_group": torch.tensor([0, 1, 0, 1]), "groups": ["novel", "seen"]}  # fmt: skip
    for key, items in (
        ("compositional", comp),
        ("binding", matching),
        ("sugarcrepe", matching),
        ("retrieval", retrieval),
    ):
        torch.save({key: items}, tmp_path / f"{key}_items.pt")
    iv = run_intervals(tmp_path, reps=300)
    m = gczsl_metrics(comp["logits"], comp["labels"], comp["unseen"], comp["attributes"], comp["objects"])
    assert iv["compositional zero-shot AUC"].mean == pytest.approx(m["auc"], abs=1e-12)
    assert iv["compositional zero-shot AUC"].low <= m["auc"] <= iv["compositional zero-shot AUC"].high
    seen = correct[torch.tensor([0, 1] * (n // 2)) == 1].float().mean().item()
    assert iv["clean binding, seen pairs"].mean == pytest.approx(seen)
    # seen images 1 and 3: image-to-text ranks 1 and 3 (both wrong), their captions rank first (both right)
    assert iv["retrieval R@1 (mean of both ways), seen scenes"].mean == pytest.approx((0.0 + 1.0) / 2)
