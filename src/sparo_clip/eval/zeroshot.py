"""Zero-shot classification: ImageNet (val, V2, R, A, Sketch) and any one-sub-folder-per-class folder."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import open_clip
import torch

from sparo_clip.errors import DataError
from sparo_clip.eval.common import EvalContext
from sparo_clip.eval.folders import (
    IMAGENET_VARIANTS,
    ImageList,
    LabelledImages,
    image_folder,
    imagenet_variant,
    read_templates,
)
from sparo_clip.eval.similarity import SlotCache, SlotScores, split_groups

logger = logging.getLogger(__name__)

METRICS = ("top1", "top5", "mean_per_class_recall")
# top-5 among few classes says little (among 5 or fewer it is 1 by construction): measured from 10 classes on
TOP5_MIN_CLASSES = 10
VARIANT_HELP = {
    "imagenet-val": "ImageNet-1k val: one sub-folder per class named by wnid (n01440764, ...)",
    "imagenet-v2": "ImageNetV2: sub-folders 0..999 named by class index",
    "imagenet-r": "ImageNet-R: its 200 wnid sub-folders (scored over those 200 classes)",
    "imagenet-a": "ImageNet-A: its 200 wnid sub-folders (scored over those 200 classes)",
    "imagenet-sketch": "ImageNet-Sketch: 1000 wnid sub-folders",
}


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("zero-shot data (one or more)")
    for variant in IMAGENET_VARIANTS:
        g.add_argument(f"--{variant}", metavar="DIR", default=None, help=VARIANT_HELP[variant])
    g.add_argument("--data", metavar="DIR", default=None, help="any folder with one sub-folder per class")
    g.add_argument(
        "--classnames",
        metavar="FILE",
        default=None,
        help="with --data: one class name per line, in sorted sub-folder order",
    )
    g.add_argument(
        "--templates",
        metavar="FILE",
        default=None,
        help="one prompt template per line with {c} for the class name (default: OpenCLIP's OpenAI ImageNet templates)",
    )


def data_specs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(dataset name, path) for every dataset given on the command line; checks --data/--classnames."""
    specs = [(v, getattr(args, v.replace("-", "_"))) for v in IMAGENET_VARIANTS]
    specs = [(name, path) for name, path in specs if path is not None]
    if (args.data is None) != (args.classnames is None):
        raise DataError("--data and --classnames go together: a folder and its class names")
    if args.data is not None:
        specs.append(("folder", args.data))
    if not specs:
        raise DataError(
            f"no data: give --data DIR --classnames FILE and/or one of {['--' + v for v in IMAGENET_VARIANTS]}"
        )
    return specs


class _Template:
    """A ``{c}`` template as the callable OpenCLIP's classifier builder accepts (``str.format`` needs ``{}``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, classname: str) -> str:
        return self.text.replace("{c}", classname)


class _FlatSlots:
    """Presents a model to ``open_clip.build_zero_shot_classifier`` with flat unit-norm slot features."""

    def __init__(self, ctx: EvalContext) -> None:
        self.ctx = ctx

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.ctx.text_slots(tokens).flatten(1).to(tokens.device)


def class_slots(
    ctx: EvalContext, classnames: Sequence[str], templates: Sequence | None = None
) -> torch.Tensor:
    """Class embeddings (C, L, V) with OpenCLIP's zero-shot classifier builder (template-averaged, unit norm).

    A slot selection is applied to these class embeddings as to the images.
    """
    templates = (
        list(open_clip.OPENAI_IMAGENET_TEMPLATES) if templates is None else [_Template(t) for t in templates]
    )
    per_batch = max(1, ctx.batch_size // len(templates))
    with torch.inference_mode():
        weights = open_clip.build_zero_shot_classifier(
            _FlatSlots(ctx), ctx.tokenizer, list(classnames), templates, per_batch, ctx.device, use_tqdm=True
        )  # (L * V, C)
    return weights.T.float().cpu().reshape(len(classnames), ctx.num_slots, -1)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy, mean per-class recall (over the classes that have samples) and, from
    :data:`TOP5_MIN_CLASSES` classes on, top-5 accuracy."""
    labels = labels.to(logits.device)
    n, num_classes = logits.shape
    topk = logits.topk(min(5, num_classes), dim=1).indices  # (N, k)
    hit = topk == labels[:, None]
    top1 = hit[:, 0].double()
    per_class_hits = torch.bincount(labels, weights=top1, minlength=num_classes)
    per_class_count = torch.bincount(labels, minlength=num_classes)
    present = per_class_count > 0
    out = {"top1": int(hit[:, 0].sum()) / n}
    if num_classes >= TOP5_MIN_CLASSES:
        out["top5"] = int(hit.any(dim=1).sum()) / n
    out["mean_per_class_recall"] = (per_class_hits[present] / per_class_count[present]).mean().item()
    return out


