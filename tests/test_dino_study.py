"""The DINO recipe search's logic with stand-in candidates: one setting at a time, a value kept only where both
twins learn, and the learning rate's grid extended past a winning edge so that the choice is bracketed."""

import argparse
import json
import math
from dataclasses import replace

import pytest
import torch

from benchmarks import dino_study
from sparo_clip.dino import quickstart as qs


def _fake_candidates(best_lr: float, learns=lambda budget: True):
    tried = []

    def candidates(args, budgets):
        out = []
        for b in budgets:
            tried.append(b)
            score = (
                50
                - 10 * abs(math.log2(b.lr / best_lr))
                + (5 if b.momentum == 0.996 else 0)
                + (3 if b.teacher_temp == 0.07 else 0)
            )
            out.append({"twins": {}, "score": score, "both_learn": learns(b)})
        return out

    return candidates, tried


def _args():
    return argparse.Namespace(tune_seed=1000, out="unused")


def test_a_learning_rate_that_wins_at_the_grids_edge_is_bracketed(monkeypatch):
    candidates, tried = _fake_candidates(best_lr=4e-4)  # below the grid (1e-3, 2e-3, 4e-3)
    monkeypatch.setattr(dino_study, "candidates", candidates)
    state = dino_study.search(_args(), qs.Budget())
    lr_step = next(s for s in state["steps"] if s["field"] == "lr")
    assert [float(v) for v in lr_step["values"]] == [2e-3, 1e-3, 4e-3, 5e-4, 2.5e-4]  # 1e-3 won, then 5e-4
    assert lr_step["chosen"] == 5e-4 and state["budget"]["lr"] == 5e-4  # beaten on both sides: bracketed
    assert state["budget"]["momentum"] == 0.996  # the other settings are searched as before
    assert sum(b.lr == 2.5e-4 for b in tried) == 1  # each value trained once


def test_an_interior_winner_is_not_extended_and_values_where_a_twin_fails_are_not_chosen(monkeypatch):
    candidates, _ = _fake_candidates(best_lr=2e-3, learns=lambda b: b.teacher_temp != 0.07)
    monkeypatch.setattr(dino_study, "candidates", candidates)
    state = dino_study.search(_args(), qs.Budget())
    lr_step = next(s for s in state["steps"] if s["field"] == "lr")
    assert [float(v) for v in lr_step["values"]] == [2e-3, 1e-3, 4e-3] and lr_step["chosen"] == 2e-3
    temp_step = next(s for s in state["steps"] if s["field"] == "teacher_temp")
    assert temp_step["chosen"] == 0.04  # 0.07 scores higher, but a twin does not learn with it


def test_extensions_stop_after_the_limit(monkeypatch):
    candidates, _ = _fake_candidates(best_lr=1e-6)  # far below: still at the edge after every extension
    monkeypatch.setattr(dino_study, "candidates", candidates)
    state = dino_study.search(_args(), qs.Budget())
    lr_step = next(s for s in state["steps"] if s["field"] == "lr")
    assert len(lr_step["values"]) == 3 + dino_study.MAX_EXTENSIONS and lr_step["chosen"] == 2.5e-4


def test_the_teacher_temperature_warm_up_is_searched_as_one_setting_of_two_fields(monkeypatch):
    def sharper_start_wins(args, budgets):
        return [{"twins": {}, "score": 50 + (4 if (b.warmup_teacher_temp, b.warmup_teacher_temp_epochs) == (0.02, 3)
                                               else 0), "both_learn": True} for b in budgets]  # fmt: skip

    monkeypatch.setattr(dino_study, "candidates", sharper_start_wins)
    state = dino_study.search(_args(), qs.Budget())
    step = next(s for s in state["steps"] if s["field"] == "teacher_temp_warmup")
    assert list(step["values"]) == ["[0.04, 0]", "[0.02, 3]"] and step["start"] == (0.04, 0)
    assert (state["budget"]["warmup_teacher_temp"], state["budget"]["warmup_teacher_temp_epochs"]) == (
        0.02,
        3,
    )
    assert state["budget"]["teacher_temp"] == qs.Budget().teacher_temp  # the temperature itself is untouched
    for r in (r for s in state["steps"] for r in s["values"].values()):  # what the docs table reads of a row
        r["twins"] = {
            t: {"knn": 0.5, "knn_init": 0.3, "information": 1.0} for t in ("CLS-DINO", "SPARO-DINO")
        }
    block = dino_study.search_block({"search": state})
    assert "| teacher_temp_warmup | none |" in block
    assert "| teacher_temp_warmup | from 0.02 over 3 epochs |" in block and block.count("**yes**") == len(
        state["steps"]
    )
    assert "teacher_temp_warmup from 0.02 over 3 epochs." in block
    # the study's JSON round trip keeps the chosen row marked
    import json

    again = json.loads(json.dumps({"search": state}))
    assert dino_study.search_block(again) == block


