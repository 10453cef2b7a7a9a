"""sparo-clip eval zeroshot: metrics, generic folders, ImageNet variants and their layout errors."""

import json
import pkgutil

import numpy as np
import open_clip
import pytest
import torch

from sparo_clip import save_pretrained
from sparo_clip.eval import cli, zeroshot
from sparo_clip.eval.common import ModelSpec, load_context
from sparo_clip.eval.folders import imagenet_subset
from sparo_clip.eval.zeroshot import classification_metrics

from .eval_helpers import (
    MODEL,
    Reference,
    class_folder,
    noise_image,
    save_checkpoint,
    topk_metrics,
    write_lines,
)

CLASSES = {"cat": 4, "dog": 3, "eel": 5, "fox": 2, "gnu": 3, "hen": 3, "ibis": 2}
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}", "{c}"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "test-SPARO.pt")


@pytest.fixture(scope="module")
def reference(ckpt):
    return Reference(ckpt)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    class_folder(root / "data", CLASSES)
    write_lines(root / "classnames.txt", [f"small {c}" for c in CLASSES])
    write_lines(root / "templates.txt", TEMPLATES)
    return root


def _folder_args(folder, ckpt, *extra):
    return [
        "zeroshot", "--model", MODEL, "--pretrained", str(ckpt), "--workers", "0", "--batch-size", "5",
        "--data", str(folder / "data"), "--classnames", str(folder / "classnames.txt"),
        "--templates", str(folder / "templates.txt"), *extra,
    ]  # fmt: skip


def _run(argv, tmp_path):
    out = tmp_path / "result.json"
    assert cli.main([*argv, "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_classification_metrics_on_hand_built_logits():
    # 4 samples, 6 classes; sample 0 right at rank 1, sample 1 at rank 2, sample 2 at rank 6, sample 3 at rank 1
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],
            [9.0, 8, 2, 3, 4, 5],
            [9.0, 8, 7, 6, 5, 0],
            [0.0, 1, 2, 3, 4, 9],
        ]
    )
    labels = torch.tensor([0, 1, 5, 5])
    m = classification_metrics(logits, labels)
    assert m["top1"] == 0.5
    assert "top5" not in m  # among 6 classes top-5 says little: not reported
    wide = torch.cat([logits, torch.full((4, 4), -1.0)], dim=1)  # the same scores among 10 classes
    m = classification_metrics(wide, labels)
    assert m["top1"] == 0.5
    assert m["top5"] == 0.75
    assert m["mean_per_class_recall"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)  # classes 0, 1, 5


@pytest.mark.parametrize("slots", [None, [0, 2]])
def test_folder_eval_matches_independent_computation(folder, ckpt, reference, tmp_path, slots):
    extra = [] if slots is None else ["--slots", ",".join(map(str, slots))]
    result = _run(_folder_args(folder, ckpt, *extra), tmp_path)
    assert result["slots"] == slots and result["num_slots"] == 4
    paths, labels = [], []
    for label, name in enumerate(sorted(CLASSES)):
        files = sorted((folder / "data" / name).glob("*.png"))
        paths += files
        labels += [label] * len(files)
    logits = (
        reference.images(paths, slots)
        @ reference.classifier([f"small {c}" for c in CLASSES], TEMPLATES, slots).T
    )
    expected = topk_metrics(logits, np.array(labels))
    got = result["metrics"]["folder"]
    assert got["num_samples"] == len(paths) and got["num_classes"] == len(CLASSES)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert "top5" not in got  # 7 classes: top-5 would say little


def test_cached_logits_equal_encoders_with_slots(folder, ckpt, reference):
    args = cli.build_parser().parse_args(_folder_args(folder, ckpt))
    (cache,) = zeroshot.encode(load_context(ModelSpec.from_args(args)), zeroshot.prepare(args)).values()
    paths = [p for name in sorted(CLASSES) for p in sorted((folder / "data" / name).glob("*.png"))]
    for slots in (None, [1], [0, 3]):
        mask = None if slots is None else torch.tensor([i in slots for i in range(4)])
        want = (
            reference.images(paths, slots)
            @ reference.classifier([f"small {c}" for c in CLASSES], TEMPLATES, slots).T
        )
        np.testing.assert_allclose(cache.logits(mask).numpy(), want, atol=1e-5)


