"""Options of ``python -m sparo_clip.dino.train`` (DINO's reference recipe as defaults) and their checks.

Every check runs before any process group, data loader or model exists, and fails with one line naming the
option and what is allowed (a :class:`~sparo_clip.errors.ConfigError`, a ValueError): the numbers (finite, in
range), the model (built on the meta device: no memory, no weights; its training memory against this
machine's), the data, ``--output`` (writable; not another config's run; not a run that ``--resume none``
would overwrite) and ``--resume`` (a readable DINO checkpoint of this config, with finite weights).
Nothing is written before they all pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import load_checkpoint_file, newest_state
from sparo_clip.checkpoints.loading import check_finite_weights
from sparo_clip.dino.config import DinoCfg, load_config
from sparo_clip.dino.lightly_api import require_lightly
from sparo_clip.errors import CheckpointError, ConfigError
from sparo_clip.inputs import check_finite_numbers, check_writable_folder, load_json
from sparo_clip.models.param_count import ADAMW_BYTES_PER_PARAM, check_training_memory

PRECISIONS = ("fp32", "amp_bf16")
AUGMENTS = ("pil", "tensor")
CHECKPOINT_KEYS = ("dino_cfg", "step", "student", "teacher", "optimizer", "center")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparo_clip.dino.train",
        description="DINO / SPARO-DINO self-supervised training (torchrun + DDP for several processes).",
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="registered DINO config name or a JSON file")
    g.add_argument(
        "--model-overrides", default=None, help='JSON merged into the config, e.g. \'{"readout": "cls"}\''
    )
    g.add_argument(
        "--train-data", required=True, help="ImageFolder root, or webdataset shards 'dir/{000..099}.tar'"
    )
    g.add_argument("--dataset-type", default="auto", choices=("auto", "folder", "webdataset"))
    g.add_argument(
        "--train-num-samples", type=int, default=None, help="epoch length for webdataset (required)"
    )
    g.add_argument("--local-crops", type=int, default=8, help="local crops per image (DINO: 8)")
    g.add_argument("--global-crop-scale", default="0.4,1.0", help="area range of the two global crops")
    g.add_argument("--local-crop-scale", default="0.05,0.4", help="area range of the local crops")
    g.add_argument("--workers", type=int, default=8, help="data loader workers per process")
    g.add_argument("--augment", default="pil", choices=AUGMENTS,
                   help="pil: DINO's per-image transforms (any data); tensor: an ImageFolder decoded once, every "
                        "view of a batch cropped in one tensor operation (small images; fast on CPUs)")  # fmt: skip
    g.add_argument(
        "--color-jitter", type=float, default=0.8, help="probability of colour jitter per view (DINO 0.8)"
    )
    g.add_argument(
        "--grayscale", type=float, default=0.2, help="probability of greyscale per view (DINO 0.2)"
    )
    g.add_argument("--solarize", type=float, default=0.2, help="probability of solarisation (DINO 0.2)")
    g.add_argument("--no-blur", dest="blur", action="store_false", help="no Gaussian blur (DINO blurs)")
    o = p.add_argument_group("optimisation (DINO's reference recipe)")
    o.add_argument("--batch-size", type=int, default=64, help="images per process (global = x processes)")
    o.add_argument("--epochs", type=int, default=100)
    o.add_argument("--lr", type=float, default=5e-4, help="peak lr at global batch 256 (scaled linearly)")
    o.add_argument("--min-lr", type=float, default=1e-6)
    o.add_argument("--warmup-epochs", type=float, default=10.0, help="linear lr warm-up")
    o.add_argument("--wd", type=float, default=0.04, help="weight decay at the start (cosine to --wd-end)")
    o.add_argument("--wd-end", type=float, default=0.4)
    o.add_argument("--clip-grad", type=float, default=3.0, help="gradient norm clip (0: none)")
    o.add_argument(
        "--freeze-last-layer", type=int, default=1, help="epochs with the head's last layer frozen"
    )
    o.add_argument("--momentum-teacher", type=float, default=0.996, help="EMA momentum, cosine to 1")
    o.add_argument("--teacher-temp", type=float, default=0.04)
    o.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    o.add_argument("--warmup-teacher-temp-epochs", type=int, default=30)
    o.add_argument("--student-temp", type=float, default=0.1)
    o.add_argument("--center-momentum", type=float, default=0.9)
    r = p.add_argument_group("run")
    r.add_argument("--output", required=True, help="run folder: checkpoints/, log.jsonl, config.json")
    r.add_argument(
        "--precision", default=None, choices=PRECISIONS, help="default: amp_bf16 on cuda, fp32 on cpu"
    )
    r.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    r.add_argument("--keep", type=int, default=2, help="newest checkpoints kept")
    r.add_argument("--resume", default="auto", help="auto (newest readable in --output), none, or a file")
    r.add_argument("--log-every", type=int, default=10, help="steps between log.jsonl lines")
    r.add_argument(
        "--max-steps", type=int, default=None, help="stop after this step (schedules keep --epochs)"
    )
    r.add_argument("--dry-run", action="store_true", help="check everything, print the resolved run, exit")
    r.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image or shard instead of skipping it with a warning",
    )
    r.add_argument(
        "--no-memory-check",
        action="store_true",
        help="train even when weights, gradients, optimiser state and teacher exceed this machine's memory",
    )
    return p


def _range(value: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--{name} {value!r}: expected 'low,high', e.g. 0.4,1.0") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"--{name} {value!r}: expected 0 < low <= high <= 1")
    return lo, hi


def checkpoint_paths(output: str | Path) -> list[Path]:
    """A run folder's step checkpoints (by name; :func:`newest_checkpoint` orders them by recorded step)."""
    return sorted((Path(output) / "checkpoints").glob("step_*.pt"), reverse=True)


