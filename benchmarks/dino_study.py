"""The tiny SPARO-DINO recipe, searched and measured: ``python -m benchmarks.dino_study``.

1. **Search** (``--stage search``, on a world of its own, seed ``--tune-seed``, never one the quickstart or the
   ablation uses): starting from :class:`sparo_clip.dino.quickstart.Budget`, one setting at a time
   (:data:`AXES`: SPARO-DINO's head input, teacher momentum, teacher temperature, learning rate, prototypes K,
   the teacher temperature's warm-up),
   both twins trained with
   each value and the value kept that gives the higher mean kNN top-1 of the two twins, among the values with
   which both twins *learn* (:func:`learns`: no collapse warning; at the end the targets carry information and
   spread over the prototypes). One seed per candidate: the search finds a recipe that works for both twins,
   it does not rank them; the comparison is the quickstart's, over seeds.
2. **Head input** (``--stage head-input``): SPARO-DINO with its slots entering the head with unit norm, scaled
   to norm sqrt(L V), or through a LayerNorm, on ``--seeds`` worlds of their own (seeds 100, 101, ...), each
   variant paired by seed with ``unit``. Rule, fixed before the runs: another input becomes the default only
   if its kNN top-1 over all classes beats ``unit`` with a paired 95% t interval above 0.
3. **Levers** (``--stage levers``; exploratory, one seed): both twins under the recipe the job runs
   (``recipe.json``) changed in one way at a time (:data:`LEVERS`: more steps, a larger batch, more local crops, a larger
   learning rate), scored on the linear probe of shape against the untrained encoder (rule: :data:`LIFT`).
4. ``--write-recipe`` writes the chosen budget into ``sparo_clip/dino/recipe.json`` (what
   ``python -m sparo_clip.dino.quickstart`` runs); ``--write-docs`` writes the search, the ablation and the levers into
   docs/dino.md.

Every training and every probe is cached under ``--out`` by its settings: the study is resumable and runs in
parts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sparo_clip.checkpoints.files import atomic_write_text, replace_block
from sparo_clip.dino import quickstart as qs
from sparo_clip.errors import SparoClipError, one_line
from sparo_clip.experiment.stats import t_interval
from sparo_clip.inputs import check_writable_folder

_logger = logging.getLogger("benchmarks.dino_study")
ROOT = Path(__file__).resolve().parents[1]
AXES: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("head_input", ("unit", "sqrt_dim", "layernorm")),  # SPARO-DINO only: CLS-DINO's runs are reused
    ("momentum", (0.99, 0.98, 0.996)),
    ("teacher_temp", (0.04, 0.07)),
    ("lr", (2e-3, 1e-3, 4e-3)),
    ("output_dim", (256, 1024)),
    # DINO warms the teacher's temperature up (0.04 -> 0.07 over 30 epochs); here the question is the start: an
    # untrained tiny ViT's targets are nearly flat, and a sharper teacher for the first epochs (0.02 -> the
    # temperature over 3 epochs) may let them tell images apart sooner. (x, 0): no warm-up.
    ("teacher_temp_warmup", ((0.04, 0), (0.02, 3))),
)
COMPOSITE = {"teacher_temp_warmup": ("warmup_teacher_temp", "warmup_teacher_temp_epochs")}
EXTEND = (
    "lr",
)  # numeric settings whose grid is extended by 2x past a winning edge, so the choice is bracketed
MAX_EXTENSIONS = 2
HEAD_INPUTS = ("unit", "sqrt_dim", "layernorm")
# Stage 3 (exploratory, one seed): does any of the recipe's obvious levers make shape linearly readable? Each
# changes the recipe the job runs in one way, relative to its own values. "Twice the batch" keeps the steps (so
# twice the epochs); the peak lr scales with the batch and the warm-up is counted in epochs, as in DINO.
LEVERS: tuple[tuple[str, Any], ...] = (
    ("the recipe", lambda b: {}),
    ("twice the steps", lambda b: {"epochs": 2 * b.epochs}),
    ("twice the batch, same steps", lambda b: {"batch": 2 * b.batch, "epochs": 2 * b.epochs}),
    ("twice the local crops", lambda b: {"local_crops": 2 * b.local_crops}),
    ("4x the learning rate", lambda b: {"lr": 4 * b.lr}),
)
LIFT = 0.10  # the rule, fixed before the runs: a lever lifts shape if both twins' linear shape top-1 rises >= 10 points
EARLIER = "an earlier call of python -m benchmarks.dino_study"  # a study saved before calls were recorded
_EPS = 1e-6  # accuracies are float32: an exact 10-point rise must count
LEVERS_BEGIN, LEVERS_END = "<!-- dino-shape-levers:begin -->", "<!-- dino-shape-levers:end -->"
SEARCH_BEGIN, SEARCH_END = "<!-- dino-recipe-search:begin -->", "<!-- dino-recipe-search:end -->"
HEAD_BEGIN, HEAD_END = "<!-- dino-head-input:begin -->", "<!-- dino-head-input:end -->"
MIN_INFORMATION = 0.1  # of log K: H(mean t) - H(t|x) at the end, the targets still tell images apart
MIN_SPREAD = 0.5  # of log K: H(mean t) at the end, the batch still spreads over the prototypes


def learns(diag: dict[str, Any]) -> bool:
    """A run that learns: no collapse warning, and at its last logged step targets that carry information
    (H(mean t) - H(t|x) >= 0.1 log K) and spread over the prototypes (H(mean t) >= 0.5 log K)."""
    if diag["collapse_warnings"] or diag["h_target"] is None:
        return False
    log_k = diag["log_k"]
    return (
        diag["h_mean"] - diag["h_target"] >= MIN_INFORMATION * log_k and diag["h_mean"] >= MIN_SPREAD * log_k
    )


def _world(args: argparse.Namespace, budget: qs.Budget, seed: int) -> tuple[dict[str, Any], str]:
    return qs.prepare_world(budget, Path(args.out), seed, qs.WORLD)


def candidates(args: argparse.Namespace, budgets: list[qs.Budget]) -> list[dict[str, Any]]:
    """Both twins under each budget on the tuning world (all trainings in one queue): probes, diagnostics and
    whether both learn."""
    probes, images = _world(args, budgets[0], args.tune_seed)
    jobs = [[qs.Job(name, b, args.tune_seed, images) for name in qs.MODELS] for b in budgets]
    unique = list(dict.fromkeys(job.folder(Path(args.out)) for group in jobs for job in group))
    by_folder = {job.folder(Path(args.out)): job for group in jobs for job in group}
    runs, _ = qs.train_jobs([by_folder[f] for f in unique], Path(args.out), parallel=True)
    results = []
    for group in jobs:
        twins = {
            job.name: qs.evaluate_run(job, runs[by_folder[job.folder(Path(args.out))]], probes)
            for job in group
        }
        knn = {name: t["trained"]["knn"]["all"] for name, t in twins.items()}
        results.append({
            "twins": {name: {"knn": knn[name], "knn_init": t["init"]["knn"]["all"],
                             "linear": t["trained"]["linear"]["all"], "linear_init": t["init"]["linear"]["all"],
                             "linear_shape": t["trained"]["linear"].get("shape"),
                             "linear_shape_init": t["init"]["linear"].get("shape"), "learns": learns(t["diagnostics"]),
                             "information": _information(t["diagnostics"]), "h_mean": t["diagnostics"]["h_mean"],
                             "log_k": t["diagnostics"]["log_k"]}
                      for name, t in twins.items()},
            "score": sum(knn.values()) / len(knn),
            "both_learn": all(learns(t["diagnostics"]) for t in twins.values()),
        })  # fmt: skip
    return results


def _with(budget: qs.Budget, field_name: str, value: Any) -> qs.Budget:
    """``budget`` with one setting of :data:`AXES` changed (a composite setting sets each of its fields)."""
    if field_name in COMPOSITE:
        return replace(budget, **dict(zip(COMPOSITE[field_name], value, strict=True)))
    return replace(budget, **{field_name: value})


def _value(budget: dict[str, Any], field_name: str) -> Any:
    """A setting's value in a budget's fields (a composite one as a tuple)."""
    if field_name in COMPOSITE:
        return tuple(budget[f] for f in COMPOSITE[field_name])
    return budget[field_name]


def _key(value: Any) -> str:
    """A value as the study's JSON keys it (tuples and their JSON lists alike)."""
    return json.dumps(list(value)) if isinstance(value, (tuple, list)) else str(value)