def test_local_dir_model_gives_the_checkpoint_results(folder, ckpt, reference, tmp_path):
    save_pretrained(reference.model, tmp_path / "saved")
    from_ckpt = _run(_folder_args(folder, ckpt), tmp_path)["metrics"]
    argv = [a for a in _folder_args(folder, ckpt) if a not in ("--pretrained", str(ckpt))]
    argv[argv.index(MODEL)] = f"local-dir:{tmp_path / 'saved'}"
    assert _run(argv, tmp_path)["metrics"] == from_ckpt


def test_baseline_clip_model_and_slots_refused(folder, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "clip.pt", "test-CLIP")
    argv = [a if a != MODEL else "test-CLIP" for a in _folder_args(folder, ckpt)]
    result = _run(argv, tmp_path)
    ref = Reference(ckpt, "test-CLIP")
    paths = [p for name in sorted(CLASSES) for p in sorted((folder / "data" / name).glob("*.png"))]
    labels = np.repeat(np.arange(len(CLASSES)), [CLASSES[c] for c in sorted(CLASSES)])
    expected = topk_metrics(
        ref.images(paths) @ ref.classifier([f"small {c}" for c in CLASSES], TEMPLATES).T, labels
    )
    assert result["metrics"]["folder"]["top1"] == pytest.approx(expected["top1"])
    assert result["num_slots"] is None
    assert cli.main([*argv, "--slots", "0"]) == 2
    assert "not a SPARO model" in capsys.readouterr().err


def _timm_lines(name):
    return pkgutil.get_data("timm.data", f"_info/{name}").decode().split()


@pytest.mark.parametrize("variant", ["imagenet-r", "imagenet-a"])
def test_subset_positions_match_timm_index_lists(variant):
    wnids, index = imagenet_subset(variant)
    key = variant.split("-")[1]
    assert list(wnids) == _timm_lines(f"imagenet_{key}_synsets.txt")
    assert list(index) == [int(i) for i in _timm_lines(f"imagenet_{key}_indices.txt")]  # independent list
    if variant == "imagenet-r":
        assert open_clip.IMAGENET_CLASSNAMES[index[0]] == "goldfish"  # n01443537


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """Tiny copies of each ImageNet variant's layout, and the expected (class index among 1000 / 200) labels."""
    root = tmp_path_factory.mktemp("imagenet")
    r_wnids, a_wnids = _timm_lines("imagenet_r_synsets.txt"), _timm_lines("imagenet_a_synsets.txt")
    layouts = {
        "imagenet-val": {"n01440764": 2, "n01443537": 1, "n15075141": 2},
        "imagenet-v2": {"0": 1, "1": 2, "999": 1},
        "imagenet-sketch": {"n01443537": 1, "n02085620": 2},
        "imagenet-r": {r_wnids[0]: 2, r_wnids[100]: 1, r_wnids[199]: 1},
        "imagenet-a": {a_wnids[3]: 1, a_wnids[150]: 2},
    }
    for i, (variant, counts) in enumerate(layouts.items()):
        class_folder(root / variant, counts, seed=i + 1)
    write_lines(root / "templates.txt", ["a photo of a {c}."])
    return root, layouts


