"""Write the shapes world to disk: ``sparo-clip make-data`` / ``python -m sparo_clip.data.generate``.

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

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sparo_clip.data.captions import world_tasks
from sparo_clip.data.sets import (
    SizeCfg,
    binding_set,
    caption_samples,
    sugarcrepe_sets,
    test_pairs,
    val_pairs,
    write_lines,
    write_shards,
    zeroshot_sets,
)
from sparo_clip.data.world import WorldCfg, composition_name

GENERATOR_VERSION = 4  # bump whenever the same settings would give other files
MANIFEST = "dataset.json"
_OWNED = (
    "train", "val", "test", "zeroshot", "sugarcrepe", "sugarcrepe_val", "sugarcrepe_blank", "sugarcrepe_val_blank",
    "binding", "binding_blank", "clip_benchmark",
)  # fmt: skip
_logger = logging.getLogger("sparo_clip.data.generate")


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
        + len(world_tasks(world)) * (sizes.sugarcrepe_per_task + sizes.sugarcrepe_val_per_task)
        + 2 * sizes.binding_per_group
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
        binding = binding_set(out, world, sizes.binding_per_group, "binding", bar)
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
        "binding": binding,
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
    binding_per_group=8,
)
