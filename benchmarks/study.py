"""The study behind the main job: tune on validation, show the plateau, then compare over seeds.

``python -m benchmarks.study [--epochs E] [--short-epochs S] [--seeds N] [--write-recipe] [--write-docs]``

1. **Tuning** (on a world of its own, seed ``--tune-seed``, never one the comparison uses), at the final budget
   of ``--epochs``: each model's learning rate from a grid, extended by a factor 2 past an edge that wins (so the
   grid brackets the optimum); then the SPARO slot shape (L x V at equal L * V) at SPARO's learning rate. The
   score is the final validation R@1 (the validation pairs show only training compositions); the test sets
   are never read.
2. **Plateau**: the chosen settings trained twice as long on the same world; the validation curves of both
   lengths and the plateau rule (``sparo_clip.experiment.stats.plateau``) show whether ``--epochs`` is enough.
   ``--write-recipe`` writes the choices into ``sparo_clip/experiment/recipe.json`` and ``tiny-SPARO.json`` and
   the curve into docs/quickstart.md.
3. **Comparison**: both models with the recipe on ``--seeds`` seeds (each its own world and held-out pairs) at
   ``--epochs`` and ``--short-epochs``, evaluated like the main job; ``--write-docs`` writes docs/study.md.

Every run is cached with its settings under ``--out`` (``train_runs`` reuses finished runs, evaluations
reuse their JSON): the study is resumable, and ``--stage tune|plateau|compare`` runs it in parts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import atomic_write_text
from sparo_clip.experiment import recipe as recipe_mod
from sparo_clip.experiment.controls import text_only_controls
from sparo_clip.experiment.metrics import metric_values, run_intervals
from sparo_clip.experiment.runs import (
    MODELS,
    TrainCfg,
    evaluate,
    evaluations_saved,
    steps_per_epoch,
    train_runs,
    untrained_checkpoint,
    validation_ceiling,
    world_for,
)
from sparo_clip.experiment.seeds import compare
from sparo_clip.experiment.stats import plateau

_logger = logging.getLogger("benchmarks.study")
ROOT = Path(__file__).resolve().parents[1]
LRS = (1e-3, 2e-3, 4e-3)
SLOT_SHAPES = ((4, 64), (8, 32), (16, 16))  # L x V; L * V = 256, the CLIP twin's embedding width
MAX_EXTENSIONS = 2


def final_val(record: dict[str, Any]) -> float:
    return record["curve"][-1]["val_r1"] if record["curve"] else math.nan


def slot_override(shape: tuple[int, int]) -> dict[str, Any]:
    L, V = shape
    return {"embed_dim": L * V, "sparo_cfg": {"num_slots": L, "slot_dim": V}}


def _sparo_shape() -> tuple[int, int]:
    from sparo_clip.models.builder import resolve_model_config

    s = resolve_model_config(MODELS["SPARO"])["sparo_cfg"]
    return s["num_slots"], s["slot_dim"]


def tuning_run(
    label: str, lr: float, shape: tuple[int, int] | None, args: argparse.Namespace, base: recipe_mod.Recipe
) -> tuple[str, TrainCfg]:
    """One tuning run's name and settings at ``--epochs`` on the tuning world. A SPARO run always names its slot
    shape and passes it explicitly (``shape``; CLIP: None), so a cached run stays what its name says when
    tiny-SPARO.json's shape changes; the configured shape's learning-rate runs are the slot grid's."""
    name = f"{label}-lr{lr:g}" if shape is None else f"{label}-{shape[0]}x{shape[1]}-lr{lr:g}"
    cfg = TrainCfg(MODELS[label], args.epochs, base.batch_size, lr, base.wd, base.warmup, args.tune_seed,
                   args.threads, slot_override(shape) if shape is not None else None)  # fmt: skip
    return f"{name}-seed{args.tune_seed}", cfg


