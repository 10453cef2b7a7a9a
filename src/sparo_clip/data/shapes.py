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
import io
import json
import logging
import random
import shutil
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .captions import TASKS, ZEROSHOT_TEMPLATES, caption, task_pair
from .render import png_bytes, render_scene
from .world import PALETTE, SHAPES, WorldCfg, composition_name, sample_scene

GENERATOR_VERSION = 3  # bump whenever the same settings would give other files
MANIFEST = "dataset.json"
_OWNED = ("train", "val", "test", "zeroshot", "sugarcrepe", "sugarcrepe_val", "clip_benchmark")
GROUPS = ("seen", "novel")  # scenes of training pairs only / scenes with a held-out pair
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


def _rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{split}/{index}")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # no time, owner or group from this machine: same settings, same bytes
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _write_shards(
    folder: Path, prefix: str, samples: Iterator[tuple[str, dict[str, bytes]]], total: int, shards: int
) -> tuple[str, dict[str, int]]:
    """Write ``total`` samples into ``shards`` tar files; returns (brace pattern, sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    per_shard = [total // shards + (1 if i < total % shards else 0) for i in range(shards)]
    for shard, count in enumerate(per_shard):
        name = f"{prefix}-{shard:06d}.tar"
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(count):
                key, files = next(samples)
                for ext, data in files.items():
                    _add(tar, f"{key}.{ext}", data)
        sizes[name] = count
    (folder / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return str(folder / f"{prefix}-{{000000..{shards - 1:06d}}}.tar"), sizes


def _group_mode(i: int) -> tuple[str, str]:
    """(group, scene mode) of item ``i`` of a set split by novelty: even items seen, odd items novel."""
    return ("seen", "seen") if i % 2 == 0 else ("novel", "unseen")


def _caption_samples(
    world: WorldCfg, split: str, count: int, mode: str, bar: tqdm
) -> Iterator[tuple[str, dict]]:
    """Captioned scenes; ``mode`` "split" alternates seen-only and novel scenes (see ``_group_mode``)."""
    for i in range(count):
        rng = _rng(world.seed, split, i)
        scene_mode = _group_mode(i)[1] if mode == "split" else mode
        scene = sample_scene(rng, world, rng.randint(world.min_objects, world.max_objects), scene_mode)
        png = png_bytes(render_scene(scene, world))
        bar.update()
        text = caption(scene, rng).encode()
        meta = json.dumps(
            scene.to_dict(), sort_keys=True
        ).encode()  # the objects drawn: colour, shape, size, x, y
        yield f"{split}{i:07d}", {"png": png, "txt": text, "json": meta}


def _single_object_scene(world: WorldCfg, comp: tuple[str, str], rng: random.Random):
    """A one-object scene of a given composition (the zero-shot classification images)."""
    from .world import SIZES, Obj, Scene

    size = rng.choice(sorted(SIZES))
    extent = world.size_px(size)
    low, high = extent / 2 + 1, world.image_size - extent / 2 - 1
    x, y = round(rng.uniform(low, high), 2), round(rng.uniform(low, high), 2)
    return Scene((Obj(comp[0], comp[1], size, x, y),))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def _zeroshot(out: Path, world: WorldCfg, sizes: SizeCfg, bar: tqdm) -> dict[str, Any]:
    """ImageFolder sets of single-object images: all compositions, seen ones, unseen ones."""
    images: dict[tuple[str, str], list[bytes]] = {}
    for k, comp in enumerate(world.compositions):
        images[comp] = []
        for i in range(sizes.zeroshot_per_class):
            rng = _rng(world.seed, f"zeroshot/{k}", i)
            images[comp].append(png_bytes(render_scene(_single_object_scene(world, comp, rng), world)))
            bar.update()
    sets: dict[str, Any] = {}
    groups = {"all": world.compositions, "seen": world.seen, "unseen": tuple(sorted(world.unseen))}
    for name, comps in groups.items():
        root = out / "zeroshot" / name
        if not comps:
            continue
        folders = sorted((f"{c}_{s}", (c, s)) for c, s in comps)
        for folder, comp in folders:
            (root / folder).mkdir(parents=True, exist_ok=True)
            for i, png in enumerate(images[comp]):
                (root / folder / f"{i:04d}.png").write_bytes(png)
        _write_lines(root / "classnames.txt", [composition_name(comp) for _, comp in folders])
        if name == "all":  # the generic attribute-object layout of ``sparo-clip eval compositional``
            rows = [
                f"{f}\t{composition_name(c)}\t{c[0]}\t{c[1]}\t{'unseen' if c in world.unseen else 'seen'}"
                for f, c in folders
            ]
            _write_lines(root / "classes.tsv", ["folder\tname\tattribute\tobject\tsplit", *rows])
        _write_lines(
            root / "templates.txt", [f"{t}." if not t.endswith(".") else t for t in ZEROSHOT_TEMPLATES]
        )
        sets[name] = {
            "dir": str(root),
            **({"classes": str(root / "classes.tsv")} if name == "all" else {}),
            "classnames": str(root / "classnames.txt"),
            "templates": str(root / "templates.txt"),
            "num_classes": len(folders),
            "num_images": len(folders) * sizes.zeroshot_per_class,
        }
    # CLIP_benchmark's local layout for the same classification sets
    for name in ("all", "seen", "unseen"):
        if name not in sets:
            continue
        folders = sorted((f"{c}_{s}", (c, s)) for c, s in groups[name])
        samples = [
            (f"{name}{ci:03d}{i:04d}", {"png": png, "cls": str(ci).encode()})
            for ci, (_, comp) in enumerate(folders)
            for i, png in enumerate(images[comp])
        ]
        sets[name]["clip_benchmark"] = _clip_benchmark_set(
            out / "clip_benchmark" / f"shapes_{name}", samples, [composition_name(c) for _, c in folders]
        )
    return sets


def _clip_benchmark_set(
    root: Path, samples: list[tuple[str, dict[str, bytes]]], classnames: list[str] | None
) -> str:
    """CLIP_benchmark's local webdataset layout (``--dataset wds/<name> --dataset_root <root>``): classification
    when ``classnames`` are given (png + cls), retrieval otherwise (png + txt, and ``dataset_type.txt``)."""
    (root / "test").mkdir(parents=True, exist_ok=True)
    if classnames is None:
        _write_lines(root / "dataset_type.txt", ["retrieval"])  # without it, CLIP_benchmark expects .cls
    else:
        _write_lines(root / "classnames.txt", classnames)
        _write_lines(root / "zeroshot_classification_templates.txt", [f"{t}." for t in ZEROSHOT_TEMPLATES])
    (root / "test" / "nshards.txt").write_text("1\n")
    with tarfile.open(root / "test" / "0.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in samples:
            for ext, data in files.items():
                _add(tar, f"{key}.{ext}", data)
    return str(root)


def _pairs_csv(folder: Path, samples: list[tuple[str, dict]], groups: list[str] | None) -> str:
    """The pairs as images plus a CSV (filepath<TAB>title[<TAB>group]); returns the CSV path."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["filepath\ttitle" + ("\tgroup" if groups else "")]
    for i, (key, files) in enumerate(samples):
        (images / f"{key}.png").write_bytes(files["png"])
        rows.append(f"images/{key}.png\t{files['txt'].decode()}" + (f"\t{groups[i]}" if groups else ""))
    _write_lines(folder / "retrieval.csv", rows)
    return str(folder / "retrieval.csv")


