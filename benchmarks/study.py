"""Seeds and spread: tiny-CLIP and tiny-SPARO over several seeds and budgets, written to docs/study.md.

``python -m benchmarks.study [--budgets 150 500] [--seeds 0 1 2] [--lrs 3e-4 1e-3 3e-3] [--write-docs]``

1. at the shortest budget, every model is trained with every learning rate on every seed; each model's
   learning rate is the one with the best mean validation retrieval (the validation pairs, which show only
   training compositions: the held-out test sets are never used to choose);
2. at every other budget, each model is trained with its chosen learning rate on every seed;
3. every run is evaluated like the quickstart (:func:`sparo_clip.commands.quickstart.evaluate`), and docs/study.md
   gets mean +- std per metric, the paired SPARO - CLIP difference (same seed) with a t-based 95% interval
   over seeds, a plot per headline metric against steps, and one sentence per metric.

Every finished (model, seed, budget, lr) run is cached under ``--out`` with its settings: the study is
resumable, and a re-run only does what is missing. The doc is written only when every run has finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sparo_clip.commands import quickstart
from sparo_clip.commands.quickstart_report import HEADLINE, clean, headline

from .study_doc import write_study_doc

_logger = logging.getLogger("benchmarks.study")
ROOT = Path(__file__).resolve().parents[1]
VAL_METRIC = "validation retrieval mean recall"
FULL_COMMAND = "python -m benchmarks.study --budgets 150 500 --seeds 0 1 2 --write-docs"
# --reduced-world: fewer evaluation items (for a study that must fit a busy machine); training data as large as
# the runs need. The default world is the quickstart's.
REDUCED_SIZES = dict(train=4000, val=200, shards=4, zeroshot_per_class=10, sugarcrepe_per_task=60, test=200,
                     sugarcrepe_val_per_task=2)  # fmt: skip

Runner = Callable[[quickstart.TrainCfg, str, Path], dict[str, Any]]


def run_name(cfg: quickstart.TrainCfg) -> str:
    return f"{cfg.model}-s{cfg.seed}-b{cfg.steps}x{cfg.batch_size}-lr{cfg.lr:g}"


def train_and_evaluate(data: dict[str, Any], keep_checkpoints: bool = False) -> Runner:
    """The real runner: train through torchrun, evaluate, and (unless kept) delete the checkpoint."""

    def run(cfg: quickstart.TrainCfg, name: str, out: Path) -> dict[str, Any]:
        record = quickstart.train_model(cfg, name, data, out)
        results = quickstart.evaluate(cfg.model, record["checkpoint"], data, out / "eval" / name)
        if not keep_checkpoints:
            Path(record["checkpoint"]).unlink(missing_ok=True)
        return {"seconds": record["seconds"], "results": results}

    return run


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    """The headline metrics of one run, and the validation metric used to choose the learning rate."""
    return headline(results) | {VAL_METRIC: float(results["retrieval_val"]["mean_recall"])}


def cached_run(cfg: quickstart.TrainCfg, out: Path, runner: Runner) -> dict[str, Any]:
    """One (model, seed, budget, lr) run: read from the cache when its settings match, else run and cache."""
    name = run_name(cfg)
    path = out / "runs" / name / "result.json"
    settings = asdict(cfg)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("settings") == settings:
            return cached
    _logger.info("study: running %s", name)
    outcome = runner(cfg, name, out)
    record = {"settings": settings, "seconds": outcome["seconds"], "metrics": metrics_of(outcome["results"])}
    record["results"] = outcome["results"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)  # a result file is always complete
    return record


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of the t-based confidence interval of the mean (nan ends for one value)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def run_study(
    budgets: list[int],
    seeds: list[int],
    lrs: list[float],
    batch_size: int,
    out: Path,
    runner: Runner,
    models: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every run of the study (cached), the chosen learning rates, and the aggregated numbers."""
    models = models or quickstart.MODELS
    short = min(budgets)
    runs: dict[str, dict[str, Any]] = {}

    def do(model: str, seed: int, steps: int, lr: float) -> dict[str, Any]:
        cfg = quickstart.TrainCfg(model, steps, batch_size, lr, seed)
        runs[run_name(cfg)] = rec = cached_run(cfg, out, runner)
        return rec

    chosen: dict[str, float] = {}
    selection: dict[str, dict[str, float]] = {}
    for label, model in models.items():
        scores = {
            lr: mean_std([do(model, s, short, lr)["metrics"][VAL_METRIC] for s in seeds])[0] for lr in lrs
        }
        selection[label] = {f"{lr:g}": v for lr, v in scores.items()}
        chosen[label] = max(lrs, key=lambda lr: (scores[lr], -lr))  # ties: the smaller learning rate
    table: dict[int, dict[str, Any]] = {}
    for steps in sorted(budgets):
        per_model = {
            label: [do(m, s, steps, chosen[label])["metrics"] for s in seeds] for label, m in models.items()
        }
        table[steps] = {}
        for metric in [*HEADLINE, VAL_METRIC]:
            clip = [r[metric] for r in per_model["CLIP"]]
            sparo = [r[metric] for r in per_model["SPARO"]]
            diff, low, high = t_interval([b - a for a, b in zip(clip, sparo, strict=True)])
            table[steps][metric] = {
                "CLIP": mean_std(clip),
                "SPARO": mean_std(sparo),
                "diff": diff,
                "low": low,
                "high": high,
                "values": {"CLIP": clip, "SPARO": sparo},
            }
    return {"chosen_lr": chosen, "lr_selection": selection, "table": table, "runs": runs}


