"""SugarCrepe (compositionality): does the image prefer its caption over a hard negative caption?

Data: ``<root>/<task>.json`` for the seven tasks, each a dict ``id -> {"filename", "caption",
"negative_caption"}``, and the COCO images they name (``--image-dir``, default ``<root>/images``).
An item may also have a ``"group"`` (e.g. ``"seen"`` / ``"novel"``: whether its scene holds a composition
held out of training); the metrics are then also reported per group (``groups``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from sparo_clip.errors import DataError
from sparo_clip.eval.common import EvalContext
from sparo_clip.eval.folders import ImageList
from sparo_clip.eval.similarity import SlotCache, SlotScores, split_groups

logger = logging.getLogger(__name__)

TASKS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
ITEM_KEYS = ("filename", "caption", "negative_caption")
METRICS = (*TASKS, "mean")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SugarCrepe data")
    g.add_argument("--root", metavar="DIR", default=None, help="folder with SugarCrepe's <task>.json files")
    g.add_argument(
        "--image-dir", metavar="DIR", default=None, help="the images the files name (default: <root>/images)"
    )


def prepare(args: argparse.Namespace) -> Items:
    """Read and check the task files and their images."""
    if args.root is None:
        raise DataError("no data: give --root DIR (SugarCrepe's <task>.json files)")
    return read_items(args.root, args.image_dir)


def set_data_path(args: argparse.Namespace, path: str) -> argparse.Namespace:
    """A copy of ``args`` reading the task files under ``path``."""
    return argparse.Namespace(**(vars(args) | {"root": path}))


@dataclass
class Items:
    """All items of the tasks present: image paths (unique), and per item its image, texts and task."""

    image_paths: list[Path]
    item_image: list[int]
    captions: list[str]
    negatives: list[str]
    item_task: list[int]
    tasks: list[str]
    item_group: list[str] | None = None
    item_cluster: list[str] | None = None  # what an item's errors may share (optional "cluster" of an entry)


def read_items(root: str | Path, image_dir: str | Path | None = None) -> Items:
    """Read every task file present among the seven; check their entries and that their images exist."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--root {root}: no such directory")
    image_dir = Path(image_dir) if image_dir is not None else root / "images"
    if not image_dir.is_dir():
        raise DataError(
            f"--image-dir {image_dir}: no such directory (the COCO images SugarCrepe's files name)"
        )
    tasks = [t for t in TASKS if (root / f"{t}.json").is_file()]
    if not tasks:
        raise DataError(
            f"--root {root}: none of SugarCrepe's task files found; expected some of {[t + '.json' for t in TASKS]}"
        )
    index: dict[str, int] = {}
    items = Items([], [], [], [], [], tasks)
    groups: list[str | None] = []
    clusters: list[str | None] = []
    for task_id, task in enumerate(tasks):
        path = root / f"{task}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or not data:
            raise DataError(f"{path}: expected a non-empty object of id -> {{{', '.join(ITEM_KEYS)}}}")
        for key, entry in data.items():
            if not isinstance(entry, dict) or any(k not in entry for k in ITEM_KEYS):
                raise DataError(f"{path}: entry {key!r} must have the keys {list(ITEM_KEYS)}, got {entry!r}")
            items.item_image.append(index.setdefault(entry["filename"], len(index)))
            items.captions.append(entry["caption"])
            items.negatives.append(entry["negative_caption"])
            items.item_task.append(task_id)
            group = entry.get("group")
            if group is not None and (not isinstance(group, str) or not group):
                raise DataError(f"{path}: entry {key!r} has group {group!r}; expected a non-empty string")
            groups.append(group)
            cluster = entry.get("cluster")
            clusters.append(None if cluster is None else f"{task}/{cluster}")
    if all(c is not None for c in clusters):
        items.item_cluster = [str(c) for c in clusters]
    if any(g is not None for g in groups):
        if None in groups:
            raise DataError(f"--root {root}: some items have a 'group' and some do not; give every item one")
        items.item_group = [str(g) for g in groups]
    items.image_paths = [image_dir / name for name in index]
    missing = [str(p) for p in items.image_paths if not p.is_file()]
    if missing:
        raise DataError(
            f"--image-dir {image_dir}: {len(missing)} image(s) named by the task files are missing, e.g. {missing[:3]}"
        )
    return items