def _label(field_name: str, value: Any) -> str:
    if field_name == "teacher_temp_warmup":
        start, epochs = json.loads(value) if isinstance(value, str) else value
        return "none" if not epochs else f"from {start} over {epochs} epochs"
    return str(value)


def _information(diag: dict[str, Any]) -> float | None:
    return None if diag["h_target"] is None else diag["h_mean"] - diag["h_target"]


def _best(values: list[Any], results: dict[Any, dict[str, Any]]) -> Any:
    """The value with the highest score among those where both twins learn (none learns: the highest score,
    flagged in the docs)."""
    ok = [v for v in values if results[v]["both_learn"]]
    return max(ok or values, key=lambda v: results[v]["score"])


def search(args: argparse.Namespace, start: qs.Budget) -> dict[str, Any]:
    """One setting at a time, in :data:`AXES` order; each keeps its best value among those where both learn.
    The learning rate's grid is extended by 2x past a winning edge (at most :data:`MAX_EXTENSIONS` times)."""
    current, steps = start, []
    for field_name, grid in AXES:
        values = list(grid)
        found = candidates(args, [_with(current, field_name, value) for value in values])
        results = dict(zip(values, found, strict=True))
        best = _best(values, results)
        for _ in range(MAX_EXTENSIONS if field_name in EXTEND else 0):
            ordered = sorted(values)
            if best not in (ordered[0], ordered[-1]):
                break  # bracketed
            value = best / 2 if best == ordered[0] else best * 2
            results[value] = candidates(args, [_with(current, field_name, value)])[0]
            values.append(value)
            best = _best(values, results)
        for value in values:
            _logger.info("%s = %s: %s", field_name, value, json.dumps(results[value]))
        ok = [v for v in values if results[v]["both_learn"]]
        steps.append({"field": field_name, "values": {_key(v): results[v] for v in values}, "chosen": best,
                      "start": _value(asdict(current), field_name), "any_learns": bool(ok)})  # fmt: skip
        current = _with(current, field_name, best)
    return {"budget": asdict(current), "steps": steps, "tune_seed": args.tune_seed}


