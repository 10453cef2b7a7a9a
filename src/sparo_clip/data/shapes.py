"""Write the shapes world to disk: ``sparo-clip make-data`` / ``python -m sparo_clip.data.shapes``.

Under one output folder (see docs/data.md)::

    dataset.json                       manifest: generator version, settings, held-out pairs, every split
    train/train-{000000..0000NN}.tar   webdataset shards (<key>.png, <key>.txt, <key>.json scene) + sizes.json
    train/train.csv, train/images/     the same training pairs as a CSV (filepath<TAB>title; for runs whose
                                       sample order must be reproducible: OpenCLIP shuffles CSV data with the
                                       seeded torch generator, webdataset samples with a time-seeded one)
    val/val-{000000..0000NN}.tar       the same for validation/retrieval + sizes.json
    val/retrieval.csv, val/images/     the validation pairs as a CSV (filepath<TAB>title, OpenCLIP's defaults)
    test/retrieval.csv, test/images/   test pairs, half seen-only scenes and half with a held-out pair
                                       (filepath<TAB>title<TAB>group, group = seen | novel)
    zeroshot/{seen,unseen,all}/        ImageFolder (<colour>_<shape>/*.png), classnames.txt, templates.txt;
                                       all/ also has classes.tsv (``sparo-clip eval compositional``'s layout)
    sugarcrepe/<task>.json, images/    swap_att, swap_obj, replace_att, replace_obj, add_obj (test items,
                                       each with group seen | novel, half of each)
    sugarcrepe_val/<task>.json, images/  the same tasks drawn apart, for choosing slots (validation)
    clip_benchmark/shapes_{all,seen,unseen}/   classnames.txt, zeroshot_classification_templates.txt,
                                       test/nshards.txt, test/0.tar (png + cls)
    clip_benchmark/shapes_retrieval/   dataset_type.txt ("retrieval"), test/nshards.txt, test/0.tar (png + txt)

Every sample has its own random generator seeded by (seed, split, index), so the files are byte-identical
for the same settings. Held-out colour-shape pairs never appear in a training image or caption.
A second run with the same settings reuses the folder; other settings regenerate it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .captions import TASKS
from .sets import (
    caption_samples,
    sugarcrepe_sets,
    test_pairs,
    val_pairs,
    write_lines,
    write_shards,
    zeroshot_sets,
)
from .world import PALETTE, SHAPES, WorldCfg, composition_name

GENERATOR_VERSION = 3  # bump whenever the same settings would give other files
MANIFEST = "dataset.json"
_OWNED = ("train", "val", "test", "zeroshot", "sugarcrepe", "sugarcrepe_val", "clip_benchmark")
_logger = logging.getLogger("sparo_clip.data.shapes")


@dataclass(frozen=True)
class SizeCfg:
    """How many samples each split gets."""

    train: int = 20000
    val: int = 500
    shards: int = 16
    zeroshot_per_class: int = 20
    sugarcrepe_per_task: int = 200
    test: int = 400
    sugarcrepe_val_per_task: int = 100

    def __post_init__(self) -> None:
        for name in (
            "train",
            "val",
            "shards",
            "zeroshot_per_class",
            "sugarcrepe_per_task",
            "test",
            "sugarcrepe_val_per_task",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid: expected a positive integer")
        if self.train < self.shards:
            raise ValueError(f"train={self.train} must be at least shards={self.shards} (one sample a shard)")
        for name in ("test", "sugarcrepe_per_task", "sugarcrepe_val_per_task"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"{name}={getattr(self, name)} must be at least 2: half seen, half novel scenes"
                )


def generate(
    out: str | Path, world: WorldCfg | None = None, sizes: SizeCfg | None = None, force: bool = False
) -> dict[str, Any]:
    """Generate (or reuse) the shapes world under ``out``; returns the manifest."""
    world = world or WorldCfg()
    sizes = sizes or SizeCfg()
    if world.max_objects < 2:
        raise ValueError("max_objects must be at least 2: the compositionality sets need two objects")
    out = Path(out)
    settings = {"version": GENERATOR_VERSION, "world": world.to_dict(), "sizes": vars(sizes).copy()}
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings:
            _logger.info("shapes world in %s is up to date: reusing it", out)
            return manifest
        _logger.info("shapes world in %s was made with other settings: regenerating", out)
    for name in (MANIFEST, *_OWNED):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    num_classes = len(world.compositions)
    if not world.unseen:
        raise ValueError("the world holds no composition out (holdout_fraction 0): nothing to generalise to")
    total = (
        sizes.train
        + 2 * sizes.val
        + sizes.test
        + num_classes * sizes.zeroshot_per_class
        + len(TASKS) * (sizes.sugarcrepe_per_task + sizes.sugarcrepe_val_per_task)
    )
    train_rows = ["filepath\ttitle"]

    def _with_files(samples: Iterator[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
        (out / "train" / "images").mkdir(parents=True, exist_ok=True)
        for key, files in samples:
            (out / "train" / "images" / f"{key}.png").write_bytes(files["png"])
            train_rows.append(f"images/{key}.png\t{files['txt'].decode()}")
            yield key, files

    with tqdm(total=total, desc="shapes world", unit="img") as bar:
        pattern, counts = write_shards(
            out / "train",
            "train",
            _with_files(caption_samples(world, "train", sizes.train, "seen", bar)),
            sizes.train,
            sizes.shards,
        )
        write_lines(out / "train" / "train.csv", train_rows)
        val = val_pairs(out, world, sizes, bar)
        bar.update(sizes.val)  # the CSV copy of the validation set
        test = test_pairs(out, world, sizes, bar)
        zeroshot = zeroshot_sets(out, world, sizes, bar)
        sugarcrepe = sugarcrepe_sets(out, world, sizes.sugarcrepe_per_task, "sugarcrepe", bar)
        sugarcrepe_val = sugarcrepe_sets(out, world, sizes.sugarcrepe_val_per_task, "sugarcrepe_val", bar)
    manifest = {
        "settings": settings,
        "held_out": world.unseen_names,
        "seen": [composition_name(c) for c in world.seen],
        "train": {
            "pattern": pattern,
            "num_samples": sum(counts.values()),
            "num_shards": len(counts),
            "csv": str(out / "train" / "train.csv"),
        },
        "val": val,
        "test": test,
        "zeroshot": zeroshot,
        "compositional": {
            "dir": zeroshot["all"]["dir"],
            "classes": zeroshot["all"]["classes"],
            "templates": zeroshot["all"]["templates"],
        },
        "sugarcrepe": sugarcrepe,
        "sugarcrepe_val": sugarcrepe_val,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks a complete folder
    return manifest


# A tiny world for smoke tests (``make-data --small``, ``quickstart --small``).
SMALL_SIZES = SizeCfg(
    train=512,
    val=48,
    shards=4,
    zeroshot_per_class=4,
    sugarcrepe_per_task=16,
    test=32,
    sugarcrepe_val_per_task=8,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparo-clip make-data", description="Generate the synthetic shapes world."
    )
    p.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    p.add_argument("--colors", default=",".join(WorldCfg.colors), help=f"comma list from {list(PALETTE)}")
    p.add_argument("--shapes", default=",".join(WorldCfg.shapes), help=f"comma list from {list(SHAPES)}")
    p.add_argument("--image-size", type=int, default=WorldCfg.image_size)
    p.add_argument("--min-objects", type=int, default=WorldCfg.min_objects)
    p.add_argument("--max-objects", type=int, default=WorldCfg.max_objects)
    p.add_argument("--holdout-fraction", type=float, default=WorldCfg.holdout_fraction)
    p.add_argument("--holdout", default=None, help="explicit held-out pairs, e.g. 'red circle,blue star'")
    p.add_argument("--seed", type=int, default=WorldCfg.seed)
    p.add_argument("--train-size", type=int, default=SizeCfg.train)
    p.add_argument("--val-size", type=int, default=SizeCfg.val)
    p.add_argument("--shards", type=int, default=SizeCfg.shards)
    p.add_argument("--zeroshot-per-class", type=int, default=SizeCfg.zeroshot_per_class)
    p.add_argument("--sugarcrepe-per-task", type=int, default=SizeCfg.sugarcrepe_per_task)
    p.add_argument("--test-size", type=int, default=SizeCfg.test, help="test pairs (half novel scenes)")
    p.add_argument("--sugarcrepe-val-per-task", type=int, default=SizeCfg.sugarcrepe_val_per_task)
    p.add_argument("--small", action="store_true", help="a tiny world for smoke tests (overrides the sizes)")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    return p


def _check_writable(out: Path) -> None:
    """Raise ValueError naming ``out`` unless the folder can be created and written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"--out {out} cannot be written ({e.strerror or e}): choose a writable folder"
        ) from e


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        holdout = (
            None if args.holdout is None else tuple(h.strip() for h in args.holdout.split(",") if h.strip())
        )
        world = WorldCfg(
            colors=args.colors,
            shapes=args.shapes,
            image_size=args.image_size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            holdout_fraction=args.holdout_fraction,
            holdout=holdout,
            seed=args.seed,
        )
        sizes = (
            SMALL_SIZES
            if args.small
            else SizeCfg(
                train=args.train_size,
                val=args.val_size,
                shards=args.shards,
                zeroshot_per_class=args.zeroshot_per_class,
                sugarcrepe_per_task=args.sugarcrepe_per_task,
                test=args.test_size,
                sugarcrepe_val_per_task=args.sugarcrepe_val_per_task,
            )
        )
        _check_writable(Path(args.out))  # before any image is drawn
        manifest = generate(args.out, world, sizes, force=args.force)
    except ValueError as e:
        print(f"sparo-clip make-data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while writing
        print(f"sparo-clip make-data: error: cannot write under --out {args.out}: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps({"out": args.out, "train": manifest["train"], "held_out": manifest["held_out"]}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
