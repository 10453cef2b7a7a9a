"""The main job on one CPU machine: tiny SPARO and its CLIP twin, trained for the recipe's budget and compared
over seeds.

``./scripts/quickstart.sh [--seeds N]`` runs ``python -m sparo_clip.quickstart``. For every seed:

1. the shapes world of that seed (its own held-out colour-shape pairs), generated or reused;
2. tiny-CLIP and tiny-SPARO trained side by side (one core each) through ``torchrun -m sparo_clip.train``
   (OpenCLIP's loop) for the recipe's epochs, the validation pairs scored after every epoch;
3. both evaluated with the ``sparo-clip eval`` commands: the clean binding test and generalised compositional
   zero-shot (the primary metrics, docs/evaluation.md), the compositionality sets split by novelty, test
   retrieval; every matching set also against a blank image, and by a text-only reader (the controls).

Then ``report.md`` opens with a plain paragraph (what differed, by how much, over how many seeds, what this
scale cannot say), the primary metrics with paired t intervals over seeds, the secondary ones with Holm's
correction, the controls, each run's validation curve with the plateau rule, per-seed tables with intervals
from resampling classes, slot selection and slot-attention pictures; ``results.json`` holds every number.

The recipe (epochs, each model's learning rate, the SPARO slot shape) is read from
:mod:`sparo_clip.experiment.recipe`, which ``python -m benchmarks.study`` writes from its measurements.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sparo_clip.errors import ConfigError, SparoClipError, one_line
from sparo_clip.experiment import recipe as recipe_mod
from sparo_clip.experiment.controls import text_only_controls
from sparo_clip.experiment.metrics import metric_values, run_intervals
from sparo_clip.experiment.runs import (
    MODELS,
    TrainCfg,
    choose_slots_on_validation,
    evaluate,
    train_runs,
    untrained_checkpoint,
    validation_ceiling,
    world_for,
)
from sparo_clip.experiment.seeds import compare
from sparo_clip.inputs import check_writable_folder
from sparo_clip.models.param_count import count_model_parameters

_logger = logging.getLogger("sparo_clip.quickstart")


@dataclass
class QuickstartCfg:
    """The whole job; ``None`` fields take the recipe's value."""

    seeds: int = 3
    epochs: int | None = None
    out: str = "runs/quickstart"
    data: str = "data/shapes"
    small: bool = False
    parallel: bool = True
    select_slots: bool = True
    pictures: bool = True

    def __post_init__(self) -> None:
        for name in ("seeds", "epochs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"--{name} {value!r} is not valid: expected a positive integer")


def train_cfgs(recipe: recipe_mod.Recipe, seed: int, epochs: int, threads: int | None) -> dict[str, TrainCfg]:
    """The two runs of one seed, each with its own learning rate and the same budget, batch and seed."""
    return {
        label: TrainCfg(
            model, epochs, recipe.batch_size, recipe.lr[label], recipe.wd, recipe.warmup, seed, threads
        )
        for label, model in MODELS.items()
    }


def draw_pictures(model: str, ckpt: Path, data: dict[str, Any], out: Path) -> list[str]:
    """Slot-attention pictures of the SPARO model on six validation pairs (``sparo-clip viz``)."""
    from sparo_clip.viz.cli import main as viz_main

    folder = out / "viz_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    rows = Path(data["val"]["csv"]).read_text().splitlines()[1:7]
    captions = []
    for i, row in enumerate(rows):
        path, text = row.split("\t")[:2]
        shutil.copyfile(Path(data["val"]["csv"]).parent / path, folder / f"{i:02d}.png")
        captions.append(text)
    (out / "viz_captions.txt").write_text("\n".join(captions) + "\n")
    argv = ["--model", model, "--pretrained", str(ckpt), "--images", str(folder), "--min-agreement", "0"]
    argv += ["--captions", str(out / "viz_captions.txt"), "--out", str(out / "viz")]
    if viz_main(argv) != 0:
        raise RuntimeError("sparo-clip viz failed")
    return [str(p) for p in sorted((out / "viz").rglob("*.png"))[:4]]


def evaluate_seed(
    cfg: QuickstartCfg, seed: int, data: dict[str, Any], runs: dict[str, Any]
) -> dict[str, Any]:
    """Evaluations, controls and per-run intervals of one seed's two trained models."""
    out = Path(cfg.out)
    results, intervals = {}, {}
    for label, model in MODELS.items():
        where = out / "eval" / f"seed{seed}" / label
        results[label] = evaluate(model, runs[label]["checkpoint"], data, where)
        intervals[label] = {k: asdict(v) for k, v in run_intervals(where).items()}
    return {
        "seed": seed,
        "held_out": data["held_out"],
        "val_ceiling": validation_ceiling(data),
        "data": {"binding": data["binding"], "sugarcrepe_dropped": data["sugarcrepe"]["dropped"]},
        "runs": runs,
        "results": results,
        "metrics": {label: metric_values(r) for label, r in results.items()},
        "intervals": intervals,
        "text_only": text_only_controls(data),
        "world": data,
    }


def run_quickstart(cfg: QuickstartCfg, recipe: recipe_mod.Recipe | None = None) -> dict[str, Any]:
    """The whole job; returns the summary written to ``results.json`` (the report is ``report.md``)."""
    from sparo_clip.commands.quickstart_report import write_report

    recipe = recipe or recipe_mod.load()
    epochs = cfg.epochs or (1 if cfg.small else recipe.epochs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_job = time.perf_counter()
    worlds = {s: world_for(s, cfg.data, recipe.world, recipe.sizes(cfg.small)) for s in range(cfg.seeds)}
    threads = max(1, (os.cpu_count() or 2) // 2) if cfg.parallel else None
    jobs = {
        f"{label}-seed{s}": (run, worlds[s])
        for s in worlds
        for label, run in train_cfgs(recipe, s, epochs, threads).items()
    }
    trained = train_runs(jobs, out, slots=2 if cfg.parallel else 1)  # every run of every seed, two at a time
    seeds = {
        s: evaluate_seed(cfg, s, worlds[s], {label: trained[f"{label}-seed{s}"] for label in MODELS})
        for s in worlds
    }
    first = seeds[0]
    extras: dict[str, Any] = {}
    sparo, ckpt = MODELS["SPARO"], first["runs"]["SPARO"]["checkpoint"]
    untrained = untrained_checkpoint(sparo, out / "untrained-SPARO.pt", 0)
    extras["untrained"] = metric_values(
        evaluate(sparo, untrained, first["world"], out / "eval" / "seed0" / "untrained")
    )
    if cfg.select_slots:
        where = out / "eval" / "seed0" / "SPARO-selected"
        extras["slot_selection"] = choose_slots_on_validation(sparo, ckpt, first["world"], where)
        selected = str(where / "select_slots.json")
        extras["selected"] = metric_values(evaluate(sparo, ckpt, first["world"], where, selected))
    if cfg.pictures:
        extras["pictures"] = draw_pictures(sparo, Path(ckpt), first["world"], out)
    per_seed = {s: r["metrics"] for s, r in seeds.items()}
    comparison = {k: asdict(v) for k, v in compare(per_seed).items()} if cfg.seeds else {}
    summary = {
        "config": asdict(cfg),
        "recipe": recipe.to_dict(),
        "epochs": epochs,
        "parameters": {label: count_model_parameters(m) for label, m in MODELS.items()},
        "wall_seconds": time.perf_counter() - t_job,
        "torch_threads": torch.get_num_threads(),
        "seeds": {s: {k: v for k, v in r.items() if k != "world"} for s, r in seeds.items()},
        "comparison": comparison,
        **extras,
    }
    summary["report"] = write_report(out, summary)
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=_json) + "\n")
    return summary


def _json(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON: {type(value).__name__}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds per model, each its own world (default 3)")
    p.add_argument(
        "--epochs", type=int, default=None, help="passes over the training pairs (default: recipe)"
    )
    p.add_argument("--out", default="runs/quickstart", help="folder for checkpoints, logs and the report")
    p.add_argument("--data", default="data/shapes", help="folder of the generated worlds (cached per seed)")
    p.add_argument("--small", action="store_true", help="a tiny world and one epoch (smoke tests)")
    p.add_argument("--one-at-a-time", action="store_true", help="train the two models one after the other")
    p.add_argument("--no-select-slots", action="store_true", help="skip the slot selection")
    p.add_argument(
        "--write-docs", action="store_true", help="write the measured time into docs/quickstart.md"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[quickstart] %(message)s")
    t = time.perf_counter()
    try:
        cfg = QuickstartCfg(
            seeds=args.seeds, epochs=args.epochs, out=args.out, data=args.data, small=args.small,
            parallel=not args.one_at_a_time, select_slots=not args.no_select_slots,
        )  # fmt: skip
        check_writable_folder(args.out, "--out")
        check_writable_folder(args.data, "--data")
        recipe = recipe_mod.load()
    except SparoClipError as e:
        print(f"quickstart: error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        summary = run_quickstart(cfg, recipe)
    except (SparoClipError, RuntimeError, OSError) as e:  # a step failed: it said why above; say which
        print(f"quickstart: error: {one_line(e)}", file=sys.stderr)
        return 1
    report = Path(cfg.out) / "report.md"
    print(report.read_text())
    _logger.info("wrote %s and %s in %.0f s", report, Path(cfg.out) / "results.json", time.perf_counter() - t)
    if args.write_docs:
        from sparo_clip.commands.quickstart_report import write_docs

        write_docs(summary, time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
