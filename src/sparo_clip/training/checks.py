"""Checks of a training command before any work starts: each failure is one :class:`ConfigError` line.

Nothing here writes to the run folder, so a refused command leaves nothing behind that blocks a rerun, and
whatever can refuse a run refuses here, before open_clip_train writes ``params.txt`` or the run writes
``model_config.json`` (a resumed run's recorded model and newest checkpoint are checked here too).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import load_checkpoint_file, recorded_progress
from sparo_clip.checkpoints.loading import check_finite_weights
from sparo_clip.errors import CheckpointError, ConfigError
from sparo_clip.inputs import check_finite_numbers, expand_urls, is_local
from sparo_clip.training.run import newest_run_checkpoint, run_checkpoints
from sparo_clip.training.shards import SHARD_IMAGE_EXTS, listed_size, member_names, probe_shard


def _shown(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def check_numbers(args: argparse.Namespace) -> None:
    """Numbers that must be finite (``--lr nan`` would train NaN), counts that must be positive
    (open_clip_train would divide by them, or loop on nothing)."""
    check_finite_numbers(args)
    for flag, minimum in (("batch_size", 1), ("epochs", 1), ("accum_freq", 1), ("workers", 0)):
        value = getattr(args, flag, None)
        if value is not None and value < minimum:
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be at least {minimum}")
    if args.train_num_samples is not None and args.train_num_samples < 1:
        raise ConfigError(
            f"--train-num-samples {args.train_num_samples}: must be a positive number of samples"
        )
    for flag in ("lr", "warmup"):
        value = getattr(args, flag, None)
        if value is not None and value < 0:
            raise ConfigError(f"--{flag} {value}: must be zero or more")
    size = args.force_image_size
    sizes = size if isinstance(size, (list, tuple)) else [size] if size is not None else []
    if any(s < 1 for s in sizes):
        raise ConfigError(f"--force-image-size {' '.join(map(str, sizes))}: image sizes must be positive")


def check_reporting(args: argparse.Namespace) -> None:
    """``--report-to`` backends must be installed (open_clip_train asserts only after creating the run)."""
    import importlib.util

    wanted = str(args.report_to or "")
    for backend in ("wandb", "tensorboard"):  # open_clip_train tests for the substring
        if (backend in wanted or "all" in wanted) and importlib.util.find_spec(backend) is None:
            raise ConfigError(
                f"--report-to {args.report_to}: {backend} is not installed; install it, or use --report-to none"
            )


def check_precision(args: argparse.Namespace) -> None:
    """Half precision (fp16) trains NaN on CPU: refuse it there (bf16 is the CPU choice)."""
    on_cpu = not torch.cuda.is_available() or str(getattr(args, "device", "cuda")).startswith("cpu")
    if on_cpu and args.precision in ("fp16", "pure_fp16"):
        raise ConfigError(
            f"--precision {args.precision}: half precision is not supported on CPU (no GPU found); "
            "use amp_bf16, bf16, pure_bf16 or fp32"
        )


def check_tower_dims(cfg: dict[str, Any], where: str) -> None:
    """Attention heads that must divide a tower's width (else a bare assertion deep in torch)."""
    text = cfg.get("text_cfg") or {}
    if "hf_model_name" not in text:
        width, heads = text.get("width", 512), text.get("heads", 8)
        if not isinstance(heads, int) or heads < 1 or width % heads:
            raise ConfigError(
                f"{where}: text_cfg.heads={heads} does not divide text_cfg.width={width}: use a divisor of {width}"
            )
    vision = cfg.get("vision_cfg") or {}
    if "timm_model_name" not in vision and "width" in vision:
        width, head_width = vision["width"], vision.get("head_width", 64)
        if not isinstance(head_width, int) or head_width < 1 or width % head_width:
            raise ConfigError(
                f"{where}: vision_cfg.head_width={head_width} does not divide vision_cfg.width={width}"
            )


def check_logs(args: argparse.Namespace) -> None:
    """The logs folder must be writable, and the run folder new unless resuming (checked before any work)."""
    if not args.logs or str(args.logs).lower() == "none":
        return
    logs = Path(args.logs)
    existing = logs
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--logs-dir {args.logs}: {existing} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sparo-write-check.", dir=existing)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError(f"--logs-dir {args.logs}: cannot write in {existing} ({e.strerror or e})") from e
    first_rank = os.environ.get("RANK", "0") == "0"  # other ranks may start after rank 0 created the run
    run = logs / args.name if args.name else None
    taken = run is not None and ((run / "out.log").exists() or bool(run_checkpoints(run / "checkpoints")))
    if first_rank and taken and args.resume != "latest":
        raise ConfigError(
            f"--name {args.name}: a run of that name already exists in {run} (its checkpoints would be "
            "overwritten); pick another --name, or pass --resume latest to continue it"
        )


