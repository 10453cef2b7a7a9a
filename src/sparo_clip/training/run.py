"""What one training run gives open_clip_train in place of its own pieces (plugged in by :mod:`.integration`).

- checkpoints: every write atomic (:func:`.checkpoints.atomic_save`); every read ``weights_only=True``;
  ``--resume latest`` takes the newest checkpoint that loads, warning about each one it skips;
- the loss: a non-finite value stops the run with :class:`NonFiniteLossError` before anything is saved;
- training shards: read by :func:`.shards.shard_samples` (per-shard warnings, no batch-less pass);
- the sample shuffle: seeded from ``--seed``, the rank, the worker and the pass, so that the same command
  with the same worker count gives the same weights;
- on a machine without GPU, DDP without ``device_ids`` (DDP rejects them for CPU modules);
- ``--imagenet-v2`` read by :class:`ImageNetV2Folder` when ``imagenetv2_pytorch`` (not on PyPI) is missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import (
    atomic_save,
    load_checkpoint_file,
    newest_readable,
    training_checkpoints,
)
from sparo_clip.errors import CheckpointError, NonFiniteLossError
from sparo_clip.inputs import is_local
from sparo_clip.training.shards import PassRules, shard_samples

_logger = logging.getLogger("sparo_clip.train")


class RunState:
    """The parsed args of the run in progress (set by the parse_args adapter, read by the others)."""

    def __init__(self) -> None:
        self.args: argparse.Namespace | None = None
        self.resume_latest = False

    def arg(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default) if self.args is not None else default


class FiniteLoss(torch.nn.Module):
    """Wraps an OpenCLIP loss; raises :class:`NonFiniteLossError` on the first NaN/inf total."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.calls = 0

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
        return out


def make_loss() -> Callable[..., Any]:
    """The create_loss adapter: open_clip_train's own loss, wrapped in :class:`FiniteLoss`."""

    def create_loss(original: Callable[..., Any], args: argparse.Namespace) -> Any:
        return FiniteLoss(original(args))

    return create_loss


def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.save`` for open_clip_train: local paths are written atomically (temp file + rename)."""
    if isinstance(f, (str, os.PathLike)) and is_local(str(f)) and not args and not kwargs:
        return atomic_save(obj, f)
    return torch.save(obj, f, *args, **kwargs)


def make_checkpoint_readers(
    state: RunState, original_latest: Callable[..., Any]
) -> tuple[Callable, Callable]:
    """(pt_load, get_latest_checkpoint) for open_clip_train.main."""

    def get_latest_checkpoint(path: str, remote: bool) -> str | None:
        if remote:
            return original_latest(path, remote)
        found = training_checkpoints(path)
        return str(found[0]) if found else None

    def pt_load(file_path: str, map_location: Any = None) -> Any:
        if not is_local(file_path):
            import fsspec

            with fsspec.open(file_path, "rb") as f:
                return torch.load(f, map_location=map_location, weights_only=True)
        try:
            return load_checkpoint_file(file_path, map_location=map_location or "cpu")
        except CheckpointError as e:
            if not state.resume_latest:
                raise
            _logger.warning("--resume latest: skipping %s", e)
            folder = Path(file_path).parent
            rest = [p for p in training_checkpoints(folder) if p.resolve() != Path(file_path).resolve()]
            path, obj, skipped = newest_readable(rest, map_location=map_location or "cpu")
            for _, reason in skipped:
                _logger.warning("--resume latest: skipping %s", reason)
            if path is None:
                raise CheckpointError(
                    f"--resume latest: no readable checkpoint in {folder} ({len(skipped) + 1} unreadable); "
                    "move them away to start afresh"
                ) from e
            _logger.warning("--resume latest: resuming from %s, the newest readable checkpoint", path)
            state.args.resume = str(path)
            return obj

    return pt_load, get_latest_checkpoint


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
    """``wds.shuffle(bufsize, initial)`` whose generator is seeded from --seed, rank, worker and pass number."""

    def __init__(self, state: RunState, bufsize: int = 1000, initial: int = 100) -> None:
        self.state, self.bufsize, self.initial, self.passes = state, bufsize, initial, 0

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        import webdataset

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        seed = f"{self.state.arg('seed', 0)}:{self.state.arg('rank', 0)}:{worker}:{self.passes}"
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
