"""The study's logic with stand-in runs: learning rates bracketed on validation, slot shape on validation, the
recipe and docs written by the code, the comparison over seeds and budgets."""

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import study
from sparo_clip.experiment import recipe as recipe_mod
from sparo_clip.experiment.metrics import PRIMARY, SECONDARY
from sparo_clip.experiment.stats import Interval

ROOT = Path(__file__).resolve().parents[1]
BEST_LR = {"tiny-CLIP": 1e-3, "tiny-SPARO": 9e-3}  # SPARO's best lies past the starting grid's edge


def _val(cfg) -> float:
    """A validation score that peaks at BEST_LR (per model) and at 8 slots; test sets never enter."""
    import math

    score = 0.6 - 0.1 * abs(math.log10(cfg.lr / BEST_LR[cfg.model]))
    if cfg.override:
        score += 0.05 if cfg.override["sparo_cfg"]["num_slots"] == 8 else 0.0
    return score


class FakeRuns:
    def __init__(self):
        self.trained = []
        self.rising = set()  # models whose curves still climb steadily at the end

    def train_runs(self, runs, out, slots=1, evaluated=None):
        out_records = {}
        for label, (cfg, _data) in runs.items():
            self.trained.append((label, cfg))
            final = _val(cfg)
            rising, n = cfg.model in self.rising, cfg.epochs
            curve = [{"epoch": e, "step": 10 * e, "val_r1": final * (e / n if rising else 1 - 0.5 ** (2 * e)),
                      "val_loss": 1.0} for e in range(1, n + 1)]  # fmt: skip
            out_records[label] = {
                "curve": curve,
                "seconds": 1.0,
                "checkpoint": str(out / f"{label}.pt"),
                "steps": 10,
            }
        return out_records

    @staticmethod
    def world_for(seed, root, world, sizes):
        return {"train": {"num_samples": 1280}, "settings": {"seed": seed}}

    @staticmethod
    def evaluate(model, ckpt, data, out, slots=None, reuse=False, override=None):
        ahead = 0.1 if model == "tiny-SPARO" else 0.0
        seed = data["settings"]["seed"]
        value = 0.5 + ahead + 0.01 * seed
        groups = {g: {"mean": value, "swap_att": value} for g in ("seen", "novel")}
        r1 = {"image_to_text_R@1": 0.5, "text_to_image_R@1": 0.5}  # equal for both: no difference
        blank = {g: {"mean": 0.5, "swap_att": 0.5} for g in ("seen", "novel")}  # a caption prior of none
        if "untrained" in str(ckpt):
            value = 0.25  # what an untrained model scores, seen in the doc's untrained rows
            groups = {g: {"mean": value, "swap_att": value} for g in ("seen", "novel")}
        return {"binding": {"groups": groups}, "compositional": {"auc": value, "best_hm": value, "unseen": value,
                "seen": value}, "sugarcrepe": {"groups": groups}, "retrieval": {"groups": {"seen": r1, "novel": r1}},
                "binding_blank": {"groups": blank}, "sugarcrepe_blank": {"groups": blank}}  # fmt: skip

    text_only = 0.5  # the text-only reader's accuracy on every set

    def text_only_controls(self, data):
        row = {g: {"accuracy": self.text_only, "items": 200} for g in ("seen", "novel")}
        return {"binding": {"swap_att": row}, "sugarcrepe": {"swap_att": row}}