def _dataset_kind(args: argparse.Namespace, flag: str, first: str) -> str:
    ext = first.rsplit(".", 1)[-1].lower() if "." in os.path.basename(first) else ""
    kind = args.dataset_type
    if kind == "auto":
        if ext not in ("tar", "csv", "tsv"):
            raise ConfigError(
                f"--{flag}: cannot tell the dataset type of {first!r} from its extension '.{ext}'; "
                "give --dataset-type webdataset or csv"
            )
        return "webdataset" if ext == "tar" else "csv"
    if kind == "webdataset" and ext in ("csv", "tsv"):
        raise ConfigError(f"--{flag}: {first} is a {ext} file, but --dataset-type is webdataset; use csv")
    if kind == "csv" and ext == "tar":
        raise ConfigError(f"--{flag}: {first} is a tar shard, but --dataset-type is csv; use webdataset")
    return kind


def check_data(args: argparse.Namespace, world_size: int = 1) -> None:
    """Fail fast on missing, unreadable or too-few data (see the module docstring of :mod:`.shards`)."""
    for attr in ("train_data", "val_data"):
        spec = getattr(args, attr, None)
        if not spec or args.dataset_type == "synthetic":
            continue
        flag = attr.replace("_", "-")
        urls = expand_urls(spec)
        kind = _dataset_kind(args, flag, urls[0]) if urls else args.dataset_type
        paths = [u for u in urls if is_local(u)]  # remote or piped sources are checked by the loader
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ConfigError(
                f"--{flag}: {len(missing)} of {len(paths)} path(s) do not exist: {_shown(missing)}"
            )
        if kind == "csv" and paths:
            _check_csv(args, paths[0], flag, is_train=attr == "train_data", world_size=world_size)
        if kind != "webdataset" or not paths:
            continue
        unreadable = [(p, why) for p in paths if (why := probe_shard(p)) is not None]
        if len(unreadable) == len(urls):
            raise ConfigError(
                f"--{flag}: 0 of {len(urls)} shards readable: "
                + _shown([f"{p} ({why})" for p, why in unreadable])
            )
        readable = [p for p in paths if p not in dict(unreadable)]
        _check_shard_has_captions(readable, flag)
        if attr == "train_data" and not getattr(args, "dataset_resampled", False):
            _check_workers(args, len(urls), world_size, urls, dict(unreadable))
    for attr in ("imagenet_val", "imagenet_v2"):
        path = getattr(args, attr, None)
        if path and not os.path.isdir(path):
            raise ConfigError(f"--{attr.replace('_', '-')}: {path} is not a directory")
        if path and not any(p.is_dir() for p in Path(path).iterdir()):
            raise ConfigError(
                f"--{attr.replace('_', '-')}: {path} has no class sub-folders (it needs one folder per class)"
            )


def _check_csv(args: argparse.Namespace, path: str, flag: str, is_train: bool, world_size: int) -> None:
    """The columns open_clip_train reads must exist, and a training CSV must fill one batch per process."""
    import csv

    sep = args.csv_separator
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=sep)
        header = next(reader, [])
        missing = [k for k in (args.csv_img_key, args.csv_caption_key) if k not in header]
        if missing:
            raise ConfigError(
                f"--{flag}: {path} has no column(s) {missing} (separator {sep!r}; columns: {header[:6]}); "
                "set --csv-img-key / --csv-caption-key / --csv-separator"
            )
        column = header.index(args.csv_img_key)
        images = [row[column] if len(row) > column else "" for row in reader if any(c.strip() for c in row)]
    rows = len(images)
    absent = [p for p in images if not os.path.isfile(p)]  # relative paths: from the current folder, as read
    if absent:
        raise ConfigError(
            f"--{flag}: {len(absent)} of the {rows} image paths in {path} (column {args.csv_img_key!r}) are "
            f"not files: {_shown(absent)}; relative paths are read from the current folder ({os.getcwd()})"
        )
    if is_train and rows < args.batch_size * world_size:
        raise ConfigError(
            f"--batch-size {args.batch_size}: {path} has {rows} rows, fewer than one batch for each of "
            f"{world_size} process(es); the epoch would train on nothing: use a smaller --batch-size"
        )


