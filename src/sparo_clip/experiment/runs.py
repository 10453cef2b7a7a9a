"""One seed of the main job: its world, the trainings (OpenCLIP's loop through torchrun), and the evaluations.

Every number comes from the project's own commands: ``python -m sparo_clip.train`` trains (with the world's
validation pairs evaluated after every epoch: the validation curve), and the ``sparo-clip eval`` commands
score the test sets, saving per-item scores for the statistics (:mod:`sparo_clip.experiment.metrics`).
A finished run is reused when its settings are unchanged (its record is written after its checkpoint), so an
interrupted job redoes only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparo_clip.checkpoints.files import atomic_write_text
from sparo_clip.data.generate import generate
from sparo_clip.data.sets import SizeCfg
from sparo_clip.data.world import WorldCfg
from sparo_clip.errors import ConfigError

_logger = logging.getLogger("sparo_clip.experiment")

MODELS = {"CLIP": "tiny-CLIP", "SPARO": "tiny-SPARO"}  # the twins, at parameter parity (docs/quickstart.md)


@dataclass(frozen=True)
class TrainCfg:
    """One training run; every field is recorded with the run and a change retrains it.

    Attributes:
        model: registered model name.
        epochs: passes over the world's training pairs (the validation pairs are scored after each).
        batch_size, lr, wd: as open_clip_train's flags; ``warmup`` is a share of all steps.
        seed: open_clip_train's ``--seed`` (initialisation and sample order).
        threads: torch threads of the training process (None: all cores).
        override: deep-merged into the model config (``--override-model-config``).
    """

    model: str
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    wd: float = 0.1
    warmup: float = 0.05
    seed: int = 0
    threads: int | None = None
    override: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} is not valid: expected a positive integer")
        for name in ("lr", "wd", "warmup"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or value != value
                or abs(value) == float("inf")
                or value < 0
            ):
                raise ConfigError(f"{name}={value!r} is not valid: expected a finite number >= 0")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr!r} is not valid: expected a positive learning rate")


def world_for(seed: int, root: str | Path, world: dict[str, Any], sizes: SizeCfg) -> dict[str, Any]:
    """The world of one seed (its own held-out pairs) under ``root/world-<seed>``, generated or reused."""
    return generate(Path(root) / f"world-{seed}", WorldCfg(**{**world, "seed": seed}), sizes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _absolute_csv(source: str | Path, dest: Path) -> Path:
    """The pairs of a world CSV with absolute image paths (open_clip_train reads paths as given)."""
    source = Path(source)
    rows = source.read_text().splitlines()
    lines = [rows[0]]
    for row in rows[1:]:
        image, rest = row.split("\t", 1)
        lines.append(f"{(source.parent / image).resolve()}\t{rest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines) + "\n")
    return dest


def steps_per_epoch(data: dict[str, Any], batch_size: int) -> int:
    """Optimiser steps in one pass over the training pairs (open_clip_train drops the last partial batch)."""
    return data["train"]["num_samples"] // batch_size


def train_command(cfg: TrainCfg, name: str, data: dict[str, Any], logs: Path) -> list[str]:
    """``torchrun -m sparo_clip.train`` over the world's training pairs, validation pairs after every epoch."""
    run = logs / name
    train_csv = _absolute_csv(data["train"]["csv"], run / "train.csv")
    val_csv = _absolute_csv(data["val"]["csv"], run / "val.csv")
    total = cfg.epochs * steps_per_epoch(data, cfg.batch_size)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
        "--master_port", str(_free_port()),
        "-m", "sparo_clip.train",
        "--model", cfg.model,
        "--train-data", str(train_csv), "--val-data", str(val_csv), "--dataset-type", "csv",
        "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs), "--val-frequency", "1",
        "--lr", str(cfg.lr), "--warmup", str(max(1, round(cfg.warmup * total))), "--wd", str(cfg.wd),
        "--workers", "1", "--precision", "fp32", "--seed", str(cfg.seed),
        "--logs-dir", str(logs), "--name", name,
        "--log-every-n-steps", "20", "--report-to", "none", "--save-frequency", "0",
    ]  # fmt: skip
    if cfg.override:
        cmd += ["--override-model-config", json.dumps(cfg.override)]
    return cmd


