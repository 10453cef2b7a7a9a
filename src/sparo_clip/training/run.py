"""What one training run gives open_clip_train in place of its own pieces (plugged in by :mod:`.integration`).

- checkpoints: every write atomic (:func:`.checkpoints.atomic_save`; a failed write is one
  :class:`WriteError` line and replaces nothing); every read ``weights_only=True``; ``--resume latest`` takes
  the readable checkpoint with the highest recorded epoch (:func:`newest_run_checkpoint`), never the newest
  by file name, warning about each one it skips; temporary files of interrupted writes are removed when the
  run starts;
- the loss: a non-finite value stops the run with :class:`NonFiniteLossError` before anything is saved;
  finite losses are counted (:attr:`RunState.steps`: a run that fails before its first step takes back
  what it wrote, see :class:`RunFolder`);
- training shards: read by :func:`.shards.shard_samples` (per-shard warnings, no batch-less pass);
- CSV training data: an unreadable image is skipped with a warning naming it (:func:`make_csv_dataset`);
- the sample shuffle: seeded from ``--seed``, the rank, the worker and the epoch, so that the same command
  with the same worker count gives the same weights, also when it was killed and resumed;
- AdamW with torch's fused kernel (:func:`fused_adamw`; the same update, one kernel for all parameters instead of
  a loop; ``--no-fused-adamw`` keeps open_clip_train's);
- on a machine without GPU, DDP without ``device_ids`` (DDP rejects them for CPU modules);
- ``--imagenet-v2`` read by :class:`ImageNetV2Folder` when ``imagenetv2_pytorch`` (not on PyPI) is missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import (
    atomic_save,
    load_checkpoint_file,
    newest_state,
    recorded_progress,
    remove_orphan_temporaries,
    training_checkpoints,
)
from sparo_clip.errors import CheckpointError, DataError, NonFiniteLossError, UnreadableImage
from sparo_clip.inputs import FolderSnapshot, is_local, read_image
from sparo_clip.training.shards import PassRules, shard_samples

_logger = logging.getLogger("sparo_clip.train")


FUSED_DEVICES = ("cpu", "cuda")


def fused_adamw(params: Iterable[Any], **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)`` with ``fused=True`` when every parameter allows the fused kernel
    (floating point, one device of a kind it supports); otherwise torch's default, unchanged.

    open_clip_train builds its AdamW without ``fused``: on CPU, torch's default then loops over the parameters,
    which for a tiny model costs about a fifth of a training step (benchmarks/optimizer_bench.py).
    """
    groups = [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    devices = {p.device for p in tensors}
    fused = (
        "fused" not in kwargs
        and len(devices) == 1
        and next(iter(devices)).type in FUSED_DEVICES
        and all(p.is_floating_point() for p in tensors)
    )
    return torch.optim.AdamW(groups, **kwargs, **({"fused": True} if fused else {}))


class RunState:
    """The parsed args of the run in progress (set by the parse_args adapter, read by the others).

    Attributes:
        steps: finite training losses computed so far (0: the run has not trained a step yet).
        start_epoch: the epoch the run resumed at (0 for a new run).
    """

    def __init__(self) -> None:
        self.args: argparse.Namespace | None = None
        self.resume_latest = False
        self.steps = 0
        self.start_epoch = 0

    def arg(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default) if self.args is not None else default


class FiniteLoss(torch.nn.Module):
    """Wraps an OpenCLIP loss; raises :class:`NonFiniteLossError` on the first NaN/inf total."""

    def __init__(self, loss: torch.nn.Module, state: RunState | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.calls = 0
        self.state = state

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.loss(*args, **kwargs)
        self.calls += 1
        values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
        total = sum(v.detach().float().sum() for v in values if torch.is_tensor(v))
        if torch.is_tensor(total) and not bool(torch.isfinite(total)):
            raise NonFiniteLossError(
                f"the training loss is {total.item()} at batch {self.calls} of this run: stopped before saving "
                "non-finite weights (lower --lr, use --precision amp_bf16 or fp32, or check the data)"
            )
        if self.state is not None:
            self.state.steps += 1
        return out


def make_loss(state: RunState | None = None) -> Callable[..., Any]:
    """The create_loss adapter: open_clip_train's own loss, wrapped in :class:`FiniteLoss`."""

    def create_loss(original: Callable[..., Any], args: argparse.Namespace) -> Any:
        return FiniteLoss(original(args), state)

    return create_loss


def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.save`` for open_clip_train: local paths are written atomically (temp file + rename)."""
    if isinstance(f, (str, os.PathLike)) and is_local(str(f)) and not args and not kwargs:
        return atomic_save(obj, f)
    return torch.save(obj, f, *args, **kwargs)


def run_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Every checkpoint file of a run folder: ``epoch_latest.pt``, ``epoch_N.pt`` and open_clip_train's
    ``tmp.pt`` (a whole checkpoint, written atomically, that a kill kept from becoming ``epoch_latest.pt``)."""
    tmp = Path(folder) / "tmp.pt"
    return training_checkpoints(folder) + ([tmp] if tmp.is_file() else [])


def newest_run_checkpoint(folder: str | os.PathLike[str]) -> tuple[Path | None, int | None, list]:
    """The readable checkpoint of a run with the highest recorded epoch: (path, epoch, [(skipped, why)]).

    After a kill while ``epoch_latest.pt`` was being replaced, ``epoch_N.pt`` records a later epoch than
    ``epoch_latest.pt``: resuming from the name would train epoch N again and overwrite the good file.
    """
    return newest_state(run_checkpoints(folder), "epoch")


def make_checkpoint_readers(
    state: RunState, original_latest: Callable[..., Any]
) -> tuple[Callable, Callable]:
    """(pt_load, get_latest_checkpoint) for open_clip_train.main."""

    def get_latest_checkpoint(path: str, remote: bool) -> str | None:
        if remote:
            return original_latest(path, remote)
        found, _, _ = newest_run_checkpoint(path)
        return str(found) if found else None

    def pt_load(file_path: str, map_location: Any = None) -> Any:
        if not is_local(file_path):
            import fsspec

            with fsspec.open(file_path, "rb") as f:
                return torch.load(f, map_location=map_location, weights_only=True)
        try:
            obj = load_checkpoint_file(file_path, map_location=map_location or "cpu")
        except CheckpointError as e:
            if not state.resume_latest:
                raise
            obj = _next_best(state, Path(file_path), e, map_location or "cpu")
        state.start_epoch = recorded_progress(obj, "epoch") or 0
        return obj

    return pt_load, get_latest_checkpoint


def _next_best(state: RunState, failed: Path, error: CheckpointError, map_location: Any) -> Any:
    """``--resume latest`` when the chosen file fails to load whole: the next best by recorded epoch."""
    _logger.warning("--resume latest: skipping %s", error)
    folder, skipped = failed.parent, [failed]
    while True:
        rest = [p for p in run_checkpoints(folder) if p not in skipped]
        path, _, unreadable = newest_state(rest, "epoch")
        for p, reason in unreadable:
            _logger.warning("--resume latest: skipping %s", reason)
            skipped.append(p)
        if path is None:
            raise CheckpointError(
                f"--resume latest: no readable checkpoint in {folder} ({len(skipped)} unreadable); "
                "move them away to start afresh"
            ) from error
        try:
            obj = load_checkpoint_file(path, map_location=map_location)
        except CheckpointError as e:
            _logger.warning("--resume latest: skipping %s", e)
            skipped.append(path)
            continue
        _logger.warning("--resume latest: resuming from %s, the newest readable checkpoint", path)
        state.args.resume = str(path)
        return obj


def resume_latest(state: RunState) -> None:
    """Point ``--resume latest`` at the run's newest good checkpoint by recorded epoch (or at none).

    open_clip_train 3.3.0 takes ``epoch_latest.pt`` by name with ``--save-most-recent`` (and starts afresh
    when it is missing); called after it chose and before it loads, this replaces its choice.
    """
    args = state.args
    if not state.resume_latest or args is None or getattr(args, "remote_sync", None):
        return
    folder = Path(args.checkpoint_path)
    path, epoch, skipped = newest_run_checkpoint(folder)
    for _, reason in skipped:
        _logger.warning("--resume latest: skipping %s", reason)
    if path is not None:
        _logger.info("--resume latest: resuming from %s (epoch %d, the newest good checkpoint)", path, epoch)
    args.resume = str(path) if path is not None else None


def clean_run_start(state: RunState) -> None:
    """Remove the temporary files that killed checkpoint writes of this run left behind (rank 0 only)."""
    args = state.args
    if args is None or not getattr(args, "checkpoint_path", None) or int(getattr(args, "rank", 0)) != 0:
        return
    for p in remove_orphan_temporaries(args.checkpoint_path):
        _logger.warning("removed %s, the temporary file of an interrupted checkpoint write", p)


class RunFolder:
    """What a training run writes into its folder, so that a run failing before its first step takes it back.

    A new run folder (or logs folder) is removed whole. A resumed run's folder gets its ``params.txt`` and
    ``model_config.json`` back and loses the files the failed start created; its checkpoints and log stay
    (:class:`~sparo_clip.inputs.FolderSnapshot`).
    """

    RESTORED = ("params.txt", "model_config.json")

    def __init__(self, logs: str | None, name: str | None) -> None:
        self.logs = Path(logs) if logs and str(logs).lower() != "none" else None
        self.name = name
        self.snapshot = None
        if self.logs is not None:
            self.snapshot = FolderSnapshot(self.logs / name if name else self.logs, self.RESTORED)

    def take_back(self, name: str | None) -> None:
        """Undo the run's writes (``name``: the run's name as open_clip_train chose it)."""
        if self.snapshot is None:
            return
        if self.name or self.snapshot.created is not None:
            self.snapshot.take_back()
        elif name:  # open_clip_train named a new run folder itself, in a logs folder that was there
            shutil.rmtree(self.logs / name, ignore_errors=True)


def make_csv_dataset(state: RunState) -> Callable[[type], type]:
    """Given open_clip_train's ``CsvDataset``, the class used in its place: an image that cannot be read
    (corrupt, truncated, deleted since the check) is skipped with a warning naming it, and the next row's
    sample is given in its place (the batch keeps its size)."""

    def csv_dataset(original: type) -> type:
        class CheckedCsvDataset(original):  # type: ignore[misc,valid-type]
            warned: set[str] = set()

            def __getitem__(self, idx: int) -> tuple[Any, Any]:
                n = len(self.images)
                for offset in range(n):
                    i = (idx + offset) % n
                    try:
                        image = read_image(str(self.images[i]))
                    except UnreadableImage as e:
                        if e.path not in self.warned:
                            self.warned.add(e.path)
                            _logger.warning("skipping unreadable training image (row %d): %s", i + 1, e)
                        continue
                    return self.transforms(image), self.tokenize([str(self.captions[i])])[0]
                raise DataError(f"none of the {n} images of the CSV data can be read")

        return CheckedCsvDataset

    return csv_dataset


def _where(state: RunState) -> str:
    info = torch.utils.data.get_worker_info()
    worker = f"data worker {info.id}" if info is not None else "the main process's data loader"
    return f"{worker} of rank {state.arg('rank', 0)}"


def make_tarfile_to_samples(state: RunState) -> Callable[..., Iterator[dict[str, Any]]]:
    """Stand-in for open_clip_train.data.tarfile_to_samples_nothrow (same signature)."""

    def tarfile_to_samples(src: Iterable[dict[str, Any]], handler: Callable[[BaseException], bool] = None):
        from open_clip_train.data import log_and_continue

        rules = PassRules(
            batch_size=int(state.arg("batch_size", 1)),
            where=lambda: _where(state),
            max_barren_run=50 if state.arg("dataset_resampled", False) else None,
        )
        return shard_samples(src, handler or log_and_continue, rules)

    return tarfile_to_samples


class SeededShuffle:
    """``wds.shuffle(bufsize, initial)`` whose generator is seeded from --seed, rank, worker and epoch."""

    def __init__(self, state: RunState, bufsize: int = 1000, initial: int = 100) -> None:
        self.state, self.bufsize, self.initial, self.passes = state, bufsize, initial, 0

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        import webdataset

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        # a pass is an epoch (workers persist across epochs); a resumed run continues the count
        epoch = self.state.start_epoch + self.passes
        seed = f"{self.state.arg('seed', 0)}:{self.state.arg('rank', 0)}:{worker}:{epoch}"
        self.passes += 1
        return webdataset.shuffle(self.bufsize, self.initial, rng=random.Random(seed))(src)


def make_shuffle(state: RunState) -> Callable[..., SeededShuffle]:
    def shuffle(bufsize: int = 1000, initial: int = 100, **kwargs: Any) -> SeededShuffle:
        return SeededShuffle(state, bufsize, initial)

    return shuffle


class CpuSafeDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that drops ``device_ids`` for CPU modules (open_clip_train passes ``device_ids=[device]``)."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)


class ImageNetV2Folder(torch.utils.data.Dataset):
    """ImageNetV2 in its release layout (sub-folders ``0``..``999`` named by class index).

    open_clip_train reads ``--imagenet-v2`` with ``imagenetv2_pytorch.ImageNetV2Dataset``, a package that is
    not on PyPI. When it is missing, this reader stands in for it: ``location`` is the folder with the class
    sub-folders, or its parent holding ``ImageNetV2-matched-frequency/`` (the package's convention).
    """

    def __init__(
        self, variant: str = "matched-frequency", transform: Any = None, location: str = "."
    ) -> None:
        from sparo_clip.eval.folders import imagenet_variant

        root = Path(location)
        if (root / f"ImageNetV2-{variant}").is_dir():
            root = root / f"ImageNetV2-{variant}"
        data = imagenet_variant("imagenet-v2", root)
        self.paths, self.targets, self.transform = data.paths, data.labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[i]
