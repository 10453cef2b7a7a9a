"""Frozen image features of any image encoder of the project, for kNN and linear probes, cached on disk.

Encoders: every OpenCLIP model (SparoCLIP or CLIP image towers; ``--model NAME --pretrained CKPT``) and the
encoder of a SPARO-DINO / DINO training checkpoint (``--model dino:CKPT``, the teacher, as DINO evaluates).
Features are kept as slots (N, L, V) so that ``--slots`` selects among them after caching; a model without
slots is one slot holding its normalised feature.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import transforms
from tqdm import tqdm

from ..checkpoints import CheckpointError, atomic_save, load_checkpoint_file
from .common import EvalError, check_common_args, load_context
from .folders import ImageList, scan_class_folders

logger = logging.getLogger(__name__)

DINO_PREFIX = "dino:"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ImageEncoder:
    """Images (B, 3, H, W) -> slots (B, L, V) fp32, with the encoder's own evaluation transform."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    transform: Callable
    num_slots: int
    is_sparo: bool
    device: torch.device


def dino_eval_transform(size: int) -> Callable:
    """DINO's evaluation transform: resize to size * 256/224 (bicubic), centre crop, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def load_image_encoder(args: argparse.Namespace) -> ImageEncoder:
    """The encoder named by ``--model`` (``dino:CKPT`` or any OpenCLIP model) on ``--device``."""
    if not args.model.startswith(DINO_PREFIX):
        ctx = load_context(args)
        return ImageEncoder(ctx.image_slots, ctx.preprocess, ctx.num_slots, ctx.is_sparo, ctx.device)
    from open_clip_train.precision import get_autocast

    from ..dino.model import load_encoder

    path = args.model[len(DINO_PREFIX) :]
    if args.pretrained is not None:
        raise EvalError("--pretrained is not used with --model dino:CKPT (the checkpoint holds the weights)")
    check_common_args(args, registered_model=False)
    try:
        encoder = load_encoder(path).to(args.device)
    except CheckpointError as e:
        raise EvalError(str(e)) from e
    device = torch.device(args.device)
    autocast = get_autocast(args.precision, device_type=device.type)

    @torch.inference_mode()
    def encode(images: torch.Tensor) -> torch.Tensor:
        with autocast():
            return encoder.slots(images.to(device)).float().cpu()

    return ImageEncoder(
        encode,
        dino_eval_transform(encoder.cfg.global_crop_size),
        encoder.num_slots,
        encoder.readout is not None,
        device,
    )


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
        raise EvalError(f"--val {val}: class folder(s) {extra[:5]} are not in --train {train}")
    index = {c: i for i, c in enumerate(classes)}
    pair = FolderPair(classes, [], [], [], [])
    for c, paths in tr.items():
        pair.train_paths += paths
        pair.train_labels += [index[c]] * len(paths)
    for c, paths in va.items():
        pair.val_paths += paths
        pair.val_labels += [index[c]] * len(paths)
    return pair


def _cache_key(args: argparse.Namespace, paths: list[Path]) -> str:
    weights = args.model[len(DINO_PREFIX) :] if args.model.startswith(DINO_PREFIX) else args.pretrained
    stamp = None
    if weights and os.path.exists(weights):
        st = os.stat(weights)
        stamp = [os.path.abspath(weights), st.st_size, st.st_mtime_ns]
    files = hashlib.sha256("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()
    blob = json.dumps([args.model, args.pretrained, stamp, args.precision, files, len(paths)])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def encode_paths(
    encoder: ImageEncoder, paths: list[Path], args: argparse.Namespace, desc: str
) -> torch.Tensor:
    """Slots (N, L, V) of the images, read from / written to ``args.cache_dir`` when it is set."""
    cache = None
    if args.cache_dir:
        cache = Path(args.cache_dir) / f"{desc}-{_cache_key(args, paths)}.pt"
        if cache.is_file():
            try:
                slots = load_checkpoint_file(cache)
                if isinstance(slots, torch.Tensor) and slots.shape[0] == len(paths):
                    logger.info("%s: %d cached features from %s", desc, len(paths), cache)
                    return slots
            except CheckpointError as e:
                logger.warning("ignoring unreadable feature cache: %s", e)
    loader = torch.utils.data.DataLoader(
        ImageList(paths, encoder.transform), batch_size=args.batch_size, num_workers=args.workers
    )
    chunks = [encoder.encode(images) for images, _ in tqdm(loader, desc=desc, unit="batch")]
    if not chunks:
        raise EvalError(f"{desc}: no images to encode")
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
