"""A shortened end-to-end quickstart: data, two torchrun trainings, every evaluation, report and pictures."""

import json
import logging

import pytest
import torch

from sparo_clip.commands import quickstart
from sparo_clip.commands.quickstart_report import HEADLINE, headline


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qs")
    argv = ["--small", "--steps", "2", "--batch-size", "16"]
    argv += ["--out", str(root / "out"), "--data", str(root / "data")]
    assert quickstart.main(argv) == 0
    return root, argv


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_report_leads_with_measured_differences_for_both_models(run):
    root, _ = run
    out = root / "out"
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["runs"]) == {"CLIP", "SPARO"}
    assert summary["runs"]["CLIP"]["steps"] == summary["runs"]["SPARO"]["steps"] == summary["steps"] == 2
    assert summary["runs"]["SPARO"]["parameters"] <= summary["runs"]["CLIP"]["parameters"]
    assert summary["wall_seconds"] > 0 and summary["step_times"] is None  # a fixed budget: nothing timed
    report = (out / "report.md").read_text()
    lead = report.split("## Summary: SPARO − CLIP", 1)[1].split("\n\n| model")[0]
    clip, sparo = headline(summary["results"]["CLIP"]), headline(summary["results"]["SPARO"])
    for label in HEADLINE:
        d = summary["summary"][label]
        # the bootstrap's value on all items is the eval command's own number
        assert d["a"] == pytest.approx(clip[label]) and d["b"] == pytest.approx(sparo[label])
        assert d["low"] <= d["diff"] + 1e-9 and d["diff"] <= d["high"] + 1e-9
        line = next(x for x in lead.splitlines() if x.startswith(f"- {label}: SPARO − CLIP = "))
        assert f"{d['diff']:+.3f} ± {(d['high'] - d['low']) / 2:.3f}" in line
    assert "top-5" not in report and "top5" not in report
    for name in ("CLIP", "SPARO", "untrained", "SPARO-selected"):
        res = summary["results"][name]
        assert set(res["sugarcrepe"]["groups"]) == set(res["retrieval"]["groups"]) == {"seen", "novel"}
        own = json.loads((out / "eval" / name / "compositional.json").read_text())["metrics"]
        assert own["auc"] == res["compositional"]["auc"] and own["num_classes"] == 24
    pictures = summary["pictures"]
    assert pictures and all(p.endswith(".png") for p in pictures)


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_slots_are_selected_on_validation_never_on_test(run):
    root, _ = run
    summary = json.loads((root / "out" / "results.json").read_text())
    sel = summary["slot_selection"]
    data = json.loads((root / "data" / "dataset.json").read_text())
    assert sel["data"]["root"] == data["sugarcrepe_val"]["root"]
    assert sel["split"] == {"test_split": data["sugarcrepe"]["root"]}
    assert set(sel["selected_slots"]) <= set(range(sel["num_slots"]))
    chosen = summary["results"]["SPARO-selected"]["sugarcrepe"]["mean"]
    assert chosen == pytest.approx(sel["test"]["selected"])
    assert "## Slot selection" in (root / "out" / "report.md").read_text()


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_rerun_reuses_data_and_training(run, caplog):
    root, argv = run
    ckpt = root / "out" / "logs" / "SPARO" / "checkpoints" / "epoch_1.pt"
    stamp = ckpt.stat().st_mtime_ns
    caplog.set_level(logging.INFO)
    assert quickstart.main([*argv, "--no-select-slots"]) == 0
    assert ckpt.stat().st_mtime_ns == stamp
    assert "reusing" in caplog.text and "up to date" in caplog.text


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_same_settings_train_the_same_weights(run, tmp_path):
    """Same command and seed, same machine: the same model (the quickstart's numbers follow from it)."""
    root, _ = run
    data = json.loads((root / "data" / "dataset.json").read_text())
    cfg = quickstart.TrainCfg("tiny-SPARO", steps=2, batch_size=16)
    first = torch.load(quickstart.train_model(cfg, "again", data, tmp_path)["checkpoint"], weights_only=True)
    reference = root / "out" / "logs" / "SPARO" / "checkpoints" / "epoch_1.pt"
    second = torch.load(reference, weights_only=True)
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key


def test_minutes_prints_the_steps_it_chose_and_bad_budgets_are_refused(capsys):
    steps, times = quickstart.resolve_steps(quickstart.QuickstartCfg(minutes=0.5, batch_size=2))
    assert set(times) == {"CLIP", "SPARO"} and steps == quickstart.plan_steps(0.5, times)
    assert f"-> {steps} steps per model" in capsys.readouterr().out
    assert quickstart.resolve_steps(quickstart.QuickstartCfg(steps=7)) == (7, None)
    assert quickstart.plan_steps(2.0, {"a": 1.0, "b": 2.0}) == 40
    assert quickstart.plan_steps(0.01, {"a": 1.0, "b": 2.0}, min_steps=5) == 5
    assert quickstart.main(["--steps", "0"]) == 2
    assert "--steps 0 is not valid" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lr=0"):
        quickstart.TrainCfg("tiny-SPARO", steps=1, lr=0)
