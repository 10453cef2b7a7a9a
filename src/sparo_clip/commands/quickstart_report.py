"""The quickstart's headline metrics, their paired bootstrap intervals over test items, and ``report.md``.

A headline metric is read from the eval commands' JSON (:func:`headline`); for the report it is also
recomputed from the per-item scores the commands saved (``--save-items``), once on all test items (the same
value) and on ``BOOTSTRAP`` resamples of them, the same resample for both models, so the interval of the
difference SPARO - CLIP reflects which test items were drawn (not the training seed: docs/study.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparo_clip.eval.gczsl import decisions, predict

BOOTSTRAP = 1000
DOCS = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
BEGIN, END = "<!-- quickstart-time:begin -->", "<!-- quickstart-time:end -->"

# label -> (eval result key, path inside its metrics); the study and the report use the same labels.
HEADLINE: dict[str, tuple[str, tuple[str, ...]]] = {
    "compositional zero-shot AUC": ("compositional", ("auc",)),
    "compositional zero-shot best HM": ("compositional", ("best_hm",)),
    "held-out compositions, accuracy over all classes": ("compositional", ("unseen",)),
    "compositionality mean, novel scenes": ("sugarcrepe", ("groups", "novel", "mean")),
    "compositionality mean, seen scenes": ("sugarcrepe", ("groups", "seen", "mean")),
    "swap_att, novel scenes": ("sugarcrepe", ("groups", "novel", "swap_att")),
    "retrieval R@1 (mean of both ways), novel scenes": ("retrieval", ("groups", "novel", "R@1")),
    "retrieval R@1 (mean of both ways), seen scenes": ("retrieval", ("groups", "seen", "R@1")),
}


def _r1(metrics: dict[str, Any]) -> float:
    return (metrics["image_to_text_R@1"] + metrics["text_to_image_R@1"]) / 2


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The headline metrics of one model from its eval results (``quickstart.evaluate``'s return)."""
    out = {}
    for label, (key, path) in HEADLINE.items():
        node: Any = results[key]
        for part in path[:-1]:
            node = node[part]
        out[label] = _r1(node) if path[-1] == "R@1" else float(node[path[-1]])
    return out


# --- the same metrics from per-item scores, on any resample of the items ------------------------------------


