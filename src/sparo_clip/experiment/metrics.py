"""What the main job reports, named before any run: two primary metrics, the secondary ones, and the controls.

Primary (docs/evaluation.md names them; the headline of every report):

- **clean binding, seen pairs**: two-object scenes, the wrong caption swaps the two colours, and both captions
  name only training pairs. What SPARO claims to improve (attribute binding), with no caption prior.
- **compositional zero-shot AUC**: generalised compositional zero-shot over every colour-shape class, area under
  the seen/unseen accuracy curve traced by a calibration bias (no bias is chosen on the test images).

Secondary metrics get a Holm correction across them; best HM is an oracle (its bias is chosen on the test
images). Controls are not compared: a text-only reader (:mod:`sparo_clip.eval.text_prior`) and each model with a
blank image must sit near 0.5 on every image-text matching set, or the set is flagged.

Each metric is read from the eval commands' JSON (:func:`metric_values`) and recomputed from their saved per-item
scores under resampling (:func:`run_intervals`): held-out metrics resample whole clusters (classes for
compositional zero-shot; the held-out pair an item shows, with its mirror, for the matching sets).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparo_clip.eval.gczsl import decisions, predict
from sparo_clip.experiment.stats import Interval, cluster_bootstrap


@dataclass(frozen=True)
class Metric:
    """One reported number: the eval result it comes from and the path to it inside the metrics JSON."""

    label: str
    source: str
    path: tuple[str, ...]
    primary: bool = False
    oracle: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("clean binding, seen pairs", "binding", ("groups", "seen", "swap_att"), primary=True),
    Metric("compositional zero-shot AUC", "compositional", ("auc",), primary=True),
    Metric("clean binding, one held-out pair", "binding", ("groups", "novel", "swap_att")),
    Metric("held-out compositions, accuracy over all classes", "compositional", ("unseen",)),
    Metric("seen compositions, accuracy over all classes", "compositional", ("seen",)),
    Metric("compositional zero-shot best HM (oracle bias)", "compositional", ("best_hm",), oracle=True),
    Metric("compositionality mean, seen scenes", "sugarcrepe", ("groups", "seen", "mean")),
    Metric("compositionality mean, novel scenes", "sugarcrepe", ("groups", "novel", "mean")),
    Metric("retrieval R@1 (mean of both ways), seen scenes", "retrieval", ("groups", "seen", "R@1")),
    Metric("retrieval R@1 (mean of both ways), novel scenes", "retrieval", ("groups", "novel", "R@1")),
)
PRIMARY = tuple(m.label for m in METRICS if m.primary)
SECONDARY = tuple(m.label for m in METRICS if not m.primary)
BY_LABEL = {m.label: m for m in METRICS}
CONTROL_RANGE = (0.45, 0.55)  # a control outside this range flags its set


def _lookup(node: Any, path: tuple[str, ...]) -> float:
    for part in path[:-1]:
        node = node[part]
    if path[-1] == "R@1":
        return (node["image_to_text_R@1"] + node["text_to_image_R@1"]) / 2
    value = node.get(path[-1]) if isinstance(node, dict) else None
    return math.nan if value is None else float(value)


def metric_values(results: dict[str, Any]) -> dict[str, float]:
    """Every metric of one model from its eval results (:func:`sparo_clip.experiment.runs.evaluate`)."""
    out = {}
    for m in METRICS:
        try:
            out[m.label] = _lookup(results[m.source], m.path)
        except KeyError:  # e.g. a world whose held-out pairs allow no balanced held-out binding item
            out[m.label] = math.nan
    return out


# --- the same metrics from per-item scores, with item weights (resampling) -----------------------------------


def _gczsl_stats(items: dict[str, Any]) -> Callable[[np.ndarray], dict[str, float]]:
    """AUC, best HM, seen and held-out accuracy of the compositional score matrix for given image weights."""
    logits, labels, unseen = items["logits"].double(), items["labels"], items["unseen"]
    d = decisions(logits, unseen)
    is_unseen = unseen[labels].numpy()
    right = (predict(logits, unseen, 0.0) == labels).numpy()
    seen_ok = ~is_unseen & (d["seen_class"] == labels).numpy()
    unseen_ok = is_unseen & (d["unseen_class"] == labels).numpy()
    margin = d["margin"].numpy()
    s_idx = np.flatnonzero(seen_ok)[np.argsort(margin[seen_ok], kind="stable")]
    u_idx = np.flatnonzero(unseen_ok)[np.argsort(margin[unseen_ok], kind="stable")]
    s_margin, u_margin = margin[s_idx], margin[u_idx]
    biases = np.concatenate([[-np.inf], np.unique(np.concatenate([s_margin, u_margin])), [np.inf]])
    s_pos = np.searchsorted(s_margin, biases, side="left")
    u_pos = np.searchsorted(u_margin, biases, side="left")

    def stats(w: np.ndarray) -> dict[str, float]:
        w_seen, w_unseen = w[~is_unseen].sum(), w[is_unseen].sum()
        if w_seen == 0 or w_unseen == 0:
            return dict.fromkeys(("auc", "best_hm", "seen", "unseen"), math.nan)
        cs = np.concatenate([[0.0], np.cumsum(w[s_idx])])
        cu = np.concatenate([[0.0], np.cumsum(w[u_idx])])
        seen = (cs[-1] - cs[s_pos]) / w_seen  # seen images still right at bias b (margin >= b)
        unseen_acc = cu[u_pos] / w_unseen  # held-out images right at bias b (margin < b)
        total = seen + unseen_acc
        hm = np.where(total > 0, 2 * seen * unseen_acc / np.maximum(total, 1e-300), 0.0)
        return {
            "auc": float(np.sum((unseen_acc[1:] - unseen_acc[:-1]) * (seen[1:] + seen[:-1]) / 2)),
            "best_hm": float(hm.max()),
            "seen": float((w * right * ~is_unseen).sum() / w_seen),
            "unseen": float((w * right * is_unseen).sum() / w_unseen),
        }

    return stats


def _matching_stat(items: dict[str, Any], group: str, task: str | None) -> Callable[[np.ndarray], float]:
    """Accuracy of a matching set's group (one task, or the mean over tasks) for given item weights."""
    correct = items["correct"].numpy().astype(np.float64)
    in_group = items["group"].numpy() == items["groups"].index(group)
    task_ids = items["task"].numpy()
    tasks = [items["tasks"].index(task)] if task else sorted(set(task_ids[in_group].tolist()))

    def stat(w: np.ndarray) -> float:
        accs = []
        for t in tasks:
            keep = in_group & (task_ids == t)
            total = (w * keep).sum()
            accs.append((w * keep * correct).sum() / total if total > 0 else math.nan)
        return float(np.mean(accs)) if accs else math.nan

    return stat