def _cached_tuning(tmp: Path, **extra) -> None:
    """A study cache holding a finished tuning (both models at 1e-3, the configured 8x32 shape)."""
    (tmp / "runs").mkdir(exist_ok=True)
    tuning = {"lr": {"CLIP": 1e-3, "SPARO": 1e-3}, "lr_scores": {"CLIP": {"0.001": 0.6}, "SPARO": {"0.001": 0.6}},
              "slot_shape": "8x32", "slot_scores": {"8x32": 0.6}, "tune_seed": 1000} | extra  # fmt: skip
    (tmp / "runs" / "study.json").write_text(json.dumps({"tuning": tuning}))


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    fake = FakeRuns()
    monkeypatch.setattr(study, "train_runs", fake.train_runs)
    monkeypatch.setattr(study, "world_for", fake.world_for)
    monkeypatch.setattr(study, "evaluate", fake.evaluate)
    monkeypatch.setattr(study, "text_only_controls", fake.text_only_controls)
    monkeypatch.setattr(study, "untrained_checkpoint", lambda model, path, seed, override=None: path)
    monkeypatch.setattr(study, "evaluations_saved", lambda out, model, ckpt, override=None: False)
    monkeypatch.setattr(study, "validation_ceiling", lambda data: 0.55)
    monkeypatch.setattr(
        study, "run_intervals", lambda where: {m: Interval(0.5, 0.4, 0.6, 10) for m in (*PRIMARY, *SECONDARY)}
    )
    root = tmp_path / "repo"
    config = root / "src" / "sparo_clip" / "models" / "model_configs"
    config.mkdir(parents=True)
    shutil.copy(ROOT / "src" / "sparo_clip" / "models" / "model_configs" / "tiny-SPARO.json", config)
    (root / "docs").mkdir()
    (root / "docs" / "quickstart.md").write_text(
        "# q\n<!-- plateau-curve:begin -->\nold\n<!-- plateau-curve:end -->\n"
    )
    monkeypatch.setattr(study, "ROOT", root)
    monkeypatch.setattr(recipe_mod, "RECIPE_FILE", tmp_path / "recipe.json")
    return fake, root, tmp_path


def test_tuning_brackets_each_learning_rate_and_chooses_the_slot_shape_on_validation(sandbox, monkeypatch):
    fake, root, tmp = sandbox
    monkeypatch.setattr(
        study, "_sparo_shape", lambda: (4, 64)
    )  # the configured shape, whatever the file says
    argv = ["--stage", "tune", "--epochs", "4", "--out", str(tmp / "runs"), "--data", str(tmp / "data")]
    assert study.main(argv) == 0
    tuning = json.loads((tmp / "runs" / "study.json").read_text())["tuning"]
    assert tuning["lr"] == {"CLIP": 1e-3, "SPARO": pytest.approx(8e-3)}
    assert (
        "0.008" in tuning["lr_scores"]["SPARO"] and "0.016" in tuning["lr_scores"]["SPARO"]
    )  # extended, bracketed
    assert set(tuning["lr_scores"]["CLIP"]) == {"0.0005", "0.001", "0.002", "0.004"}  # its edge, bracketed
    assert tuning["slot_shape"] == "8x32"
    sparo = [(label, cfg) for label, cfg in fake.trained if cfg.model == "tiny-SPARO"]
    assert all(cfg.override for _, cfg in sparo)  # every SPARO run names its shape and passes it explicitly
    shapes = [label for label, _ in sparo if not label.startswith("SPARO-4x64-")]
    # 4x64, the configured shape, is the grid's run; at 8x32, the chosen shape, the learning rate is bracketed again
    # (the fake trains every run it is given; the real train_runs reuses a name it has finished)
    assert list(dict.fromkeys(shapes)) == ["SPARO-8x32-lr0.008-seed1000", "SPARO-16x16-lr0.008-seed1000",
                                           "SPARO-8x32-lr0.004-seed1000", "SPARO-8x32-lr0.016-seed1000"]  # fmt: skip
    assert set(tuning["lr_scores"]["SPARO 8x32"]) == {"0.004", "0.008", "0.016"}
    assert tuning["lr"]["SPARO"] == pytest.approx(8e-3)
    assert set(tuning["slot_scores"]) == {"4x64", "8x32", "16x16"}
    assert all(cfg.seed == 1000 for _, cfg in fake.trained)  # tuning never touches a comparison seed


