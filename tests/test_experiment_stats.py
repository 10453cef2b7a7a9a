"""The main job's statistics against hand computations: t intervals, Holm, cluster bootstrap, the plateau rule."""

import math

import numpy as np
import pytest

from sparo_clip.experiment.stats import cluster_bootstrap, holm, paired_t_pvalue, plateau, t_interval


def test_t_interval_matches_a_hand_computation():
    # mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.182446305
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * math.sqrt(5 / 3) / 2
    assert iv.mean == 2.5 and iv.n == 4
    assert iv.low == pytest.approx(2.5 - half, abs=1e-6) and iv.high == pytest.approx(2.5 + half, abs=1e-6)
    assert iv.excludes_zero() and not t_interval([-1.0, 0.5, 1.0]).excludes_zero()
    assert math.isnan(t_interval([1.0]).low)


def test_paired_differences_over_seeds():
    """Per seed B - A on the same world: the paired interval is the t interval of the differences."""
    a, b = [0.60, 0.55, 0.70], [0.66, 0.58, 0.78]
    d = [y - x for x, y in zip(a, b, strict=True)]  # 0.06, 0.03, 0.08: mean 0.0567, sd 0.02517
    iv = t_interval(d)
    assert iv.mean == pytest.approx(0.056667, abs=1e-6)
    assert iv.half == pytest.approx(4.302652730 * 0.025166115 / math.sqrt(3), abs=1e-6)
    # t = mean / (sd / sqrt(3)) = 3.9000 on 2 degrees of freedom -> two-sided p = 0.0599
    assert paired_t_pvalue(d) == pytest.approx(0.05989, abs=1e-4)


def test_holm_steps_down_and_keeps_order():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert adjusted["a"] == pytest.approx(0.03)  # 3 x 0.01
    assert adjusted["c"] == pytest.approx(0.06)  # 2 x 0.03
    assert adjusted["b"] == pytest.approx(0.06)  # max(0.06, 1 x 0.04): never below an earlier step
    assert math.isnan(adjusted["d"])


def _accuracy(correct):
    return lambda w: float((w * correct).sum() / w.sum())


def test_resampling_by_class_is_wider_than_by_image_when_errors_clump():
    """5 held-out classes x 20 images, each class all right or all wrong: the spread is the classes'."""
    correct = np.repeat([1.0, 1.0, 0.0, 0.0, 1.0], 20)
    by_class = cluster_bootstrap(_accuracy(correct), np.repeat(np.arange(5), 20), reps=2000)
    by_image = cluster_bootstrap(_accuracy(correct), np.arange(100), reps=2000)
    assert by_class.mean == by_image.mean == 0.6
    assert by_class.high - by_class.low > 2.5 * (by_image.high - by_image.low)
    assert by_class.low <= 0.2 and by_class.high >= 1.0  # 1 or 5 of 5 classes right are plausible draws


def test_cluster_bootstrap_keeps_clusters_whole_and_strata_sized():
    clusters = ["a", "a", "b", "c", "c", "c"]
    strata = ["seen", "seen", "seen", "unseen", "unseen", "unseen"]
    seen_draws = []

    def statistic(w):
        assert w[0] == w[1] and w[3] == w[4] == w[5]  # a cluster is drawn whole
        assert w[3] == 1  # the one unseen cluster is drawn once per replicate: strata keep their counts
        seen_draws.append(w[0] + w[2])  # draws of cluster a, of cluster b
        return float(w.sum())

    cluster_bootstrap(statistic, clusters, strata, reps=200)
    assert set(seen_draws[1:]) == {2.0}  # two seen clusters drawn per replicate
    with pytest.raises(ValueError, match="two strata"):
        cluster_bootstrap(statistic, ["a", "a"], ["seen", "unseen"])


def test_plateau_rule_on_synthetic_curves():
    steps = np.arange(1, 13)
    rising = 0.05 * steps
    assert not plateau(rising).flat
    saturating = 0.8 * (1 - np.exp(-steps / 1.5))  # flat within 0.02 over the last third
    verdict = plateau(saturating)
    assert verdict.flat and 0 <= verdict.gain < 0.02 and "flat" in verdict.describe()
    overfitting = np.concatenate([np.linspace(0.2, 0.7, 6), np.linspace(0.69, 0.6, 6)])
    assert plateau(overfitting).flat and plateau(overfitting).gain < 0
    assert not plateau([0.1, 0.2, 0.3, 0.30, 0.31, 0.36]).flat  # the last third still gains 0.05
    with pytest.raises(ValueError, match="at least 3"):
        plateau([0.1, 0.2])
    # a curve that still gains 0.025 over its last third, but ends within 0.009 of the most it can reach
    late = [0.40, 0.50, 0.545, 0.540, 0.558, 0.570, 0.563]
    assert not plateau(late).flat and not plateau(late, ceiling=0.60).flat
    verdict = plateau(late, ceiling=0.579)
    assert verdict.flat and verdict.at_ceiling and verdict.headroom == pytest.approx(0.009)
    assert (
        verdict.gain == pytest.approx(0.025) and "within 0.009 of the content ceiling" in verdict.describe()
    )
    assert plateau(saturating, ceiling=0.9).flat and not plateau(saturating, ceiling=0.9).at_ceiling
    assert not plateau(late, ceiling=float("nan")).flat  # an unknown ceiling is no ceiling


def test_validation_ceiling_counts_ties_between_captions_of_the_same_objects(tmp_path):
    from sparo_clip.experiment.runs import validation_ceiling

    captions = [
        "a red circle",
        "there is a red circle",  # the same object as the first: a tie of 2
        "a blue square and a red circle",
        "an image with a red circle and a blue square",  # the same two objects, other order: a tie of 2
        "a green star",  # alone: always found
    ]
    csv = tmp_path / "val.csv"
    csv.write_text("filepath\ttitle\n" + "".join(f"images/{i}.png\t{c}\n" for i, c in enumerate(captions)))
    world = {"colors": ["red", "green", "blue"], "shapes": ["circle", "square", "star"]}
    data = {"settings": {"world": world}, "val": {"csv": str(csv)}}
    assert validation_ceiling(data) == pytest.approx((4 * 0.5 + 1) / 5)
    # a brute force: a model that scores only the objects, ties broken at random, R@1 averaged over draws
    import random

    rng = random.Random(0)
    objects = [frozenset({("red", "circle")})] * 2 + [frozenset({("red", "circle"), ("blue", "square")})] * 2
    objects += [frozenset({("green", "star")})]
    hits = 0
    for _ in range(4000):
        for i, obj in enumerate(objects):
            tied = [j for j, other in enumerate(objects) if other == obj]
            hits += rng.choice(tied) == i
    assert hits / (4000 * len(objects)) == pytest.approx(validation_ceiling(data), abs=0.01)
