"""Options of ``python -m sparo_clip.dino.train`` (DINO's reference recipe as defaults) and their checks.

Every check runs before any process group, data loader or model exists, and fails with one line naming the
option and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from sparo_clip.dino.config import DinoCfg, load_config
from sparo_clip.dino.lightly_api import require_lightly

PRECISIONS = ("fp32", "amp_bf16")


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
    return p


def _range(value: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--{name} {value!r}: expected 'low,high', e.g. 0.4,1.0") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"--{name} {value!r}: expected 0 < low <= high <= 1")
    return lo, hi


def check_args(args: argparse.Namespace, world: int) -> DinoCfg:
    """Validate every option; resolve defaults in place; return the model config. Raises ValueError."""
    require_lightly()
    overrides: dict[str, Any] | None = None
    if args.model_overrides:
        try:
            overrides = json.loads(args.model_overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"--model-overrides is not valid JSON: {e}") from e
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
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
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
    if args.dataset_type == "auto":
        args.dataset_type = "webdataset" if ".tar" in args.train_data else "folder"
    if args.dataset_type == "webdataset" and not args.train_num_samples:
        raise ValueError("--train-num-samples is required with webdataset shards (it sets the epoch length)")
    if args.dataset_type == "folder" and not os.path.isdir(args.train_data):
        raise ValueError(f"--train-data {args.train_data}: no such directory (an ImageFolder root)")
    if args.resume not in ("auto", "none") and not Path(args.resume).is_file():
        raise ValueError(f"--resume {args.resume}: no such file (allowed: auto, none, or a checkpoint file)")
    args.world = world
    args.global_batch = args.batch_size * world
    return cfg


def run_config(args: argparse.Namespace, cfg: DinoCfg) -> dict[str, Any]:
    """What is saved next to the run and in every checkpoint (plain JSON types only)."""
    keys = sorted(k for k in vars(args) if k not in ("dry_run",))
    return {"dino_cfg": cfg.to_dict(), "args": {k: _plain(getattr(args, k)) for k in keys}}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value
