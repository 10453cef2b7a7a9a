"""``sparo-clip eval compositional``: generalised compositional zero-shot on any attribute-object data set.

Data: ``--data DIR`` with one sub-folder of images per composition, and ``--classes FILE``, a tab-separated
class list with the header ``folder  name  attribute  object  split``: the sub-folder, the class name the
prompts use (``{c}`` of the templates), its attribute and object, and ``seen`` or ``unseen`` (held out of
training). Every class is a candidate for every image; a class may have no images. Metrics: :mod:`.gczsl`.
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sparo_clip.errors import DataError
from sparo_clip.eval.common import EvalContext
from sparo_clip.eval.folders import ImageList, is_image, read_templates
from sparo_clip.eval.gczsl import METRICS, gczsl_metrics
from sparo_clip.eval.similarity import SlotCache, SlotScores, split_groups
from sparo_clip.eval.zeroshot import class_slots

logger = logging.getLogger(__name__)

COLUMNS = ("folder", "name", "attribute", "object", "split")
SPLITS = ("seen", "unseen")
__all__ = ["COLUMNS", "METRICS", "CompositionalCache", "Compositions", "read_compositions"]


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("compositional data")
    g.add_argument("--data", metavar="DIR", default=None, help="one sub-folder of images per composition")
    g.add_argument(
        "--classes",
        metavar="FILE",
        default=None,
        help="tab-separated class list with header " + " ".join(COLUMNS) + " (split: seen or unseen)",
    )
    g.add_argument(
        "--templates",
        metavar="FILE",
        default=None,
        help="one prompt template per line with {c} for the class name (default: OpenCLIP's OpenAI templates)",
    )


@dataclass
class Compositions:
    """The class list and the images of each class."""

    names: list[str]
    attributes: list[str]
    objects: list[str]
    unseen: list[bool]
    paths: list[Path]
    labels: list[int]
    templates: list[str] | None = None


def read_compositions(root: str | Path, classes_file: str | Path) -> Compositions:
    """Read and check the class list and its image folders.

    Raises:
        DataError: a missing file or folder, a wrong header, a bad split value, duplicate classes, or a data
            set without images of both seen and unseen compositions.
    """
    root, classes_file = Path(root), Path(classes_file)
    if not root.is_dir():
        raise DataError(f"--data {root}: no such directory")
    if not classes_file.is_file():
        raise DataError(f"--classes {classes_file}: no such file")
    with classes_file.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(
                f"--classes {classes_file}: expected the tab-separated header {list(COLUMNS)}, "
                f"got {reader.fieldnames}"
            )
        rows = list(reader)
    if not rows:
        raise DataError(f"--classes {classes_file}: no classes")
    out = Compositions([], [], [], [], [], [])
    for i, row in enumerate(rows):
        where = f"--classes {classes_file} line {i + 2}"
        if any(not (row[k] or "").strip() for k in COLUMNS):
            raise DataError(f"{where}: every column must be filled, got {row}")
        if row["split"] not in SPLITS:
            raise DataError(f"{where}: split {row['split']!r} is not valid: expected one of {list(SPLITS)}")
        folder = root / row["folder"]
        if not folder.is_dir():
            raise DataError(f"{where}: image folder {folder} does not exist")
        images = sorted(p for p in folder.rglob("*") if is_image(p))
        out.paths += images
        out.labels += [i] * len(images)
        out.names.append(row["name"])
        out.attributes.append(row["attribute"])
        out.objects.append(row["object"])
        out.unseen.append(row["split"] == "unseen")
    pairs = list(zip(out.attributes, out.objects, strict=True))
    if len(set(pairs)) != len(pairs) or len(set(out.names)) != len(out.names):
        raise DataError(
            f"--classes {classes_file}: classes must have distinct names and attribute-object pairs"
        )
    for split in (False, True):
        if not any(out.unseen[label] == split for label in out.labels):
            raise DataError(
                f"--data {root}: no images of {'unseen' if split else 'seen'} compositions; "
                "generalised compositional zero-shot needs both"
            )
    return out


def prepare(args: argparse.Namespace) -> Compositions:
    """Check the class list, folders and templates before any model work."""
    if args.data is None or args.classes is None:
        raise DataError("no data: give --data DIR and --classes FILE (one image sub-folder per class)")
    data = read_compositions(args.data, args.classes)
    data.templates = read_templates(args.templates) if args.templates else None
    return data


def set_data_path(args: argparse.Namespace, path: str) -> argparse.Namespace:
    """A copy of ``args`` reading images under ``path`` (the same class list)."""
    return argparse.Namespace(**(vars(args) | {"data": path}))


def _ids(values: list[str]) -> torch.Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(v, len(index)) for v in values])


@dataclass
class CompositionalCache(SlotCache):
    """Encoded images (N, L, V), labels (N,), class embeddings (C, L, V), and per class: unseen, ids."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor
    unseen: torch.Tensor
    attributes: torch.Tensor
    objects: torch.Tensor
    name: str = "compositional"

    def __post_init__(self) -> None:
        self.scores = SlotScores(self.images, self.classes)

    def metrics(self, mask: torch.Tensor | None = None, with_curve: bool = True) -> dict[str, object]:
        """The GCZSL metrics with the slots in ``mask``, and the seen/unseen curve (``curve``)."""
        return gczsl_metrics(
            self.scores(mask), self.labels, self.unseen, self.attributes, self.objects, with_curve
        )

    def items(self, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What the metrics are computed from, per image (for resampling): the score matrix and labels."""
        return {
            "logits": self.scores(mask).cpu(),
            "labels": self.labels.cpu(),
            "unseen": self.unseen.cpu(),
            "attributes": self.attributes.cpu(),
            "objects": self.objects.cpu(),
        }

    def subset(self, index: torch.Tensor) -> CompositionalCache:
        return CompositionalCache(
            self.images[index],
            self.labels[index],
            self.classes,
            self.unseen,
            self.attributes,
            self.objects,
            self.name,
        )

    def split(self, val_fraction: float, seed: int) -> tuple[CompositionalCache, CompositionalCache]:
        val, test = split_groups(self.labels, val_fraction, seed, self.name)
        return self.subset(val), self.subset(test)


def encode(ctx: EvalContext, data: Compositions) -> dict[str, CompositionalCache]:
    """Encode every class name (prompt-averaged) and every image."""
    classes = class_slots(ctx, data.names, data.templates)
    images = ctx.encode_dataset(ImageList(data.paths, ctx.preprocess), desc="encoding compositional images")
    unseen = torch.tensor(data.unseen)
    logger.info(
        "compositional: %d images, %d classes (%d unseen)",
        len(data.paths),
        len(data.names),
        int(unseen.sum()),
    )
    cache = CompositionalCache(
        images, torch.tensor(data.labels), classes, unseen, _ids(data.attributes), _ids(data.objects)
    )
    return {"compositional": cache}
