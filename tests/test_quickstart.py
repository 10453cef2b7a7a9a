"""The main job end to end at toy scale: worlds per seed, two torchrun trainings per seed, evaluations with their
controls, per-run intervals, the comparison over seeds, the report."""

import json
import math

import pytest

from sparo_clip.commands import quickstart
from sparo_clip.experiment import recipe as recipe_mod
from sparo_clip.experiment.metrics import PRIMARY, SECONDARY
from sparo_clip.experiment.stats import t_interval


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qs")
    toy = recipe_mod.Recipe(epochs=3, lr={"CLIP": 1e-3, "SPARO": 2e-3}, batch_size=16, measured_by="a test")
    recipe_mod.write(toy, root / "recipe.json")
    mp = pytest.MonkeyPatch()
    mp.setattr(recipe_mod, "RECIPE_FILE", root / "recipe.json")
    argv = [
        "--small",
        "--seeds",
        "2",
        "--epochs",
        "3",
        "--out",
        str(root / "out"),
        "--data",
        str(root / "data"),
    ]
    try:
        assert quickstart.main(argv) == 0
    finally:
        mp.undo()
    return root, json.loads((root / "out" / "results.json").read_text())


@pytest.mark.slow  # two seeds x two torchrun trainings
def test_every_seed_is_its_own_world_with_its_own_held_out_pairs(run):
    root, summary = run
    seeds = summary["seeds"]
    assert set(seeds) == {"0", "1"}
    assert seeds["0"]["held_out"] != seeds["1"]["held_out"]
    for seed, r in seeds.items():
        world = json.loads((root / "data" / f"world-{seed}" / "dataset.json").read_text())
        assert world["held_out"] == r["held_out"] and world["settings"]["world"]["seed"] == int(seed)
        for label in ("CLIP", "SPARO"):
            run_ = r["runs"][label]
            assert (
                run_["settings"]["seed"] == int(seed)
                and run_["settings"]["lr"] == {"CLIP": 1e-3, "SPARO": 2e-3}[label]
            )
            assert [p["epoch"] for p in run_["curve"]] == [1, 2, 3]  # validation after every epoch


@pytest.mark.slow
def test_comparison_is_the_paired_t_interval_of_the_per_seed_differences(run):
    root, summary = run
    for label in (*PRIMARY, *SECONDARY):
        a = [summary["seeds"][s]["metrics"]["CLIP"][label] for s in ("0", "1")]
        b = [summary["seeds"][s]["metrics"]["SPARO"][label] for s in ("0", "1")]
        c = summary["comparison"][label]
        assert c["a"] == a and c["b"] == b
        if any(v is None or math.isnan(v) for v in a + b):
            continue
        iv = t_interval([y - x for x, y in zip(a, b, strict=True)])
        assert c["diff"]["mean"] == pytest.approx(iv.mean) and c["diff"]["low"] == pytest.approx(iv.low)
    # each seed's metric is the eval command's own number
    own = json.loads((root / "out" / "eval" / "seed1" / "SPARO" / "compositional.json").read_text())[
        "metrics"
    ]
    assert summary["seeds"]["1"]["metrics"]["SPARO"]["compositional zero-shot AUC"] == own["auc"]


@pytest.mark.slow
def test_report_opens_plainly_and_shows_controls_curves_and_intervals(run):
    root, summary = run
    report = (root / "out" / "report.md").read_text()
    opening = report.split("\n\n")[1]
    assert "clean binding test" in opening and "compositional zero-shot" in opening and "2 seed(s)" in opening
    assert "cannot say" in opening
    assert (
        report.index("## Primary metrics")
        < report.index("## Secondary metrics")
        < report.index("## Controls")
    )
    assert "Holm" in report and "*(oracle)*" in report
    assert (root / "out" / "validation_curves.png").is_file() and "plateau" in report
    for r in summary["seeds"].values():  # mirrored sets: the text-only reader sits at 0.5 everywhere
        for tasks in r["text_only"].values():
            for groups in tasks.values():
                assert all(g["accuracy"] == 0.5 for g in groups.values())
        for label in ("CLIP", "SPARO"):
            for metric, iv in r["intervals"][label].items():
                if iv["mean"] is not None and not math.isnan(iv["mean"]) and iv["low"] is not None:
                    assert iv["low"] - 1e-9 <= iv["mean"] <= iv["high"] + 1e-9, metric
    assert summary["slot_selection"]["data"]["root"].endswith("sugarcrepe_val")
    assert set(summary["untrained"]) == set(PRIMARY) | set(SECONDARY)


@pytest.mark.slow
def test_report_reads_the_curves_against_their_ceiling_and_says_when_runs_were_still_improving(run):
    from sparo_clip.commands.quickstart_report import opening, plateau_verdicts
    from sparo_clip.experiment.stats import Plateau

    root, summary = run
    report = (root / "out" / "report.md").read_text()
    assert "| content ceiling |" in report
    for r in summary["seeds"].values():
        assert 0 < r["val_ceiling"] <= 1
    verdicts = plateau_verdicts(summary)
    rising = {k: Plateau(False, 0.1, 1 / 3, 0.02) for k in verdicts}
    flat = {k: Plateau(True, 0.0, 1 / 3, 0.02) for k in verdicts}
    assert "were still improving" in opening(summary, rising, []) and "docs/study.md" in opening(
        summary, rising, []
    )
    assert "were still improving" not in opening(summary, flat, [])


@pytest.mark.slow
def test_rerun_reuses_worlds_and_trainings(run, caplog):
    root, summary = run
    mp = pytest.MonkeyPatch()
    mp.setattr(recipe_mod, "RECIPE_FILE", root / "recipe.json")
    try:
        with caplog.at_level("INFO"):
            argv = [
                "--small",
                "--seeds",
                "1",
                "--epochs",
                "3",
                "--out",
                str(root / "out"),
                "--data",
                str(root / "data"),
            ]
            assert quickstart.main([*argv, "--no-select-slots"]) == 0
    finally:
        mp.undo()
    assert "up to date: reusing it" in caplog.text and "CLIP-seed0: reusing" in caplog.text


def test_bad_options_are_one_line_before_any_work(tmp_path, capsys):
    assert quickstart.main(["--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--seeds 0 is not valid" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    missing = tmp_path / "none.json"
    mp = pytest.MonkeyPatch()
    mp.setattr(recipe_mod, "RECIPE_FILE", missing)
    try:
        assert quickstart.main(["--out", str(tmp_path / "o")]) == 2
    finally:
        mp.undo()
    assert "benchmarks.study --write-recipe" in capsys.readouterr().err