def bracket(
    args: argparse.Namespace,
    base: recipe_mod.Recipe,
    data: dict[str, Any],
    shapes: dict[str, tuple[int, int] | None],
    grids: dict[str, list[float]],
) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Each model's learning rate on validation from its grid, extended by 2x past a winning edge (at most
    :data:`MAX_EXTENSIONS` times); all models' runs share one training queue, so no core waits for a model."""
    out = Path(args.out) / "tune"
    grids = {label: sorted(g) for label, g in grids.items()}
    scores: dict[str, dict[float, float]] = {label: {} for label in shapes}
    chosen: dict[str, float] = {}
    for _ in range(MAX_EXTENSIONS + 1):
        pending = [label for label in shapes if label not in chosen]
        jobs = {}
        for label in pending:
            for lr in grids[label]:
                if lr not in scores[label]:
                    name, cfg = tuning_run(label, lr, shapes[label], args, base)
                    jobs[name] = (label, cfg)
        runs = train_runs({n: (c, data) for n, (_, c) in jobs.items()}, out, args.slots)
        for name, (label, cfg) in jobs.items():
            scores[label][cfg.lr] = final_val(runs[name])
        for label in pending:
            best = max(scores[label], key=lambda lr, s=scores[label]: (s[lr], -lr))
            ordered = sorted(scores[label])
            if best == ordered[0] or best == ordered[-1]:  # a winning edge: extend the grid past it
                grids[label] = [best / 2 if best == ordered[0] else best * 2]
            else:
                chosen[label] = best
        if len(chosen) == len(shapes):
            break
    for label in shapes:  # extensions exhausted: the best measured (its edge shows in the table)
        chosen.setdefault(label, max(scores[label], key=lambda lr, s=scores[label]: (s[lr], -lr)))
    return chosen, scores


def tune(args: argparse.Namespace, base: recipe_mod.Recipe) -> dict[str, Any]:
    """Learning rates (grid extended past a winning edge), the slot shape, and SPARO's learning rate again at
    the chosen shape when it is not the configured one, all on the tuning world's validation."""
    data = world_for(args.tune_seed, args.data, base.world, base.sizes())
    out = Path(args.out) / "tune"
    configured = {label: (_sparo_shape() if label == "SPARO" else None) for label in MODELS}
    chosen, scores = bracket(args, base, data, configured, {label: list(args.lrs) for label in MODELS})
    tables = {label: {f"{lr:g}": v for lr, v in sorted(scores[label].items())} for label in MODELS}
    # the configured shape's run is the learning-rate grid's: train_runs reuses it
    shape_runs = dict(tuning_run("SPARO", chosen["SPARO"], shape, args, base) for shape in SLOT_SHAPES)
    records = train_runs({n: (c, data) for n, c in shape_runs.items()}, out, args.slots)
    shapes = {f"{L}x{V}": final_val(records[n]) for (L, V), n in zip(SLOT_SHAPES, shape_runs, strict=True)}
    best_shape = max(shapes, key=lambda k: (shapes[k], -int(k.split("x")[0])))
    shape = tuple(int(x) for x in best_shape.split("x"))
    if (
        shape != _sparo_shape()
    ):  # the learning rate was chosen for another shape: bracket it again for this one
        lr = chosen["SPARO"]
        again, rescored = bracket(args, base, data, {"SPARO": shape}, {"SPARO": [lr / 2, lr, 2 * lr]})
        chosen["SPARO"] = again["SPARO"]
        tables[f"SPARO {best_shape}"] = {f"{lr:g}": v for lr, v in sorted(rescored["SPARO"].items())}
    return {"lr": chosen, "lr_scores": tables, "slot_shape": best_shape, "slot_scores": shapes,
            "tune_seed": args.tune_seed, "epochs": args.epochs}  # fmt: skip


