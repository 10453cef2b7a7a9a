"""sparo-clip eval retrieval: R@k on CSV and webdataset pairs, against explicit ranking."""

import json

import numpy as np
import pytest
import torch

from sparo_clip.eval import cli
from sparo_clip.eval.retrieval import recall_metrics

from .eval_helpers import (
    MODEL,
    Reference,
    noise_image,
    png_bytes,
    recall_reference,
    save_checkpoint,
    write_csv,
    write_tar,
)

WORDS = [
    "red",
    "blue",
    "green",
    "tiny",
    "huge",
    "striped",
    "dotted",
    "shiny",
    "dull",
    "bright",
    "dark",
    "pale",
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "test-SPARO.pt")


@pytest.fixture(scope="module")
def reference(ckpt):
    return Reference(ckpt)


def _run(argv, tmp_path):
    out = tmp_path / "result.json"
    assert cli.main([*argv, "--output", str(out)]) == 0
    return json.loads(out.read_text())


def _base(ckpt):
    return ["retrieval", "--model", MODEL, "--pretrained", str(ckpt), "--workers", "0", "--batch-size", "4"]


def test_recall_metrics_on_hand_built_similarities():
    # 3 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.0],  # image 0: own caption 1 ranks first
            [0.8, 0.0, 0.3, 0.9],  # image 1: own caption 2 ranks third
            [0.0, 0.1, 0.2, 0.3],  # image 2: own caption 3 ranks first
        ]
    )
    m = recall_metrics(sim, torch.tensor([0, 0, 1, 2]))
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@5"] == 1.0
    # caption 0: image 1 (0.8) beats image 0 -> rank 2; caption 1: first; caption 2: image 0 beats -> rank 2;
    # caption 3: image 1 beats -> rank 2
    assert m["text_to_image_R@1"] == pytest.approx(1 / 4)
    assert m["text_to_image_R@5"] == 1.0
    assert m["mean_recall"] == pytest.approx((2 / 3 + 1 + 1 + 1 / 4 + 1 + 1) / 6)


def test_csv_pairs_with_several_captions_per_image(ckpt, reference, tmp_path):
    for i in range(12):
        noise_image(tmp_path / "img" / f"{i}.png", 100 + i)
    rows, text_image = [], []
    for i in range(12):
        for j in range(1 + i % 3):  # 1 to 3 captions per image, rows interleaved
            rows.append((f"img/{i}.png", f"a {WORDS[i]} {WORDS[(i + j + 3) % 12]} thing"))
            text_image.append(i)
    order = np.random.default_rng(0).permutation(len(rows))
    rows, text_image = [rows[k] for k in order], [text_image[k] for k in order]
    csv_path = write_csv(tmp_path / "pairs.csv", rows)
    result = _run([*_base(ckpt), "--csv", str(csv_path)], tmp_path)
    # images in order of first appearance in the CSV
    first = list(dict.fromkeys(r[0] for r in rows))
    sim = reference.images([tmp_path / p for p in first]) @ reference.texts([r[1] for r in rows]).T
    ti = np.array([first.index(r[0]) for r in rows])
    got = result["metrics"]
    assert got["num_images"] == 12 and got["num_texts"] == len(rows)
    for k in (1, 5, 10):
        i2t, t2i = recall_reference(sim, ti, k)
        assert got[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert got[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert 0 < got["image_to_text_R@1"] < 1 or 0 < got["text_to_image_R@1"] < 1  # informative data


@pytest.mark.parametrize("workers", ["0", pytest.param("2", marks=pytest.mark.slow)])
def test_webdataset_shards_and_slots(ckpt, reference, tmp_path, workers):
    samples = [
        (f"{i:04d}", {"png": png_bytes(200 + i), "txt": f"a {WORDS[i]} blob\nthe {WORDS[i]} one".encode()})
        for i in range(10)
    ]
    write_tar(tmp_path / "shards" / "0.tar", samples[:6])
    write_tar(tmp_path / "shards" / "1.tar", samples[6:])
    pattern = str(tmp_path / "shards" / "{0..1}.tar")
    result = _run([*_base(ckpt), "--wds", pattern, "--slots", "1,3", "--workers", workers], tmp_path)
    for i in range(10):
        (tmp_path / "ref").mkdir(exist_ok=True)
        (tmp_path / "ref" / f"{i}.png").write_bytes(png_bytes(200 + i))
    img = reference.images([tmp_path / "ref" / f"{i}.png" for i in range(10)], slots=[1, 3])
    captions = [c for i in range(10) for c in (f"a {WORDS[i]} blob", f"the {WORDS[i]} one")]
    sim = img @ reference.texts(captions, slots=[1, 3]).T
    ti = np.repeat(np.arange(10), 2)
    assert result["metrics"]["num_texts"] == 20 and result["slots"] == [1, 3]
    for k in (1, 5, 10):
        i2t, t2i = recall_reference(sim, ti, k)
        assert result["metrics"][f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert result["metrics"][f"text_to_image_R@{k}"] == pytest.approx(t2i)


def test_bad_retrieval_data_gives_clear_errors(ckpt, tmp_path, capsys):
    noise_image(tmp_path / "a.png", 1)
    write_csv(tmp_path / "ok.csv", [("a.png", "x")])
    write_csv(tmp_path / "missing.csv", [("a.png", "x"), ("b.png", "y")])
    write_csv(tmp_path / "comma.csv", [("a.png", "x")], sep=",")
    write_tar(tmp_path / "notxt.tar", [("k0", {"png": png_bytes(1)})])
    cases = [
        (["--csv", str(tmp_path / "missing.csv")], "1 image file(s) not found"),
        (["--csv", str(tmp_path / "comma.csv")], "no column(s) ['filepath', 'title']"),
        (["--csv", str(tmp_path / "ok.csv"), "--csv-img-key", "path"], "no column(s) ['path']"),
        (["--wds", str(tmp_path / "{0..1}.tar")], "2 of 2 shard(s) not found"),
        (["--wds", str(tmp_path / "notxt.tar")], "has no .txt caption"),
        ([], "give --wds SHARDS or --csv FILE"),
    ]
    for data_args, message in cases:
        assert cli.main([*_base(ckpt), *data_args]) == 2
        assert message in capsys.readouterr().err, message
    # a comma CSV reads with the right separator (given as an escape or as the character)
    assert cli.main([*_base(ckpt), "--csv", str(tmp_path / "comma.csv"), "--csv-separator", ","]) == 0