def _prepare_compositional(items: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per image what the GCZSL metrics need and resampling does not change (computed once, float64)."""
    logits, labels, unseen = items["logits"].double(), items["labels"], items["unseen"]
    d = decisions(logits, unseen)
    is_unseen = unseen[labels]
    pred = predict(logits, unseen, 0.0)
    seen_ok = (~is_unseen & (d["seen_class"] == labels)).numpy()
    unseen_ok = (is_unseen & (d["unseen_class"] == labels)).numpy()
    margin = d["margin"].numpy()
    seen_order = np.argsort(margin[seen_ok], kind="stable")
    unseen_order = np.argsort(margin[unseen_ok], kind="stable")
    return {
        "is_unseen": is_unseen.numpy(),
        "right": (pred == labels).numpy(),
        "seen_idx": np.flatnonzero(seen_ok)[seen_order],  # images that some bias gets right, by margin
        "unseen_idx": np.flatnonzero(unseen_ok)[unseen_order],
        "seen_margin": margin[seen_ok][seen_order],
        "unseen_margin": margin[unseen_ok][unseen_order],
    }


def _compositional(items: dict[str, Any], idx: torch.Tensor) -> dict[str, float]:
    """AUC, best HM and held-out accuracy of a resample: the curve of :func:`gczsl.operating_points` with each
    image counted as often as it was drawn (the same numbers as on the resampled score matrix, much faster)."""
    if "_prepared" not in items:
        items["_prepared"] = _prepare_compositional(items)
    p = items["_prepared"]
    w = np.bincount(idx.numpy(), minlength=len(p["right"])).astype(np.float64)
    w_seen, w_unseen = w[~p["is_unseen"]].sum(), w[p["is_unseen"]].sum()
    if w_seen == 0 or w_unseen == 0:
        return dict.fromkeys(("compositional zero-shot AUC", "compositional zero-shot best HM"), math.nan) | {
            "held-out compositions, accuracy over all classes": math.nan
        }
    biases = np.concatenate(
        [[-np.inf], np.unique(np.concatenate([p["seen_margin"], p["unseen_margin"]])), [np.inf]]
    )
    cs = np.concatenate([[0.0], np.cumsum(w[p["seen_idx"]])])
    cu = np.concatenate([[0.0], np.cumsum(w[p["unseen_idx"]])])
    seen = (cs[-1] - cs[np.searchsorted(p["seen_margin"], biases, side="left")]) / w_seen  # margin >= b
    unseen = cu[np.searchsorted(p["unseen_margin"], biases, side="left")] / w_unseen  # margin < b
    total = seen + unseen
    hm = np.where(total > 0, 2 * seen * unseen / np.maximum(total, 1e-300), 0.0)
    return {
        "compositional zero-shot AUC": float(np.sum((unseen[1:] - unseen[:-1]) * (seen[1:] + seen[:-1]) / 2)),
        "compositional zero-shot best HM": float(hm.max()),
        "held-out compositions, accuracy over all classes": float(
            (w * p["right"] * p["is_unseen"]).sum() / w_unseen
        ),
    }


def _task_mean(correct: torch.Tensor, task: torch.Tensor, num_tasks: int) -> tuple[float, list[float]]:
    accs = [float(correct[task == t].double().mean()) for t in range(num_tasks) if bool((task == t).any())]
    return (sum(accs) / len(accs) if accs else math.nan), accs


def _sugarcrepe(items: dict[str, Any], idx: torch.Tensor) -> dict[str, float]:
    out = {}
    correct, task, group = items["correct"][idx], items["task"][idx], items["group"][idx]
    swap = items["tasks"].index("swap_att")
    for g, name in enumerate(items["groups"]):
        keep = group == g
        out[f"compositionality mean, {name} scenes"] = _task_mean(
            correct[keep], task[keep], len(items["tasks"])
        )[0]
        in_swap = keep & (task == swap)
        out[f"swap_att, {name} scenes"] = (
            float(correct[in_swap].double().mean()) if bool(in_swap.any()) else math.nan
        )
    return out


def _retrieval(items: dict[str, Any], idx: torch.Tensor) -> dict[str, float]:
    """R@1 both ways over the resampled images; each caption counts as often as its image was drawn."""
    count = torch.bincount(idx, minlength=len(items["i2t_rank"])).double()
    text_weight = count[items["text_image"]]
    out = {}
    for g, name in enumerate(items["groups"]):
        img_w = count * (items["image_group"] == g)
        txt_w = text_weight * (items["image_group"][items["text_image"]] == g)
        i2t = float((img_w * (items["i2t_rank"] < 1)).sum() / img_w.sum().clamp_min(1e-12))
        t2i = float((txt_w * (items["t2i_rank"] < 1)).sum() / txt_w.sum().clamp_min(1e-12))
        out[f"retrieval R@1 (mean of both ways), {name} scenes"] = (i2t + t2i) / 2
    return out


SOURCES: dict[str, tuple[Callable[[dict[str, Any], torch.Tensor], dict[str, float]], str]] = {
    "compositional": (_compositional, "labels"),
    "sugarcrepe": (_sugarcrepe, "correct"),
    "retrieval": (_retrieval, "i2t_rank"),
}


def load_items(eval_dir: Path, key: str) -> dict[str, Any]:
    return torch.load(eval_dir / f"{key}_items.pt", weights_only=True)[key]


def paired_bootstrap(
    items_a: dict[str, dict[str, Any]],
    items_b: dict[str, dict[str, Any]],
    reps: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per headline metric: b - a on all items, and the 2.5/97.5 percentiles of b - a over resamples.

    Args:
        items_a, items_b: per source key (``SOURCES``), the per-item scores of two models on the same items.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    for key, (stats, length_key) in SOURCES.items():
        n = len(items_a[key][length_key])
        everything = torch.arange(n)
        a, b = stats(items_a[key], everything), stats(items_b[key], everything)
        diffs: dict[str, list[float]] = {k: [] for k in a}
        for _ in range(reps):
            idx = torch.randint(0, n, (n,), generator=gen)
            ra, rb = stats(items_a[key], idx), stats(items_b[key], idx)
            for k in a:
                if not (math.isnan(ra[k]) or math.isnan(rb[k])):
                    diffs[k].append(rb[k] - ra[k])
        for k in a:
            d = torch.tensor(diffs[k], dtype=torch.float64)
            lo, hi = (float(torch.quantile(d, q)) for q in (0.025, 0.975)) if len(d) else (math.nan, math.nan)
            out[k] = {"a": a[k], "b": b[k], "diff": b[k] - a[k], "low": lo, "high": hi, "reps": len(d)}
    return out


# --- report.md ---------------------------------------------------------------------------------------------


def _fmt_diff(d: dict[str, float]) -> str:
    half = (d["high"] - d["low"]) / 2
    return f"{d['diff']:+.3f} ± {half:.3f} (95% interval [{d['low']:+.3f}, {d['high']:+.3f}])"


def _table(
    results: dict[str, Any], names: list[str], rows: list[tuple[str, str, tuple[str, ...]]]
) -> list[str]:
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, path in rows:
        cells = []
        for n in names:
            node: Any = results[n][key]
            for part in path:
                node = node[part]
            cells.append(f"{node:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def plot_curves(results: dict[str, Any], names: list[str], path: Path) -> Path:
    """The seen/unseen accuracy curves of generalised compositional zero-shot, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4), dpi=110)
    for name in names:
        m = results[name]["compositional"]
        curve = m["curve"]
        ax.plot(curve["unseen"], curve["seen"], drawstyle="default", label=f"{name} (AUC {m['auc']:.3f})")
        ax.scatter([m["unseen"]], [m["seen"]], s=18)  # bias 0
    ax.set_xlabel("accuracy on held-out-composition images")
    ax.set_ylabel("accuracy on seen-composition images")
    ax.set_title("seen vs unseen as the calibration bias varies (dots: bias 0)", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.md``; returns the summary block (headline differences) stored in results.json."""
    results, runs = summary["results"], summary["runs"]
    items = {n: {k: load_items(out / "eval" / n, k) for k in SOURCES} for n in ("CLIP", "SPARO")}
    diffs = paired_bootstrap(items["CLIP"], items["SPARO"])
    held = summary["data"]["held_out"]
    steps, batch = summary["steps"], runs["SPARO"]["batch_size"]
    lines = [
        "# sparo-clip quickstart report",
        "",
        f"tiny-CLIP and tiny-SPARO, each trained {steps} steps x {batch} (seed {summary['config']['seed']}, "
        f"lr {runs['SPARO']['lr']}) on {summary['data']['train_samples']} shapes-world images; held-out "
        f"compositions {', '.join(held)} never appear in training. Wall time of the job: "
        f"{summary['wall_seconds']:.0f} s.",
        "",
        "## Summary: SPARO − CLIP",
        "",
    ]
    for label in HEADLINE:
        d = diffs[label]
        lines.append(f"- {label}: SPARO − CLIP = {_fmt_diff(d)}; CLIP {d['a']:.3f}, SPARO {d['b']:.3f}")
    sel = summary.get("slot_selection")
    if sel:
        sel_items = {k: load_items(out / "eval" / "SPARO-selected", k) for k in SOURCES}
        gain = paired_bootstrap(items["SPARO"], sel_items)
        for label in ("compositionality mean, novel scenes", "compositionality mean, seen scenes"):
            lines.append(
                f"- {label}, SPARO with slots {sel['selected_slots']} − all slots = {_fmt_diff(gain[label])}"
            )
        diffs["slot selection"] = {k: gain[k] for k in gain if k.startswith("compositionality")}
    lines += [
        "",
        "One seed per model: ± is half the width of a paired bootstrap 95% interval over test items "
        f"({BOOTSTRAP} resamples; the same items for both models), not the spread over training seeds. "
        "For that spread, and whether a difference holds across seeds and budgets, see docs/study.md. "
        "An interval that contains 0 means this run cannot tell the two apart.",
        "",
        "| model | config | parameters | steps x batch | lr | training time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        lines.append(
            f"| {name} | {run['model']} | {run['parameters']:,} | {run['steps']} x {run['batch_size']} | {run['lr']} "
            f"| {run['seconds']:.0f} |"
        )
    names = [n for n in ("CLIP", "SPARO", "SPARO-selected", "untrained") if n in results]
    comp = [(f"compositional {k}", "compositional", (k,)) for k in ("auc", "best_hm", "hm", "seen", "unseen")]
    comp += [(f"compositional {k}", "compositional", (k,)) for k in ("best_seen", "best_unseen")]
    comp += [
        (f"held-out images: right {k.split('_')[1]}", "compositional", (k,))
        for k in ("unseen_attribute", "unseen_object")
    ]
    tasks = [t for t in results["CLIP"]["sugarcrepe"] if t not in ("mean", "num_items", "groups")]
    sc = [
        (f"{t}, {g} scenes (chance 0.5)", "sugarcrepe", ("groups", g, t))
        for t in [*tasks, "mean"]
        for g in ("seen", "novel")
    ]
    ret = [
        (f"test {k.replace('_', ' ')}, {g} scenes", "retrieval", ("groups", g, k))
        for k in ("image_to_text_R@1", "text_to_image_R@1")
        for g in ("seen", "novel")
    ]
    ret += [
        (f"validation {k.replace('_', ' ')}", "retrieval_val", (k,))
        for k in ("image_to_text_R@1", "text_to_image_R@1")
    ]
    lines += [
        "",
        "## Generalised compositional zero-shot",
        "",
        "Single-object images of seen and held-out compositions, each classified over all "
        f"{results['CLIP']['compositional']['num_classes']} compositions; AUC: area under the seen/unseen "
        "accuracy curve traced by a bias added to the held-out classes' scores (every operating point); "
        "HM: harmonic mean of seen and unseen accuracy (best over the bias, and at bias 0). "
        "`SPARO-selected` uses the slots chosen on the validation compositionality set; `untrained` is "
        "tiny-SPARO at initialisation.",
        "",
        *_table(results, names, comp),
        "",
        f"![seen/unseen curves]({plot_curves(results, names, out / 'compositional_curves.png').relative_to(out)})",
        "",
        "## Compositionality (does the image prefer its caption over a wrong one?)",
        "",
        "Seen scenes show only training pairs; novel scenes contain a held-out pair.",
        "",
        *_table(results, names, sc),
        "",
        "## Retrieval",
        "",
        "Test pairs (queries of each group against all test pairs) and validation pairs (seen pairs only).",
        "",
        *_table(results, names, ret),
    ]
    if sel:
        lines += [
            "",
            "## Slot selection",
            "",
            f"Greedy search ({sel['selected_by']}) on the validation compositionality set chose slots "
            f"{sel['selected_slots']} of {sel['num_slots']}; compositionality mean on validation "
            f"{sel['val']['all_slots']:.3f} -> {sel['val']['selected']:.3f}, on the test set "
            f"{sel['test']['all_slots']:.3f} -> {sel['test']['selected']:.3f}. The test set is never searched.",
        ]
    if summary.get("pictures"):
        lines += ["", "## SPARO slot attention", ""]
        lines += [f"![{Path(p).stem}]({Path(p).relative_to(out)})" for p in summary["pictures"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return diffs


def write_docs(summary: dict[str, Any], seconds: float, path: Path = DOCS) -> None:
    """Fill the measured time and steps of a default run into docs/quickstart.md between its markers."""
    import platform

    cfg = summary["config"]
    text = (
        f"Measured by `python -m sparo_clip.quickstart --write-docs` ({platform.machine()}, "
        f"{summary['torch_threads']} threads, torch {torch.__version__}): {summary['steps']} steps x "
        f"{cfg['batch_size']} per model; training "
        + ", ".join(f"{n} {r['seconds']:.0f} s" for n, r in summary["runs"].items())
        + f"; the whole job (data, training, evaluation, slot selection, report) {seconds:.0f} s "
        f"({seconds / 60:.1f} min) once `.venv` exists.\n"
    )
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"{path} has no {BEGIN} ... {END} block to fill")
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    path.write_text(doc[:start] + "\n" + text + doc[end:])


def clean(label: str) -> str:
    """A file-name-safe form of a metric label."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