def plateau_evidence(
    args: argparse.Namespace, base: recipe_mod.Recipe, tuned: dict[str, Any]
) -> dict[str, Any]:
    """The chosen settings at ``--epochs`` and twice as long, on the tuning world: curves and the plateau rule."""
    data = world_for(args.tune_seed, args.data, base.world, base.sizes())
    shape = tuple(int(x) for x in tuned["slot_shape"].split("x"))
    evidence: dict[str, Any] = {
        "steps_per_epoch": steps_per_epoch(data, base.batch_size),
        "val_ceiling": validation_ceiling(data),
    }
    for epochs in (args.epochs, 2 * args.epochs):
        jobs: dict[str, tuple[str, TrainCfg]] = {}  # name in the evidence -> (run name, settings)
        for label in MODELS:
            run_name, cfg = tuning_run(
                label, tuned["lr"][label], shape if label == "SPARO" else None, args, base
            )
            if epochs != args.epochs:  # the budget itself is the tuning run (reused); twice it is new
                run_name, cfg = f"{label}-e{epochs}-seed{args.tune_seed}", replace(cfg, epochs=epochs)
            jobs[f"{label}-e{epochs}"] = (run_name, cfg)
        out = Path(args.out) / ("tune" if epochs == args.epochs else "plateau")
        runs = train_runs({n: (c, data) for n, c in jobs.values()}, out, args.slots)
        for name, (run_name, _) in jobs.items():
            run = runs[run_name]
            curve = [p["val_r1"] for p in run["curve"]]
            verdict = plateau(curve, ceiling=evidence["val_ceiling"])
            evidence[name] = {"curve": run["curve"], "flat": verdict.flat, "gain": verdict.gain,
                              "at_ceiling": verdict.at_ceiling, "headroom": verdict.headroom,
                              "final": curve[-1], "seconds": run["seconds"]}  # fmt: skip
    return evidence


def write_recipe(
    args: argparse.Namespace, tuned: dict[str, Any], evidence: dict[str, Any]
) -> recipe_mod.Recipe:
    """recipe.json, the tiny-SPARO slot shape, and the curve block of docs/quickstart.md."""
    from benchmarks.study_doc import write_quickstart_curve

    recipe = recipe_mod.Recipe(
        epochs=args.epochs,
        lr=tuned["lr"],
        batch_size=args.batch_size,
        measured_by=f"python -m benchmarks.study {' '.join(args.argv)}",
        evidence={"tuning": tuned, "plateau": {k: {kk: vv for kk, vv in v.items() if kk != "curve"}
                                               if isinstance(v, dict) else v for k, v in evidence.items()}},
    )  # fmt: skip
    recipe_mod.write(recipe)
    shape = tuple(int(x) for x in tuned["slot_shape"].split("x"))
    config = ROOT / "src" / "sparo_clip" / "models" / "model_configs" / f"{MODELS['SPARO']}.json"
    cfg = json.loads(config.read_text())
    cfg["embed_dim"] = shape[0] * shape[1]
    cfg["sparo_cfg"] |= {"num_slots": shape[0], "slot_dim": shape[1]}
    atomic_write_text(config, json.dumps(cfg, indent=4) + "\n")
    write_quickstart_curve(evidence, args, ROOT / "docs" / "quickstart.md")
    return recipe