def head_input(args: argparse.Namespace, budget: qs.Budget) -> dict[str, Any]:
    """SPARO-DINO with each head input on ``--seeds`` worlds; each variant paired by seed with unit."""
    seeds = [100 + i for i in range(args.seeds)]
    prepared = {seed: _world(args, budget, seed) for seed in seeds}
    jobs = {(v, seed): qs.Job("SPARO-DINO", replace(budget, head_input=v), seed, prepared[seed][1])
            for v in HEAD_INPUTS for seed in seeds}  # fmt: skip
    runs, _ = qs.train_jobs(list(jobs.values()), Path(args.out), parallel=True)
    per: dict[str, dict[str, list[float]]] = {v: {} for v in HEAD_INPUTS}
    learned: dict[str, list[bool]] = {v: [] for v in HEAD_INPUTS}
    for (v, seed), job in jobs.items():
        r = qs.evaluate_run(job, runs[job], prepared[seed][0])
        for task in qs.PROBES:
            for group in qs.GROUPS:
                per[v].setdefault(f"{task} {group}", []).append(r["trained"][task][group])
        learned[v].append(learns(r["diagnostics"]))
    diffs = {}
    for v in HEAD_INPUTS[1:]:
        diffs[v] = {}
        for key in per[v]:
            iv = t_interval([b - a for a, b in zip(per["unit"][key], per[v][key], strict=True)])
            diffs[v][key] = {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}
    better = [v for v in HEAD_INPUTS[1:] if diffs[v]["knn all"]["low"] > 0]
    chosen = max(better, key=lambda v: diffs[v]["knn all"]["mean"]) if better else "unit"
    return {"seeds": seeds, "values": per, "learns": learned, "diff_vs_unit": diffs, "chosen": chosen,
            "budget": asdict(budget)}  # fmt: skip


def levers(args: argparse.Namespace, budget: qs.Budget) -> dict[str, Any]:
    """Both twins under each of :data:`LEVERS` on the tuning world: probes of both weights and whether both
    twins learn; a lever lifts shape when both twins' linear shape top-1 rises by :data:`LIFT` over the untrained
    encoder."""
    changes = [change(budget) for _, change in LEVERS]
    found = candidates(args, [replace(budget, **change) for change in changes])
    rows = {}
    for (name, _), change, r in zip(LEVERS, changes, found, strict=True):
        shape = [(t["linear_shape"], t["linear_shape_init"]) for t in r["twins"].values()]
        if any(v is None for pair in shape for v in pair):
            raise RuntimeError(
                f"lever {name!r}: the tuning world has no shape probe (rebuild it: --out, a new folder)"
            )
        rows[name] = r | {"change": change, "lifts_shape": all(a - b >= LIFT - _EPS for a, b in shape)}
    return {"rows": rows, "tune_seed": args.tune_seed, "budget": asdict(budget), "world": _world_size()}