def plot(study: dict[str, Any], metric: str, path: Path) -> None:
    """Mean +- std over seeds against steps, both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(study["table"])
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
    for label, colour in (("CLIP", "tab:blue"), ("SPARO", "tab:orange")):
        means = [study["table"][s][metric][label][0] for s in steps]
        stds = [study["table"][s][metric][label][1] for s in steps]
        lr = study["chosen_lr"][label]
        ax.errorbar(
            steps, means, yerr=stds, marker="o", capsize=4, color=colour, label=f"tiny-{label} (lr {lr:g})"
        )
        for s in steps:  # the seeds themselves
            ax.scatter([s] * len(study["table"][s][metric]["values"][label]), study["table"][s][metric]["values"][label],
                       color=colour, alpha=0.35, s=12)  # fmt: skip
    ax.set_xticks(steps)
    ax.set_xlabel("training steps")
    ax.set_ylabel(metric)
    ax.set_title(metric, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[150, 500], help="training steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3], help="tried at the shortest budget"
    )
    p.add_argument("--batch-size", type=int, default=quickstart.BATCH_SIZE)
    p.add_argument(
        "--data", default=None, help="the shapes world (default: data/shapes, generated if missing)"
    )
    p.add_argument(
        "--reduced-world",
        action="store_true",
        help="a world with fewer evaluation items (default folder data/shapes-reduced): faster, wider intervals",
    )
    p.add_argument("--out", default="runs/study", help="the run cache")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoint (large)")
    p.add_argument("--write-docs", action="store_true", help="write docs/study.md and docs/img/study/*.png")
    p.add_argument("--doc", default=str(ROOT / "docs" / "study.md"), help=argparse.SUPPRESS)
    return p


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the options, or None."""
    if any(b < 1 for b in args.budgets) or len(set(args.budgets)) != len(args.budgets):
        return f"--budgets {args.budgets}: expected distinct positive step counts"
    if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
        return f"--seeds {args.seeds}: expected distinct non-negative integers"
    if any(not lr > 0 for lr in args.lrs):
        return f"--lrs {args.lrs}: expected positive learning rates"
    if args.batch_size < 2:
        return f"--batch-size {args.batch_size}: expected at least 2 (a contrastive batch)"
    return None


def main(argv: list[str] | None = None, runner: Runner | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"study: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[study] %(message)s")
    out = Path(args.out)
    from sparo_clip.data.generate import SizeCfg, generate

    sizes = SizeCfg(**REDUCED_SIZES) if args.reduced_world else SizeCfg()
    data_dir = args.data or ("data/shapes-reduced" if args.reduced_world else "data/shapes")
    if runner is None:
        runner = train_and_evaluate(generate(data_dir, sizes=sizes), args.keep_checkpoints)
    t = time.perf_counter()
    study = run_study(args.budgets, args.seeds, args.lrs, args.batch_size, out, runner)
    study["settings"] = {
        "budgets": sorted(args.budgets),
        "seeds": args.seeds,
        "lrs": args.lrs,
        "batch_size": args.batch_size,
        "world_sizes": vars(sizes),
        "command": "python -m benchmarks.study " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "seconds_this_call": time.perf_counter() - t,
    }
    (out / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    if args.write_docs:
        doc = Path(args.doc)
        img = doc.parent / "img" / "study"
        pictures = {}
        for metric in HEADLINE:
            pictures[metric] = img / f"{clean(metric)}.png"
            plot(study, metric, pictures[metric])
        write_study_doc(study, doc, {m: p.relative_to(doc.parent) for m, p in pictures.items()}, FULL_COMMAND)
        print(f"wrote {doc} and {len(pictures)} plots under {img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