def _val(out: Path, world: WorldCfg, sizes: SizeCfg, bar: tqdm) -> dict[str, Any]:
    samples = list(_caption_samples(world, "val", sizes.val, "seen", bar))
    pattern, counts = _write_shards(
        out / "val", "val", iter(samples), sizes.val, max(1, min(4, sizes.val // 64))
    )
    csv_path = _pairs_csv(out / "val", samples, None)
    cb = _clip_benchmark_set(out / "clip_benchmark" / "shapes_retrieval", samples, None)
    return {"pattern": pattern, "num_samples": sum(counts.values()), "csv": csv_path, "clip_benchmark": cb}


def _test(out: Path, world: WorldCfg, sizes: SizeCfg, bar: tqdm) -> dict[str, Any]:
    """Test pairs split by novelty: even items show only training pairs, odd items a held-out pair."""
    samples = list(_caption_samples(world, "test", sizes.test, "split", bar))
    groups = [_group_mode(i)[0] for i in range(len(samples))]
    csv_path = _pairs_csv(out / "test", samples, groups)
    return {"csv": csv_path, "num_samples": len(samples), "groups": {g: groups.count(g) for g in GROUPS}}


def _sugarcrepe(out: Path, world: WorldCfg, per_task: int, name: str, bar: tqdm) -> dict[str, Any]:
    """The compositionality sets under ``out/name``; even items seen-only scenes, odd items novel ones."""
    root = out / name
    (root / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for task in TASKS:
        items = {}
        for i in range(per_task):
            rng = _rng(world.seed, f"{name}/{task}", i)
            low = max(2, world.min_objects)
            group, mode = _group_mode(i)
            scene = sample_scene(rng, world, rng.randint(low, world.max_objects), mode)
            filename = f"{task}_{i:05d}.png"
            (root / "images" / filename).write_bytes(png_bytes(render_scene(scene, world)))
            positive, negative = task_pair(task, scene, world, rng)
            items[str(i)] = {
                "filename": filename,
                "caption": positive,
                "negative_caption": negative,
                "group": group,
            }
            bar.update()
        (root / f"{task}.json").write_text(json.dumps(items, indent=1) + "\n")
        counts[task] = len(items)
    return {"root": str(root), "image_dir": str(root / "images"), "tasks": counts}


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
        pattern, counts = _write_shards(
            out / "train",
            "train",
            _with_files(_caption_samples(world, "train", sizes.train, "seen", bar)),
            sizes.train,
            sizes.shards,
        )
        _write_lines(out / "train" / "train.csv", train_rows)
        val = _val(out, world, sizes, bar)
        bar.update(sizes.val)  # the CSV copy of the validation set
        test = _test(out, world, sizes, bar)
        zeroshot = _zeroshot(out, world, sizes, bar)
        sugarcrepe = _sugarcrepe(out, world, sizes.sugarcrepe_per_task, "sugarcrepe", bar)
        sugarcrepe_val = _sugarcrepe(out, world, sizes.sugarcrepe_val_per_task, "sugarcrepe_val", bar)
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
        manifest = generate(args.out, world, sizes, force=args.force)
    except ValueError as e:
        print(f"sparo-clip make-data: error: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps({"out": args.out, "train": manifest["train"], "held_out": manifest["held_out"]}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