@dataclass
class SugarCrepeCache(SlotCache):
    """Per item: its image's slots, the caption's and the negative caption's slots (N, L, V), its task (N,)."""

    images: torch.Tensor
    captions: torch.Tensor
    negatives: torch.Tensor
    item_task: torch.Tensor
    tasks: list[str]
    name: str = "sugarcrepe"
    item_group: torch.Tensor | None = None
    groups: tuple[str, ...] = ()
    item_cluster: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.pos = SlotScores(self.images, self.captions, paired=True)
        self.neg = SlotScores(self.images, self.negatives, paired=True)

    def _accuracies(self, correct: torch.Tensor, task: torch.Tensor) -> dict[str, float]:
        out = {}
        for t, name in enumerate(self.tasks):
            in_task = task == t
            if bool(in_task.any()):
                out[name] = int(correct[in_task].sum()) / int(in_task.sum())
        out["mean"] = sum(out.values()) / len(out) if out else float("nan")
        return out | {"num_items": int(correct.numel())}

    def metrics(self, mask: torch.Tensor | None = None) -> dict[str, object]:
        """Accuracy per task (image . caption > image . negative) and their mean; also per group if any."""
        correct = self.pos(mask) > self.neg(mask)
        task = self.item_task.to(correct.device)
        out: dict[str, object] = dict(self._accuracies(correct, task))
        if self.item_group is not None:
            group = self.item_group.to(correct.device)
            out["groups"] = {
                name: self._accuracies(correct[group == g], task[group == g])
                for g, name in enumerate(self.groups)
            }
        return out

    def items(self, mask: torch.Tensor | None = None) -> dict[str, object]:
        """Per item: whether the caption wins, its task and group (for resampling)."""
        out: dict[str, object] = {
            "correct": (self.pos(mask) > self.neg(mask)).cpu(),
            "task": self.item_task.cpu(),
            "tasks": list(self.tasks),
        }
        if self.item_group is not None:
            out |= {"group": self.item_group.cpu(), "groups": list(self.groups)}
        if self.item_cluster is not None:
            out["cluster"] = self.item_cluster.cpu()
        return out

    def subset(self, index: torch.Tensor) -> SugarCrepeCache:
        return SugarCrepeCache(
            self.images[index],
            self.captions[index],
            self.negatives[index],
            self.item_task[index],
            self.tasks,
            self.name,
            None if self.item_group is None else self.item_group[index],
            self.groups,
            None if self.item_cluster is None else self.item_cluster[index],
        )

    def split(self, val_fraction: float, seed: int) -> tuple[SugarCrepeCache, SugarCrepeCache]:
        val, test = split_groups(self.item_task, val_fraction, seed, self.name)
        return self.subset(val), self.subset(test)


def _codes(names: list[str] | None) -> torch.Tensor | None:
    """Strings -> integer codes (in sorted order of the names), so that equal names share a code."""
    if names is None:
        return None
    index = {n: i for i, n in enumerate(sorted(set(names)))}
    return torch.tensor([index[n] for n in names])


def encode(ctx: EvalContext, items: Items) -> dict[str, SugarCrepeCache]:
    """Encode each image once and every caption and negative caption."""
    logger.info(
        "sugarcrepe: %d items over tasks %s, %d images",
        len(items.captions),
        items.tasks,
        len(items.image_paths),
    )
    images = ctx.encode_dataset(
        ImageList(items.image_paths, ctx.preprocess), desc="encoding sugarcrepe images"
    )
    captions = ctx.encode_texts(items.captions, desc="encoding captions")
    negatives = ctx.encode_texts(items.negatives, desc="encoding negative captions")
    item_image = torch.tensor(items.item_image)
    group, names = None, ()
    if items.item_group is not None:
        names = tuple(sorted(set(items.item_group)))
        group = torch.tensor([names.index(g) for g in items.item_group])
    cache = SugarCrepeCache(
        images[item_image],
        captions,
        negatives,
        torch.tensor(items.item_task),
        items.tasks,
        "sugarcrepe",
        group,
        names,
        _codes(items.item_cluster),
    )
    return {"sugarcrepe": cache}