def compare_stage(
    args: argparse.Namespace, recipe: recipe_mod.Recipe, sparo_override: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Both models on every seed at both budgets, evaluated; per budget the comparison over seeds.
    ``sparo_override``: tiny-SPARO's model-config override (the tuned slot shape), in training and evaluation."""
    out = Path(args.out) / "compare"
    budgets: dict[int, dict[str, Any]] = {}
    for epochs in sorted({args.short_epochs, args.epochs}):
        worlds = {
            seed: world_for(seed, args.data, recipe.world, recipe.sizes()) for seed in range(args.seeds)
        }
        jobs = {
            f"{label}-e{epochs}-seed{seed}": (
                TrainCfg(
                    model,
                    epochs,
                    recipe.batch_size,
                    recipe.lr[label],
                    recipe.wd,
                    recipe.warmup,
                    seed,
                    args.threads,
                    sparo_override if label == "SPARO" else None,
                ),  # fmt: skip
                worlds[seed],
            )
            for seed in worlds
            for label, model in MODELS.items()
        }
        # where each run's evaluations go, its model, and the model-config override they are made with
        evals = {f"{label}-e{epochs}-seed{seed}": (out / "eval" / f"e{epochs}-seed{seed}" / label, model,
                                                   sparo_override if label == "SPARO" else None)
                 for seed in worlds for label, model in MODELS.items()}  # fmt: skip
        runs = train_runs(
            jobs,
            out,
            slots=args.slots,
            evaluated=lambda name, ckpt, evals=evals: evaluations_saved(
                evals[name][0], evals[name][1], ckpt, evals[name][2]
            ),  # fmt: skip
        )
        per_seed, intervals, curves, blank = {}, {}, {}, {}
        for seed, data in worlds.items():
            per_seed[seed], intervals[seed], curves[seed], blank[seed] = {}, {}, {}, {}
            for label, model in MODELS.items():
                run = runs[f"{label}-e{epochs}-seed{seed}"]
                where, _, override = evals[f"{label}-e{epochs}-seed{seed}"]
                results = evaluate(model, run["checkpoint"], data, where, reuse=True, override=override)
                per_seed[seed][label] = metric_values(results)
                blank[seed][label] = {k: results[f"{k}_blank"]["groups"] for k in ("binding", "sugarcrepe")}
                intervals[seed][label] = {k: v.__dict__ for k, v in run_intervals(where).items()}
                curves[seed][label] = run["curve"]
                if not args.keep_checkpoints:
                    Path(run["checkpoint"]).unlink(missing_ok=True)
        comparison = {k: v.__dict__ | {"diff": v.diff.__dict__} for k, v in compare(per_seed).items()}
        budgets[epochs] = {"per_seed": per_seed, "intervals": intervals, "curves": curves, "comparison": comparison,
                           "blank": blank, "ceilings": {seed: validation_ceiling(data) for seed, data in worlds.items()},
                           "steps": epochs * steps_per_epoch(data, recipe.batch_size)}  # fmt: skip
    return budgets


def controls_and_untrained(
    args: argparse.Namespace, recipe: recipe_mod.Recipe, sparo_override: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Per comparison seed: the text-only reader's accuracy on every matching set (fit on that world's training
    captions), and both models at their seeded initialisation, evaluated like the trained ones (the untrained
    rows; their checkpoints are removed once evaluated unless ``--keep-checkpoints``)."""
    out = Path(args.out) / "compare"
    text_only, untrained = {}, {}
    for seed in range(args.seeds):
        data = world_for(seed, args.data, recipe.world, recipe.sizes())
        text_only[seed] = text_only_controls(data)
        untrained[seed] = {}
        for label, model in MODELS.items():
            override = sparo_override if label == "SPARO" else None
            where = out / "eval" / f"untrained-seed{seed}" / label
            ckpt = out / "untrained" / f"{label}-seed{seed}.pt"
            if not evaluations_saved(where, model, ckpt, override):
                untrained_checkpoint(model, ckpt, seed, override)
            results = evaluate(model, ckpt, data, where, reuse=True, override=override)
            untrained[seed][label] = metric_values(results)
            if not args.keep_checkpoints:
                ckpt.unlink(missing_ok=True)
    return {"text_only": text_only, "untrained": untrained}


def comparison_recipe(
    state: dict[str, Any], recipe: recipe_mod.Recipe, batch_size: int
) -> tuple[recipe_mod.Recipe, dict[str, Any] | None]:
    """What the comparison trains with: the main job's recipe, with the choices this study's tuning made (at its
    own ``--epochs``, which may be longer than the main job's budget) when it has tuned: the learning rates, and
    the slot shape, given to tiny-SPARO as a model-config override when it is not tiny-SPARO.json's.

    Returns:
        (the recipe, tiny-SPARO's override or None).
    """
    tuning = state.get("tuning")
    if tuning is None:
        return replace(recipe, batch_size=batch_size), None
    shape = tuple(int(x) for x in tuning["slot_shape"].split("x"))
    override = None if shape == _sparo_shape() else slot_override(shape)
    return replace(recipe, lr=dict(tuning["lr"]), batch_size=batch_size), override


def save_state(path: Path, state: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """Write the keys this call changed into the cache as it is on disk now, atomically: two study calls on one
    ``--out`` (say a plateau stage and a docs rewrite) keep each other's results. Returns what was written."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    current |= {k: v for k, v in state.items() if loaded.get(k) != v}
    text = json.dumps(current, indent=1, default=lambda v: None) + "\n"
    atomic_write_text(path, text)
    return json.loads(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("tune", "plateau", "compare", "all"), default="all")
    p.add_argument("--epochs", type=int, default=None, help="the final budget (default: the recipe's)")
    p.add_argument("--short-epochs", type=int, default=None, help="the shorter budget (default: a third)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="the batch of every run (default: the recipe's)"
    )
    p.add_argument("--seeds", type=int, default=5, help="comparison seeds, each its own world")
    p.add_argument("--tune-seed", type=int, default=1000, help="the world tuning and the plateau runs use")
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="the starting learning-rate grid")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training (two train at a time)")
    p.add_argument("--slots", type=int, default=2, help="trainings at a time (default 2: one per core)")
    p.add_argument("--data", default="data/shapes", help="the worlds (generated per seed, cached)")
    p.add_argument("--out", default="runs/study", help="the run cache")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the comparison runs' checkpoints")
    p.add_argument(
        "--write-recipe", action="store_true", help="write recipe.json, tiny-SPARO.json and the curve"
    )
    p.add_argument("--write-docs", action="store_true", help="write docs/study.md from the comparison")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[study] %(message)s")
    try:
        base = recipe_mod.load()
    except Exception:  # noqa: BLE001 (the first study writes the first recipe)
        base = recipe_mod.Recipe(
            epochs=8 if args.epochs is None else args.epochs, lr={k: 1e-3 for k in MODELS}
        )
    # None means 'the recipe's'; 0 is a value, refused below (not silently replaced by the default)
    args.epochs = base.epochs if args.epochs is None else args.epochs
    args.batch_size = base.batch_size if args.batch_size is None else args.batch_size
    base = replace(base, batch_size=args.batch_size)
    args.short_epochs = max(1, args.epochs // 3) if args.short_epochs is None else args.short_epochs
    problem = next((f"--{n.replace('_', '-')} must be >= 1" for n in ("epochs", "short_epochs", "seeds", "threads", "slots", "batch_size")
                    if getattr(args, n) < 1), None)  # fmt: skip
    if problem is None and not all(math.isfinite(lr) and lr > 0 for lr in args.lrs):
        problem = f"--lrs {args.lrs}: expected positive, finite learning rates"
    out = Path(args.out)
    state_path = out / "study.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if problem is None and args.write_docs and args.stage in ("tune", "plateau") and "compare" not in state:
        problem = f"--write-docs needs a comparison: {state_path} has none yet (run --stage compare)"
    if problem is None and args.write_docs and args.stage == "compare" and "tuning" not in state:
        problem = (
            f"--write-docs needs the tuning the doc reports: {state_path} has none yet (run --stage tune)"
        )
    if problem:
        print(f"study: error: {problem}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    loaded = json.loads(json.dumps(state))
    t = time.perf_counter()
    if args.stage in ("tune", "all"):
        state["tuning"] = tune(args, base)
    if args.stage in ("plateau", "all"):
        if "tuning" not in state:
            print("study: error: run --stage tune first (its choices are not in the cache)", file=sys.stderr)
            return 2
        state["plateau"] = plateau_evidence(args, base, state["tuning"])
        if args.write_recipe:
            base = write_recipe(args, state["tuning"], state["plateau"])
    if args.stage in ("compare", "all"):
        recipe = recipe_mod.load()
        trained_with, sparo_override = comparison_recipe(state, recipe, args.batch_size)
        state["compare"] = {str(k): v for k, v in compare_stage(args, trained_with, sparo_override).items()}
        state["controls"] = controls_and_untrained(args, trained_with, sparo_override)
        state["recipe"] = recipe.to_dict()  # the main job's (its default budget)
        state["compare_recipe"] = trained_with.to_dict() | {"sparo_override": sparo_override}
    settings = {
        "epochs": args.epochs, "short_epochs": args.short_epochs, "batch_size": args.batch_size, "seeds": args.seeds, "tune_seed": args.tune_seed,
        "command": "python -m benchmarks.study " + " ".join(args.argv),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} thread(s) per run",
        "seconds_this_call": time.perf_counter() - t,
    }  # fmt: skip
    if args.stage in ("compare", "all"):
        state["settings"] = settings  # what docs/study.md says was run: the comparison's call
    state["last_call"] = settings
    state = save_state(state_path, state, loaded)
    if args.write_docs:
        from benchmarks.study_doc import write_study_doc

        write_study_doc(state, ROOT / "docs" / "study.md")
        print(f"wrote {ROOT / 'docs' / 'study.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