def test_plateau_stage_writes_the_recipe_the_slot_shape_and_the_curve(sandbox):
    fake, root, tmp = sandbox
    common = ["--epochs", "4", "--out", str(tmp / "runs"), "--data", str(tmp / "data")]
    assert study.main(["--stage", "tune", *common]) == 0
    tuning_runs = len(fake.trained)
    assert study.main(["--stage", "plateau", "--write-recipe", *common]) == 0
    recipe = recipe_mod.load()
    assert recipe.epochs == 4 and recipe.lr == {"CLIP": 1e-3, "SPARO": pytest.approx(8e-3)}
    assert "benchmarks.study" in recipe.measured_by and recipe.evidence["plateau"]["CLIP-e4"]["flat"] in (
        True,
        False,
    )
    cfg = json.loads(
        (root / "src" / "sparo_clip" / "models" / "model_configs" / "tiny-SPARO.json").read_text()
    )
    assert (
        cfg["sparo_cfg"]["num_slots"] == 8 and cfg["sparo_cfg"]["slot_dim"] == 32 and cfg["embed_dim"] == 256
    )
    doc = (root / "docs" / "quickstart.md").read_text()
    assert (
        "\nold\n" not in doc
        and "tiny-SPARO, 8 epochs" in doc
        and "content ceiling (0.550)" in doc
        and (root / "docs" / "img" / "quickstart" / "plateau.png").is_file()
    )
    # CLIP's 4-epoch curve gains 0.035 over its last third but ends above the ceiling: flat by the ceiling clause
    clip = json.loads((tmp / "runs" / "study.json").read_text())["plateau"]["CLIP-e4"]
    assert clip["gain"] > 0.02 and clip["flat"] and clip["at_ceiling"] and clip["headroom"] < 0
    assert "| tiny-CLIP, 4 epochs | 0.598 | +0.035 | flat (at the content ceiling) |" in doc
    asked = {label: cfg.epochs for label, cfg in fake.trained[tuning_runs:]}
    # the budget is the chosen tuning runs (the real train_runs reuses them); twice it is trained anew
    assert asked == {"CLIP-lr0.001-seed1000": 4, "SPARO-8x32-lr0.008-seed1000": 4, "CLIP-e8-seed1000": 8,
                     "SPARO-e8-seed1000": 8}  # fmt: skip
    # docs/study.md shows the same curves and verdicts before the comparison
    assert (
        study.main(["--stage", "compare", "--seeds", "2", "--short-epochs", "2", "--write-docs", *common])
        == 0
    )
    doc = (root / "docs" / "study.md").read_text()
    section = doc.split("## Where the models stop improving (the tuning world)")[1].split("\n## ")[0]
    assert "img/study/plateau.png" in section and (root / "docs" / "img" / "study" / "plateau.png").is_file()
    assert "| tiny-CLIP, 8 epochs |" in section and "Content ceiling 0.550" in section