def _world_size() -> dict[str, int]:
    return {"colours": len(qs.WORLD.colors), "shapes": len(qs.WORLD.shapes)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def search_block(state: dict[str, Any]) -> str:
    s = state["search"]
    lines = [
        f"Written by `{s.get('command', EARLIER)}` on the tuning world (seed {s['tune_seed']}, one seed per candidate; each "
        "setting varied with the others at their current values, in this order). Score: mean kNN top-1 (k = 20, "
        "all classes) of the two trained twins; a value is eligible only if both twins learn (no collapse "
        f"warning; at the end H(mean t) - H(t|x) >= {MIN_INFORMATION} log K and H(mean t) >= {MIN_SPREAD} log K).",
        "",
        "| setting | value | CLS-DINO kNN (untrained) | SPARO-DINO kNN (untrained) | CLS / SPARO info. (nats) | both learn | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for step in s["steps"]:
        for value, r in step["values"].items():
            c, p = r["twins"]["CLS-DINO"], r["twins"]["SPARO-DINO"]
            info = " / ".join("-" if t["information"] is None else f"{t['information']:.2f}" for t in (c, p))
            chosen = "**yes**" if value == _key(step["chosen"]) else ""
            lines.append(
                f"| {step['field']} | {_label(step['field'], value)} | {_pct(c['knn'])} ({_pct(c['knn_init'])}) | "
                f"{_pct(p['knn'])} ({_pct(p['knn_init'])}) | {info} | {'yes' if r['both_learn'] else 'no'} | {chosen} |"
            )
    if not all(step["any_learns"] for step in s["steps"]):
        lines += ["", "For at least one setting no value let both twins learn; its best score was kept."]
    b = s["budget"]
    # a study saved before an axis existed did not search it
    searched = [step["field"] for step in s["steps"]]
    lines += ["", "Chosen: " + ", ".join(f"{k} {_label(k, _value(b, k))}" for k in searched) + "."]
    return "\n".join(lines)


def levers_block(state: dict[str, Any]) -> str:
    lv = state["levers"]
    world = lv.get("world", _world_size())  # a study saved before the screen recorded its world: the job's
    n_shapes, n_classes = world["shapes"], world["shapes"] * world["colours"]
    lines = [
        f"Written by `{lv.get('command', EARLIER)}` on the tuning world (seed {lv['tune_seed']}; one seed per "
        "lever, so this is a screen, not a comparison). Each row changes the recipe the job runs in one way and "
        "trains both twins (twice the batch keeps the steps; its peak lr scales with the batch and its warm-up "
        "is counted in epochs, as in DINO); the linear probe reads the teacher (trained) and the same encoder at "
        f"initialisation (untrained), on shape ({n_shapes} classes, chance {100 / n_shapes:.0f}) and on the "
        f"{n_classes} colour-shape classes. The rule, fixed before the runs: a lever lifts "
        f"shape if both twins' linear shape top-1 rises by at least {round(100 * LIFT)} points over the untrained "
        "encoder. The supervised control above is the ceiling.",
        "",
        "| lever | CLS-DINO shape | SPARO-DINO shape | CLS-DINO classes | SPARO-DINO classes | CLS / SPARO kNN | both learn | lifts shape |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in lv["rows"].items():
        c, p = r["twins"]["CLS-DINO"], r["twins"]["SPARO-DINO"]
        cells = [f"{_pct(t[k])} ({_pct(t[k + '_init'])})" for k in ("linear_shape", "linear") for t in (c, p)]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_pct(c['knn'])} / {_pct(p['knn'])} | "
            f"{'yes' if r['both_learn'] else 'no'} | {'**yes**' if r['lifts_shape'] else 'no'} |"
        )
    lifted = [name for name, r in lv["rows"].items() if r["lifts_shape"]]
    lines += ["", "Trained (untrained) linear-probe top-1 %. " + (
        f"Levers that met the rule on this seed: {', '.join(lifted)}." if lifted else
        "No lever met the rule on this seed.")]  # fmt: skip
    return "\n".join(lines)


def head_block(state: dict[str, Any]) -> str:
    h = state["head_input"]
    lines = [
        f"Written by `{h.get('command', EARLIER)}`: SPARO-DINO with the searched recipe on {len(h['seeds'])} worlds of their own "
        f"(seeds {', '.join(map(str, h['seeds']))}). Top-1 %, mean over seeds; the differences are each input "
        "minus `unit`, paired by seed, with their 95% t intervals. The rule, fixed before the runs: another input "
        "becomes the default only if its kNN top-1 over all classes beats `unit` with an interval above 0.",
        "",
        "| head input | kNN all | kNN held-out | linear all | linear held-out | runs that learn |",
        "|---|---|---|---|---|---|",
    ]
    keys = ("knn all", "knn held_out", "linear all", "linear held_out")
    for v in HEAD_INPUTS:
        cells = []
        for key in keys:
            vals = h["values"][v][key]
            cell = _pct(sum(vals) / len(vals))
            if v != "unit":
                d = h["diff_vs_unit"][v][key]
                cell += f" ({100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}])"
            cells.append(cell)
        lines.append(
            f"| `{v}` | " + " | ".join(cells) + f" | {sum(h['learns'][v])} of {len(h['learns'][v])} |"
        )
    lines += [
        "",
        f"Default: `{h['chosen']}`" + (" (no other input met the rule)." if h["chosen"] == "unit" else "."),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dino_study", description=__doc__.split("\n")[0])
    p.add_argument(
        "--stage",
        choices=("search", "head-input", "all", "levers"),
        default="all",
        help="all: search, then head-input; levers (after the search): the shape-probe screen",
    )
    p.add_argument("--seeds", type=int, default=3, help="worlds of the head-input ablation (seeds 100, ...)")
    p.add_argument("--tune-seed", type=int, default=1000, help="the world the search uses")
    p.add_argument("--out", default="runs/dino_study", help="the run cache")
    p.add_argument("--write-recipe", action="store_true", help="write sparo_clip/dino/recipe.json")
    p.add_argument(
        "--write-docs", action="store_true", help="write the search and the ablation into docs/dino.md"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[dino-study] %(message)s")
    if args.seeds < 2:
        print("dino-study: error: --seeds must be >= 2 (a paired interval needs two seeds)", file=sys.stderr)
        return 2
    try:
        check_writable_folder(args.out, "--out")
    except SparoClipError as e:
        print(f"dino-study: error: {one_line(e)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "study.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    t = time.perf_counter()
    command = "python -m benchmarks.dino_study " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.stage in ("search", "all"):
        state["search"] = search(args, qs.Budget()) | {"command": command}
    if args.stage in ("head-input", "all"):
        if "search" not in state:
            print(
                "dino-study: error: run --stage search first (its choices are not in the cache)",
                file=sys.stderr,
            )
            return 2
        budget = qs.Budget(
            **(state["search"]["budget"] | {"probe_args": tuple(state["search"]["budget"]["probe_args"])})
        )
        state["head_input"] = head_input(args, budget) | {"command": command}
    if args.stage == "levers":  # on the recipe the main job runs (recipe.json)
        state["levers"] = levers(args, qs.load_budget()[0]) | {"command": command}
    state["seconds_this_call"] = time.perf_counter() - t
    atomic_write_text(state_path, json.dumps(state, indent=1) + "\n")
    if args.write_recipe:
        if "search" not in state or "head_input" not in state:
            print("dino-study: error: --write-recipe needs both stages in the cache", file=sys.stderr)
            return 2
        budget = qs.Budget(**(state["search"]["budget"] | {"probe_args": tuple(state["search"]["budget"]["probe_args"]),
                                                           "head_input": state["head_input"]["chosen"]}))  # fmt: skip
        evidence = {"search": {k: v for k, v in state["search"].items() if k != "steps"},
                    "head_input": {"chosen": state["head_input"]["chosen"],
                                   "knn_all_vs_unit": {v: d["knn all"] for v, d in state["head_input"]["diff_vs_unit"].items()}}}  # fmt: skip
        print(f"wrote {qs.write_budget(budget, command, evidence)}")
    if args.write_docs:
        doc = ROOT / "docs" / "dino.md"
        if "search" in state:
            replace_block(doc, SEARCH_BEGIN, SEARCH_END, search_block(state))
        if "head_input" in state:
            replace_block(doc, HEAD_BEGIN, HEAD_END, head_block(state))
        if "levers" in state:
            replace_block(doc, LEVERS_BEGIN, LEVERS_END, levers_block(state))
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
