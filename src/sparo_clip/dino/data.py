"""DINO training data: multi-crop views of ImageFolder images or webdataset shards.

ImageFolder (ImageNet's ``train/<wnid>/*.JPEG`` layout, or any one-folder-per-class tree; labels are not used):
every step's global batch is a slice of a per-epoch permutation seeded by (seed, epoch), split evenly over
the processes, and every sample's augmentation is seeded by (seed, epoch, index). The data a step sees is
therefore the same for any number of processes and after a resume. Webdataset shards (the shapes world's
``train-{000000..000015}.tar`` or ImageNet shards with ``.jpg``/``.png``) are read as an endless resampled
stream (no hang with fewer shards than workers x processes), seeded by (seed, process, worker, first step):
the same run gives the same stream; a resume starts a new seeded stream instead of replaying the old one.
"""

from __future__ import annotations

import hashlib
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Sampler

from sparo_clip.errors import DataError
from sparo_clip.inputs import expand_urls

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _seed(*parts: object) -> int:
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


class MultiCropFolder(Dataset):
    """Images by path; item ``(epoch, index)`` -> list of views, augmentation seeded by (seed, epoch, index)."""

    def __init__(self, paths: list[Path], transform: Callable, seed: int = 0) -> None:
        self.paths, self.transform, self.seed = paths, transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> list[torch.Tensor]:
        epoch, index = key
        with Image.open(self.paths[index]) as img:
            img = img.convert("RGB")
        return seeded_call(self.transform, img, _seed(self.seed, epoch, index))


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
                g = torch.Generator().manual_seed(_seed(self.seed, "perm", epoch))
                perm, perm_epoch = torch.randperm(self.n, generator=g), epoch
            batch = perm[pos * self.gb : (pos + 1) * self.gb]
            for i in batch[self.rank * local : (self.rank + 1) * local].tolist():
                yield epoch, i


def check_shards(pattern: str) -> list[str]:
    """Expand a brace pattern (``::`` joins several) and check the first shard holds images."""
    urls = expand_urls(pattern)
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise DataError(f"--train-data: {len(missing)} of {len(urls)} shard(s) missing, e.g. {missing[0]}")
    first = urls[0]
    if "://" not in first:
        try:
            with tarfile.open(first) as tar:
                names = tar.getnames()[:50]
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"--train-data: shard {first} is not a readable tar file ({e})") from e
        if not any(n.rsplit(".", 1)[-1].lower() in IMAGE_KEYS for n in names):
            raise DataError(f"--train-data: shard {first} holds no images (allowed extensions: {IMAGE_KEYS})")
    return urls


class MultiCropShards(IterableDataset):
    """An endless resampled stream of multi-crop views from webdataset shards, seeded per process/worker."""

    def __init__(self, urls: list[str], transform: Callable, seed: int, rank: int, start_step: int) -> None:
        self.urls, self.transform, self.seed, self.rank, self.start = urls, transform, seed, rank, start_step

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        stream_seed = _seed(self.seed, "stream", self.rank, worker, self.start)
        rng = random.Random(stream_seed)
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, worker_seed=lambda: stream_seed, deterministic=True),
            wds.tarfile_to_samples(),
            wds.shuffle(1000, rng=rng),
            wds.decode("pil"),
            wds.to_tuple(";".join(IMAGE_KEYS)),
        )
        for count, (img,) in enumerate(pipeline):
            yield seeded_call(self.transform, img.convert("RGB"), _seed(stream_seed, count))