def newest_checkpoint(output: str | Path) -> tuple[Path | None, int | None, list[tuple[Path, str]]]:
    """The readable checkpoint of a run folder with the highest recorded step: (path, step, skipped)."""
    return newest_state(checkpoint_paths(output), "step")


def check_args(args: argparse.Namespace, world: int) -> DinoCfg:
    """Validate every option; resolve defaults in place; return the model config. Raises ValueError."""
    require_lightly()
    check_finite_numbers(args)
    overrides: dict[str, Any] | None = None
    if args.model_overrides:
        overrides = load_json(args.model_overrides, "--model-overrides")
        if not isinstance(overrides, dict):
            raise ConfigError(f"--model-overrides must be a JSON object, got {args.model_overrides!r}")
    cfg = load_config(args.model, overrides)
    positive = ("batch_size", "epochs", "save_every", "keep", "log_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("workers", "local_crops", "freeze_last_layer", "warmup_teacher_temp_epochs"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("lr", "teacher_temp", "warmup_teacher_temp", "student_temp"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("momentum_teacher", "center_momentum"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(args, name)}")
    if min(args.min_lr, args.wd, args.wd_end, args.clip_grad, args.warmup_epochs) < 0:
        raise ValueError("--min-lr, --wd, --wd-end, --clip-grad and --warmup-epochs must be >= 0")
    for name in ("color_jitter", "grayscale", "solarize"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be a probability in [0, 1], got {getattr(args, name)}"
            )
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    if args.train_num_samples is not None and args.train_num_samples < 1:
        raise ValueError(f"--train-num-samples must be >= 1, got {args.train_num_samples}")
    args.global_crop_range = _range(args.global_crop_scale, "global-crop-scale")
    args.local_crop_range = _range(args.local_crop_scale, "local-crop-scale")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ValueError(f"--device {args.device!r}: allowed cpu, cuda, cuda:N")
    if args.precision is None:
        args.precision = "amp_bf16" if args.device.startswith("cuda") else "fp32"
    net = _meta_net(args, cfg, overrides)
    if not args.no_memory_check:  # student (weights, gradients, AdamW moments) + teacher weights
        check_training_memory(
            net, args.device, f"--model {args.model}", bytes_per_param=ADAMW_BYTES_PER_PARAM + 4
        )
    if args.dataset_type == "auto":
        args.dataset_type = "webdataset" if ".tar" in args.train_data else "folder"
    if args.dataset_type == "webdataset" and not args.train_num_samples:
        raise ValueError("--train-num-samples is required with webdataset shards (it sets the epoch length)")
    if args.dataset_type == "folder" and not os.path.isdir(args.train_data):
        raise ValueError(f"--train-data {args.train_data}: no such directory (an ImageFolder root)")
    if args.augment == "tensor" and (args.dataset_type != "folder" or args.blur):
        raise ConfigError(
            "--augment tensor decodes an ImageFolder once and has no blur: use it with folder data and --no-blur "
            "(or --augment pil)"
        )
    if args.resume not in ("auto", "none") and not Path(args.resume).is_file():
        raise ValueError(
            f"--resume {args.resume}: "
            + ("is a folder; give a checkpoint file" if Path(args.resume).is_dir() else "no such file")
            + " (allowed: auto, none, or a checkpoint file)"
        )
    check_output(args, cfg)
    if args.resume not in ("auto", "none"):
        step = check_checkpoint(Path(args.resume), cfg, "--resume")
        newest, newest_step, _ = newest_checkpoint(args.output)
        if newest is not None and newest_step > step and newest.resolve() != Path(args.resume).resolve():
            raise ConfigError(
                f"--resume {args.resume} is at step {step}, but --output holds {newest} at step {newest_step}: "
                "resuming would overwrite the newer checkpoints; use --resume auto, or another --output"
            )
    args.world = world
    args.global_batch = args.batch_size * world
    return cfg


