"""SPARO-DINO training on a tiny ViT (CPU, seconds): EMA teacher, loss, DDP equivalence, resume, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparo_clip.dino import DinoNet, load_config, load_encoder
from sparo_clip.dino import train as dino_train

from .eval_helpers import class_folder

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--local-crops", "2", "--workers", "0", "--log-every", "1", "--warmup-epochs", "1", "--lr", "0.05"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return env


def _run(args: list[str], timeout: float = 240, torchrun: int = 0) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    cmd = [*(launch if torchrun else [sys.executable]), "-m", "sparo_clip.dino.train", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return class_folder(tmp_path_factory.mktemp("dino") / "imgs", {"a": 8, "b": 8})


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> Path:
    """One uninterrupted single-process run: 8 steps of global batch 4 (2 epochs of 4 steps)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    r = _run(["--model", "tiny_sparo_dino", "--train-data", str(images), "--output", str(out), "--batch-size", "4",
              "--epochs", "2", "--save-every", "1", "--keep", "20", *TINY])  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_teacher_has_no_gradients_and_moves_by_ema(reference):
    cfg = load_config("tiny_sparo_dino")
    torch.manual_seed(0)
    init = DinoNet(cfg).state_dict()  # the run's seeded initial student (= initial teacher)
    ckpt = torch.load(reference / "checkpoints" / "step_00000001.pt", weights_only=True)
    m = 0.996  # momentum at step 0
    moved = 0
    for name, teacher in ckpt["teacher"].items():
        expected = m * init[name] + (1 - m) * ckpt["student"][name]
        torch.testing.assert_close(teacher, expected, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(teacher, init[name]))
    assert moved > 10  # the teacher did move, and only by the EMA
    # the teacher is built without gradients: a backward through its output reaches none of its parameters
    net = DinoNet(cfg)
    from sparo_clip.dino.lightly_api import require_lightly

    require_lightly().deactivate_requires_grad(net)
    assert not any(p.requires_grad for p in net.parameters())
    student = DinoNet(cfg)
    loss = (student([torch.randn(2, 3, 32, 32)])[0] - net([torch.randn(2, 3, 32, 32)])[0]).pow(2).mean()
    loss.backward()
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_loss_decreases_on_a_tiny_set(reference):
    loss = _losses(reference)
    assert sum(loss[s] for s in (6, 7, 8)) < sum(loss[s] for s in (1, 2, 3)) - 0.5, loss


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_two_process_gloo_matches_one_process(images, reference, tmp_path):
    out = tmp_path / "ddp"
    r = _run(["--model", "tiny_sparo_dino", "--train-data", str(images), "--output", str(out), "--batch-size", "2",
              "--epochs", "2", "--max-steps", "4", "--save-every", "100", *TINY], torchrun=2)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = _losses(reference), _losses(out)
    assert sorted(got) == [1, 2, 3, 4]
    for step, value in got.items():
        assert value == pytest.approx(ref[step], rel=1e-4, abs=1e-4), (step, got, ref)


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_resume_after_kill_continues_from_last_good_checkpoint(images, reference, tmp_path):
    out = tmp_path / "killed"
    args = ["--model", "tiny_sparo_dino", "--train-data", str(images), "--output", str(out), "--batch-size", "4",
            "--epochs", "2", "--save-every", "1", "--keep", "20", *TINY]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sparo_clip.dino.train", *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 180
    try:
        while not (out / "checkpoints" / "step_00000002.pt").exists():
            assert proc.poll() is None and time.time() < deadline, "run ended or stalled before step 2"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    done = dino_train.checkpoint_paths(out)
    last = int(done[0].stem.split("_")[1])
    assert 2 <= last < 8, "the run finished before it could be killed"
    good = done[0].read_bytes()
    (out / "checkpoints" / "step_00000099.pt").write_bytes(good[: len(good) // 2])  # a newer, torn file
    r = _run(args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {out / 'checkpoints' / done[0].name} at step {last}" in r.stderr
    assert "skipping checkpoint" in r.stderr
    ref, got = _losses(reference), _losses(out)
    for step in range(last + 1, 9):  # the resumed steps see the same data and state as the uninterrupted run
        assert got[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-4), (step, got, ref)


@pytest.mark.parametrize("name", ["tiny_dino", "tiny_sparo_dino"])
def test_checkpoint_loads_back_into_an_identical_encoder(name, tmp_path):
    cfg = load_config(name)
    net = DinoNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "ckpt.pt"
    torch.save({"dino_cfg": cfg.to_dict(), "teacher": net.state_dict(), "student": {}}, path)
    encoder = load_encoder(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(x), net.encoder(x))
        assert torch.equal(encoder.slots(x), net.encoder.slots(x))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model", "no_such_model"], "registered"),
        (["--model", "tiny_dino", "--model-overrides", '{"readout": "avg"}'], "readout='avg'"),
        (["--model", "tiny_sparo_dino", "--model-overrides", '{"sparo_cfg": {"heads": 3}}'], "heads=3"),
        (["--model", "tiny_dino", "--batch-size", "0"], "--batch-size"),
        (["--model", "tiny_dino", "--global-crop-scale", "0.5"], "global-crop-scale"),
    ],
)
def test_bad_config_fails_before_training_with_one_line(extra, needle, images, tmp_path, capsys):
    rc = dino_train.main([*extra, "--train-data", str(images), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run").exists()


def test_recipe_scripts_dry_run(tmp_path):
    for script, readout in (("train_dino_vits16.sh", "cls"), ("train_dino_vits16_sparo.sh", "sparo")):
        env = dict(_env(), IMAGENET_TRAIN=str(tmp_path), NUM_GPUS="2", DRY_RUN="1", PYTHON=sys.executable)
        r = subprocess.run(
            [str(ROOT / "scripts" / script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert "--nproc_per_node 2" in r.stdout and "sparo_clip.dino.train" in r.stdout
        assert f"vit_small_patch16_{'sparo_' if readout == 'sparo' else ''}dino" in r.stdout
        env.pop("IMAGENET_TRAIN")
        r = subprocess.run(
            [str(ROOT / "scripts" / script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 2 and "IMAGENET_TRAIN" in r.stderr


def test_webdataset_shards_without_images_fail_before_training(tmp_path, capsys):
    from .eval_helpers import write_tar

    write_tar(tmp_path / "s-0.tar", [("k0", {"txt": b"a caption only"})])
    args = ["--model", "tiny_dino", "--output", str(tmp_path / "run")]
    rc = dino_train.main([*args, "--train-data", str(tmp_path / "s-{0..0}.tar"), "--train-num-samples", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holds no images" in err[0]
    rc = dino_train.main([*args, "--train-data", str(tmp_path / "s-{0..3}.tar"), "--train-num-samples", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "3 of 4 shard(s) missing" in err[0]
    rc = dino_train.main([*args, "--train-data", str(tmp_path / "s-{0..0}.tar")])
    assert rc == 2 and "--train-num-samples is required" in capsys.readouterr().err
