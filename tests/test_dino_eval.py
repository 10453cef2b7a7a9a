"""kNN and linear probes: against a float64 reference, on separable and on label-free features, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparo_clip.eval import cli as eval_cli
from sparo_clip.eval.knn import accuracy, knn_scores
from sparo_clip.eval.linear import linear_probe

from .eval_helpers import class_folder, save_checkpoint


def knn_reference(train, train_labels, test, k, temperature, num_classes):
    """Weighted vote written from the equations, one test point at a time, in float64 (numpy)."""
    train = train.double().numpy()
    test = test.double().numpy()
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = np.zeros((len(test), num_classes))
    for m, x in enumerate(test):
        sims = [float(np.dot(x, f)) for f in train]
        order = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        for i in order:
            out[m, int(train_labels[i])] += np.exp(sims[i] / temperature)
    return out


def clusters(n_per_class: int, num_classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_float64_reference(k):
    train, y = clusters(8, 4, 6, spread=2.0, seed=0)
    test, _ = clusters(3, 4, 6, spread=2.0, seed=1)
    got = knn_scores(train, y, test, k, temperature=0.07, num_classes=4, chunk=5)
    ref = knn_reference(train, y, test, k, 0.07, 4)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-4)
    assert (got.argmax(-1).numpy() == ref.argmax(-1)).all()


def test_knn_and_linear_perfect_on_separable_clusters_and_chance_on_shuffled_labels():
    train, y = clusters(20, 5, 16, spread=0.05, seed=0)
    test, y_test = clusters(10, 5, 16, spread=0.05, seed=0)  # same centres, other noise
    test = test + 0.05 * torch.randn_like(test)
    assert accuracy(knn_scores(train, y, test, 10, 0.07, 5), y_test) == 1.0
    scores, info = linear_probe(train, y, test, 5)
    assert accuracy(scores, y_test) == 1.0 and "wd" in info
    # labels unrelated to the features: both probes fall to about chance (0.2)
    g = torch.Generator().manual_seed(3)
    noise_train, noise_test = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    ry, ry_test = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (200,), generator=g)
    assert accuracy(knn_scores(noise_train, ry, noise_test, 20, 0.07, 5), ry_test) < 0.4
    assert accuracy(linear_probe(noise_train, ry, noise_test, 5)[0], ry_test) < 0.4


def test_knn_rejects_bad_parameters():
    with pytest.raises(ValueError, match="k must be"):
        knn_scores(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(1, 2), 0)


def _dino_checkpoint(path):
    from sparo_clip.dino import DinoNet, load_config

    cfg = load_config("tiny_sparo_dino")
    net = DinoNet(cfg)
    torch.save({"dino_cfg": cfg.to_dict(), "teacher": net.state_dict(), "student": net.state_dict()}, path)
    return path


@pytest.mark.parametrize("task", ["knn", "linear"])
def test_eval_cli_on_openclip_and_dino_encoders(tmp_path, capsys, task):
    train = class_folder(tmp_path / "train", {"a": 4, "b": 4})
    val = class_folder(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
    extra = ["--k", "1,3"] if task == "knn" else ["--wd", "0.01", "--max-iter", "20"]
    common = [
        task,
        "--train",
        str(train),
        "--val",
        str(val),
        "--workers",
        "0",
        "--cache-dir",
        str(tmp_path / "c"),
    ]
    ckpt = save_checkpoint(tmp_path / "clip.pt")
    out = tmp_path / "clip.json"
    assert (
        eval_cli.main(
            [
                *common,
                *extra,
                "--model",
                "test-SPARO",
                "--pretrained",
                str(ckpt),
                "--slots",
                "0,1",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["task"] == task and res["slots"] == [0, 1] and res["data"]["num_val"] == 4
    dino = _dino_checkpoint(tmp_path / "dino.pt")
    out = tmp_path / "dino.json"
    assert eval_cli.main([*common, *extra, "--model", f"dino:{dino}", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    metrics = res["metrics"]["k=3"] if task == "knn" else res["metrics"]
    assert 0.0 <= metrics["top1"] <= 1.0 and set(metrics["per_class_top1"]) == {"a", "b"}
    cached = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(cached) == 4  # train + val features of both models
    assert eval_cli.main([*common, *extra, "--model", f"dino:{dino}", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"] == res["metrics"]  # read back from the cache


def test_eval_cli_bad_folder_is_one_line_before_loading(tmp_path, capsys):
    train = class_folder(tmp_path / "train", {"a": 2})
    val = class_folder(tmp_path / "val", {"zzz": 1})
    rc = eval_cli.main(["knn", "--model", "dino:missing.pt", "--train", str(train), "--val", str(val)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "zzz" in err[0]
    rc = eval_cli.main(
        ["knn", "--model", "dino:missing.pt", "--train", str(train), "--val", str(train), "--cache-dir", ""]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "missing.pt" in err[-1] and "does not exist" in err[-1]