def _check_workers(
    args: argparse.Namespace, num_shards: int, world_size: int, urls: list[str], unreadable: dict[str, str]
) -> None:
    """Every data worker needs a shard, and (where sizes.json tells) at least one batch of samples."""
    workers = max(1, args.workers) * world_size
    if args.workers * world_size > num_shards:
        raise ConfigError(
            f"--workers {args.workers}: {args.workers} x {world_size} process(es) = {args.workers * world_size} "
            f"data workers but only {num_shards} shard(s); each worker needs a shard: use --workers "
            f"{max(num_shards // world_size, 0)} or fewer"
        )
    if world_size > num_shards:  # with --workers 0 each process reads its own shards
        raise ConfigError(
            f"--train-data: {num_shards} shard(s) for {world_size} processes; each process needs a shard: "
            "split the data into more shards, or use --dataset-resampled"
        )
    sizes = [0 if u in unreadable else listed_size(u) for u in urls]
    if any(s is None for s in sizes):
        return  # counts unknown: the loader checks each pass (shards.shard_samples)
    fewest = sum(sorted(sizes)[: num_shards // workers])
    if fewest < args.batch_size:
        raise ConfigError(
            f"--batch-size {args.batch_size}: a data worker can get as few as {fewest} samples "
            f"({num_shards} shards, {sum(sizes)} samples per sizes.json, {workers} worker(s) in all), fewer "
            "than one batch, and would wait forever: use a smaller --batch-size, fewer --workers, or more data"
        )


def _check_shard_has_captions(paths: list[str], flag: str) -> None:
    """open_clip_train's loader waits forever on shards without ``.txt``, and trains on nothing without images:
    check one readable shard for both."""
    for path in paths[:4]:
        names = member_names(path)
        if names is None:
            continue  # a damaged shard is skipped (and named) by the loader
        if not any(n.endswith(".txt") for n in names):
            raise ConfigError(
                f"--{flag}: shard {path} has no '.txt' captions (found e.g. {names[:4]}); "
                "open_clip_train's webdataset loader needs '<key>.txt' next to each image"
            )
        if names and not any(n.rsplit(".", 1)[-1].lower() in SHARD_IMAGE_EXTS for n in names):
            found = sorted({"." + n.rsplit(".", 1)[-1] for n in names if "." in n})
            raise ConfigError(
                f"--{flag}: shard {path} has no images ({', '.join('.' + e for e in SHARD_IMAGE_EXTS)}); "
                f"members found: {', '.join(found[:8])}"
            )
        return


def check_resume(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """``--resume PATH`` must be a safe, readable checkpoint of this model (read weights-only, mapped)."""
    path = args.resume
    if path is None or path == "latest" or not is_local(path):
        return
    try:
        ckpt = load_checkpoint_file(path, mmap=True)
    except CheckpointError as e:
        raise ConfigError(f"--resume: {e}") from e
    _check_fits(ckpt, path, model, args.model, "--resume")


def check_resume_latest(
    args: argparse.Namespace, model: torch.nn.Module, override: dict[str, Any] | None
) -> Path | None:
    """``--resume latest``: the run folder must hold a run of this model, and its newest good checkpoint (by
    recorded epoch, :func:`.run.newest_run_checkpoint`) must fit it. Returns that checkpoint (None: none yet)."""
    if args.resume != "latest" or not args.logs or str(args.logs).lower() == "none" or not args.name:
        return None
    if getattr(args, "remote_sync", None):
        return None  # the checkpoints are remote: open_clip_train finds them
    run = Path(args.logs) / args.name
    recorded = run / "model_config.json"
    if recorded.is_file():
        try:
            before = json.loads(recorded.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--resume latest: {recorded} cannot be read ({e})") from e
        before = before if isinstance(before, dict) else {}
        then = (before.get("model", args.model), before.get("override_model_config"))
        now = (args.model, json.loads(json.dumps(override)) if override else None)
        if then != now:
            said = f"--model {then[0]}" + (
                f" --override-model-config '{json.dumps(then[1])}'" if then[1] else ""
            )
            asked = f"--model {now[0]}" + (
                f" --override-model-config '{json.dumps(now[1])}'" if now[1] else ""
            )
            raise ConfigError(
                f"--resume latest: the run in {run} was trained as {said} (its model_config.json), not as "
                f"{asked}; resume it with its own model, or pick another --name"
            )
    path, epoch, skipped = newest_run_checkpoint(run / "checkpoints")
    if path is None and skipped:
        raise ConfigError(
            f"--resume latest: no readable checkpoint in {run / 'checkpoints'} ({len(skipped)} unreadable); "
            f"move them away to start afresh (first: {skipped[0][1]})"
        )
    if path is None:
        return None
    ckpt = load_checkpoint_file(path, mmap=True)
    _check_fits(ckpt, path, model, args.model, f"--resume latest: the newest checkpoint (epoch {epoch})")
    return path


def _check_fits(ckpt: Any, path: Any, model: torch.nn.Module, model_name: str, what: str) -> None:
    """A loaded checkpoint must be a training checkpoint or state dict of ``model``, with finite weights."""
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) and "epoch" in ckpt else ckpt
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(
            f"{what}: {path} is neither a training checkpoint (with 'epoch' and 'state_dict') nor a state dict"
        )
    if isinstance(ckpt, dict) and "epoch" in ckpt and "optimizer" not in ckpt:
        raise ConfigError(f"{what}: {path} has an 'epoch' but no 'optimizer' state to resume")
    if recorded_progress(ckpt, "epoch") is None and isinstance(ckpt, dict) and "epoch" in ckpt:
        raise ConfigError(f"{what}: {path} records epoch {ckpt['epoch']!r}, not a number")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [
            f"missing {_shown(missing)}" if missing else "",
            f"unexpected {_shown(unexpected)}" if unexpected else "",
        ]
        parts.append(
            "shape of "
            + _shown([f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in wrong])
            if wrong
            else ""
        )
        raise ConfigError(
            f"{what}: {path} is not a checkpoint of --model {model_name}: " + "; ".join(p for p in parts if p)
        )
    try:
        check_finite_weights(state, f"checkpoint {path}", hint="")
    except CheckpointError as e:
        raise ConfigError(f"{what}: {e}") from e