def test_imagenet_variants_pick_the_right_logits(imagenet, ckpt, reference, tmp_path):
    root, layouts = imagenet
    flags = [x for v in layouts for x in (f"--{v}", str(root / v))]
    argv = ["zeroshot", "--model", MODEL, "--pretrained", str(ckpt), "--workers", "0", *flags]
    argv += ["--templates", str(root / "templates.txt")]
    result = _run(argv, tmp_path)
    args = cli.build_parser().parse_args(argv)
    caches = zeroshot.encode(load_context(ModelSpec.from_args(args)), zeroshot.prepare(args))
    wnids = _timm_lines("imagenet_synsets.txt")
    full = reference.classifier(open_clip.IMAGENET_CLASSNAMES, ["a photo of a {c}."])  # (1000, D)
    for variant, counts in layouts.items():
        names = sorted(counts)
        if variant in ("imagenet-r", "imagenet-a"):
            key = variant.split("-")[1]
            subset_wnids = _timm_lines(f"imagenet_{key}_synsets.txt")
            rows = [int(i) for i in _timm_lines(f"imagenet_{key}_indices.txt")]
            labels = [subset_wnids.index(n) for n in names for _ in range(counts[n])]
        else:
            rows = list(range(1000))
            to_index = (lambda n: int(n)) if variant == "imagenet-v2" else wnids.index
            labels = [to_index(n) for n in names for _ in range(counts[n])]
        paths = [p for n in names for p in sorted((root / variant / n).glob("*.png"))]
        logits = reference.images(paths) @ full[rows].T
        cache = caches[variant]
        assert cache.labels.tolist() == labels
        np.testing.assert_allclose(cache.logits().numpy(), logits, atol=1e-5)
        got = result["metrics"][variant]
        assert got["num_classes"] == len(rows)
        for k, v in topk_metrics(logits, np.array(labels)).items():
            assert got[k] == pytest.approx(v)


def _bad_layouts(tmp):
    """(name, argv data part, expected message) for each wrong layout."""
    write_lines(tmp / "two.txt", ["a", "b"])
    write_lines(tmp / "three.txt", ["a", "b", "c"])
    write_lines(tmp / "tpl.txt", ["a photo of a {c}", "a photo of a {}"])
    class_folder(tmp / "ok", {"a": 1, "b": 1, "c": 1})
    noise_image(tmp / "loose" / "x.png", 1)
    noise_image(tmp / "loose" / "y.png", 2)
    class_folder(tmp / "empty", {"a": 1, "b": 0})
    class_folder(tmp / "val", {"n01440764": 1, "cats": 1})
    class_folder(tmp / "v2", {"0": 1, "1000": 1})
    class_folder(tmp / "r", {"n01440764": 1})  # tench: an ImageNet class, not one of ImageNet-R's 200
    return [
        ("missing", ["--data", str(tmp / "nope"), "--classnames", str(tmp / "two.txt")], "no such directory"),
        ("loose", ["--data", str(tmp / "loose"), "--classnames", str(tmp / "two.txt")], "2 images lie directly"),
        ("count", ["--data", str(tmp / "ok"), "--classnames", str(tmp / "two.txt")], "lists 2 class names but"),
        ("template", ["--data", str(tmp / "ok"), "--classnames", str(tmp / "three.txt"), "--templates", str(tmp / "tpl.txt")], "must contain {c}"),
        ("empty", ["--data", str(tmp / "empty"), "--classnames", str(tmp / "two.txt")], "without images (b)"),
        ("pairing", ["--data", str(tmp / "ok")], "--data and --classnames go together"),
        ("val", ["--imagenet-val", str(tmp / "val")], "cats are not ImageNet-1k wnids"),
        ("v2", ["--imagenet-v2", str(tmp / "v2")], "1000 are not class indices 0..999"),
        ("r", ["--imagenet-r", str(tmp / "r")], "n01440764 are not the 200 wnids of imagenet-r"),
        ("nodata", [], "no data"),
    ]  # fmt: skip


def test_wrong_layouts_give_clear_errors(tmp_path, capsys):
    for name, data_args, message in _bad_layouts(tmp_path):
        rc = cli.main(["zeroshot", "--model", MODEL, "--workers", "0", *data_args])
        err = capsys.readouterr().err
        assert rc == 2, name
        assert message in err, (name, err)


def test_bad_slots_are_refused(folder, ckpt, tmp_path, capsys):
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps({"selected_slots": [0, 1], "num_slots": 64}))
    for value, message in [
        ("0,9", "out of range"),
        ("sel.jsn", "no such file, and not a comma-separated list"),
        (str(sel), "64 slots"),
    ]:
        assert cli.main(_folder_args(folder, ckpt, "--slots", value)) == 2
        assert message in capsys.readouterr().err
