"""sparo-clip eval sugarcrepe: per-task and mean accuracy on SugarCrepe's file format."""

import json

import numpy as np
import pytest

from sparo_clip.eval import cli

from .eval_helpers import MODEL, Reference, save_checkpoint, sugarcrepe_root

TASKS = {"add_att": 6, "replace_rel": 5, "swap_obj": 7}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "test-SPARO.pt")


def _base(ckpt):
    return ["sugarcrepe", "--model", MODEL, "--pretrained", str(ckpt), "--workers", "0", "--batch-size", "4"]


def _expected(root, reference, slots):
    out = {}
    for task in TASKS:
        items = list(json.loads((root / f"{task}.json").read_text()).values())
        img = reference.images([root / "images" / it["filename"] for it in items], slots)
        pos = (img * reference.texts([it["caption"] for it in items], slots)).sum(1)
        neg = (img * reference.texts([it["negative_caption"] for it in items], slots)).sum(1)
        out[task] = float(np.mean(pos > neg))
    return out


@pytest.mark.parametrize("slots", [None, [0, 1, 3]])
def test_sugarcrepe_matches_independent_computation(ckpt, tmp_path, slots):
    root = sugarcrepe_root(tmp_path / "sc", TASKS)
    out = tmp_path / "result.json"
    extra = [] if slots is None else ["--slots", ",".join(map(str, slots))]
    assert cli.main([*_base(ckpt), "--root", str(root), "--output", str(out), *extra]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    expected = _expected(root, Reference(ckpt), slots)
    assert set(metrics) == set(TASKS) | {"mean", "num_items"}
    for task, acc in expected.items():
        assert metrics[task] == pytest.approx(acc), task
    assert metrics["mean"] == pytest.approx(np.mean(list(expected.values())))
    assert metrics["num_items"] == sum(TASKS.values())


def test_separate_image_dir_and_errors(ckpt, tmp_path, capsys):
    root = sugarcrepe_root(tmp_path / "sc", {"swap_att": 3})
    (root / "images").rename(tmp_path / "coco")
    assert cli.main([*_base(ckpt), "--root", str(root), "--image-dir", str(tmp_path / "coco")]) == 0
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "add_obj.json").write_text(json.dumps({"0": {"filename": "x.png", "caption": "a"}}))
    (tmp_path / "bad" / "images").mkdir()
    cases = [
        (["--root", str(root)], "--image-dir " + str(root / "images") + ": no such directory"),
        (
            ["--root", str(root), "--image-dir", str(tmp_path / "empty")],
            "3 image(s) named by the task files are missing",
        ),
        (
            ["--root", str(tmp_path / "empty"), "--image-dir", str(tmp_path / "coco")],
            "none of SugarCrepe's task files",
        ),
        (["--root", str(tmp_path / "bad")], "must have the keys ['filename', 'caption', 'negative_caption']"),
        ([], "give --root DIR"),
    ]
    for data_args, message in cases:
        assert cli.main([*_base(ckpt), *data_args]) == 2
        assert message in capsys.readouterr().err, message
