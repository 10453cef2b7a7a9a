"""The shapes world generator: determinism, held-out pairs, caching, and every format read by its consumer."""

import hashlib
import json
import os
import random
import re

import open_clip
import pytest
import webdataset as wds
from torchvision.datasets import ImageFolder

from sparo_clip.commands.make_data import main
from sparo_clip.data.captions import TASKS, make_spec, negative
from sparo_clip.data.generate import generate
from sparo_clip.data.sets import SizeCfg
from sparo_clip.data.world import PALETTE, RELATIONS, SIZES, WorldCfg, relation, sample_scene

SMALL = SizeCfg(
    train=64, val=24, shards=4, zeroshot_per_class=3, sugarcrepe_per_task=8, test=8, sugarcrepe_val_per_task=4,
    binding_per_group=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return out, generate(out, sizes=SMALL)


def _mentions(text, world):
    """(size or None, colour, shape) of every object a caption names."""
    sizes, colors, shapes = "|".join(SIZES), "|".join(world.colors), "|".join(world.shapes)
    return re.findall(rf"\b(?:({sizes}) )?({colors}) ({shapes})\b", text)


def _describes(text, objects, world):
    """True when every object the caption names is in the scene, with the size it states."""
    return all(
        any(o["color"] == c and o["shape"] == s and size in ("", o["size"]) for o in objects)
        for size, c, s in _mentions(text, world)
    )


def _read_like_clip_benchmark(root):
    """The samples of a local webdataset read as CLIP_benchmark 1.6.2's build_wds_dataset reads them."""
    nshards = int(open(os.path.join(root, "test", "nshards.txt")).read())
    kind_file = os.path.join(root, "dataset_type.txt")
    kind = open(kind_file).read().strip().lower() if os.path.exists(kind_file) else "classification"
    ds = wds.WebDataset(os.path.join(root, "test", f"{{0..{nshards - 1}}}.tar"), nodesplitter=lambda s: s)
    ds = ds.decode(wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"]))
    if kind == "retrieval":
        return kind, list(ds.to_tuple(["webp", "png", "jpg", "jpeg"], "txt").map_tuple(None, str.splitlines))
    return kind, list(ds.to_tuple(["webp", "png", "jpg", "jpeg"], "cls"))


def _digests(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "dataset.json"  # the manifest names its own folder
    }


def test_same_settings_give_byte_identical_files(world_dir, tmp_path):
    out, _ = world_dir
    again = generate(tmp_path / "again", sizes=SMALL)
    assert _digests(out) == _digests(tmp_path / "again")
    assert again["held_out"] == json.loads((out / "dataset.json").read_text())["held_out"]
    other = generate(tmp_path / "other", world=WorldCfg(seed=1), sizes=SMALL)
    assert _digests(tmp_path / "other") != _digests(out) and other["held_out"]


def test_held_out_pairs_never_in_training(world_dir):
    out, manifest = world_dir
    world = WorldCfg()
    held = manifest["held_out"]
    assert held == world.unseen_names and len(held) == round(0.2 * len(world.compositions))
    in_captions, in_images, count = set(), set(), 0
    for sample in wds.WebDataset(manifest["train"]["pattern"], shardshuffle=False).decode():
        objects = sample["json"]["objects"]  # what was drawn in this image
        assert 1 <= len(objects) <= world.max_objects
        assert _describes(sample["txt"], objects, world), (sample["txt"], objects)
        in_captions |= {f"{c} {s}" for _, c, s in _mentions(sample["txt"], world)}
        in_images |= {f"{o['color']} {o['shape']}" for o in objects}
        count += 1
    assert count == SMALL.train and in_captions and in_images
    assert not in_captions & set(held) and not in_images & set(held)
    # ... while the unseen zero-shot set is exactly the held-out pairs
    names = (out / "zeroshot" / "unseen" / "classnames.txt").read_text().split("\n")[:-1]
    assert names == sorted(held)


def test_training_shards_read_by_open_clip_train(world_dir):
    from types import SimpleNamespace

    from open_clip_train.data import get_wds_dataset

    _, manifest = world_dir
    _, _, preprocess = open_clip.create_model_and_transforms("test-SPARO")
    args = SimpleNamespace(
        train_data=manifest["train"]["pattern"], train_num_samples=None, train_data_upsampling_factors=None,
        dataset_resampled=False, seed=0, batch_size=8, workers=1, world_size=1, rank=0,
    )  # fmt: skip
    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer("test-SPARO"))
    images, texts = next(iter(data.dataloader))
    assert images.shape == (8, 3, 32, 32) and texts.shape == (8, 16)
    assert data.dataloader.num_samples == SMALL.train
    sizes = json.loads((world_dir[0] / "train" / "sizes.json").read_text())
    assert sum(sizes.values()) == SMALL.train and len(sizes) == SMALL.shards


def test_zeroshot_sets_are_image_folders(world_dir):
    _, manifest = world_dir
    for spec in manifest["zeroshot"].values():
        folder = ImageFolder(spec["dir"])
        names = open(spec["classnames"]).read().splitlines()
        assert len(folder.classes) == len(names) == spec["num_classes"]
        assert [c.replace("_", " ") for c in folder.classes] == names  # sorted folder order
        assert len(folder) == spec["num_images"]
        templates = open(spec["templates"]).read().splitlines()
        assert templates and all("{c}" in t for t in templates)
    assert manifest["zeroshot"]["seen"]["num_classes"] + manifest["zeroshot"]["unseen"]["num_classes"] == 24


def test_sugarcrepe_files_and_wrong_captions(world_dir):
    from PIL import Image

    out, manifest = world_dir
    assert set(manifest["sugarcrepe"]["tasks"]) == set(TASKS)
    for task in TASKS:
        items = json.loads((out / "sugarcrepe" / f"{task}.json").read_text())
        assert len(items) == SMALL.sugarcrepe_per_task
        for item in items.values():
            assert set(item) == {"filename", "caption", "negative_caption", "group", "cluster"}
            assert item["caption"] != item["negative_caption"]
            Image.open(out / "sugarcrepe" / "images" / item["filename"]).verify()


def _names_held_out(text, world):
    return any((c, s) in world.unseen for _, c, s in _mentions(text, world))


def test_test_sets_are_split_by_novelty(world_dir):
    """Every compositionality item and test pair says whether its scene holds a held-out pair, truthfully."""
    from sparo_clip.eval.retrieval import read_csv_pairs
    from sparo_clip.eval.sugarcrepe import read_items

    out, manifest = world_dir
    world = WorldCfg()
    for name, per_task in (
        ("sugarcrepe", SMALL.sugarcrepe_per_task),
        ("sugarcrepe_val", SMALL.sugarcrepe_val_per_task),
    ):
        items = read_items(manifest[name]["root"])
        assert items.item_group.count("novel") == items.item_group.count("seen") == len(TASKS) * per_task // 2
        for text, group in zip(items.captions, items.item_group, strict=True):
            assert _names_held_out(text, world) == (group == "novel"), (
                text
            )  # the true caption names every object
    pairs = read_csv_pairs(manifest["test"]["csv"], "filepath", "title", "\t", "group")
    assert pairs.image_group.count("novel") == pairs.image_group.count("seen") == SMALL.test // 2
    for text, group in zip(pairs.captions, pairs.image_group, strict=True):
        assert _names_held_out(text, world) == (group == "novel"), text
    # validation pairs (for choosing settings) only show training pairs; the two compositionality sets differ
    val = read_csv_pairs(manifest["val"]["csv"], "filepath", "title", "\t", "group")
    assert val.image_group is None and not any(_names_held_out(t, world) for t in val.captions)
    assert (
        read_items(manifest["sugarcrepe"]["root"]).captions[:4]
        != read_items(manifest["sugarcrepe_val"]["root"]).captions[:4]
    )


def test_compositional_class_list(world_dir):
    from sparo_clip.eval.compositional import read_compositions

    _, manifest = world_dir
    spec = manifest["compositional"]
    data = read_compositions(spec["dir"], spec["classes"])
    held_out = {n for n, u in zip(data.names, data.unseen, strict=True) if u}
    assert held_out == set(manifest["held_out"]) and len(data.names) == 24
    assert all(n == f"{a} {o}" for n, a, o in zip(data.names, data.attributes, data.objects, strict=True))
    assert len(data.paths) == 24 * SMALL.zeroshot_per_class


def test_retrieval_csv_and_clip_benchmark_layout(world_dir):
    from sparo_clip.eval.retrieval import read_csv_pairs

    out, manifest = world_dir
    pairs = read_csv_pairs(manifest["val"]["csv"], "filepath", "title", "\t")
    assert len(pairs.image_paths) == len(pairs.captions) == SMALL.val
    for name in ("all", "seen", "unseen"):
        root = out / "clip_benchmark" / f"shapes_{name}"
        assert manifest["zeroshot"][name]["clip_benchmark"] == str(root)
        kind, samples = _read_like_clip_benchmark(str(root))
        classnames = (root / "classnames.txt").read_text().splitlines()
        assert kind == "classification"
        assert classnames == open(manifest["zeroshot"][name]["classnames"]).read().splitlines()
        templates = (root / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert templates and all("{c}" in t for t in templates)
        labels = [label for image, label in samples]
        for image, label in samples:  # the image shows its class's colour (flat-filled shape interior)
            assert image.size == (64, 64)
            assert PALETTE[classnames[label].split()[0]] in {rgb for _, rgb in image.getcolors(4096)}
        assert sorted(set(labels)) == list(range(len(classnames)))  # every class, indices 0..n-1
        assert len(samples) == len(classnames) * SMALL.zeroshot_per_class
    kind, samples = _read_like_clip_benchmark(str(out / "clip_benchmark" / "shapes_retrieval"))
    assert kind == "retrieval" and len(samples) == SMALL.val
    assert all(len(captions) == 1 and _mentions(captions[0], WorldCfg()) for _, captions in samples)


def test_second_run_reuses_and_other_settings_regenerate(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    generate(tmp_path, sizes=SMALL)
    stamp = (tmp_path / "train" / "train-000000.tar").stat().st_mtime_ns
    generate(tmp_path, sizes=SMALL)
    assert "up to date: reusing it" in caplog.text
    assert (tmp_path / "train" / "train-000000.tar").stat().st_mtime_ns == stamp
    generate(
        tmp_path,
        sizes=SizeCfg(
            train=32,
            val=8,
            shards=2,
            zeroshot_per_class=1,
            sugarcrepe_per_task=4,
            test=2,
            sugarcrepe_val_per_task=4,
            binding_per_group=2,
        ),
    )
    assert "regenerating" in caplog.text
    assert json.loads((tmp_path / "dataset.json").read_text())["train"]["num_samples"] == 32
    assert not (tmp_path / "train" / "train-000003.tar").exists()


def test_captions_of_the_main_jobs_world_fit_the_tiny_context(tmp_path):
    """Every caption the main job's world makes (training, matching sets, templates) fits tiny-CLIP's context
    with its start and end tokens: nothing is cut off."""
    from sparo_clip.data.captions import ZEROSHOT_TEMPLATES, caption
    from sparo_clip.experiment.recipe import WORLD

    world = WorldCfg(**WORLD)
    tokenizer = open_clip.get_tokenizer("tiny-CLIP")
    texts = []
    for i in range(2000):
        rng = random.Random(f"fit/{i}")
        texts.append(caption(sample_scene(rng, world, rng.randint(1, 3), "any"), rng, world))
    manifest = generate(tmp_path, world, SMALL)
    for name in ("sugarcrepe", "binding"):
        for f in (tmp_path / name).glob("*.json"):
            for item in json.loads(f.read_text()).values():
                texts += [item["caption"], item["negative_caption"]]
    texts += [t.replace("{c}", "yellow triangle") for t in ZEROSHOT_TEMPLATES]
    longest = max(len(tokenizer.encode(x)) for x in texts)
    assert longest + 2 <= tokenizer.context_length, longest
    assert manifest["settings"]["world"]["relational_share"] == 0.0


@pytest.mark.parametrize("mode", ["seen", "unseen"])
def test_wrong_captions_are_wrong_and_true_captions_true(mode):
    world, made = WorldCfg(), 0
    for i in range(60):
        rng = random.Random(f"test/{mode}/{i}")
        scene = sample_scene(rng, world, rng.randint(2, world.max_objects), mode)
        objects = scene.to_dict()["objects"]
        present = {(o["color"], o["shape"]) for o in objects}
        for task in TASKS:
            spec = make_spec(scene, rng, relational={"swap_obj": True, "add_obj": False}.get(task))
            wrong = negative(task, spec, scene, world, rng)
            if wrong is None:  # no wrong caption the captions alone cannot give away: the item is dropped
                continue
            made += 1
            assert _describes(spec.text(), objects, world) and spec.text() != wrong.text()
            named = {(c, s) for _, c, s in _mentions(wrong.text(), world)}
            if task == "swap_obj":  # same objects, but the stated relation is the opposite of the drawn one
                assert named == {(o.color, o.shape) for o in spec.objects}
                assert relation(wrong.objects[0], wrong.objects[1]) != wrong.relations[0]
                assert RELATIONS[wrong.relations[0]] in wrong.text()
            else:  # names an object (colour-shape pair) that is not in the image
                assert named - present, (task, spec.text(), wrong.text())
    assert made > 60 * len(TASKS) / 2  # most scenes allow one


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--colors", "red,mauve"], "unknown: ['mauve']"),
        (["--train-size", "0"], "train=0 is not valid"),
        (["--max-objects", "1"], "max_objects must be at least 2"),
        (["--holdout-fraction", "0"], "holds no composition out"),
        (["--test-size", "1"], "test=1 must be at least 2"),
        (["--holdout", "red circle,blue blob"], "holdout pair 'blue blob' is not valid"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_unwritable_out_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["--small", "--out", str(blocker / "world")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "cannot be written" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "not a folder"


def test_cli_writes_and_reports(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--train-size", "16", "--val-size", "8", "--shards", "2"]
    argv += ["--zeroshot-per-class", "1", "--sugarcrepe-per-task", "4", "--holdout", "red circle,blue star"]
    argv += ["--test-size", "2", "--sugarcrepe-val-per-task", "4", "--binding-per-group", "2"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["held_out"] == ["blue star", "red circle"]
    assert printed["train"]["pattern"].endswith("train-{000000..000001}.tar")


def test_cli_small_world(tmp_path, capsys):
    from sparo_clip.data.generate import SMALL_SIZES

    assert main(["--out", str(tmp_path), "--small"]) == 0
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["settings"]["sizes"] == vars(SMALL_SIZES)
    assert manifest["test"]["groups"] == {"seen": SMALL_SIZES.test // 2, "novel": SMALL_SIZES.test // 2}
