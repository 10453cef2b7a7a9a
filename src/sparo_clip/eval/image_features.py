"""Frozen image features of any image encoder (:mod:`sparo_clip.eval.encoders`), for kNN and linear probes,
cached on disk.

Features are kept as slots (N, L, V) so that ``--slots`` selects among them after caching; a model without
slots is one slot holding its normalised feature.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from sparo_clip.checkpoints.files import atomic_save, load_checkpoint_file
from sparo_clip.errors import CheckpointError, DataError
from sparo_clip.eval.encoders import ImageEncoder
from sparo_clip.eval.folders import ImageList, scan_class_folders

logger = logging.getLogger(__name__)


@dataclass
class FolderPair:
    """An ImageFolder train/val pair with one class list."""

    classnames: list[str]
    train_paths: list[Path]
    train_labels: list[int]
    val_paths: list[Path]
    val_labels: list[int]


def folder_pair(train: str | Path, val: str | Path) -> FolderPair:
    """Scan ``train`` and ``val`` (one sub-folder per class); val's classes must be among train's."""
    tr, va = scan_class_folders(train, "--train"), scan_class_folders(val, "--val")
    classes = list(tr)
    extra = sorted(set(va) - set(tr))
    if extra:
        raise DataError(f"--val {val}: class folder(s) {extra[:5]} are not in --train {train}")
    index = {c: i for i, c in enumerate(classes)}
    pair = FolderPair(classes, [], [], [], [])
    for c, paths in tr.items():
        pair.train_paths += paths
        pair.train_labels += [index[c]] * len(paths)
    for c, paths in va.items():
        pair.val_paths += paths
        pair.val_labels += [index[c]] * len(paths)
    return pair


def _cache_key(encoder: ImageEncoder, paths: list[Path]) -> str:
    stamp = None
    if encoder.weights and os.path.exists(encoder.weights):
        st = os.stat(encoder.weights)
        stamp = [os.path.abspath(encoder.weights), st.st_size, st.st_mtime_ns]
    files = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()
    blob = json.dumps([encoder.identity, stamp, files, len(paths)])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def encode_paths(
    encoder: ImageEncoder,
    paths: list[Path],
    desc: str,
    batch_size: int = 64,
    workers: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """Slots (N, L, V) of the images, read from / written to ``cache_dir`` when it is set."""
    cache = None
    if cache_dir:
        cache = Path(cache_dir) / f"{desc}-{_cache_key(encoder, paths)}.pt"
        if cache.is_file():
            try:
                slots = load_checkpoint_file(cache)
                if isinstance(slots, torch.Tensor) and slots.shape[0] == len(paths):
                    logger.info("%s: %d cached features from %s", desc, len(paths), cache)
                    return slots
            except CheckpointError as e:
                logger.warning("ignoring unreadable feature cache: %s", e)
    loader = torch.utils.data.DataLoader(
        ImageList(paths, encoder.transform), batch_size=batch_size, num_workers=workers
    )
    chunks = [encoder.encode(images) for images, _ in tqdm(loader, desc=desc, unit="batch")]
    if not chunks:
        raise DataError(f"{desc}: no images to encode")
    slots = torch.cat(chunks)
    if cache is not None:
        atomic_save(slots, cache)
    return slots


def add_probe_args(p: argparse.ArgumentParser) -> None:
    """Options kNN and the linear probe share."""
    p.add_argument("--train", required=True, help="ImageFolder of the labelled training images")
    p.add_argument(
        "--val", required=True, help="ImageFolder of the evaluation images (train's class folders)"
    )
    p.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "sparo_clip", "features"),
        help="feature cache folder ('' disables; keyed by model, weights file, precision and image list)",
    )
