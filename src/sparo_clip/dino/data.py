"""DINO training data: multi-crop views of ImageFolder images or webdataset shards.

ImageFolder (ImageNet's ``train/<wnid>/*.JPEG`` layout, or any one-folder-per-class tree; labels are not used):
every step's global batch is a slice of a per-epoch permutation seeded by (seed, epoch), split evenly over
the processes, and every sample's augmentation is seeded by (seed, epoch, index). The data a step sees is
therefore the same for any number of processes and after a resume. Webdataset shards (the shapes world's
``train-{000000..000015}.tar`` or ImageNet shards with ``.jpg``/``.png``) are read as an endless resampled
stream (no hang with fewer shards than workers x processes), seeded by (seed, process, worker, first step):
the same run gives the same stream; a resume starts a new seeded stream instead of replaying the old one.

An image that cannot be read (corrupt, truncated, not an image), a shard that cannot be read and a shard sample
without an image are not errors: the datasets yield a one-line reason in place of the views, and
:func:`collate_views` puts those reasons apart from the batch, so that the training loop can skip them with a
warning naming them and count them (or stop, with ``--strict``). A stream that finds nothing usable in
:data:`MAX_BARREN_SHARDS` shards in a row stops with a :class:`DataError` instead of looping forever.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from sparo_clip.errors import DataError, UnreadableImage
from sparo_clip.inputs import expand_urls, read_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_BARREN_SHARDS = 50  # shards in a row without a usable image before a shard stream gives up


def hash_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


def seeded_call(fn: Callable, x: object, seed: int) -> object:
    """``fn(x)`` with python, numpy and torch RNGs seeded by ``seed``; the callers' RNG states are restored."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        return fn(x)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def folder_images(root: str | Path) -> list[Path]:
    """Every image under ``root``'s class sub-folders, sorted (ImageNet / ImageFolder layout)."""
    from sparo_clip.eval.folders import scan_class_folders

    found = scan_class_folders(root, "--train-data")
    return [p for paths in found.values() for p in paths]


def collate_views(
    batch: list[list[torch.Tensor] | str],
) -> tuple[list[torch.Tensor] | None, list[str]]:
    """(views stacked per crop over the readable items, or None when there is none; the skip reasons)."""
    good = [item for item in batch if not isinstance(item, str)]
    reasons = [item for item in batch if isinstance(item, str)]
    views = [torch.stack([item[i] for item in good]) for i in range(len(good[0]))] if good else None
    return views, reasons


class MultiCropFolder(Dataset):
    """Images by path; item ``(epoch, index)`` -> list of views, augmentation seeded by (seed, epoch, index).

    An image that cannot be read gives its one-line reason instead (see the module docstring).
    """

    def __init__(self, paths: list[Path], transform: Callable, seed: int = 0) -> None:
        self.paths, self.transform, self.seed = paths, transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> list[torch.Tensor] | str:
        epoch, index = key
        try:
            img = read_image(self.paths[index])
        except UnreadableImage as e:
            return str(e)
        return seeded_call(self.transform, img, hash_seed(self.seed, epoch, index))


