"""The training queues of the main jobs (CLIP: sparo_clip.experiment.runs; DINO: sparo_clip.dino.quickstart):
a training that writes a lot to stderr never stalls the queue, and a failed one is one line naming its log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sparo_clip.dino import quickstart as qs
from sparo_clip.experiment import runs

LOUD = 1 << 20  # 1 MiB of stderr: 16 times what a pipe holds before its writer blocks


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", body]


def _clip_fake(fail: bool):
    def command(cfg, name, data, logs):
        ckpt = Path(logs) / name / "checkpoints" / f"epoch_{cfg.epochs}.pt"
        body = (
            "import sys, pathlib\n"
            f"for _ in range({LOUD // 1024}): sys.stderr.write('x' * 1023 + '\\n')\n"
            f"p = pathlib.Path({str(ckpt)!r}); p.parent.mkdir(parents=True); p.write_bytes(b'w')\n"
            + ("sys.stderr.write('loss is nan at step 3\\n'); sys.exit(3)\n" if fail else "")
        )
        return _script(body)

    return command


@pytest.mark.timeout(60)
def test_clip_queue_survives_a_training_that_fills_stderr(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "train_command", _clip_fake(fail=False))
    data = {"settings": {"seed": 0}, "train": {"num_samples": 256}}
    cfgs = {f"run{i}": (runs.TrainCfg("tiny-CLIP", 1, 128, 1e-3, 0.1, 1, i, 1), data) for i in range(3)}
    records = runs.train_runs(cfgs, tmp_path, slots=2)
    assert set(records) == set(cfgs) and all(Path(r["checkpoint"]).is_file() for r in records.values())
    assert (tmp_path / "logs" / "run0.stderr").stat().st_size >= LOUD  # kept, beside the run folder


@pytest.mark.timeout(60)
def test_clip_queue_names_the_failure_and_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "train_command", _clip_fake(fail=True))
    data = {"settings": {"seed": 0}, "train": {"num_samples": 256}}
    with pytest.raises(RuntimeError, match=r"exit code 3: loss is nan at step 3 \(see .*run0\.stderr"):
        runs.train_runs({"run0": (runs.TrainCfg("tiny-CLIP", 1, 128, 1e-3, 0.1, 1, 0, 1), data)}, tmp_path)


@pytest.mark.timeout(60)
def test_dino_queue_survives_a_training_that_fills_stderr_and_names_a_failure(tmp_path, monkeypatch):
    def command(job, run):
        body = (
            f"import pathlib, sys\npathlib.Path({str(run)!r}).mkdir(parents=True)\n"
            f"for _ in range({LOUD // 1024}): sys.stderr.write('\\r' + 'x' * 1022)\n"
            + ("sys.stderr.write('\\rboom\\n'); sys.exit(1)\n" if job.seed == 9 else "")
        )
        return _script(body)

    monkeypatch.setattr(qs, "train_command", command)
    jobs = [qs.Job(name, qs.SMALL, seed, "images") for seed in (0, 1) for name in qs.MODELS]
    folders, trained = qs.train_jobs(jobs, tmp_path)
    assert trained == 4 and all((f / "done.json").is_file() for f in folders.values())
    assert qs.train_jobs(jobs, tmp_path) == (folders, 0)  # finished runs are reused
    with pytest.raises(RuntimeError, match=r"training CLS-DINO seed 9 failed \(boom\); see .*\.stderr"):
        qs.train_jobs([qs.Job("CLS-DINO", qs.SMALL, 9, "images")], tmp_path)


def test_a_finished_run_is_reused_only_if_its_recorded_model_is_the_one_its_name_builds_today(tmp_path):
    import json
    from dataclasses import asdict

    from sparo_clip.models.builder import resolve_model_config

    cfg = runs.TrainCfg("tiny-SPARO", epochs=1, lr=1e-3, seed=0)
    settings = asdict(cfg) | {"world": {"seed": 0}}
    run = tmp_path / "SPARO-seed0"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "epoch_1.pt"
    ckpt.write_bytes(b"w")
    (run / "run.json").write_text(json.dumps({"settings": settings, "checkpoint": str(ckpt)}))
    today = resolve_model_config("tiny-SPARO", None)
    (run / "model_config.json").write_text(json.dumps({"model_cfg": today}))
    assert runs._finished(run, settings) is not None
    earlier = json.loads(json.dumps(today))  # the same name, trained when its config had another slot shape
    earlier["sparo_cfg"]["num_slots"] *= 2
    (run / "model_config.json").write_text(json.dumps({"model_cfg": earlier}))
    assert runs._finished(run, settings) is None
    (run / "model_config.json").write_text(json.dumps({"model_cfg": today}))
    # a study removed the checkpoint after evaluating it: reused only where every evaluation of it is saved
    ckpt.unlink()
    assert runs._finished(run, settings) is None
    assert runs._finished(run, settings, lambda c: False) is None
    assert runs._finished(run, settings, lambda c: c == str(ckpt)) is not None
    (run / "run.json").write_text('{"settings": ')  # torn by a crash: trained again, no traceback
    assert runs._finished(run, settings, lambda c: True) is None


EVAL_DATA = {
    "compositional": {"dir": "c", "classes": "k", "templates": "t"},
    "binding": {"root": "b", "blank": "bb"},
    "sugarcrepe": {"root": "s", "blank": "sb"},
    "test": {"csv": "r.csv"},
}


def _fake_evals(monkeypatch, pretrained: str) -> list:
    """Stand-in eval commands that save what a real one saves (result JSON with the checkpoint and override,
    per-item scores); returns the list their argv are appended to."""
    import json

    calls = []

    def fake_eval(argv, output):
        calls.append(argv)
        given = argv[argv.index("--override-model-config") + 1] if "--override-model-config" in argv else None
        Path(argv[argv.index("--save-items") + 1]).write_bytes(b"x")
        saved = {"pretrained": pretrained, "slots": None, "metrics": {"n": len(calls)}}
        saved |= {"override_model_config": json.loads(given)} if given else {}
        output.write_text(json.dumps(saved))
        return saved

    monkeypatch.setattr(runs, "_eval", fake_eval)
    return calls


def test_evaluate_gives_every_eval_the_override_the_checkpoint_was_trained_with(tmp_path, monkeypatch):
    import json

    calls = _fake_evals(monkeypatch, "ck.pt")
    data = EVAL_DATA
    shape = {"embed_dim": 256, "sparo_cfg": {"num_slots": 16, "slot_dim": 16}}
    runs.evaluate("tiny-SPARO", "ck.pt", data, tmp_path, reuse=True, override=shape)
    assert len(calls) == len(runs.EVALUATIONS)
    assert all(json.loads(a[a.index("--override-model-config") + 1]) == shape for a in calls)
    runs.evaluate("tiny-SPARO", "ck.pt", data, tmp_path, reuse=True, override=shape)  # the same: all reused
    assert len(calls) == len(runs.EVALUATIONS)
    assert runs.evaluations_saved(tmp_path, "tiny-SPARO", "ck.pt", shape)
    assert not runs.evaluations_saved(tmp_path, "tiny-SPARO", "other.pt", shape)
    assert not runs.evaluations_saved(tmp_path, "tiny-SPARO", "ck.pt")  # saved with another model config
    runs.evaluate("tiny-SPARO", "ck.pt", data, tmp_path, reuse=True)  # another model config: all run again
    assert len(calls) == 2 * len(runs.EVALUATIONS) and "--override-model-config" not in calls[-1]
    assert runs.evaluations_saved(tmp_path, "tiny-SPARO", "ck.pt")
    (tmp_path / "binding_blank_items.pt").unlink()  # one evaluation's per-item scores lost: not all saved
    assert not runs.evaluations_saved(tmp_path, "tiny-SPARO", "ck.pt")


def test_an_evaluation_is_reused_only_for_the_checkpoint_and_config_it_was_made_of(tmp_path, monkeypatch):

    ckpt = tmp_path / "ck.pt"
    calls = _fake_evals(monkeypatch, str(ckpt))
    data = EVAL_DATA
    out, n = tmp_path / "eval", len(runs.EVALUATIONS)
    ckpt.write_bytes(b"first training")
    runs.evaluate("tiny-CLIP", ckpt, data, out, reuse=True)
    runs.evaluate("tiny-CLIP", ckpt, data, out, reuse=True)
    assert len(calls) == n and runs.evaluations_saved(out, "tiny-CLIP", ckpt)  # the same file: reused
    ckpt.write_bytes(b"trained again, same name")  # a new file at the same path: its old results are stale
    assert not runs.evaluations_saved(out, "tiny-CLIP", ckpt)
    runs.evaluate("tiny-CLIP", ckpt, data, out, reuse=True)
    assert len(calls) == 2 * n
    ckpt.unlink()  # removed once evaluated (the study does): judged by the model config alone
    assert runs.evaluations_saved(out, "tiny-CLIP", ckpt)
    assert not runs.evaluations_saved(out, "tiny-SPARO", ckpt)  # another config (e.g. an edited JSON): stale
