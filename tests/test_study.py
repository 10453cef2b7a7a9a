"""The study's machinery: learning rate chosen on validation only, resumable cache, paired t intervals, doc."""

import json
import math

import pytest

from benchmarks import study


def _results(value: float, val: float) -> dict:
    """Eval results shaped like ``quickstart.evaluate``'s, every test metric ``value``, validation ``val``."""
    r1 = {"image_to_text_R@1": value, "text_to_image_R@1": value}
    groups = {g: {"mean": value, "swap_att": value} for g in ("seen", "novel")}
    return {
        "compositional": {"auc": value, "best_hm": value, "unseen": value},
        "sugarcrepe": {"groups": groups},
        "retrieval": {"groups": {"seen": r1, "novel": r1}},
        "retrieval_val": {"mean_recall": val},
    }


class Runner:
    """Deterministic outcomes: SPARO is 0.1 ahead on test metrics; validation prefers lr 1e-3, test 3e-3."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, name, out):
        self.calls.append(name)
        base = 0.3 + (0.1 if cfg.model == "tiny-SPARO" else 0.0) + cfg.steps / 1000 + 0.01 * cfg.seed
        test = base + (0.2 if cfg.lr == 3e-3 else 0.0)
        val = 0.5 if cfg.lr == 1e-3 else 0.2
        return {"seconds": 1.0, "results": _results(test, val)}


ARGV = ["--budgets", "2", "5", "--seeds", "0", "1", "2", "--lrs", "1e-3", "3e-3", "--batch-size", "4"]


def test_study_chooses_lr_on_validation_caches_runs_and_writes_the_doc(tmp_path):
    runner = Runner()
    doc = tmp_path / "docs" / "study.md"
    argv = [*ARGV, "--out", str(tmp_path / "runs"), "--write-docs", "--doc", str(doc)]
    assert study.main(argv, runner=runner) == 0
    # 2 models x 2 lrs x 3 seeds at the short budget, then 2 models x 3 seeds at the long one
    assert len(runner.calls) == 12 + 6
    saved = json.loads((tmp_path / "runs" / "study.json").read_text())
    assert saved["chosen_lr"] == {"CLIP": 1e-3, "SPARO": 1e-3}  # validation, not the test sets' 3e-3
    row = saved["table"]["5"]["compositional zero-shot AUC"]
    assert row["diff"] == pytest.approx(0.1) and row["low"] == pytest.approx(
        0.1
    )  # the same gap on every seed
    text = doc.read_text()
    assert "SPARO − CLIP = +0.100" in text and "significant: SPARO higher" in text
    assert "resumable" in text and study.FULL_COMMAND in text and "--budgets 2 5" in text
    pngs = sorted((tmp_path / "docs" / "img" / "study").glob("*.png"))
    assert len(pngs) == len(study.HEADLINE) and all(p.stat().st_size > 1000 for p in pngs)
    # a re-run only does what is missing: nothing, then only the new seed
    again = Runner()
    assert study.main([*ARGV, "--out", str(tmp_path / "runs")], runner=again) == 0
    assert again.calls == []
    more = Runner()
    argv = [*ARGV[:2], "5", "--seeds", "0", "1", "2", "3", *ARGV[7:], "--out", str(tmp_path / "runs")]
    assert study.main(argv, runner=more) == 0
    assert len(more.calls) == 2 * 2 + 2 and all("-s3-" in c for c in more.calls)


def test_a_failed_run_is_not_cached(tmp_path):
    class Failing(Runner):
        def __call__(self, cfg, name, out):
            if cfg.seed == 1:
                raise RuntimeError("training failed")
            return super().__call__(cfg, name, out)

    with pytest.raises(RuntimeError):
        study.main([*ARGV, "--out", str(tmp_path)], runner=Failing())
    cached = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/result.json"))
    assert cached and not any("-s1-" in c for c in cached)


def test_t_interval_matches_the_t_table():
    mean, low, high = study.t_interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # t(0.975, 2 dof) = 4.303
    assert (
        mean == 2.0 and low == pytest.approx(2 - half, abs=1e-3) and high == pytest.approx(2 + half, abs=1e-3)
    )
    assert math.isnan(study.t_interval([1.0])[1])
    assert study.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


@pytest.mark.parametrize(
    "argv, message",
    [(["--budgets", "0"], "--budgets"), (["--seeds", "1", "1"], "--seeds"), (["--lrs", "0"], "--lrs")],
)
def test_bad_options(argv, message, capsys, tmp_path):
    assert study.main([*argv, "--out", str(tmp_path)], runner=Runner()) == 2
    assert message in capsys.readouterr().err