def _retrieval_stat(items: dict[str, Any], group: str) -> Callable[[np.ndarray], float]:
    """R@1 both ways over the images of a group for given image weights (a caption counts as its image)."""
    g = items["groups"].index(group)
    image_in = items["image_group"].numpy() == g
    text_image = items["text_image"].numpy()
    i2t_ok = items["i2t_rank"].numpy() < 1
    t2i_ok = items["t2i_rank"].numpy() < 1

    def stat(w: np.ndarray) -> float:
        wi = w * image_in
        wt = w[text_image] * image_in[text_image]
        if wi.sum() == 0:
            return math.nan
        return float(((wi * i2t_ok).sum() / wi.sum() + (wt * t2i_ok).sum() / wt.sum()) / 2)

    return stat


def load_items(eval_dir: Path, key: str) -> dict[str, Any]:
    """The per-item scores ``sparo-clip eval ... --save-items`` wrote for one evaluation."""
    return next(iter(torch.load(eval_dir / f"{key}_items.pt", weights_only=True).values()))


def run_intervals(eval_dir: Path, reps: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """Per metric of one run, its value with a 95% interval from resampling the evaluation's items.

    Compositional zero-shot resamples classes (seen and held-out separately); the matching sets resample
    clusters (items showing the same held-out pair together, an item always with its mirror); retrieval
    resamples images.
    """
    out: dict[str, Interval] = {}
    comp = load_items(eval_dir, "compositional")
    gczsl = _gczsl_stats(comp)
    labels, unseen = comp["labels"].numpy(), comp["unseen"].numpy()
    for m in METRICS:
        if m.source == "compositional":
            key = {"auc": "auc", "best_hm": "best_hm", "seen": "seen", "unseen": "unseen"}[m.path[-1]]
            out[m.label] = cluster_bootstrap(lambda w, k=key: gczsl(w)[k], labels, unseen[labels], reps, seed)
        elif m.source in ("binding", "sugarcrepe"):
            items = load_items(eval_dir, m.source)
            group = m.path[1]
            if group not in items["groups"]:
                out[m.label] = Interval(math.nan, math.nan, math.nan, 0)
                continue
            task = None if m.path[-1] == "mean" else m.path[-1]
            clusters = items["cluster"].numpy() if "cluster" in items else np.arange(len(items["correct"]))
            out[m.label] = cluster_bootstrap(_matching_stat(items, group, task), clusters, None, reps, seed)
        else:
            items = load_items(eval_dir, "retrieval")
            stat = _retrieval_stat(items, m.path[1])
            out[m.label] = cluster_bootstrap(stat, np.arange(len(items["i2t_rank"])), None, reps, seed)
    return out