@dataclass
class ZeroShotCache(SlotCache):
    """Encoded images (N, L, V), their labels (N,) and the class embeddings (C, L, V) of one dataset."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor
    skipped: list[str] = field(default_factory=list)  # unreadable images left out, with the reason

    def __post_init__(self) -> None:
        self.scores = SlotScores(self.images, self.classes)

    def logits(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine logits (N, C) with only the slots in ``mask`` (None: all)."""
        return self.scores(mask)

    def metrics(self, mask: torch.Tensor | None = None) -> dict[str, float]:
        out = classification_metrics(self.logits(mask), self.labels)
        return out | {"num_samples": len(self.labels), "num_classes": self.classes.shape[0]}

    def subset(self, index: torch.Tensor) -> ZeroShotCache:
        return ZeroShotCache(self.name, self.images[index], self.labels[index], self.classes, self.skipped)

    def split(self, val_fraction: float, seed: int) -> tuple[ZeroShotCache, ZeroShotCache]:
        val, test = split_groups(self.labels, val_fraction, seed, self.name)
        return self.subset(val), self.subset(test)


@dataclass
class ZeroShotData:
    """Checked datasets and the templates to encode them with (None: OpenCLIP's OpenAI ImageNet templates)."""

    datasets: list[LabelledImages]
    templates: list[str] | None


def prepare(args: argparse.Namespace) -> ZeroShotData:
    """Check every dataset's layout and the templates before any model work."""
    datasets = []
    for name, path in data_specs(args):
        datasets.append(
            image_folder(path, args.classnames) if name == "folder" else imagenet_variant(name, path)
        )
    return ZeroShotData(datasets, read_templates(args.templates) if args.templates else None)


def set_data_path(args: argparse.Namespace, path: str) -> argparse.Namespace:
    """A copy of ``args`` whose (single) dataset path is ``path``."""
    ((name, _),) = data_specs(args)
    return argparse.Namespace(
        **(vars(args) | {("data" if name == "folder" else name.replace("-", "_")): path})
    )


def encode(ctx: EvalContext, data: ZeroShotData) -> dict[str, ZeroShotCache]:
    """Encode the class names once per class list (ImageNet variants share one) and every image."""
    imagenet_classes = None
    caches = {}
    for ds in data.datasets:
        if ds.class_index is not None:  # ImageNet variants: rows of the 1000-class classifier
            if imagenet_classes is None:
                imagenet_classes = class_slots(ctx, open_clip.IMAGENET_CLASSNAMES, data.templates)
            classes = imagenet_classes[ds.class_index]
        else:
            classes = class_slots(ctx, ds.classnames, data.templates)
        enc = ctx.encode_images(ImageList(ds.paths, ctx.preprocess), desc=f"encoding {ds.name}")
        labels = torch.tensor(ds.labels)[enc.kept]
        caches[ds.name] = ZeroShotCache(ds.name, enc.slots, labels, classes, enc.skipped)
    return caches
