"""Two models compared over seeds: each seed its own world and held-out pairs, the headline interval a paired t
interval of the per-seed differences, Holm's correction across the secondary metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sparo_clip.experiment.metrics import METRICS, PRIMARY, SECONDARY
from sparo_clip.experiment.stats import Interval, holm, paired_t_pvalue, t_interval


@dataclass(frozen=True)
class Comparison:
    """One metric over seeds: each model's values, and model B minus model A with its paired interval."""

    label: str
    a: list[float]
    b: list[float]
    diff: Interval
    p: float
    p_holm: float | None  # None for the primary metrics (not part of the corrected family)

    @staticmethod
    def mean_sd(values: list[float]) -> tuple[float, float]:
        x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
        if x.size == 0:
            return math.nan, math.nan
        return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan

    def reading(self, a_name: str, b_name: str) -> str:
        """A plain sentence: which model is ahead, by how much, or that the seeds cannot tell them apart."""
        d = self.diff
        if math.isnan(d.low):
            return f"{b_name} − {a_name} = {d.mean:+.3f} (one seed: no interval)"
        if d.excludes_zero():
            ahead = b_name if d.mean > 0 else a_name
            return f"{ahead} ahead by {abs(d.mean):.3f} (95% interval {d}, {d.n} seeds)"
        return f"no difference detected: {b_name} − {a_name} = {d} over {d.n} seeds (the interval includes 0)"


def compare(
    per_seed: dict[int, dict[str, dict[str, float]]], a: str = "CLIP", b: str = "SPARO"
) -> dict[str, Comparison]:
    """Per metric: the two models over the seeds they both ran, paired by seed.

    Args:
        per_seed: seed -> model name -> metric label -> value.
    """
    seeds = sorted(s for s, runs in per_seed.items() if a in runs and b in runs)
    if not seeds:
        raise ValueError(f"no seed has runs of both {a!r} and {b!r}")
    rows: dict[str, Comparison] = {}
    pvalues: dict[str, float] = {}
    for m in METRICS:
        va = [per_seed[s][a][m.label] for s in seeds]
        vb = [per_seed[s][b][m.label] for s in seeds]
        pairs = [(x, y) for x, y in zip(va, vb, strict=True) if not (math.isnan(x) or math.isnan(y))]
        if not pairs:
            diff, p = Interval(math.nan, math.nan, math.nan, 0), math.nan
        else:
            d = [y - x for x, y in pairs]
            diff, p = t_interval(d), paired_t_pvalue(d)
        rows[m.label] = Comparison(m.label, va, vb, diff, p, None)
        if m.label in SECONDARY:
            pvalues[m.label] = p
    adjusted = holm(pvalues)
    for label in SECONDARY:
        c = rows[label]
        rows[label] = Comparison(c.label, c.a, c.b, c.diff, c.p, adjusted[label])
    assert set(PRIMARY) <= set(rows)
    return rows
