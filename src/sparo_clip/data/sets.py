"""The shapes world's files: seeded samples, tar shards, and the evaluation sets (used by :mod:`.shapes`)."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sparo_clip.data.captions import ZEROSHOT_TEMPLATES, Spec, caption, make_spec, negative, world_tasks
from sparo_clip.data.render import png_bytes, render_scene
from sparo_clip.data.world import (
    Composition,
    Obj,
    Scene,
    WorldCfg,
    composition_name,
    fits,
    sample_scene,
    scene_of,
)

GROUPS = ("seen", "novel")  # scenes of training pairs only / scenes with a held-out pair


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
    binding_per_group: int = 200

    def __post_init__(self) -> None:
        for name in (
            "train",
            "val",
            "shards",
            "zeroshot_per_class",
            "sugarcrepe_per_task",
            "test",
            "sugarcrepe_val_per_task",
            "binding_per_group",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid: expected a positive integer")
        if self.train < self.shards:
            raise ValueError(f"train={self.train} must be at least shards={self.shards} (one sample a shard)")
        if self.test < 2:
            raise ValueError(f"test={self.test} must be at least 2: half seen, half novel scenes")
        for name in ("sugarcrepe_per_task", "sugarcrepe_val_per_task", "binding_per_group"):
            value = getattr(self, name)
            multiple = 2 if name == "binding_per_group" else 4
            if value % multiple:
                raise ValueError(
                    f"{name}={value} must be a multiple of {multiple}: items come in mirrored pairs"
                    + (", half of them seen scenes, half novel ones" if multiple == 4 else "")
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


def write_shards(
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


def caption_samples(
    world: WorldCfg, split: str, count: int, mode: str, bar: tqdm
) -> Iterator[tuple[str, dict]]:
    """Captioned scenes; ``mode`` "split" alternates seen-only and novel scenes (see ``_group_mode``)."""
    for i in range(count):
        rng = _rng(world.seed, split, i)
        scene_mode = _group_mode(i)[1] if mode == "split" else mode
        scene = sample_scene(rng, world, rng.randint(world.min_objects, world.max_objects), scene_mode)
        png = png_bytes(render_scene(scene, world))
        bar.update()
        text = caption(scene, rng, world).encode()
        meta = json.dumps(
            scene.to_dict(), sort_keys=True
        ).encode()  # the objects drawn: colour, shape, size, x, y
        yield f"{split}{i:07d}", {"png": png, "txt": text, "json": meta}


def _single_object_scene(world: WorldCfg, comp: tuple[str, str], rng: random.Random):
    """A one-object scene of a given composition (the zero-shot classification images)."""
    from sparo_clip.data.world import SIZES, Obj, Scene

    size = rng.choice(sorted(SIZES))
    extent = world.size_px(size)
    low, high = extent / 2 + 1, world.image_size - extent / 2 - 1
    x, y = round(rng.uniform(low, high), 2), round(rng.uniform(low, high), 2)
    return Scene((Obj(comp[0], comp[1], size, x, y),))


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def zeroshot_sets(out: Path, world: WorldCfg, sizes: SizeCfg, bar: tqdm) -> dict[str, Any]:
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
        write_lines(root / "classnames.txt", [composition_name(comp) for _, comp in folders])
        if name == "all":  # the generic attribute-object layout of ``sparo-clip eval compositional``
            rows = [
                f"{f}\t{composition_name(c)}\t{c[0]}\t{c[1]}\t{'unseen' if c in world.unseen else 'seen'}"
                for f, c in folders
            ]
            write_lines(root / "classes.tsv", ["folder\tname\tattribute\tobject\tsplit", *rows])
        write_lines(
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
        write_lines(root / "dataset_type.txt", ["retrieval"])  # without it, CLIP_benchmark expects .cls
    else:
        write_lines(root / "classnames.txt", classnames)
        write_lines(root / "zeroshot_classification_templates.txt", [f"{t}." for t in ZEROSHOT_TEMPLATES])
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
    write_lines(folder / "retrieval.csv", rows)
    return str(folder / "retrieval.csv")


def val_pairs(out: Path, world: WorldCfg, sizes: SizeCfg, bar: tqdm) -> dict[str, Any]:
    samples = list(caption_samples(world, "val", sizes.val, "seen", bar))
    pattern, counts = write_shards(
        out / "val", "val", iter(samples), sizes.val, max(1, min(4, sizes.val // 64))
    )
    csv_path = _pairs_csv(out / "val", samples, None)
    cb = _clip_benchmark_set(out / "clip_benchmark" / "shapes_retrieval", samples, None)
    return {"pattern": pattern, "num_samples": sum(counts.values()), "csv": csv_path, "clip_benchmark": cb}


def test_pairs(out: Path, world: WorldCfg, sizes: SizeCfg, bar: tqdm) -> dict[str, Any]:
    """Test pairs split by novelty: even items show only training pairs, odd items a held-out pair."""
    samples = list(caption_samples(world, "test", sizes.test, "split", bar))
    groups = [_group_mode(i)[0] for i in range(len(samples))]
    csv_path = _pairs_csv(out / "test", samples, groups)
    return {"csv": csv_path, "num_samples": len(samples), "groups": {g: groups.count(g) for g in GROUPS}}


MAX_DRAWS = 200  # scenes drawn for one mirrored pair of items before giving up (each failed draw is counted)


def _item(filename: str, positive: str, negative: str, group: str, cluster: str) -> dict[str, str]:
    return {
        "filename": filename,
        "caption": positive,
        "negative_caption": negative,
        "group": group,
        "cluster": cluster,
    }


def _held_out(objects: tuple[Obj, ...], world: WorldCfg) -> list[str]:
    return sorted(composition_name(o.composition) for o in objects if o.composition in world.unseen)


def mirrored_scene(task: str, true: Spec, wrong: Spec, scene: Scene, world: WorldCfg) -> Scene | None:
    """The scene the wrong caption describes: the edit applied to the image (None when it cannot be drawn).

    Colour and shape edits change the edited objects and keep every size and place; ``swap_obj`` exchanges
    the places of the two objects of the first relation (None when one of them does not fit at the other's
    place next to the rest).
    """
    if task == "swap_obj":  # the two objects of the first relation exchange places (each keeps its size)
        objects = list(scene.objects)
        a, b = (scene.objects.index(true.objects[k]) for k in (0, 1))
        pa, pb = objects[a], objects[b]
        objects[a] = Obj(pa.color, pa.shape, pa.size, pb.x, pb.y)
        objects[b] = Obj(pb.color, pb.shape, pb.size, pa.x, pa.y)
        return Scene(tuple(objects)) if fits(world, objects) else None
    by_obj = {id(o): i for i, o in enumerate(true.objects)}
    objects = []
    for o in scene.objects:
        edited = wrong.objects[by_obj[id(o)]]
        objects.append(Obj(edited.color, edited.shape, o.size, o.x, o.y))
    return Scene(tuple(objects))


def mirrored_pair(
    task: str, scene: Scene, world: WorldCfg, rng: random.Random
) -> tuple[tuple[str, str], Scene] | None:
    """(true caption, wrong caption) of the scene, and the scene of the wrong caption (for the mirror item).

    None when the scene allows no wrong caption the captions alone cannot give away (:func:`captions.negative`)
    or its mirror scene cannot be drawn.
    """
    relational = {"swap_obj": True, "add_obj": False}.get(task)
    spec = make_spec(scene, rng, relational=relational, world=world)
    wrong = negative(task, spec, scene, world, rng)
    if wrong is None:
        return None
    mirror = mirrored_scene(task, spec, wrong, scene, world)
    return None if mirror is None else ((spec.text(), wrong.text()), mirror)


def _mirrored_items(
    root: Path,
    stem: str,
    index: int,
    pair: tuple[str, str],
    scenes: tuple[Scene, Scene],
    group: str,
    world: WorldCfg,
) -> dict[str, dict[str, str]]:
    """Two items: the scene with (true, wrong) and the mirror scene with (wrong, true); any reader of the captions
    alone is right on exactly one of them. They share a cluster (their errors are not independent)."""
    held = sorted(set(_held_out(scenes[0].objects, world)) | set(_held_out(scenes[1].objects, world)))
    cluster = "+".join(held) if held else f"{stem} {index}"
    items = {}
    for k, (scene, (pos, neg)) in enumerate(zip(scenes, (pair, pair[::-1]), strict=True)):
        filename = f"{stem}_{index:05d}_{'ab'[k]}.png"
        (root / "images" / filename).write_bytes(png_bytes(render_scene(scene, world)))
        items[f"{index}{'ab'[k]}"] = _item(filename, pos, neg, group, cluster)
    return items


def sugarcrepe_sets(out: Path, world: WorldCfg, per_task: int, name: str, bar: tqdm) -> dict[str, Any]:
    """The compositionality sets under ``out/name``, in mirrored pairs: half seen-only scenes, half novel ones.

    Every item comes with its mirror (the scene of its wrong caption, with the two captions exchanged), so the
    set's captions carry no prior: a reader of the captions alone scores exactly 0.5. A scene whose task allows
    no balanced wrong caption (:func:`captions.negative`) or no mirror is dropped and another drawn; the number
    dropped per task is reported.
    """
    root = out / name
    (root / "images").mkdir(parents=True, exist_ok=True)
    counts, dropped = {}, {}
    for task in world_tasks(world):
        items: dict[str, dict[str, str]] = {}
        dropped[task] = 0
        for i in range(max(1, per_task // 2)):
            group, mode = _group_mode(i)
            for draw in range(MAX_DRAWS):
                rng = _rng(world.seed, f"{name}/{task}" + (f"/{draw}" if draw else ""), i)
                low = max(2, world.min_objects)
                scene = sample_scene(rng, world, rng.randint(low, world.max_objects), mode)
                made = mirrored_pair(task, scene, world, rng)
                if made is not None:
                    break
                dropped[task] += 1
            else:
                raise RuntimeError(
                    f"{task}: no balanced, mirrorable item in {MAX_DRAWS} scenes of world {world}"
                )
            pair, mirror = made
            items |= _mirrored_items(root, task, i, pair, (scene, mirror), group, world)
            bar.update(2)
        (root / f"{task}.json").write_text(json.dumps(items, indent=1) + "\n")
        counts[task] = len(items)
    blank = _blank_set(
        out, world, name, {t: json.loads((root / f"{t}.json").read_text()) for t in world_tasks(world)}
    )
    return {
        "root": str(root),
        "image_dir": str(root / "images"),
        "tasks": counts,
        "dropped": dropped,
        "blank": blank,
    }


def binding_pairs(world: WorldCfg) -> dict[str, list[tuple[Composition, Composition]]]:
    """Two-object compositions whose colour swap is balanced, by group.

    ``seen``: both objects and both swapped objects are training pairs. ``novel``: exactly one object is a
    held-out pair, and so is exactly one of the swapped objects.
    """
    unseen = world.unseen
    groups: dict[str, list[tuple[Composition, Composition]]] = {"seen": [], "novel": []}
    for a in world.compositions:
        for b in world.compositions:
            if a[0] == b[0] or a[1] == b[1] or a >= b:
                continue
            shown = (a in unseen) + (b in unseen)
            swapped = ((b[0], a[1]) in unseen) + ((a[0], b[1]) in unseen)
            if shown == swapped == 0:
                groups["seen"].append((a, b))
            elif shown == swapped == 1:
                groups["novel"].append((a, b))
    return groups


def binding_set(out: Path, world: WorldCfg, per_group: int, name: str, bar: tqdm) -> dict[str, Any]:
    """The clean binding test: two-object scenes, the wrong caption swaps the two colours, in mirrored pairs.

    Group ``seen``: both captions name only training pairs; group ``novel``: both name exactly one held-out pair.
    Written as SugarCrepe's ``swap_att.json`` (``sparo-clip eval sugarcrepe --root out/name``). A world whose
    held-out pairs allow no balanced ``novel`` item writes the ``seen`` group only (reported).
    """
    root = out / name
    (root / "images").mkdir(parents=True, exist_ok=True)
    options = binding_pairs(world)
    items: dict[str, dict[str, str]] = {}
    i = 0
    for group in ("seen", "novel"):
        for _ in range(max(1, per_group // 2) if options[group] else 0):
            rng = _rng(world.seed, f"{name}/{group}", i)
            comps = list(rng.choice(options[group]))
            rng.shuffle(comps)
            scene = scene_of(rng, world, comps)
            spec = make_spec(scene, rng, world=world)
            a, b = spec.objects
            wrong = spec.replace_object(0, dataclasses.replace(a, color=b.color))
            wrong = wrong.replace_object(1, dataclasses.replace(b, color=a.color))
            mirror = mirrored_scene("swap_att", spec, wrong, scene, world)
            items |= _mirrored_items(
                root, "binding", i, (spec.text(), wrong.text()), (scene, mirror), group, world
            )
            i += 1
            bar.update(2)
    (root / "swap_att.json").write_text(json.dumps(items, indent=1) + "\n")
    blank = _blank_set(out, world, name, {"swap_att": items})
    counts = {g: sum(it["group"] == g for it in items.values()) for g in ("seen", "novel")}
    configurations = {g: len(v) for g, v in options.items()}
    return {
        "root": str(root), "image_dir": str(root / "images"), "groups": counts, "configurations": configurations,
        "blank": blank,
    }  # fmt: skip


def _blank_set(out: Path, world: WorldCfg, name: str, tasks: dict[str, dict[str, dict[str, str]]]) -> str:
    """The same items against one blank image (the background alone): what a model prefers without the image."""
    root = out / f"{name}_blank"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "blank.png").write_bytes(png_bytes(render_scene(Scene(()), world)))
    for task, items in tasks.items():
        blank = {k: dict(v, filename="blank.png") for k, v in items.items()}
        (root / f"{task}.json").write_text(json.dumps(blank, indent=1) + "\n")
    return str(root)
