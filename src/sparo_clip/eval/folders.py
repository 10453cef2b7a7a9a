"""Labelled image folders: ImageNet and its variants, and any one-sub-folder-per-class folder.

ImageNet class order is OpenCLIP's (``open_clip.IMAGENET_CLASSNAMES``), i.e. the sorted WordNet ids.
The WordNet ids come from the lists timm (a dependency of open_clip_torch) ships: the 1000 ImageNet-1k
synsets (``timm.data.ImageNetInfo``) and the 200-synset subsets of ImageNet-R and ImageNet-A. A subset's
positions among the 1000 classes are derived here from those wnids, so its logits are the right columns.
"""

from __future__ import annotations

import logging
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import open_clip
import torch
from torch.utils.data import Dataset

from sparo_clip.errors import DataError, UnreadableImage
from sparo_clip.inputs import read_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
IMAGENET_VARIANTS = ("imagenet-val", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch")
_SUBSET_FILES = {"imagenet-r": "imagenet_r_synsets.txt", "imagenet-a": "imagenet_a_synsets.txt"}


class ImageList(Dataset):
    """Images from a list of paths: ``(transform(image), index)``, or ``(reason, index)`` for a file that
    cannot be read (corrupt, truncated, not an image, a decompression bomb); the encoder skips or refuses it."""

    def __init__(self, paths: Sequence[Path], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | str, int]:
        try:
            return self.transform(read_image(self.paths[i])), i
        except UnreadableImage as e:
            return str(e), i


@dataclass
class LabelledImages:
    """A classification dataset: image paths, their labels, and the class names.

    ``class_index`` gives each class's position among ImageNet's 1000 classes for ImageNet variants
    (None for a generic folder).
    """

    name: str
    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    class_index: list[int] | None = None


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _few(items: Sequence[object], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in list(items)[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def scan_class_folders(root: str | Path, what: str) -> dict[str, list[Path]]:
    """Sub-folder name -> its images (sorted, searched recursively), in sorted sub-folder order.

    Raises:
        DataError: missing root, no sub-folders, or sub-folders without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what} {root}: no such directory")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        loose = sum(1 for p in root.iterdir() if is_image(p))
        hint = f" ({loose} images lie directly in it)" if loose else ""
        raise DataError(
            f"{what} {root}: no class sub-folders{hint}; expected one sub-folder per class holding its images"
        )
    found = {d.name: sorted(p for p in d.rglob("*") if is_image(p)) for d in subdirs}
    empty = [name for name, images in found.items() if not images]
    if empty:
        raise DataError(
            f"{what} {root}: class folder(s) without images ({_few(empty)}); "
            f"allowed image extensions: {', '.join(IMAGE_EXTENSIONS)}"
        )
    return found


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path}: no such file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{what} {path}: the file is empty")
    return lines


def read_templates(path: str | Path) -> list[str]:
    """Prompt templates, one per line, each containing ``{c}`` where the class name goes."""
    templates = read_lines(path, "--templates")
    bad = [f"line {i + 1}: {t!r}" for i, t in enumerate(templates) if "{c}" not in t]
    if bad:
        raise DataError(f"--templates {path}: every template must contain {{c}}; these do not: {_few(bad)}")
    return templates


def image_folder(root: str | Path, classnames_file: str | Path) -> LabelledImages:
    """A generic folder: one sub-folder per class; class names listed in sorted sub-folder order."""
    found = scan_class_folders(root, "--data")
    classnames = read_lines(classnames_file, "--classnames")
    if len(classnames) != len(found):
        raise DataError(
            f"--classnames {classnames_file} lists {len(classnames)} class names but --data {root} has "
            f"{len(found)} class sub-folders ({_few(list(found))}); give one name per sub-folder, in sorted order"
        )
    duplicates = sorted({c for c in classnames if classnames.count(c) > 1})
    if duplicates:
        logger.warning(
            "--classnames %s: class name(s) %s appear more than once; classes with the same name get the same "
            "text embedding, so images of one are scored as the other by chance",
            classnames_file, _few(duplicates),
        )  # fmt: skip
    paths, labels = [], []
    for label, images in enumerate(found.values()):
        paths += images
        labels += [label] * len(images)
    return LabelledImages("folder", paths, labels, classnames)


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in OpenCLIP's class order (sorted)."""
    from timm.data import ImageNetInfo

    wnids = tuple(ImageNetInfo("imagenet-1k").label_names())
    if len(wnids) != len(open_clip.IMAGENET_CLASSNAMES) or list(wnids) != sorted(wnids):
        raise DataError(
            "timm's ImageNet-1k synset list is not the 1000 sorted wnids OpenCLIP's class names follow"
        )
    return wnids


@cache
def imagenet_subset(variant: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(wnids, positions among the 1000 ImageNet classes) of ImageNet-R or ImageNet-A's 200 classes."""
    if variant not in _SUBSET_FILES:
        raise DataError(f"no 200-class subset for {variant!r}; subsets exist for {sorted(_SUBSET_FILES)}")
    data = pkgutil.get_data("timm.data", f"_info/{_SUBSET_FILES[variant]}")
    if data is None:
        raise DataError(f"timm does not ship _info/{_SUBSET_FILES[variant]}: cannot map {variant} classes")
    wnids = tuple(data.decode("utf-8").split())
    position = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in position]
    if len(wnids) != 200 or unknown:
        raise DataError(f"{variant}: expected 200 ImageNet wnids, got {len(wnids)} ({len(unknown)} unknown)")
    return wnids, tuple(position[w] for w in wnids)


def imagenet_variant(variant: str, root: str | Path) -> LabelledImages:
    """ImageNet val / V2 / R / A / Sketch in their folder layouts, labelled in OpenCLIP's class order.

    val, Sketch, R and A: sub-folders named by wnid (R and A: their 200-class subsets).
    V2: sub-folders named by class index, 0..999.
    """
    if variant not in IMAGENET_VARIANTS:
        raise DataError(f"unknown ImageNet variant {variant!r}; allowed: {IMAGENET_VARIANTS}")
    what = "--" + variant
    found = scan_class_folders(root, what)
    all_names = list(open_clip.IMAGENET_CLASSNAMES)
    if variant == "imagenet-v2":
        allowed = {str(i): i for i in range(1000)}
        rule = "class indices 0..999 (ImageNetV2's format)"
        classnames, class_index = all_names, list(range(1000))
    elif variant in _SUBSET_FILES:
        wnids, class_index = imagenet_subset(variant)
        allowed = {w: i for i, w in enumerate(wnids)}
        rule = f"the 200 wnids of {variant}"
        classnames, class_index = [all_names[i] for i in class_index], list(class_index)
    else:
        allowed = {w: i for i, w in enumerate(imagenet_wnids())}
        rule = "ImageNet-1k wnids (like n01440764)"
        classnames, class_index = all_names, list(range(1000))
    unknown = [name for name in found if name not in allowed]
    if unknown:
        raise DataError(f"{what} {root}: sub-folders {_few(unknown)} are not {rule}")
    if len(found) < len(allowed):
        logger.warning(
            "%s %s: %d of %d class folders present; scoring over all %d classes",
            what, root, len(found), len(allowed), len(allowed),
        )  # fmt: skip
    paths, labels = [], []
    for name, images in found.items():
        paths += images
        labels += [allowed[name]] * len(images)
    return LabelledImages(variant, paths, labels, classnames, class_index)