class StepSampler(Sampler):
    """This process's ``(epoch, index)`` keys for steps ``start_step .. total_steps - 1``, batch-ordered.

    Step s is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``; its global batch is a slice of
    the epoch's seeded permutation, and process r takes the r-th of ``world`` equal parts of it.
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        rank: int,
        world: int,
        seed: int,
        start_step: int,
        total_steps: int,
    ) -> None:
        self.n, self.gb, self.rank, self.world = num_samples, global_batch, rank, world
        self.seed, self.start, self.total = seed, start_step, total_steps
        self.steps_per_epoch = num_samples // global_batch

    def __len__(self) -> int:
        return max(0, self.total - self.start) * (self.gb // self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        local = self.gb // self.world
        perm, perm_epoch = None, -1
        for step in range(self.start, self.total):
            epoch, pos = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(hash_seed(self.seed, "perm", epoch))
                perm, perm_epoch = torch.randperm(self.n, generator=g), epoch
            batch = perm[pos * self.gb : (pos + 1) * self.gb]
            for i in batch[self.rank * local : (self.rank + 1) * local].tolist():
                yield epoch, i


def check_shards(pattern: str) -> list[str]:
    """Expand a brace pattern (``::`` joins several) and check that the local shards are there and that one of
    them holds images (the others are read, and skipped with a warning when unreadable, by the stream)."""
    urls = expand_urls(pattern)
    if not urls:
        raise DataError(f"--train-data {pattern!r}: names no shard")
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise DataError(f"--train-data: {len(missing)} of {len(urls)} shard(s) missing, e.g. {missing[0]}")
    local = [u for u in urls if "://" not in u]
    problems = []
    for url in local[:8]:
        try:
            with tarfile.open(url) as tar:
                names = tar.getnames()[:50]
        except (tarfile.TarError, OSError, EOFError) as e:
            problems.append(f"{url} is not a readable tar file ({e or type(e).__name__})")
            continue
        if any(n.rsplit(".", 1)[-1].lower() in IMAGE_KEYS for n in names):
            return urls
        found = sorted({"." + n.rsplit(".", 1)[-1] if "." in n else n for n in names})
        problems.append(
            f"shard {url} holds no images (allowed extensions: {', '.join(IMAGE_KEYS)}; members found: "
            f"{', '.join(found[:8]) or 'none, it is empty'})"
        )
    if problems:
        more = f" (and {len(problems) - 1} more shard(s) like it)" if len(problems) > 1 else ""
        raise DataError(f"--train-data: {problems[0]}{more}")
    return urls


class _ShardProblems:
    """Unreadable shards met by one stream: their reasons, and a stop after too many in a row."""

    def __init__(self) -> None:
        self.pending: list[str] = []
        self.barren = 0

    def handler(self, e: BaseException) -> bool:
        """webdataset's error handler: note the shard and go on (a corrupt shard never ends the run)."""
        args = e.args if isinstance(e.args, tuple) else ()
        url = args[-1] if args and isinstance(args[-1], str) else None  # webdataset appends the shard's url
        what = str(args[0]).splitlines()[0] if args and str(args[0]) else type(e).__name__
        self.pending.append(
            f"shard {url or '?'} cannot be read ({type(e).__name__}: {what}); skipped the rest of it"
        )
        self.barren += 1
        if self.barren >= MAX_BARREN_SHARDS:
            raise DataError(
                f"--train-data: {self.barren} shard reads in a row gave no usable image (last: "
                f"{self.pending[-1]}): the shards are unreadable"
            )
        return True

    def counted(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in samples:
            self.barren = 0
            yield sample


def _image_of(sample: dict[str, Any]) -> tuple[str, bytes] | str:
    """(name, bytes) of a shard sample's image, or why it has none."""
    for key in IMAGE_KEYS:
        if key in sample:
            return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}.{key}", sample[key]
    found = sorted(k for k in sample if not k.startswith("__"))
    return (
        f"sample {sample.get('__key__', '?')} of shard {sample.get('__url__', '?')} has no image (members: "
        f"{', '.join('.' + k for k in found) or 'none'}; allowed: {', '.join(IMAGE_KEYS)})"
    )


class MultiCropShards(IterableDataset):
    """An endless resampled stream of multi-crop views from webdataset shards, seeded per process/worker.

    Unreadable shards, unreadable images and samples without an image give their one-line reason instead of
    views (see the module docstring).
    """

    def __init__(self, urls: list[str], transform: Callable, seed: int, rank: int, start_step: int) -> None:
        self.urls, self.transform, self.seed, self.rank, self.start = urls, transform, seed, rank, start_step

    def __iter__(self) -> Iterator[list[torch.Tensor] | str]:
        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        stream_seed = hash_seed(self.seed, "stream", self.rank, worker, self.start)
        rng = random.Random(stream_seed)
        problems = _ShardProblems()
        shards = wds.ResampledShards(self.urls, worker_seed=lambda: stream_seed, deterministic=True)
        samples = problems.counted(wds.tarfile_to_samples(handler=problems.handler)(iter(shards)))
        count = 0
        for sample in wds.shuffle(1000, rng=rng)(samples):
            yield from problems.pending
            problems.pending.clear()
            found = _image_of(sample)
            if isinstance(found, str):
                yield found
                continue
            name, data = found
            try:
                img = read_image(io.BytesIO(data), name=name)
            except UnreadableImage as e:
                yield str(e)
                continue
            yield seeded_call(self.transform, img, hash_seed(stream_seed, count))
            count += 1
