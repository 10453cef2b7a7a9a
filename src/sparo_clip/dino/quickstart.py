"""SPARO-DINO main job: ``python -m sparo_clip.dino.quickstart`` (``sparo-clip dino quickstart``).

For each of ``--seeds`` seeds (default 3; every seed its own shapes world with its own held-out colour-shape
pairs), trains the tiny CLS-DINO and SPARO-DINO twins (``tiny_dino`` / ``tiny_sparo_dino``: same backbone,
recipe, steps and seed) side by side, one core each, with ``python -m sparo_clip.dino.train``; then probes each
teacher with kNN (k = 20) and a linear classifier on the colour-shape classes (single-object images), seen and
held-out pairs apart, beside the same encoders at initialisation. Writes ``report.json`` and ``report.md``:
per twin mean ± sd over seeds, SPARO − CLS with a paired t interval over seeds, the untrained rows, the collapse
diagnostics every run logged (:mod:`sparo_clip.dino.diagnostics`) and a slot attention picture. ``--write-docs``
puts the measured table into docs/dino.md. ``--small`` is a seconds-long smoke run.

The recipe (:class:`Budget`) is the tiny one docs/dino.md explains: colour kept (no colour jitter, greyscale or
solarisation: the probe classes are colour-shape pairs), no blur, crops made on tensors, a teacher momentum that
moves the teacher well away from its random start within the run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import atomic_save, atomic_write_text, replace_block
from sparo_clip.data.generate import generate
from sparo_clip.data.sets import SizeCfg
from sparo_clip.data.world import WorldCfg
from sparo_clip.dino.config import load_config
from sparo_clip.dino.model import DinoNet, load_encoder
from sparo_clip.dino.pictures import slot_attention_png
from sparo_clip.dino.shapes import probe_sets
from sparo_clip.errors import ConfigError, SparoClipError, one_line
from sparo_clip.eval import cli as eval_cli
from sparo_clip.experiment.runs import last_line
from sparo_clip.experiment.stats import t_interval
from sparo_clip.inputs import check_finite_numbers, check_writable_folder, load_json

ROOT = Path(__file__).resolve().parents[3]
MODELS = {"CLS-DINO": "tiny_dino", "SPARO-DINO": "tiny_sparo_dino"}
WORLD = WorldCfg(image_size=32)  # 6 colours x 4 shapes, 20% of the pairs held out, a new choice per seed
BEGIN, END = "<!-- dino-quickstart:begin -->", "<!-- dino-quickstart:end -->"
PROBES = ("knn", "linear")
GROUPS = ("all", "seen", "held_out")  # colour-shape classes: all, seen in training images, held out of them
FACTORS = ("colour", "shape")  # the same images, classes by one factor (a probe of its own)
logger = logging.getLogger("sparo_clip.dino.quickstart")


RECIPE_FILE = Path(__file__).with_name("recipe.json")  # written by benchmarks/dino_study.py --write-recipe
PROBE_FIELDS = ("per_class", "probe_args")  # what only the probes read: never a reason to train again


@dataclass(frozen=True)
class Budget:
    """What the job does: world size, training steps and batch, the recipe, probe images per class.

    The defaults are the recipe search's starting point (benchmarks/dino_study.py); the job runs the recipe the
    search wrote (:func:`load_budget`).
    """

    train_images: int = 4096
    per_class: int = 20
    epochs: int = 20
    batch: int = 64
    local_crops: int = 4
    lr: float = 2e-3
    warmup_epochs: float = 2.0
    momentum: float = 0.99
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    output_dim: int = 256  # K, the prototypes of both twins' heads
    head_input: str = "unit"  # how SPARO-DINO's slots enter its head (docs/dino.md: measured)
    probe_args: tuple[str, ...] = ()

    @property
    def steps(self) -> int:
        return self.epochs * (self.train_images // self.batch)

    def overrides(self, model: str) -> dict[str, Any]:
        """The model-config overrides this budget gives ``model`` (K; SPARO-DINO's head input)."""
        out: dict[str, Any] = {"head": {"output_dim": self.output_dim}}
        if model == MODELS["SPARO-DINO"] and self.head_input != "unit":
            out["head_input"] = self.head_input
        return out

    def training_key(self, model: str) -> str:
        """A short hash of everything that decides ``model``'s training under this budget (run folders are
        named by it, so a change retrains and everything else is reused)."""
        fields = {k: v for k, v in asdict(self).items() if k not in PROBE_FIELDS and k != "head_input"}
        fields |= {"model": model, "overrides": self.overrides(model)}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


SMALL = Budget(train_images=64, per_class=4, epochs=1, batch=8, local_crops=2,
               probe_args=("--wd", "1e-3", "--max-iter", "20"))  # fmt: skip


def load_budget(path: Path | None = None) -> tuple[Budget, str | None]:
    """The recipe the search measured (``recipe.json``) and the command that wrote it, or the starting point
    and None when no search has written one."""
    path = RECIPE_FILE if path is None else path
    if not path.is_file():
        return Budget(), None
    data = load_json(path.read_text(), str(path))
    budget = data["budget"] | {"probe_args": tuple(data["budget"].get("probe_args", ()))}
    return Budget(**budget), data.get("measured_by")


def write_budget(
    budget: Budget, measured_by: str, evidence: dict[str, Any], path: Path | None = None
) -> Path:
    path = RECIPE_FILE if path is None else path
    text = json.dumps({"budget": asdict(budget), "measured_by": measured_by, "evidence": evidence}, indent=1)
    return atomic_write_text(path, text + "\n")


def train_args(budget: Budget, model: str, images: str, out: Path, seed: int) -> list[str]:
    """The recipe both twins get (see docs/dino.md for each choice)."""
    return [
        "--model", model, "--train-data", images, "--dataset-type", "folder", "--augment", "tensor", "--no-blur",
        "--color-jitter", "0", "--grayscale", "0", "--solarize", "0",
        "--epochs", str(budget.epochs), "--batch-size", str(budget.batch), "--local-crops", str(budget.local_crops),
        "--lr", str(budget.lr), "--warmup-epochs", str(budget.warmup_epochs),
        "--momentum-teacher", str(budget.momentum), "--teacher-temp", str(budget.teacher_temp),
        "--warmup-teacher-temp", str(budget.warmup_teacher_temp),
        "--warmup-teacher-temp-epochs", str(budget.warmup_teacher_temp_epochs),
        "--model-overrides", json.dumps(budget.overrides(model)),
        "--workers", "0", "--device", "cpu", "--precision", "fp32", "--seed", str(seed),
        "--save-every", str(budget.steps), "--log-every", "10", "--output", str(out), "--resume", "auto",
    ]  # fmt: skip


def init_checkpoint(model: str, path: Path, seed: int = 0, overrides: dict | None = None) -> Path:
    """A twin's initial teacher (what training starts from), saved like a training checkpoint."""
    if path.is_file():
        return path
    cfg = load_config(model, overrides)
    torch.manual_seed(seed)
    net = DinoNet(cfg)
    state = {"dino_cfg": cfg.to_dict(), "teacher": net.state_dict(), "student": net.state_dict()}
    atomic_save(state, path)
    return path


def probe(ckpt: Path, probes: dict[str, Any], out: Path, linear_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """kNN (k = 20) and linear-probe accuracy over all, seen and held-out classes of the teacher."""
    result = {}
    common = ["--model", f"dino:{ckpt}", "--train", probes["train"], "--val", probes["val"], "--workers", "0",
              "--device", "cpu", "--precision", "fp32", "--cache-dir", ""]  # fmt: skip
    for task, extra in (("knn", ["--k", "20"]), ("linear", list(linear_args))):
        path = out / f"{task}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the JSON goes to the file, not the console
            rc = eval_cli.main([task, *common, *extra, "--output", str(path)])
        if rc != 0:
            raise RuntimeError(f"eval {task} of {ckpt} failed")
        metrics = json.loads(path.read_text())["metrics"]
        metrics = metrics["k=20"] if task == "knn" else metrics
        per_class = metrics["per_class_top1"]
        row = {"all": metrics["top1"]}
        for group in ("seen", "held_out"):
            names = [c for c in probes[group] if c in per_class]
            row[group] = sum(per_class[c] for c in names) / len(names) if names else None
        for factor, folders in probes.get("factors", {}).items():  # the same probe on one factor's labels
            argv = [task, *common, *extra, "--train", folders["train"], "--val", folders["val"]]
            path = out / f"{task}_{factor}.json"
            with contextlib.redirect_stdout(io.StringIO()):
                rc = eval_cli.main([*argv, "--output", str(path)])
            if rc != 0:
                raise RuntimeError(f"eval {task} ({factor}) of {ckpt} failed")
            metrics = json.loads(path.read_text())["metrics"]
            row[factor] = (metrics["k=20"] if task == "knn" else metrics)["top1"]
        result[task] = row
    return result


def diagnostics(run: Path) -> dict[str, Any]:
    """The collapse diagnostics a run logged: the last H(t|x), H(mean t), KL, log K, and any warning."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    with_stats = [r for r in rows if "h_target" in r]
    last = with_stats[-1] if with_stats else {}
    return {
        "h_target": last.get("h_target"),
        "h_mean": last.get("h_mean"),
        "kl": last.get("kl"),
        "log_k": last.get("log_k"),
        "collapse_warnings": [r["collapse_warning"] for r in rows if "collapse_warning" in r],
        "curve": [{k: r[k] for k in ("step", "loss", "h_target", "h_mean")} for r in with_stats],
    }


@dataclass(frozen=True)
class Job:
    """One training: a twin (its name in :data:`MODELS`) under a budget on one seed's world."""

    name: str
    budget: Budget
    seed: int
    images: str

    @property
    def model(self) -> str:
        return MODELS[self.name]

    def folder(self, out: Path) -> Path:
        return out / "runs" / f"{self.name}-seed{self.seed}-{self.budget.training_key(self.model)}"


def train_jobs(jobs: list[Job], out: Path, parallel: bool = True) -> tuple[dict[Job, Path], int]:
    """Train every job not trained before (two at a time, one core each, or one after the other); returns
    each job's run folder and how many were trained now. A finished run (``done.json``) is reused: its
    folder is named by the settings."""
    runs = {job: job.folder(out) for job in jobs}
    queue = [job for job in jobs if not (runs[job] / "done.json").is_file()]
    trained = len(queue)
    running: dict[Job, subprocess.Popen] = {}
    slots = 2 if parallel else 1
    env = dict(os.environ, OMP_NUM_THREADS="1" if parallel else str(os.cpu_count() or 1))
    try:
        while queue or running:
            while queue and len(running) < slots:
                job = queue.pop(0)
                logger.info(
                    "%s seed %d: training %d steps (%s)", job.name, job.seed, job.budget.steps, runs[job]
                )
                # stderr goes to a file: a pipe nobody reads while the run goes on fills up and stops it
                with open(_stderr_file(runs[job]), "w") as err:
                    running[job] = subprocess.Popen(
                        train_command(job, runs[job]), env=env, stdout=subprocess.DEVNULL, stderr=err
                    )
            done = next((j for j, proc in running.items() if proc.poll() is not None), None)
            if done is None:
                time.sleep(0.5)
                continue
            _finish(done, running.pop(done), runs[done])
    finally:
        for proc in running.values():  # a failure stops the others: nothing keeps running
            proc.kill()
    return runs, trained


def train_command(job: Job, run: Path) -> list[str]:
    """The command that trains one job into ``run``."""
    args = train_args(job.budget, job.model, job.images, run, job.seed)
    return [sys.executable, "-m", "sparo_clip.dino.train", *args]


def _stderr_file(run: Path) -> Path:
    """Beside the run folder (training checks what its --output holds before it starts)."""
    run.parent.mkdir(parents=True, exist_ok=True)
    return run.parent / f"{run.name}.stderr"


def _finish(job: Job, proc: subprocess.Popen, run: Path) -> None:
    proc.wait()
    if proc.returncode != 0:
        err = _stderr_file(run)
        raise RuntimeError(f"training {job.name} seed {job.seed} failed ({last_line(err)}); see {err}")
    atomic_write_text(run / "done.json", json.dumps(asdict(job.budget)) + "\n")


def prepare_world(budget: Budget, out: Path, seed: int, world: WorldCfg) -> tuple[dict[str, Any], str]:
    """One seed's world (generated or reused), its probe sets and its training images folder."""
    # the DINO job reads the training images and the zero-shot folders; the other sets stay at their minimum
    sizes = SizeCfg(train=budget.train_images, val=8, shards=4, zeroshot_per_class=2 * budget.per_class,
                    sugarcrepe_per_task=4, test=2, sugarcrepe_val_per_task=4, binding_per_group=2)  # fmt: skip
    data_dir = out / "data" / f"world-{seed}"
    generate(data_dir, replace(world, seed=seed), sizes)
    probes = probe_sets(data_dir, out / "probe" / f"world-{seed}")
    return probes, _training_folder(data_dir, out / "train_images" / f"world-{seed}")


def evaluate_run(job: Job, run: Path, probes: dict[str, Any]) -> dict[str, Any]:
    """A trained run's teacher and the same encoder at initialisation, probed; with the run's diagnostics.
    Cached in the run folder, keyed by what the probes read."""
    from sparo_clip.dino.train import latest_checkpoint

    key = {k: getattr(job.budget, k) for k in PROBE_FIELDS} | {"probes": probes}
    cache = run / "probes.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["key"] == json.loads(json.dumps(key)):
            return cached["result"]
    init = init_checkpoint(job.model, run / "init.pt", job.seed, job.budget.overrides(job.model))
    result = {
        "trained": probe(latest_checkpoint(run), probes, run / "probe" / "trained", job.budget.probe_args),
        "init": probe(init, probes, run / "probe" / "init", job.budget.probe_args),
        "diagnostics": diagnostics(run),
    }
    atomic_write_text(cache, json.dumps({"key": key, "result": result}) + "\n")
    return result


def run(
    budget: Budget, out: Path, seeds: list[int], world: WorldCfg, parallel: bool = True
) -> dict[str, Any]:
    """Every seed: world, twins trained (all seeds' trainings in one queue), teachers and initial encoders
    probed; then the comparison."""
    from sparo_clip.dino.train import latest_checkpoint

    start = time.perf_counter()
    prepared = {seed: prepare_world(budget, out, seed, world) for seed in seeds}
    jobs = {(name, seed): Job(name, budget, seed, prepared[seed][1]) for seed in seeds for name in MODELS}
    runs, trained = train_jobs(list(jobs.values()), out, parallel)
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        probes = prepared[seed][0]
        per_seed[seed] = {"held_out": probes["held_out"], "twins": {
            name: evaluate_run(jobs[name, seed], runs[jobs[name, seed]], probes) for name in MODELS}}  # fmt: skip
    probes, first = prepared[seeds[0]][0], runs[jobs["SPARO-DINO", seeds[0]]]
    picks = [
        sorted((Path(probes["val"]) / c).glob("*.png"))[0]
        for c in (probes["seen"][:2] + probes["held_out"][:2])
    ]
    titles = [p.parent.name.replace("_", " ") + (" (held-out)" if p.parent.name in probes["held_out"] else "")
              for p in picks]  # fmt: skip
    picture = slot_attention_png(
        load_encoder(latest_checkpoint(first)), picks, out / "slot_attention.png", titles
    )
    return {
        "budget": asdict(budget) | {"steps": budget.steps},
        "world": world.to_dict(),
        "seeds": per_seed,
        "comparison": compare_twins(per_seed),
        "picture": str(picture),
        "seconds": time.perf_counter() - start,
        "trainings": {"total": len(jobs), "trained_now": trained},
    }


def _training_folder(data_dir: Path, folder: Path) -> str:
    """The world's training images as a one-class ImageFolder (DINO reads folders; labels are not used),
    linked afresh every run so that a regenerated world is never read stale."""
    import shutil

    from sparo_clip.dino.shapes import _link

    shutil.rmtree(folder, ignore_errors=True)
    for png in sorted((data_dir / "train" / "images").glob("*.png")):
        _link(png, folder / "all" / png.name)
    return str(folder)


def compare_twins(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per probe and group: each twin's values over seeds (trained and untrained) and SPARO − CLS, paired by seed."""
    out: dict[str, Any] = {}
    first = next(iter(per_seed.values()))["twins"]["CLS-DINO"]["trained"]
    for task in PROBES:
        for group in (*GROUPS, *(f for f in FACTORS if f in first[task])):
            key = f"{task} {group}"
            vals = {
                (name, w): [per_seed[s]["twins"][name][w][task][group] for s in sorted(per_seed)]
                for name in MODELS
                for w in ("trained", "init")
            }
            diff = [
                b - a
                for a, b in zip(vals[("CLS-DINO", "trained")], vals[("SPARO-DINO", "trained")], strict=True)
            ]
            iv = t_interval(diff)
            out[key] = {f"{n} {w}": v for (n, w), v in vals.items()} | {
                "diff": {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}
            }
    return out


def _pct(values: list[float | None]) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return f"{mean:.1f}" + ("" if math.isnan(sd) else f" ± {sd:.1f}")


def report_table(report: dict[str, Any], groups: tuple[str, ...] = GROUPS) -> str:
    """Top-1 % (mean ± sd over seeds) per twin, trained and untrained, and SPARO − CLS with its interval, for
    each probe and each of ``groups`` (colour-shape class groups, or FACTORS)."""
    comp = report["comparison"]
    lines = [
        "| model | weights | "
        + " | ".join(f"{t} {g.replace('_', '-')}" for t in PROBES for g in groups)
        + " |",
        "|---|---|" + "---|" * (len(PROBES) * len(groups)),
    ]
    for name in MODELS:
        for w in ("trained", "init"):
            cells = [_pct(comp[f"{t} {g}"][f"{name} {w}"]) for t in PROBES for g in groups]
            lines.append(
                f"| {name} | {'trained' if w == 'trained' else 'untrained'} | " + " | ".join(cells) + " |"
            )
    cells = []
    for t in PROBES:
        for g in groups:
            d = comp[f"{t} {g}"]["diff"]
            cells.append(
                f"{100 * d['mean']:+.1f}"
                + ("" if math.isnan(d["low"]) else f" [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")
            )
    lines.append("| SPARO − CLS | paired t, 95% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_table(report: dict[str, Any]) -> str:
    """The last logged H(t|x), H(mean t) and KL of every run, with log K and any collapse warning."""
    lines = [
        "| run | H(t\\|x) | H(mean t) | log K | KL(t \\|\\| s) | collapse warning |",
        "|---|---|---|---|---|---|",
    ]
    for seed, r in report["seeds"].items():
        for name, twin in r["twins"].items():
            d = twin["diagnostics"]
            f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            warn = "; ".join(w.split(":")[0] for w in d["collapse_warnings"]) or "none"
            lines.append(
                f"| {name} seed {seed} | {f(d['h_target'])} | {f(d['h_mean'])} | {f(d['log_k'])} | {f(d['kl'])} | {warn} |"
            )
    return "\n".join(lines)


def reading(report: dict[str, Any]) -> str:
    """A plain sentence per probe on held-out and all classes: which twin is ahead, or no difference."""
    parts = []
    for key in ("knn all", "linear all", "knn held_out", "linear held_out"):
        d = report["comparison"][key]["diff"]
        label = key.replace("_", "-")
        if math.isnan(d["low"]):
            parts.append(f"{label}: SPARO − CLS = {100 * d['mean']:+.1f} points (one seed)")
        elif d["low"] > 0 or d["high"] < 0:
            ahead = "SPARO-DINO" if d["mean"] > 0 else "CLS-DINO"
            parts.append(
                f"{label}: {ahead} ahead by {abs(100 * d['mean']):.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            )
        else:
            parts.append(
                f"{label}: no difference detected ({100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}])"
            )
    return "; ".join(parts) + "."


def gains(report: dict[str, Any]) -> str:
    """Per twin: what training added over the same encoder at initialisation (mean over seeds, points), per probe
    on all colour-shape classes and on each factor."""
    comp = report["comparison"]
    parts = []
    for name in MODELS:
        cells = []
        for t in PROBES:
            for g in ("all", *FACTORS):
                if f"{t} {g}" not in comp:
                    continue
                row = comp[f"{t} {g}"]
                trained, init = row[f"{name} trained"], row[f"{name} init"]
                gain = 100 * (sum(trained) / len(trained) - sum(init) / len(init))
                cells.append(f"{t} {g} {gain:+.1f}")
        parts.append(f"{name} {', '.join(cells)}")
    return (
        "Gain over the untrained encoder (trained − untrained, mean over seeds, points): "
        + "; ".join(parts)
        + "."
    )


def factor_block(report: dict[str, Any]) -> str:
    """The probes on one factor's labels (colour, shape), with how to read them; empty when not measured."""
    if not all(f"knn {f}" in report["comparison"] for f in FACTORS):
        return ""
    world = report["world"]
    return (
        f"The same probes on one factor's labels (the same images and split; colour: {len(world['colors'])} "
        f"classes, chance {100 / len(world['colors']):.1f}; shape: {len(world['shapes'])} classes, chance "
        f"{100 / len(world['shapes']):.1f}). A random ViT already reads colour linearly, so a gain on the "
        "colour-shape classes has to come from shape:\n\n"
        + report_table(report, FACTORS)
        + "\n\n"
        + gains(report)
    )


def write_docs(block: str, doc: Path) -> None:
    replace_block(doc, BEGIN, END, block)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparo_clip.dino.quickstart", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="runs/dino_quickstart", help="working folder (data, runs, report)")
    p.add_argument("--seeds", type=int, default=3, help="seeds, each its own world (default 3)")
    p.add_argument("--small", action="store_true", help="a seconds-long smoke run (tests)")
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs of each twin (default: the recipe's)"
    )
    p.add_argument("--head-input", default=None, choices=("unit", "sqrt_dim", "layernorm"),
                   help="how SPARO-DINO's slots enter its head (default: the recipe's)")  # fmt: skip
    p.add_argument("--one-at-a-time", action="store_true", help="train the twins one after the other")
    p.add_argument("--write-docs", action="store_true", help="put the measured table into docs/dino.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    budget, measured_by = (SMALL, None) if args.small else load_budget()
    try:
        check_finite_numbers(args)
        for name in ("seeds", "epochs"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} {value} is not valid: expected a positive integer")
        check_writable_folder(args.out, "--out")
    except ConfigError as e:
        print(f"sparo-dino quickstart: error: {e}", file=sys.stderr)
        return 2
    if args.epochs is not None:
        budget = replace(budget, epochs=args.epochs)
    if args.head_input is not None:
        budget = replace(budget, head_input=args.head_input)
    out = Path(args.out)
    try:
        report = run(budget, out, list(range(args.seeds)), WORLD, parallel=not args.one_at_a_time)
    except (SparoClipError, RuntimeError, OSError) as e:
        # a step failed, or a world folder is not what it should be (e.g. a stray class folder in its probe set,
        # a DataError): say which in one line
        print(f"sparo-dino quickstart: error: {one_line(e)}", file=sys.stderr)
        return 1
    table, diag = report_table(report), diagnostics_table(report)
    factors = factor_block(report)
    table += f"\n\n{factors}" if factors else ""
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "report.md", f"{reading(report)}\n\n{table}\n\n{diag}\n")
    print(f"{reading(report)}\n\n{table}\n\n{diag}")
    if args.write_docs:
        img = ROOT / "docs" / "img" / "dino" / "slot_attention.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        if report["picture"]:
            img.write_bytes(Path(report["picture"]).read_bytes())
        b = report["budget"]
        block = (
            f"The recipe: {'`' + measured_by + '`' if measured_by else 'the starting point (no search written)'}. "
            f"Measured by `python -m sparo_clip.dino.quickstart --write-docs` ({report['seconds'] / 60:.1f} min on "
            f"{os.cpu_count()} CPU cores, two trainings at a time"
            + (
                f"; {t['total'] - t['trained_now']} of {t['total']} trainings reused from an earlier call"
                if (t := report["trainings"])["trained_now"] < t["total"]
                else ""
            )  # fmt: skip
            + f"): {args.seeds} seeds, each its own world; per twin "
            f"{b['steps']} steps of batch {b['batch']} (2 global + {b['local_crops']} local crops) on {b['train_images']} "
            f"shapes-world images, SPARO-DINO's head input `{b['head_input']}`; probes on {b['per_class']} training "
            "images per colour-shape class. Top-1 %, mean ± sd over seeds; the last row is SPARO − CLS, paired by "
            f"seed, with its 95% t interval.\n\n{reading(report)}\n\n{table}\n\nCollapse diagnostics at the end of "
            f"each run (log.jsonl):\n\n{diag}\n\n![SPARO-DINO slot attention](img/dino/slot_attention.png)"
        )
        write_docs(block, ROOT / "docs" / "dino.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