def _meta_net(args: argparse.Namespace, cfg: DinoCfg, overrides: dict[str, Any] | None) -> torch.nn.Module:
    """The student network built on the meta device (no memory, no weights): every config that cannot build
    is refused here, in one line, instead of in timm or lightly once training starts."""
    from sparo_clip.dino.model import DinoNet

    where = "--model-overrides" if overrides else "--model"
    try:
        with torch.device("meta"):
            return DinoNet(cfg, freeze_last_layer=args.freeze_last_layer)
    except (ValueError, TypeError, AssertionError, RuntimeError, NotImplementedError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{where}: model {args.model!r} cannot be built: {first}") from e


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def check_checkpoint(path: Path, cfg: DinoCfg, what: str) -> int:
    """A DINO training checkpoint of ``cfg`` (read weights-only, mapped), with finite weights; returns its step.

    Raises:
        ConfigError: unreadable or unsafe file, not a DINO training checkpoint, another config's, or NaN/inf.
    """
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except CheckpointError as e:
        raise ConfigError(f"{what}: {e}") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(
            f"{what}: {path} is not a DINO training checkpoint (no {missing}; it holds {found})"
        )
    if ckpt["dino_cfg"] != cfg.to_dict():
        differ = _differences(ckpt["dino_cfg"], cfg.to_dict()) if isinstance(ckpt["dino_cfg"], dict) else []
        raise ConfigError(
            f"{what}: {path} was trained with another model config (differs in {', '.join(differ[:6]) or 'dino_cfg'}); "
            "use the --model and --model-overrides it was trained with, or another --output"
        )
    for net in ("student", "teacher"):
        try:
            check_finite_weights(ckpt[net], f"{net} of checkpoint {path}", hint="")
        except CheckpointError as e:
            raise ConfigError(f"{what}: {e}") from e
    return int(ckpt["step"])


def check_output(args: argparse.Namespace, cfg: DinoCfg) -> None:
    """``--output`` must be writable, and must not hold another config's run or one --resume none overwrites."""
    import json

    out = Path(args.output)
    check_writable_folder(out, "--output")
    recorded = out / "config.json"
    if recorded.is_file():
        try:
            theirs = json.loads(recorded.read_text()).get("dino_cfg")
        except (OSError, ValueError, AttributeError) as e:
            raise ConfigError(
                f"--output {out}: its config.json cannot be read ({e}); use another --output"
            ) from e
        if theirs != cfg.to_dict():
            differ = _differences(theirs, cfg.to_dict()) if isinstance(theirs, dict) else ["dino_cfg"]
            raise ConfigError(
                f"--output {out} holds a run of another model config (its config.json differs in "
                f"{', '.join(differ[:6])}): use another --output, or the --model it was trained with"
            )
    if args.resume == "none" and checkpoint_paths(out):
        raise ConfigError(
            f"--output {out} holds checkpoints of an earlier run; --resume none would overwrite them: use "
            "another --output, or --resume auto to continue it"
        )
    if args.resume == "auto":
        path, _, skipped = newest_checkpoint(out)
        if path is not None:
            check_checkpoint(path, cfg, "--resume auto: the newest checkpoint of --output")


def run_config(args: argparse.Namespace | DinoRun, cfg: DinoCfg) -> dict[str, Any]:
    """What is saved next to the run and in every checkpoint (plain JSON types only)."""
    values = dataclasses.asdict(args) if isinstance(args, DinoRun) else vars(args)
    keys = sorted(k for k in values if k not in ("dry_run",))
    return {"dino_cfg": cfg.to_dict(), "args": {k: _plain(values[k]) for k in keys}}


@dataclass(frozen=True)
class DinoRun:
    """Every setting of one DINO training run, checked (:func:`check_args` + :meth:`from_args` build it)."""

    model: str
    model_overrides: str | None
    train_data: str
    dataset_type: str
    train_num_samples: int | None
    local_crops: int
    global_crop_scale: str
    local_crop_scale: str
    global_crop_range: tuple[float, float]
    local_crop_range: tuple[float, float]
    workers: int
    augment: str
    color_jitter: float
    grayscale: float
    solarize: float
    blur: bool
    batch_size: int
    epochs: int
    lr: float
    min_lr: float
    warmup_epochs: float
    wd: float
    wd_end: float
    clip_grad: float
    freeze_last_layer: int
    momentum_teacher: float
    teacher_temp: float
    warmup_teacher_temp: float
    warmup_teacher_temp_epochs: int
    student_temp: float
    center_momentum: float
    output: str
    precision: str
    device: str
    seed: int
    save_every: int
    keep: int
    resume: str
    log_every: int
    max_steps: int | None
    strict: bool
    no_memory_check: bool
    world: int
    global_batch: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DinoRun:
        """The settings of a command line that :func:`check_args` accepted."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
