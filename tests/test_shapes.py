"""The shapes world generator: determinism, held-out pairs, caching, and every format read by its consumer."""

import hashlib
import json
import re
import tarfile

import open_clip
import pytest
import webdataset as wds
from torchvision.datasets import ImageFolder

from sparo_clip.data.captions import TASKS
from sparo_clip.data.shapes import SizeCfg, _rng, generate, main
from sparo_clip.data.world import WorldCfg, composition_name, sample_scene

SMALL = SizeCfg(train=64, val=24, shards=4, zeroshot_per_class=3, sugarcrepe_per_task=6)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return out, generate(out, sizes=SMALL)


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
    pattern = re.compile(r"\b(" + "|".join(world.colors) + r") (" + "|".join(world.shapes) + r")\b")
    seen_in_captions = set()
    for sample in wds.WebDataset(manifest["train"]["pattern"], shardshuffle=False):
        for color, shape in pattern.findall(sample["txt"].decode()):
            seen_in_captions.add(f"{color} {shape}")
    assert seen_in_captions and not seen_in_captions & set(held)
    # the scenes behind the training images hold no held-out pair either (same per-sample generators)
    for i in range(SMALL.train):
        rng = _rng(world.seed, "train", i)
        scene = sample_scene(rng, world, rng.randint(world.min_objects, world.max_objects), "seen")
        assert not {composition_name(o.composition) for o in scene.objects} & set(held)
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
            assert set(item) == {"filename", "caption", "negative_caption"}
            assert item["caption"] != item["negative_caption"]
            Image.open(out / "sugarcrepe" / "images" / item["filename"]).verify()


def test_retrieval_csv_and_clip_benchmark_layout(world_dir):
    from sparo_clip.eval.retrieval import read_csv_pairs

    out, manifest = world_dir
    pairs = read_csv_pairs(manifest["val"]["csv"], "filepath", "title", "\t")
    assert len(pairs.image_paths) == len(pairs.captions) == SMALL.val
    for name in ("shapes_seen", "shapes_unseen"):
        root = out / "clip_benchmark" / name
        assert (root / "test" / "nshards.txt").read_text().strip() == "1"
        classnames = (root / "classnames.txt").read_text().splitlines()
        assert all(
            "{c}" in t for t in (root / "zeroshot_classification_templates.txt").read_text().splitlines()
        )
        with tarfile.open(root / "test" / "0.tar") as tar:
            labels = [int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")]
        assert max(labels) + 1 == len(classnames) and min(labels) == 0
    with tarfile.open(out / "clip_benchmark" / "shapes_retrieval" / "test" / "0.tar") as tar:
        names = tar.getnames()
    assert sum(n.endswith(".txt") for n in names) == sum(n.endswith(".png") for n in names) == SMALL.val


def test_second_run_reuses_and_other_settings_regenerate(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    generate(tmp_path, sizes=SMALL)
    stamp = (tmp_path / "train" / "train-000000.tar").stat().st_mtime_ns
    generate(tmp_path, sizes=SMALL)
    assert "up to date: reusing it" in caplog.text
    assert (tmp_path / "train" / "train-000000.tar").stat().st_mtime_ns == stamp
    generate(tmp_path, sizes=SizeCfg(train=32, val=8, shards=2, zeroshot_per_class=1, sugarcrepe_per_task=2))
    assert "regenerating" in caplog.text
    assert json.loads((tmp_path / "dataset.json").read_text())["train"]["num_samples"] == 32
    assert not (tmp_path / "train" / "train-000003.tar").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--colors", "red,mauve"], "unknown: ['mauve']"),
        (["--train-size", "0"], "train=0 is not valid"),
        (["--max-objects", "1"], "max_objects must be at least 2"),
        (["--holdout", "red circle,blue blob"], "holdout pair 'blue blob' is not valid"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_writes_and_reports(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--train-size", "16", "--val-size", "8", "--shards", "2"]
    argv += ["--zeroshot-per-class", "1", "--sugarcrepe-per-task", "2", "--holdout", "red circle,blue star"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["held_out"] == ["blue star", "red circle"]
    assert printed["train"]["pattern"].endswith("train-{000000..000001}.tar")
