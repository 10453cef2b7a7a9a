"""Frozen image features of any image encoder (:mod:`sparo_clip.eval.encoders`), for kNN and linear probes,
cached on disk.

Features are kept as slots (N, L, V) so that ``--slots`` selects among them after caching; a model without
slots is one slot holding its normalised feature. Unreadable images are skipped with a warning naming them
(``--strict`` stops instead), as in every evaluation: the features come with the indices of the images kept.
The cache is keyed by the encoder, its weights file and every image's path, size and modification time, so an
image replaced in place is encoded again.
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

from sparo_clip.checkpoints.files import atomic_save, load_checkpoint_file
from sparo_clip.errors import CheckpointError, DataError, WriteError
from sparo_clip.eval.common import EncodedImages, encode_image_dataset
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


def _stamp(path: Path) -> list:
    """What tells a file's content apart cheaply: its path, size and modification time (ns)."""
    try:
        st = os.stat(path)
        return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(Path(path).resolve()), None, None]


def _cache_key(encoder: ImageEncoder, paths: list[Path]) -> str:
    weights = _stamp(Path(encoder.weights)) if encoder.weights and os.path.exists(encoder.weights) else None
    files = hashlib.sha256()
    for p in paths:
        files.update(json.dumps(_stamp(p)).encode() + b"\n")
    blob = json.dumps([encoder.identity, weights, files.hexdigest(), len(paths)])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _cached(cache: Path, n: int, strict: bool) -> EncodedImages | None:
    """The features a cache file holds for ``n`` images, or None (missing, unreadable, of another layout)."""
    try:
        data = load_checkpoint_file(cache)
    except CheckpointError as e:
        logger.warning("ignoring unreadable feature cache: %s", e)
        return None
    if not isinstance(data, dict) or not {"slots", "kept", "skipped"} <= set(data):
        return None
    slots, kept, skipped = data["slots"], [int(i) for i in data["kept"]], list(data["skipped"])
    if not isinstance(slots, torch.Tensor) or slots.shape[0] != len(kept) or len(kept) + len(skipped) != n:
        return None
    if skipped and strict:
        raise DataError(f"{skipped[0]} (--strict; without it unreadable images are skipped)")
    for reason in skipped:
        logger.warning("skipping unreadable image: %s", reason)
    return EncodedImages(slots, kept, skipped)


def encode_paths(
    encoder: ImageEncoder,
    paths: list[Path],
    desc: str,
    batch_size: int = 64,
    workers: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> EncodedImages:
    """Slots (N', L, V) of the readable images and their indices, read from / written to ``cache_dir``.

    Raises:
        DataError: no image can be read, or (``strict``) one cannot.
    """
    cache = None
    if cache_dir:
        cache = Path(cache_dir) / f"{desc}-{_cache_key(encoder, paths)}.pt"
        found = _cached(cache, len(paths), strict) if cache.is_file() else None
        if found is not None:
            logger.info("%s: %d cached features from %s", desc, len(found.kept), cache)
            return found
    encoded = encode_image_dataset(
        encoder.encode, ImageList(paths, encoder.transform), desc, batch_size, workers, strict
    )
    if cache is not None:
        data = {"slots": encoded.slots, "kept": torch.tensor(encoded.kept), "skipped": encoded.skipped}
        try:
            atomic_save(data, cache)
        except WriteError as e:  # the cache only saves time: the evaluation goes on without it
            logger.warning("feature cache not written: %s", e)
    return encoded


def add_probe_args(p: argparse.ArgumentParser) -> None:
    """Options kNN and the linear probe share."""
    p.add_argument("--train", required=True, help="ImageFolder of the labelled training images")
    p.add_argument(
        "--val", required=True, help="ImageFolder of the evaluation images (train's class folders)"
    )
    p.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "sparo_clip", "features"),
        help="feature cache folder ('' disables; keyed by model, weights file, precision and every image's "
        "path, size and modification time)",
    )
