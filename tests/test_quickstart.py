"""A shortened end-to-end quickstart: data, two torchrun trainings, every evaluation, report and pictures."""

import json
import re

import pytest

from sparo_clip import quickstart


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qs")
    argv = ["--small", "--minutes", "0.01", "--max-steps", "2", "--batch-size", "16"]
    argv += ["--out", str(root / "out"), "--data", str(root / "data")]
    assert quickstart.main(argv) == 0
    return root, argv


def test_report_states_measured_numbers_for_both_models(run):
    root, _ = run
    out = root / "out"
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["runs"]) == {"CLIP", "SPARO"}
    assert summary["runs"]["CLIP"]["steps"] == summary["runs"]["SPARO"]["steps"] == 2  # the same budget
    assert summary["runs"]["SPARO"]["parameters"] <= summary["runs"]["CLIP"]["parameters"]
    report = (out / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    for name in ("CLIP", "SPARO", "untrained"):
        res = summary["results"][name]
        for key, label in (
            ("zeroshot_seen", "zero-shot top-1, seen compositions"),
            ("zeroshot_unseen", "zero-shot top-1, unseen compositions"),
        ):
            assert 0.0 <= res[key]["top1"] <= 1.0
            row = next(v for k, v in rows.items() if k.startswith(label))
            assert f"{res[key]['top1']:.3f}" in row
        assert set(res["sugarcrepe"]) >= {
            "swap_att",
            "swap_obj",
            "replace_att",
            "replace_obj",
            "add_obj",
            "mean",
        }
        assert "image_to_text_R@1" in res["retrieval"]
        # the numbers come from the eval commands' own JSON files
        own = json.loads((out / "eval" / name / "sugarcrepe.json").read_text())["metrics"]
        assert own["mean"] == res["sugarcrepe"]["mean"]
    assert re.search(r"\| compositionality swap_att \(chance 0.5\) \|", report)
    pictures = summary["pictures"]
    assert pictures and all(p.endswith(".png") for p in pictures)
    from PIL import Image

    with Image.open(pictures[0]) as im:
        assert im.size[0] > 200 and im.getextrema() != ((0, 0), (0, 0), (0, 0))


def test_rerun_reuses_data_and_training(run, caplog):
    import logging

    root, argv = run
    ckpt = root / "out" / "logs" / "SPARO" / "checkpoints" / "epoch_1.pt"
    stamp = ckpt.stat().st_mtime_ns
    caplog.set_level(logging.INFO)
    assert quickstart.main(argv) == 0
    assert ckpt.stat().st_mtime_ns == stamp
    assert "reusing" in caplog.text and "up to date" in caplog.text


def test_plan_steps_gives_both_models_the_same_steps():
    assert quickstart.plan_steps(2.0, {"a": 1.0, "b": 2.0}, min_steps=1, max_steps=None) == 40
    assert quickstart.plan_steps(0.01, {"a": 1.0, "b": 2.0}, min_steps=5, max_steps=None) == 5
    assert quickstart.plan_steps(10, {"a": 1.0}, min_steps=5, max_steps=7) == 7
