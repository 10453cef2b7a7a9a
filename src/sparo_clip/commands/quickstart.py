"""The main job on one CPU machine: a tiny SPARO model and its CLIP twin, trained and evaluated side by side.

``./scripts/quickstart.sh [--steps N | --minutes M]`` runs ``python -m sparo_clip.quickstart``:

1. generate the shapes world (cached: a second run reuses it);
2. train each model for the same fixed number of steps (default ``DEFAULT_STEPS``; the same samples, batch
   size and seed) through ``torchrun -m sparo_clip.train`` (OpenCLIP's training loop). ``--minutes`` instead
   times a few steps on this machine and prints the steps it chose (then results depend on the machine);
3. evaluate both with the ``sparo-clip eval`` commands: generalised compositional zero-shot (seen and held-out
   compositions, each classified over all of them), every compositionality set and test retrieval, each
   split into scenes of seen pairs and scenes with a held-out pair, and validation retrieval;
4. choose SPARO slots greedily on the validation compositionality set (``sparo-clip select-slots``) and
   report the gain on the test set;
5. write ``report.md`` (a summary "SPARO - CLIP = x +- y" per headline metric, with paired bootstrap 95%
   intervals over test items, then tables and pictures), ``results.json`` and slot-attention pictures.

Python API: :func:`run_quickstart` (the whole job), :func:`train_model`, :func:`evaluate` (used by
``benchmarks/study.py`` and ``benchmarks/sweep_tiny.py``). Every number is read from the evaluation outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparo_clip.errors import ConfigError, SparoClipError, one_line
from sparo_clip.inputs import check_finite_numbers, check_writable_folder
from sparo_clip.models.builder import create_model, resolve_model_config

_logger = logging.getLogger("sparo_clip.quickstart")

# The two models and the hyper-parameters they share. How these were chosen: docs/quickstart.md.
MODELS = {"CLIP": "tiny-CLIP", "SPARO": "tiny-SPARO"}
BATCH_SIZE = 128
LR = 3e-4  # the learning rate docs/study.md chose for each of the two models on the validation pairs
WARMUP = 10
WD = 0.1
DEFAULT_STEPS = 70  # per model; fits the 15-minute job on 2 CPU cores (docs/quickstart.md)


@dataclass(frozen=True)
class TrainCfg:
    """One training run: the model, its budget and optimisation settings (all recorded with the run)."""

    model: str
    steps: int
    batch_size: int = BATCH_SIZE
    lr: float = LR
    seed: int = 0
    workers: int = 1
    override: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid: expected a positive integer")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} is not valid: expected a positive number")


@dataclass
class QuickstartCfg:
    """The whole job. ``minutes`` (if set) replaces ``steps`` by a budget calibrated on this machine."""

    steps: int = DEFAULT_STEPS
    minutes: float | None = None
    out: str = "runs/quickstart"
    data: str = "data/shapes"
    seed: int = 0
    batch_size: int = BATCH_SIZE
    lr: float = LR
    small: bool = False
    workers: int = 1
    select_slots: bool = True
    pictures: bool = True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_list(data: dict[str, Any], samples: int, folder: Path) -> Path:
    """A CSV of exactly ``samples`` training pairs (the world's pairs in order, cycled), with absolute paths.

    OpenCLIP shuffles CSV data with torch's generator, which ``--seed`` seeds: the same seed gives the same
    batches (its webdataset pipeline shuffles samples with a time-seeded generator instead).
    """
    source = Path(data["train"]["csv"])
    rows = source.read_text().splitlines()[1:]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train_{samples}.csv"
    lines = ["filepath\ttitle"]
    for i in range(samples):
        image, text = rows[i % len(rows)].split("\t", 1)
        lines.append(f"{(source.parent / image).resolve()}\t{text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def train_command(cfg: TrainCfg, name: str, data: dict[str, Any], logs: Path) -> list[str]:
    """``torchrun -m sparo_clip.train``: one epoch of ``cfg.steps`` steps over a list of the world's pairs."""
    train_csv = training_list(data, cfg.steps * cfg.batch_size, logs / name)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
        "--master_port", str(_free_port()),
        "-m", "sparo_clip.train",
        "--model", cfg.model,
        "--train-data", str(train_csv),
        "--dataset-type", "csv",
        "--batch-size", str(cfg.batch_size),
        "--epochs", "1",
        "--lr", str(cfg.lr), "--warmup", str(min(WARMUP, max(1, cfg.steps // 5))), "--wd", str(WD),
        "--workers", str(cfg.workers),
        "--precision", "fp32",
        "--seed", str(cfg.seed),
        "--logs-dir", str(logs), "--name", name,
        "--log-every-n-steps", "10",
        "--report-to", "none",
        "--save-frequency", "1",
    ]  # fmt: skip
    if cfg.override:
        cmd += ["--override-model-config", json.dumps(cfg.override)]
    return cmd


def train_model(cfg: TrainCfg, name: str, data: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Train one model (reusing a finished run with the same settings); returns the run's record.

    The record (``out/logs/<name>/run.json``) holds the settings, the checkpoint path and the measured
    training seconds; it is written only after the checkpoint exists, so an interrupted run is redone.
    """
    logs = Path(out) / "logs"
    ckpt = logs / name / "checkpoints" / "epoch_1.pt"
    stamp = logs / name / "run.json"
    settings = asdict(cfg)
    if ckpt.is_file() and stamp.is_file():
        record = json.loads(stamp.read_text())
        if record.get("settings") == settings:
            _logger.info("%s: reusing %s", name, ckpt)
            return record
    shutil.rmtree(logs / name, ignore_errors=True)
    cmd = train_command(cfg, name, data, logs.resolve())
    _logger.info(
        "%s: training %s for %d steps of %d: %s", name, cfg.model, cfg.steps, cfg.batch_size, " ".join(cmd)
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1))
    t = time.perf_counter()
    result = subprocess.run(cmd, env=env)
    seconds = time.perf_counter() - t
    if result.returncode != 0 or not ckpt.is_file():
        raise RuntimeError(
            f"training {cfg.model} failed (exit code {result.returncode}); see {logs / name / 'out.log'}"
        )
    _logger.info("%s: trained in %.0f s", name, seconds)
    record = {"settings": settings, "checkpoint": str(ckpt), "seconds": seconds}
    stamp.write_text(json.dumps(record, indent=1) + "\n")
    return record


def calibrate_step_time(model_name: str, batch_size: int, reps: int = 3) -> float:
    """Median seconds of one training step (forward, ClipLoss, backward, AdamW) on random data."""
    import open_clip
    from open_clip.loss import ClipLoss

    cfg = resolve_model_config(model_name)
    context, image_size = cfg["text_cfg"]["context_length"], cfg["vision_cfg"]["image_size"]
    eot = open_clip.get_tokenizer(model_name).eot_token_id
    model = create_model(model_name)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ClipLoss()
    images = torch.randn(batch_size, 3, image_size, image_size)
    text = torch.randint(1, 400, (batch_size, context))
    text[:, context // 2] = eot  # captions of half the context, end-of-text then padding
    text[:, context // 2 + 1 :] = 0
    times = []
    for i in range(reps + 1):
        t = time.perf_counter()
        loss = loss_fn(*model(images, text))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def plan_steps(minutes: float, step_times: dict[str, float], min_steps: int = 10) -> int:
    """The same number of steps for every model, so that all of them together train in ``minutes``."""
    return max(min_steps, int(minutes * 60 / sum(step_times.values())))


def resolve_steps(cfg: QuickstartCfg) -> tuple[int, dict[str, float] | None]:
    """The steps per model: ``cfg.steps``, or with ``cfg.minutes`` a budget timed here (printed)."""
    if cfg.minutes is None:
        return cfg.steps, None
    step_times = {n: calibrate_step_time(m, cfg.batch_size) for n, m in MODELS.items()}
    steps = plan_steps(cfg.minutes, step_times)
    shown = ", ".join(f"{n} {t:.2f} s" for n, t in step_times.items())
    print(f"[quickstart] --minutes {cfg.minutes}: one step takes {shown} here -> {steps} steps per model")
    return steps, step_times


def _eval(argv: list[str], output: Path) -> dict[str, Any]:
    from sparo_clip.eval.cli import main as eval_main

    rc = eval_main([*argv, "--output", str(output)])
    if rc != 0:
        raise RuntimeError(f"sparo-clip eval {' '.join(argv)} failed with exit code {rc}")
    return json.loads(output.read_text())


def evaluate(
    model: str, ckpt: str | Path, data: dict[str, Any], out: str | Path, slots: str | None = None
) -> dict:
    """Compositional zero-shot, compositionality (test), retrieval (test and validation) of one checkpoint.

    Returns the metrics of each eval command (its JSON and per-item scores are kept under ``out``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", model, "--pretrained", str(ckpt), "--batch-size", "256", "--workers", "0"]
    common += ["--slots", slots] if slots else []
    comp, sc = data["compositional"], data["sugarcrepe"]
    jobs = {
        "compositional": ["compositional", "--data", comp["dir"], "--classes", comp["classes"], "--templates", comp["templates"]],
        "sugarcrepe": ["sugarcrepe", "--root", sc["root"]],
        "retrieval": ["retrieval", "--csv", data["test"]["csv"]],
        "retrieval_val": ["retrieval", "--csv", data["val"]["csv"]],
    }  # fmt: skip
    results = {}
    for key, argv in jobs.items():
        items = ["--save-items", str(out / f"{key}_items.pt")]
        results[key] = _eval([*argv, *common, *items], out / f"{key}.json")["metrics"]
    return results


def choose_slots_on_validation(
    model: str, ckpt: str | Path, data: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Greedy slot selection on the validation compositionality set; the test set is never searched."""
    from sparo_clip.eval.select import main as select_main

    argv = [
        "sugarcrepe",
        "--model",
        model,
        "--pretrained",
        str(ckpt),
        "--batch-size",
        "256",
        "--workers",
        "0",
    ]
    argv += ["--root", data["sugarcrepe_val"]["root"], "--test-split", data["sugarcrepe"]["root"]]
    argv += ["--metric", "mean", "--output", str(out / "select_slots.json")]
    if select_main(argv) != 0:
        raise RuntimeError("sparo-clip select-slots failed")
    return json.loads((out / "select_slots.json").read_text())


def _parameters(model: str) -> int:
    from sparo_clip.models.param_count import count_model_parameters

    return count_model_parameters(model)


def run_quickstart(cfg: QuickstartCfg) -> dict[str, Any]:
    """The whole job; returns the summary written to ``results.json`` (the report is ``report.md``)."""
    from sparo_clip.commands.quickstart_report import write_report
    from sparo_clip.data.generate import SMALL_SIZES, SizeCfg, generate

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = generate(cfg.data, sizes=SMALL_SIZES if cfg.small else SizeCfg())
    steps, step_times = resolve_steps(cfg)
    t_job = time.perf_counter()
    runs: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for name, model in MODELS.items():
        train_cfg = TrainCfg(model, steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.workers)
        record = train_model(train_cfg, name, data, out)
        runs[name] = record | {"model": model, "steps": steps, "batch_size": cfg.batch_size, "lr": cfg.lr}
        runs[name]["parameters"] = _parameters(model)
        results[name] = evaluate(model, record["checkpoint"], data, out / "eval" / name)
    untrained = out / "untrained-SPARO.pt"
    torch.manual_seed(cfg.seed)
    torch.save(create_model(MODELS["SPARO"]).state_dict(), untrained)
    results["untrained"] = evaluate(MODELS["SPARO"], untrained, data, out / "eval" / "untrained")
    selection = None
    if cfg.select_slots:
        sel_out = out / "eval" / "SPARO-selected"
        sel_out.mkdir(parents=True, exist_ok=True)
        selection = choose_slots_on_validation(MODELS["SPARO"], runs["SPARO"]["checkpoint"], data, sel_out)
        results["SPARO-selected"] = evaluate(
            MODELS["SPARO"],
            runs["SPARO"]["checkpoint"],
            data,
            sel_out,
            slots=str(sel_out / "select_slots.json"),
        )
    pictures = (
        draw_pictures(MODELS["SPARO"], Path(runs["SPARO"]["checkpoint"]), data, out) if cfg.pictures else []
    )
    summary = {
        "config": asdict(cfg),
        "data": {
            "root": cfg.data,
            "train_samples": data["train"]["num_samples"],
            "held_out": data["held_out"],
        },
        "steps": steps,
        "step_times": step_times,
        "wall_seconds": time.perf_counter() - t_job,
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "results": results,
        "slot_selection": selection,
        "pictures": pictures,
    }
    summary["summary"] = write_report(out, summary)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def draw_pictures(model: str, ckpt: Path, data: dict[str, Any], out: Path, count: int = 6) -> list[str]:
    """Slot-attention pictures of the SPARO model on validation pairs (``sparo-clip viz``)."""
    from sparo_clip.viz import main as viz_main

    folder = out / "viz_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    rows = Path(data["val"]["csv"]).read_text().splitlines()[1 : count + 1]
    captions = []
    for i, row in enumerate(rows):
        path, text = row.split("\t")[:2]
        shutil.copyfile(Path(data["val"]["csv"]).parent / path, folder / f"{i:02d}.png")
        captions.append(text)
    (out / "viz_captions.txt").write_text("\n".join(captions) + "\n")
    viz_out = out / "viz"
    argv = ["--model", model, "--pretrained", str(ckpt), "--images", str(folder)]
    argv += ["--captions", str(out / "viz_captions.txt"), "--out", str(viz_out)]
    if viz_main(argv) != 0:
        raise RuntimeError("sparo-clip viz failed")
    return [str(p) for p in sorted(viz_out.rglob("*.png"))[:4]]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quickstart", description=__doc__.split("\n\n")[0])
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per model (fixed)")
    budget.add_argument(
        "--minutes", type=float, default=None, help="instead: a budget for both trainings, calibrated here"
    )
    p.add_argument("--out", default="runs/quickstart", help="folder for checkpoints, logs and the report")
    p.add_argument("--data", default="data/shapes", help="folder of the generated shapes world (cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--small", action="store_true", help="a tiny world and evaluation sets (smoke tests)")
    p.add_argument("--workers", type=int, default=1, help="data loader workers per training process")
    p.add_argument("--no-select-slots", action="store_true", help="skip the slot selection")
    p.add_argument(
        "--write-docs", action="store_true", help="write the measured time into docs/quickstart.md"
    )
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every option, before the world is generated or anything is trained (one :class:`ConfigError` line)."""
    check_finite_numbers(args)
    for name in ("steps", "batch_size", "workers"):
        if getattr(args, name) < (0 if name == "workers" else 1):
            least = "0" if name == "workers" else "1"
            raise ConfigError(
                f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: must be at least {least}"
            )
    if args.minutes is not None and args.minutes <= 0:
        raise ConfigError(f"--minutes {args.minutes} is not valid: expected > 0")
    if args.lr <= 0:
        raise ConfigError(f"--lr {args.lr} is not valid: expected a positive learning rate")
    check_writable_folder(args.out, "--out")
    check_writable_folder(args.data, "--data")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[quickstart] %(message)s")
    try:
        check_args(args)
    except ConfigError as e:
        print(f"quickstart: error: {e}", file=sys.stderr)
        return 2
    cfg = QuickstartCfg(
        steps=args.steps, minutes=args.minutes, out=args.out, data=args.data, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, small=args.small, workers=args.workers,
        select_slots=not args.no_select_slots,
    )  # fmt: skip
    t = time.perf_counter()
    try:
        summary = run_quickstart(cfg)
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