def test_comparison_over_seeds_and_budgets_writes_a_plain_conclusion(sandbox):
    fake, root, tmp = sandbox
    recipe_mod.write(recipe_mod.Recipe(epochs=6, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    argv = ["--stage", "compare", "--seeds", "3", "--epochs", "6", "--short-epochs", "2", "--out", str(tmp / "runs"),
            "--data", str(tmp / "data"), "--write-docs"]  # fmt: skip
    state_dir = tmp / "runs"
    _cached_tuning(tmp)
    assert study.main(argv) == 0
    state = json.loads((state_dir / "study.json").read_text())
    assert set(state["compare"]) == {"2", "6"}
    row = state["compare"]["6"]["comparison"]["clean binding, seen pairs"]
    assert row["diff"]["mean"] == pytest.approx(0.1) and row["diff"]["low"] == pytest.approx(0.1)  # no spread
    doc = (root / "docs" / "study.md").read_text()
    assert "SPARO ahead" in doc and "no difference detected" in doc  # retrieval is equal for both
    assert "3 seeds" in doc and "paired t" in doc and f"{recipe_mod.WORLD['image_size']}-pixel" in doc
    assert "tiny-CLIP flat in 3 of 3 seeds" in doc and "too few epochs to judge" in doc  # 6 and 2 epochs
    assert "may change with longer training" not in doc  # every run at the longest budget met the rule
    seeds = {cfg.seed for _, cfg in fake.trained}
    assert seeds == {0, 1, 2}
    # the untrained rows and the controls: every seed, both models, every budget's blank-image preference
    assert "## The untrained models and the controls" in doc
    assert "| clean binding, seen pairs | 0.250 ± 0.000 | 0.250 ± 0.000 |" in doc
    assert "| binding | swap_att | seen | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 200 |" in doc
    assert "No control falls outside [0.45, 0.55]." in doc and "**flagged**" not in doc
    assert set(state["controls"]["untrained"]) == {"0", "1", "2"}


def test_a_control_outside_the_range_is_flagged_in_the_study(sandbox):
    fake, root, tmp = sandbox
    fake.text_only = 0.7  # a set the captions alone solve
    recipe_mod.write(recipe_mod.Recipe(epochs=2, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    argv = ["--stage", "compare", "--seeds", "2", "--epochs", "2", "--short-epochs", "2", "--out", str(tmp / "runs"),
            "--data", str(tmp / "data"), "--write-docs"]  # fmt: skip
    _cached_tuning(tmp)
    assert study.main(argv) == 0
    doc = (root / "docs" / "study.md").read_text()
    assert "| binding | swap_att | seen | 0.700 | 0.500 | 0.500 | 200 **flagged** |" in doc
    assert "Flagged: binding/swap_att seen, binding/swap_att novel, sugarcrepe/swap_att seen" in doc


def test_comparison_past_the_main_jobs_budget_says_which_budget_each_reading_is_at(sandbox):
    fake, root, tmp = sandbox
    recipe_mod.write(recipe_mod.Recipe(epochs=3, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    argv = ["--stage", "compare", "--seeds", "2", "--epochs", "6", "--short-epochs", "3", "--out", str(tmp / "runs"),
            "--data", str(tmp / "data"), "--write-docs"]  # fmt: skip
    _cached_tuning(tmp, epochs=3)
    assert study.main(argv) == 0
    doc = (root / "docs" / "study.md").read_text()
    assert "the main job's default is 3 epochs" in doc and "at 3 epochs, on the validation" in doc
    assert "Budgets other than 3 epochs reuse these choices without tuning again" in doc
    assert "At the longest budget (6 epochs, 2 seeds)" in doc and "At the main job's budget (3 epochs)" in doc


def test_the_comparison_trains_with_the_choices_tuned_at_the_studys_budget(sandbox, monkeypatch):
    fake, root, tmp = sandbox
    recipe_mod.write(recipe_mod.Recipe(epochs=3, lr={"CLIP": 1e-3, "SPARO": 1e-3}))  # the main job's
    tuned = {"lr": {"CLIP": 4e-3, "SPARO": 2e-3}, "lr_scores": {"CLIP": {"0.004": 0.6}, "SPARO": {"0.002": 0.6}},
             "slot_shape": "8x32", "slot_scores": {"8x32": 0.6}, "tune_seed": 1000, "epochs": 6}  # fmt: skip
    (tmp / "runs").mkdir()
    (tmp / "runs" / "study.json").write_text(json.dumps({"tuning": tuned}))
    argv = ["--stage", "compare", "--seeds", "2", "--epochs", "6", "--short-epochs", "3", "--out", str(tmp / "runs"),
            "--data", str(tmp / "data"), "--batch-size", "64"]  # fmt: skip
    assert study.main(argv) == 0
    lrs = {(cfg.model, cfg.lr) for _, cfg in fake.trained}
    assert lrs == {("tiny-CLIP", 4e-3), ("tiny-SPARO", 2e-3)}  # the study's tuning, not the main job's 1e-3
    assert {cfg.batch_size for _, cfg in fake.trained} == {64}
    state = json.loads((tmp / "runs" / "study.json").read_text())
    assert state["recipe"]["epochs"] == 3 and state["compare_recipe"]["lr"] == tuned["lr"]
    assert all(cfg.override is None for _, cfg in fake.trained)  # the registered shape: no override
    # a tuning that chose another slot shape than the registered model's: tiny-SPARO trains and is evaluated at it
    fake.trained.clear()
    evaluated = []
    original = fake.evaluate

    def evaluate(model, ckpt, data, out, slots=None, reuse=False, override=None):
        evaluated.append((model, override))
        return original(model, ckpt, data, out, slots, reuse)

    monkeypatch.setattr(study, "evaluate", evaluate)
    (tmp / "runs" / "study.json").write_text(json.dumps({"tuning": tuned | {"slot_shape": "16x16"}}))
    assert study.main([*argv, "--write-docs"]) == 0
    shape = {"embed_dim": 256, "sparo_cfg": {"num_slots": 16, "slot_dim": 16}}
    assert {(cfg.model, json.dumps(cfg.override)) for _, cfg in fake.trained} == {
        ("tiny-CLIP", "null"), ("tiny-SPARO", json.dumps(shape))}  # fmt: skip
    assert {(m, json.dumps(o)) for m, o in evaluated} == {
        ("tiny-CLIP", "null"),
        ("tiny-SPARO", json.dumps(shape)),
    }
    assert "trains and evaluates tiny-SPARO at 16x16" in (root / "docs" / "study.md").read_text()


def test_a_secondary_metric_reads_by_its_holm_corrected_p():
    from benchmarks.study_doc import write_study_doc

    row = {
        "a": [0.1, 0.2],
        "b": [0.3, 0.4],
        "p": 0.01,
        "diff": {"mean": 0.2, "low": 0.1, "high": 0.3, "n": 2},
    }
    comparison = {m: dict(row, p_holm=None) for m in PRIMARY} | {m: dict(row, p_holm=0.2) for m in SECONDARY}
    comparison[SECONDARY[0]] = dict(row, p_holm=0.01)
    state = {"settings": {"command": "c", "machine": "m", "seeds": 2, "epochs": 6},
             "tuning": {"lr_scores": {}, "lr": {}, "slot_scores": {}, "slot_shape": "8x32", "tune_seed": 1000},
             "recipe": {"epochs": 6, "world": {"image_size": 48}},
             "compare": {"6": {"comparison": comparison, "steps": 60, "curves": {}}}}  # fmt: skip
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "study.md"
        write_study_doc(state, path)
        doc = path.read_text()
    rows = {line.split(" | ")[0].strip("| *"): line for line in doc.splitlines() if line.startswith("| ")}
    assert rows[SECONDARY[0]].endswith("SPARO ahead |")  # corrected p below 0.05
    assert all(rows[m].endswith("no difference after Holm |") for m in SECONDARY[1:] if m in rows)
    assert all(rows[m].endswith("SPARO ahead |") for m in PRIMARY)


@pytest.mark.parametrize("flag", ["--batch-size", "--epochs", "--short-epochs", "--seeds"])
def test_a_zero_is_refused_in_one_line_not_replaced_by_the_recipes_value(sandbox, capsys, flag):
    fake, root, tmp = sandbox
    recipe_mod.write(recipe_mod.Recipe(epochs=3, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    argv = ["--stage", "compare", flag, "0", "--out", str(tmp / "runs"), "--data", str(tmp / "data")]
    assert study.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"study: error: {flag} must be >= 1" and fake.trained == []
    assert not (tmp / "runs" / "study.json").exists()


def test_two_calls_on_one_cache_keep_each_others_results(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"tuning": {"lr": 1}}))
    loaded = json.loads(path.read_text())  # a plateau stage starts ...
    path.write_text(
        json.dumps({"tuning": {"lr": 1}, "controls": {"seen": 0.5}})
    )  # ... a docs rewrite ends first
    written = study.save_state(path, loaded | {"plateau": {"flat": True}}, loaded)
    assert written == json.loads(path.read_text())
    assert written == {"tuning": {"lr": 1}, "controls": {"seen": 0.5}, "plateau": {"flat": True}}
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"]  # no temporary file left


def test_write_docs_without_a_comparison_is_refused_before_any_work(sandbox, capsys):
    fake, root, tmp = sandbox
    recipe_mod.write(recipe_mod.Recipe(epochs=2, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    assert study.main(["--stage", "tune", "--out", str(tmp / "runs"), "--write-docs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("study: error: --write-docs needs a comparison") and "\n" not in err
    assert fake.trained == []


def test_the_conclusion_names_the_model_still_rising_at_the_longest_budget(sandbox, monkeypatch):
    fake, root, tmp = sandbox
    fake.rising = {"tiny-CLIP"}
    monkeypatch.setattr(study, "validation_ceiling", lambda data: 1.0)  # far above every curve
    recipe_mod.write(recipe_mod.Recipe(epochs=3, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    _cached_tuning(tmp)
    argv = ["--stage", "compare", "--seeds", "2", "--epochs", "6", "--short-epochs", "3", "--out", str(tmp / "runs"),
            "--data", str(tmp / "data"), "--write-docs"]  # fmt: skip
    assert study.main(argv) == 0
    doc = (root / "docs" / "study.md").read_text()
    assert (
        "Not every run at 6 epochs met the plateau rule (tiny-CLIP 0 of 2, tiny-SPARO 2 of 2): tiny-CLIP was "
        "still improving" in doc
    )


def test_each_budget_shows_every_seeds_validation_curve_as_a_picture(tmp_path):
    from benchmarks.study_doc import write_study_doc

    row = {"a": [0.1, 0.2], "b": [0.3, 0.4], "p": 0.01, "p_holm": 0.01,
           "diff": {"mean": 0.2, "low": 0.1, "high": 0.3, "n": 2}}  # fmt: skip
    curve = [{"epoch": e, "step": 10 * e, "val_r1": 0.1 * e} for e in (1, 2, 3)]
    state = {"settings": {"command": "c", "machine": "m", "seeds": 2, "epochs": 3},
             "tuning": {"lr_scores": {}, "lr": {}, "slot_scores": {}, "slot_shape": "8x32", "tune_seed": 1000},
             "recipe": {"epochs": 3, "world": {"image_size": 48}},
             "compare": {"3": {"comparison": {m: row for m in (*PRIMARY, *SECONDARY)}, "steps": 30,
                               "curves": {s: {"CLIP": curve, "SPARO": curve} for s in ("0", "1")},
                               "ceilings": {"0": 0.3, "1": 0.6}}}}  # fmt: skip
    write_study_doc(state, tmp_path / "study.md")
    doc = (tmp_path / "study.md").read_text()
    assert "![validation curves at 3 epochs, every seed](img/study/curves-e3.png)" in doc
    assert (tmp_path / "img" / "study" / "curves-e3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the rule's verdicts stand beside the picture, each seed judged against its own ceiling: the curve gains
    # 0.1 over its last third, so it is flat only where it reached the ceiling (seed 0's 0.3)
    assert "tiny-CLIP flat in 1 of 2 seeds, tiny-SPARO flat in 1 of 2 seeds" in doc


def test_write_docs_without_a_tuning_is_refused_before_the_comparison_trains(sandbox, capsys):
    fake, root, tmp = sandbox
    recipe_mod.write(recipe_mod.Recipe(epochs=2, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    assert study.main(["--stage", "compare", "--out", str(tmp / "runs"), "--write-docs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("study: error: --write-docs needs the tuning") and "\n" not in err
    assert fake.trained == [] and not (tmp / "runs" / "study.json").exists()


def test_a_run_counts_as_evaluated_by_the_folder_model_and_override_it_is_evaluated_with(
    sandbox, monkeypatch
):
    fake, root, tmp = sandbox
    recipe_mod.write(recipe_mod.Recipe(epochs=2, lr={"CLIP": 1e-3, "SPARO": 1e-3}))
    _cached_tuning(tmp, slot_shape="16x16")
    callbacks, asked, evaluated = {}, [], {}
    train = fake.train_runs

    def train_runs(runs, out, slots=1, evaluated=None):
        callbacks.update({name: evaluated for name in runs})
        return train(runs, out, slots, evaluated)

    def evaluate(model, ckpt, data, out, slots=None, reuse=False, override=None):
        evaluated[ckpt] = (str(out), model, override)
        return FakeRuns.evaluate(model, ckpt, data, out, slots, reuse, override)

    monkeypatch.setattr(study, "train_runs", train_runs)
    monkeypatch.setattr(study, "evaluate", evaluate)
    monkeypatch.setattr(study, "evaluations_saved", lambda *a: asked.append(a) or False)
    argv = ["--stage", "compare", "--seeds", "2", "--epochs", "2", "--short-epochs", "1", "--out", str(tmp / "runs"),
            "--data", str(tmp / "data")]  # fmt: skip
    assert study.main(argv) == 0
    trained = [name for name in callbacks if "untrained" not in name]
    assert len(trained) == 8  # 2 models x 2 seeds x 2 budgets
    for name in trained:  # what the reuse check asks about a run is where and how that run is evaluated
        asked.clear()
        ckpt = str(tmp / "runs" / "compare" / f"{name}.pt")
        assert callbacks[name](name, ckpt) is False
        ((where, model, ckpt_asked, override),) = asked
        assert ckpt_asked == ckpt and evaluated[ckpt] == (str(where), model, override)
        assert (override is not None) == name.startswith("SPARO")  # the tuned 16x16 shape travels with it


@pytest.mark.parametrize("same_recipe", [True, False])
def test_a_converged_study_says_so_and_how_the_main_job_reaches_that_budget(tmp_path, same_recipe):
    from benchmarks.study_doc import write_study_doc

    row = {"a": [0.1, 0.2], "b": [0.3, 0.4], "p": 0.01, "p_holm": 0.01,
           "diff": {"mean": 0.2, "low": 0.1, "high": 0.3, "n": 2}}  # fmt: skip
    flat = [{"epoch": e, "step": 10 * e, "val_r1": 0.5} for e in (1, 2, 3)]
    lr = {"CLIP": 2e-3, "SPARO": 2e-3}
    state = {"settings": {"command": "c", "machine": "m", "seeds": 2, "epochs": 3},
             "tuning": {"lr_scores": {}, "lr": lr, "slot_scores": {}, "slot_shape": "8x32", "tune_seed": 1000},
             "recipe": {"epochs": 6, "lr": lr, "world": {"image_size": 48}},
             "compare_recipe": {"lr": lr if same_recipe else {"CLIP": 1e-3, "SPARO": 2e-3}, "sparo_override": None},
             "compare": {"32": {"comparison": {m: row for m in (*PRIMARY, *SECONDARY)}, "steps": 30,
                                "curves": {s: {"CLIP": flat, "SPARO": flat} for s in ("0", "1")}}}}  # fmt: skip
    write_study_doc(state, tmp_path / "study.md")
    doc = (tmp_path / "study.md").read_text()
    assert "Every run at 32 epochs met the plateau rule" in doc
    assert ("`./scripts/quickstart.sh --epochs 32`" in doc) == same_recipe  # only when it is the same recipe


def test_a_lead_at_the_short_budget_that_fades_at_the_converged_one_is_read_as_learning_speed(tmp_path):
    from benchmarks.study_doc import write_study_doc

    def rows(low):  # SPARO − CLIP's interval starts at ``low``: above 0 reads "SPARO ahead"
        row = {"a": [0.1, 0.2], "b": [0.3, 0.4], "p": 0.01, "p_holm": 0.5,
               "diff": {"mean": low + 0.1, "low": low, "high": low + 0.2, "n": 2}}  # fmt: skip
        return {m: dict(row, p_holm=None) if m in PRIMARY else row for m in (*PRIMARY, *SECONDARY)}

    flat = [{"epoch": e, "step": 10 * e, "val_r1": 0.5} for e in (1, 2, 3)]
    rising = [{"epoch": e, "step": 10 * e, "val_r1": 0.1 * e} for e in (1, 2, 3)]
    budget = {"6": (rows(0.05), rising), "32": (rows(-0.1), flat)}
    state = {"settings": {"command": "c", "machine": "m", "seeds": 2, "epochs": 32},
             "tuning": {"lr_scores": {}, "lr": {}, "slot_scores": {}, "slot_shape": "8x32", "tune_seed": 1000},
             "recipe": {"epochs": 6, "world": {"image_size": 48}},
             "compare": {b: {"comparison": comp, "steps": 30, "curves": {s: {"CLIP": c, "SPARO": c} for s in "01"}}
                         for b, (comp, c) in budget.items()}}  # fmt: skip
    write_study_doc(state, tmp_path / "study.md")
    doc = (tmp_path / "study.md").read_text()
    assert "At 6 epochs, where 0 of 4 runs had met the plateau rule, primary metrics differed" in doc
    assert "differences in how fast the two models learn, not in where they end" in doc
    state["compare"]["32"]["curves"] = state["compare"]["6"]["curves"]  # the long budget not converged either
    write_study_doc(state, tmp_path / "study.md")
    assert "how fast the two models learn" not in (tmp_path / "study.md").read_text()
