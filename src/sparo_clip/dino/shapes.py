"""The shapes world as labelled ImageFolder probe sets for kNN / linear probes (colour-shape classes).

The world's single-object classification images (``zeroshot/all/<colour>_<shape>/*.png``, see docs/data.md)
are split per class into ``probe/train`` (the first half) and ``probe/val`` (the rest), by hard links where
the file system allows (copies otherwise). A class is *seen* when its colour-shape pair occurs in the
self-supervised training images, *held-out* when it never does (the world's held-out pairs): the probe
itself is fitted on all classes, so held-out accuracy asks how well features learnt without a pair
separate it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sparo_clip.errors import DataError


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def probe_sets(world_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write ``probe/train`` and ``probe/val`` from a generated shapes world; returns their paths and groups.

    Returns:
        ``train``, ``val`` (folders), ``seen`` and ``held_out`` (class folder names), ``per_class``.
    """
    world_dir = Path(world_dir)
    manifest_path = world_dir / "dataset.json"
    if not manifest_path.is_file():
        raise DataError(f"{world_dir}: no dataset.json; generate the world first (sparo-clip make-data)")
    manifest = json.loads(manifest_path.read_text())
    source = Path(manifest["zeroshot"]["all"]["dir"])
    out = Path(out) if out is not None else world_dir / "probe"
    per_class = None
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(folder.glob("*.png"))
        if len(images) < 2:
            raise DataError(f"{folder}: needs at least 2 images per class to split into probe train/val")
        half = len(images) // 2
        per_class = half
        for split, part in (("train", images[:half]), ("val", images[half:])):
            for img in part:
                _link(img, out / split / folder.name / img.name)
    factors = _factor_sets(out, manifest["settings"]["world"])
    groups = {}
    for key, name in (("seen", "seen"), ("held_out", "unseen")):
        entry = manifest["zeroshot"].get(name)
        groups[key] = sorted(p.name for p in Path(entry["dir"]).iterdir() if p.is_dir()) if entry else []
    return {
        "train": str(out / "train"),
        "val": str(out / "val"),
        "seen": groups["seen"],
        "held_out": groups["held_out"],
        "per_class": per_class,
        "factors": factors,
    }


def _factor_sets(out: Path, world: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The same probe images relabelled by one factor: ``factors/colour`` (classes are the colours) and
    ``factors/shape`` (the shapes), each with the colour-shape probe's train / val split. A random ViT already
    reads colour linearly; the shape probe shows what training added that the colour-shape classes hide."""
    names = {f"{c}_{s}": (c, s) for c in world["colors"] for s in world["shapes"]}
    sets: dict[str, dict[str, str]] = {}
    for index, factor in enumerate(("colour", "shape")):
        root = out / "factors" / factor
        for split in ("train", "val"):
            for folder in sorted(p for p in (out / split).iterdir() if p.is_dir()):
                if folder.name not in names:
                    raise DataError(f"{folder}: not a colour_shape class of this world ({sorted(names)})")
                value = names[folder.name][index]
                for img in sorted(folder.glob("*.png")):
                    _link(img, root / split / value / f"{folder.name}__{img.name}")
        sets[factor] = {"train": str(root / "train"), "val": str(root / "val")}
    return sets
