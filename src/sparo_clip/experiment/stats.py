"""The statistics the main job and the study report with: intervals over seeds, resampling by cluster, multiple
comparisons and the plateau rule. Plain numpy/scipy on small arrays; every function is checked against a hand
computation in tests/test_experiment_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval (``low``, ``high``) at ``level``, from ``n`` values."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (n - 1 degrees of freedom).

    With paired values (per seed, model B minus model A on the same world) this is the paired t interval.
    Fewer than two values give an interval of NaN (no spread can be estimated).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n, level)


def paired_t_pvalue(differences: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (NaN below two values)."""
    from scipy import stats

    d = np.asarray(differences, dtype=np.float64)
    if d.size < 2:
        return math.nan
    if np.allclose(d, d[0]):  # no spread: the test is undefined unless every difference is 0
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: family-wise error control over the given tests (NaN stays NaN)."""
    finite = sorted((p, k) for k, p in pvalues.items() if not math.isnan(p))
    m, out, running = len(finite), {k: math.nan for k in pvalues}, 0.0
    for rank, (p, key) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[key] = running
    return out


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], float],
    clusters: Sequence[object],
    strata: Sequence[object] | None = None,
    reps: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Percentile interval of ``statistic`` when whole clusters (e.g. classes) are resampled.

    Items that share a cluster (the images of one class, the items showing one held-out pair) fail or succeed
    together; resampling them one by one would make the interval too narrow. Each replicate draws clusters
    with replacement, within each stratum separately when ``strata`` are given (e.g. seen and unseen classes,
    so that both keep their counts), and passes ``statistic`` the item weights: how often each item was drawn.

    Args:
        statistic: item weights (N,) -> the value (weights of 1 give the estimate itself).
        clusters: the cluster of each item (N,).
        strata: the stratum of each item (N,); a cluster must lie in one stratum.
    """
    keys = list(clusters)
    strata_of = list(strata) if strata is not None else [0] * len(keys)
    if len(strata_of) != len(keys):
        raise ValueError(f"{len(keys)} clusters but {len(strata_of)} strata")
    members: dict[object, list[int]] = {}
    stratum_of: dict[object, object] = {}
    for i, (c, s) in enumerate(zip(keys, strata_of, strict=True)):
        members.setdefault(c, []).append(i)
        if stratum_of.setdefault(c, s) != s:
            raise ValueError(f"cluster {c!r} lies in two strata ({stratum_of[c]!r} and {s!r})")
    by_stratum: dict[object, list[object]] = {}
    for c, s in stratum_of.items():
        by_stratum.setdefault(s, []).append(c)
    estimate = float(statistic(np.ones(len(keys))))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        weights = np.zeros(len(keys))
        for cs in by_stratum.values():
            for k in rng.integers(0, len(cs), len(cs)):
                weights[members[cs[k]]] += 1
        value = statistic(weights)
        if not math.isnan(value):
            values.append(value)
    if not values:
        return Interval(estimate, math.nan, math.nan, len(by_stratum), level)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate, float(low), float(high), len(members), level)


@dataclass(frozen=True)
class Plateau:
    """The plateau rule's verdict on one validation curve.

    Attributes:
        flat: whether the metric gained less than ``tolerance`` over the last ``window`` of training, or its
            best value lies within ``tolerance`` of the ceiling (it cannot gain ``tolerance`` any more).
        gain: best value in the last window minus best value before it.
        window: the share of the curve that forms the last window.
        tolerance: the largest gain that still counts as flat.
        headroom: the ceiling minus the best value (None without a ceiling).
    """

    flat: bool
    gain: float
    window: float
    tolerance: float
    headroom: float | None = None

    @property
    def at_ceiling(self) -> bool:
        """Flat because the curve is within ``tolerance`` of its ceiling, although it gained more than that."""
        return self.flat and self.gain >= self.tolerance

    def describe(self) -> str:
        if self.at_ceiling:
            where = "at" if self.headroom < 0.0005 else f"within {self.headroom:.3f} of"
            return f"flat: {where} the content ceiling (+{self.gain:.3f} over the last {self.window:.0%} of training)"
        verdict = "flat" if self.flat else "still rising"
        return (
            f"{verdict}: +{self.gain:.3f} over the last {self.window:.0%} of training "
            f"(flat below +{self.tolerance:.3f})"
        )


PLATEAU_WINDOW = 1 / 3
PLATEAU_TOLERANCE = 0.02


def plateau(
    curve: Sequence[float],
    window: float = PLATEAU_WINDOW,
    tolerance: float = PLATEAU_TOLERANCE,
    ceiling: float | None = None,
) -> Plateau:
    """Whether a validation curve (higher is better, evenly spaced in training steps) has flattened.

    The rule: the best value in the last ``window`` of the evaluations exceeds the best value before them by
    less than ``tolerance``. A metric that still rises fails it; one that stalls, or falls (overfitting),
    passes it. With ``ceiling`` (the most the metric can reach, e.g. the validation content ceiling), a curve
    whose best value lies within ``tolerance`` of it also passes: no further training can gain ``tolerance``.

    Raises:
        ValueError: fewer than 3 evaluations, or a window that leaves none before it.
    """
    values = [float(v) for v in curve]
    if len(values) < 3:
        raise ValueError(f"the plateau rule needs at least 3 evaluations, got {len(values)}")
    last = max(1, math.ceil(window * len(values)))
    if last >= len(values):
        raise ValueError(f"window={window} leaves no evaluation before the last window")
    gain = max(values[-last:]) - max(values[:-last])
    headroom = None if ceiling is None or math.isnan(ceiling) else ceiling - max(values)
    flat = gain < tolerance or (headroom is not None and headroom < tolerance)
    return Plateau(flat, gain, window, tolerance, headroom)