def validation_curve(run: Path, data: dict[str, Any], batch_size: int) -> list[dict[str, float]]:
    """Per epoch: the step, validation R@1 (mean of both directions) and loss, from the run's results.jsonl."""
    path = run / "checkpoints" / "results.jsonl"
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )
    per_epoch = steps_per_epoch(data, batch_size)
    return [
        {
            "epoch": r["epoch"],
            "step": r["epoch"] * per_epoch,
            "val_r1": (r["image_to_text_R@1"] + r["text_to_image_R@1"]) / 2,
            "val_loss": r["clip_val_loss"],
        }
        for r in rows
        if "clip_val_loss" in r
    ]


def validation_ceiling(data: dict[str, Any]) -> float:
    """The validation R@1 of a model that reads exactly which colour-shape objects each caption and image hold and
    nothing else: captions of the same objects (other wording, other order) tie, and a tie of n is won 1 time in
    n. Many validation scenes share their objects (e.g. every "a red circle"), so this, not 1, is where a
    validation curve can flatten without the model lacking anything the captions say.
    """
    import re
    from collections import Counter

    world = data["settings"]["world"]
    colours, shapes = set(world["colors"]), set(world["shapes"])
    rows = Path(data["val"]["csv"]).read_text().splitlines()[1:]
    objects = {(c, s) for c in colours for s in shapes}
    contents = []
    for row in rows:
        words = re.findall(r"[a-z]+", row.split("\t")[1].lower())
        contents.append(frozenset(zip(words, words[1:], strict=False)) & objects)
    ties = Counter(contents)
    return sum(1 / ties[c] for c in contents) / len(contents) if contents else float("nan")


def _finished(
    run: Path, settings: dict[str, Any], evaluated: Callable[[str], bool] | None = None
) -> dict[str, Any] | None:
    """A finished run with these settings whose recorded model is the one these settings build today (a model
    name names whatever its config file says now: a run of an earlier tiny-SPARO shape is not reused).

    Its checkpoint must exist, unless ``evaluated(checkpoint)`` says every evaluation of it is saved (a study
    removes checkpoints it has evaluated: rewriting its docs must not train them again).
    """
    from sparo_clip.models.builder import resolve_model_config

    stamp, recorded = run / "run.json", run / "model_config.json"
    if not (stamp.is_file() and recorded.is_file()):
        return None
    try:  # a torn or hand-edited record is a run to train again, not a crash
        record, model = json.loads(stamp.read_text()), json.loads(recorded.read_text())
        if record.get("settings") != settings:
            return None
        ckpt = str(record["checkpoint"])
        if not Path(ckpt).is_file() and not (evaluated is not None and evaluated(ckpt)):
            return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        _logger.warning("%s: its run.json or model_config.json cannot be read: training it again", run)
        return None
    built = json.loads(json.dumps(resolve_model_config(settings["model"], settings.get("override"))))
    return record if isinstance(model, dict) and model.get("model_cfg") == built else None