def _lever_candidates(gains: dict[str, tuple[float | None, float]]):
    """Stand-in runs: linear shape 0.33125 untrained; trained = untrained + the lever's (CLS, SPARO) gain (0.02
    for the levers not named; None: a world without a shape probe)."""

    def candidates(args, budgets):
        out = []
        base = budgets[0]  # the levers come in LEVERS order, the recipe first
        for b in budgets:
            name = next(n for n, change in dino_study.LEVERS if replace(base, **change(base)) == b)
            twins = {}
            for twin, gain in zip(("CLS-DINO", "SPARO-DINO"), gains.get(name, (0.02, 0.02)), strict=True):
                shape = None if gain is None else torch.tensor(0.33125 + gain).float().item()
                twins[twin] = {"knn": 0.5, "knn_init": 0.3, "linear": 0.4, "linear_init": 0.35,
                               "linear_shape": shape, "linear_shape_init": 0.33125, "information": 1.0}  # fmt: skip
            out.append({"twins": twins, "score": 0.5, "both_learn": True})
        return out

    return candidates


def test_the_lever_screen_applies_its_rule_and_says_plainly_when_nothing_met_it(monkeypatch):
    monkeypatch.setattr(dino_study, "candidates", _lever_candidates({}))
    budget = qs.Budget(epochs=10, lr=5e-4)
    state = {"levers": dino_study.levers(_args(), budget)}
    rows = state["levers"]["rows"]
    assert list(rows) == [name for name, _ in dino_study.LEVERS]
    # every lever is relative to the recipe it is given
    assert rows["twice the steps"]["change"] == {"epochs": 20} and rows["4x the learning rate"]["change"] == {
        "lr": 2e-3
    }
    assert not any(r["lifts_shape"] for r in rows.values())  # +2 points is below the rule
    block = dino_study.levers_block(state)
    assert "No lever met the rule on this seed." in block and "| twice the steps | 35.1 (33.1) |" in block
    assert (
        "shape (4 classes, chance 25) and on the 24 colour-shape classes" in block
    )  # from the world's vocabulary
    assert block.startswith(f"Written by `{dino_study.EARLIER}`")  # no call recorded in this state
    del state["levers"]["world"]  # a study saved before the world was recorded still renders
    assert dino_study.levers_block(state) == block


def test_a_lever_lifts_shape_only_when_both_twins_rise_by_ten_points_exactly_ten_included(monkeypatch):
    gains = {
        "twice the local crops": (0.10, 0.10),
        "twice the steps": (0.30, 0.05),
        "4x the learning rate": (0.0999, 0.2),
    }
    monkeypatch.setattr(dino_study, "candidates", _lever_candidates(gains))
    state = {"levers": dino_study.levers(_args(), qs.Budget())}
    assert [n for n, r in state["levers"]["rows"].items() if r["lifts_shape"]] == ["twice the local crops"]
    assert "Levers that met the rule on this seed: twice the local crops." in dino_study.levers_block(state)


def test_a_world_without_a_shape_probe_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(dino_study, "candidates", _lever_candidates({"twice the steps": (None, 0.1)}))
    with pytest.raises(RuntimeError, match="no shape probe"):
        dino_study.levers(_args(), qs.Budget())


def test_each_block_names_the_call_that_computed_its_stage(monkeypatch, tmp_path):
    monkeypatch.setattr(dino_study, "candidates", _lever_candidates({}))
    recipe = qs.Budget(epochs=7)
    monkeypatch.setattr(qs, "load_budget", lambda path=None: (recipe, "recipe"))
    out = tmp_path / "cache"
    assert dino_study.main(["--stage", "levers", "--out", str(out)]) == 0
    state = json.loads((out / "study.json").read_text())
    assert state["levers"]["command"] == f"python -m benchmarks.dino_study --stage levers --out {out}"
    assert state["levers"]["budget"]["epochs"] == 7  # the recipe the job runs, not the search's start
    assert dino_study.levers_block(state).startswith(f"Written by `{state['levers']['command']}`")


def test_an_out_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert dino_study.main(["--stage", "levers", "--out", str(blocker / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dino-study: error: --out") and "is a file" in err and len(err.splitlines()) == 1
    assert not (blocker.parent / "cache").exists()