def train_runs(
    runs: dict[str, tuple[TrainCfg, dict[str, Any]]],
    out: str | Path,
    slots: int = 1,
    evaluated: Callable[[str, str], bool] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every run (reusing finished ones), ``slots`` at a time, each with ``cfg.threads`` threads.

    Args:
        runs: run name (its folder under ``out/logs``) -> (its settings, the world it trains on).
        slots: how many trainings share the machine at once (a queue over all runs: no core idles while the
            other run of a pair is still going).
        evaluated: ``evaluated(name, checkpoint)``: whether every evaluation of that run's checkpoint is saved;
            such a run is reused even after its checkpoint was removed.

    Returns:
        Per run name its record: settings, checkpoint, seconds, steps, validation curve.

    Raises:
        RuntimeError: a training that failed, naming its log.
    """
    logs = Path(out) / "logs"
    records: dict[str, dict[str, Any]] = {}
    queue: list[str] = []
    for name, (cfg, data) in runs.items():
        check = None if evaluated is None else (lambda ckpt, name=name: evaluated(name, ckpt))
        record = _finished(logs / name, asdict(cfg) | {"world": data["settings"]}, check)
        if record is not None:
            _logger.info("%s: reusing %s", name, record["checkpoint"])
            records[name] = record
        else:
            queue.append(name)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    try:
        while queue or running:
            while queue and len(running) < max(1, slots):
                name = queue.pop(0)
                running[name] = _start(name, *runs[name], logs)
            done = next((n for n, (proc, _) in running.items() if proc.poll() is not None), None)
            if done is None:
                time.sleep(0.5)
                continue
            cfg, data = runs[done]
            records[done] = _collect(done, cfg, data, running.pop(done), logs / done)
    finally:
        for proc, _ in running.values():  # a failure stops the other trainings too: nothing keeps running
            proc.kill()
    return {name: records[name] for name in runs}


def _start(name: str, cfg: TrainCfg, data: dict[str, Any], logs: Path) -> tuple[subprocess.Popen, float]:
    shutil.rmtree(logs / name, ignore_errors=True)
    cmd = train_command(cfg, name, data, logs.resolve())
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg.threads or os.cpu_count() or 1))
    _logger.info("%s: training %s for %d epochs: %s", name, cfg.model, cfg.epochs, " ".join(cmd))
    # stderr goes to a file: a pipe nobody reads while the run goes on fills up and stops the training
    with open(_stderr_file(logs, name), "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    return proc, time.perf_counter()


def _stderr_file(logs: Path, name: str) -> Path:
    """Beside the run folder (open_clip_train refuses a run folder that exists before it starts)."""
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{name}.stderr"


def last_line(path: Path) -> str:
    """The last non-empty line of a log file (progress bars' carriage returns split lines), or a placeholder."""
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return "no message"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def _collect(
    name: str, cfg: TrainCfg, data: dict[str, Any], started: tuple[subprocess.Popen, float], run: Path
) -> dict[str, Any]:
    proc, t0 = started
    proc.wait()
    seconds = time.perf_counter() - t0
    ckpt = run / "checkpoints" / f"epoch_{cfg.epochs}.pt"
    if proc.returncode != 0 or not ckpt.is_file():
        err = _stderr_file(run.parent, name)
        raise RuntimeError(
            f"training {cfg.model} ({name}) failed with exit code {proc.returncode}: {last_line(err)} (see {err} "
            f"and {run / 'out.log'})"
        )
    record = {
        "settings": asdict(cfg) | {"world": data["settings"]},
        "checkpoint": str(ckpt),
        "seconds": seconds,
        "steps": cfg.epochs * steps_per_epoch(data, cfg.batch_size),
        "curve": validation_curve(run, data, cfg.batch_size),
    }
    (run / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    _logger.info("%s: trained in %.0f s", name, seconds)
    return record


def _eval(argv: list[str], output: Path) -> dict[str, Any]:
    from sparo_clip.eval.cli import main as eval_main

    rc = eval_main([*argv, "--output", str(output)])
    if rc != 0:
        raise RuntimeError(f"sparo-clip eval {' '.join(argv)} failed with exit code {rc}")
    return json.loads(output.read_text())


EVALUATIONS = ("compositional", "binding", "binding_blank", "sugarcrepe", "sugarcrepe_blank", "retrieval")


def evaluate(
    model: str,
    ckpt: str | Path,
    data: dict[str, Any],
    out: str | Path,
    slots: str | None = None,
    reuse: bool = False,
    override: dict[str, Any] | None = None,
) -> dict:
    """Every evaluation of one checkpoint: generalised compositional zero-shot, the clean binding test and the
    compositionality sets (each also against a blank image: the model's caption prior), test retrieval.

    Returns the metrics of each eval command; its JSON and per-item scores (``*_items.pt``) stay under ``out``.
    With ``reuse``, an evaluation whose JSON and items exist for the same checkpoint (and model-config override)
    is read, not run again. ``override`` is the ``--override-model-config`` the checkpoint was trained with.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", model, "--pretrained", str(ckpt), "--batch-size", "256", "--workers", "0"]
    common += ["--slots", slots] if slots else []
    common += ["--override-model-config", json.dumps(override)] if override else []
    comp = data["compositional"]
    jobs = {
        "compositional": ["compositional", "--data", comp["dir"], "--classes", comp["classes"], "--templates",
                          comp["templates"]],
        "binding": ["sugarcrepe", "--root", data["binding"]["root"]],
        "binding_blank": ["sugarcrepe", "--root", data["binding"]["blank"]],
        "sugarcrepe": ["sugarcrepe", "--root", data["sugarcrepe"]["root"]],
        "sugarcrepe_blank": ["sugarcrepe", "--root", data["sugarcrepe"]["blank"]],
        "retrieval": ["retrieval", "--csv", data["test"]["csv"]],
    }  # fmt: skip
    results, made_of = {}, _source(model, ckpt, override)  # what these evaluations are made of
    for key, argv in jobs.items():
        done = out / f"{key}.json"
        saved = _saved(out, key, made_of, ckpt, override, slots) if reuse else None
        if saved is not None:
            results[key] = saved["metrics"]
            continue
        items = ["--save-items", str(out / f"{key}_items.pt")]
        results[key] = _eval([*argv, *common, *items], done)["metrics"]
        atomic_write_text(out / f"{key}{SOURCE_SUFFIX}", json.dumps(made_of))
    return results


SOURCE_SUFFIX = ".source.json"  # beside each evaluation: what it was made of (see _source)


def _source(model: str, ckpt: str | Path, override: dict[str, Any] | None) -> dict[str, Any]:
    """What an evaluation is made of: the checkpoint file (path, size, modification time; None once removed)
    and the model config its name and override build."""
    from sparo_clip.models.builder import resolve_model_config

    try:
        st = Path(ckpt).stat()
        file = [st.st_size, st.st_mtime_ns]
    except OSError:
        file = None
    return {"checkpoint": str(ckpt), "file": file,
            "model_cfg": json.loads(json.dumps(resolve_model_config(model, override)))}  # fmt: skip


def _saved(
    out: Path,
    key: str,
    now: dict[str, Any],
    ckpt: str | Path,
    override: dict[str, Any] | None,
    slots: str | None,
) -> dict[str, Any] | None:
    """The saved result of one evaluation of this checkpoint (same override, slots or not), or None.

    ``now``: :func:`_source` of the checkpoint today. The evaluation must have been made of this model: the config the model name builds today, and the checkpoint file as it
    is now (a run trained again under the same name has a new file). A removed checkpoint is judged by its
    config alone (the study removes checkpoints once evaluated). Evaluations saved before this record existed
    are judged by checkpoint path and override only.
    """
    done = out / f"{key}.json"
    if not (done.is_file() and (out / f"{key}_items.pt").is_file()):
        return None
    try:
        saved = json.loads(done.read_text())
        source = out / f"{key}{SOURCE_SUFFIX}"
        made_of = json.loads(source.read_text()) if source.is_file() else None
    except (OSError, ValueError):
        return None
    same_model = saved.get("pretrained") == str(ckpt) and saved.get("override_model_config") == override
    if not (same_model and (slots is None) == (saved.get("slots") is None)):
        return None
    if isinstance(made_of, dict):
        if made_of.get("model_cfg") != now["model_cfg"] or made_of.get("checkpoint") != now["checkpoint"]:
            return None
        if now["file"] is not None and made_of.get("file") != now["file"]:
            return None
    return saved


def evaluations_saved(
    out: str | Path, model: str, ckpt: str | Path, override: dict[str, Any] | None = None
) -> bool:
    """Whether every evaluation :func:`evaluate` makes of this model's checkpoint is saved under ``out``."""
    now = _source(model, ckpt, override)
    return all(_saved(Path(out), key, now, ckpt, override, None) is not None for key in EVALUATIONS)


def untrained_checkpoint(model: str, path: Path, seed: int, override: dict[str, Any] | None = None) -> Path:
    """A model at its seeded initialisation, saved like a trained one (the untrained reference row)."""
    import torch

    from sparo_clip.checkpoints.files import atomic_save
    from sparo_clip.models.builder import create_model

    torch.manual_seed(seed)
    return atomic_save(create_model(model, override_config=override).state_dict(), path)


def choose_slots_on_validation(
    model: str, ckpt: str | Path, data: dict[str, Any], out: Path
) -> dict[str, Any]:
    """Greedy slot selection on the validation compositionality set; the test sets are never searched."""
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
    out.mkdir(parents=True, exist_ok=True)
    if select_main(argv) != 0:
        raise RuntimeError("sparo-clip select-slots failed")
    return json.loads((out / "select_slots.json").read_text())
