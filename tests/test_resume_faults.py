"""Kill a training run during each kind of checkpoint write, resume it, and get the uninterrupted run's weights.

The kills are real SIGKILLs at a chosen point of a write (``tests/fault_driver.py``): no cleanup runs. Each
kill leaves what a power cut would: a half-written temporary file, and for ``--save-most-recent`` an
``epoch_latest.pt`` older than the newest ``epoch_N.pt``. ``--resume latest`` / ``--resume auto`` must pick the
newest good state by what the files record, remove the temporary files, never overwrite a newer good
checkpoint, and end with exactly the weights of a run that was never interrupted.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .eval_helpers import class_folder
from .train_helpers import base_args, make_shards

pytestmark = pytest.mark.slow  # every run is its own process (a kill must kill a process)

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
NO_AUG = ["--aug-cfg", "scale=(1.0,1.0)", "ratio=(1.0,1.0)"]  # whole-image crops: no augmentation randomness
DINO_TINY = ["--model", "tiny_sparo_dino", "--batch-size", "4", "--epochs", "2", "--save-every", "1", "--keep",
             "20", "--local-crops", "2", "--workers", "0", "--log-every", "1", "--warmup-epochs", "1",
             "--lr", "0.05"]  # fmt: skip


def _run(module: str, args: list[str], fault: tuple[str, str, str] | None = None, limit: int | None = None):
    """``python -m module args`` (killed at ``fault`` = (when, file, progress) if given; file size capped at
    ``limit`` bytes, as on a full disk, if given)."""
    cmd = [sys.executable, "-m", module, *args]
    if fault is not None:
        cmd = [sys.executable, "-m", "tests.fault_driver", *fault, module, *args]

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
                          preexec_fn=cap if limit else None)  # fmt: skip


def _weights(path: Path, key: str = "state_dict") -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    return {k.removeprefix("module."): v for k, v in ckpt[key].items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _orphans(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("data"), num_shards=2, per_shard=4)


def _clip_args(shards: str, logs: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return [*base_args(shards, logs, name, batch_size=4, num_samples=8, epochs=epochs), *NO_AUG, *extra]


@pytest.fixture(scope="module")
def clip_reference(shards, tmp_path_factory) -> Path:
    """A run of 4 epochs (2 steps each) that nothing interrupts: its epoch_N.pt are the expected states."""
    logs = tmp_path_factory.mktemp("ref")
    r = _run("sparo_clip.train", _clip_args(shards, logs, "ref", 4, "--save-most-recent"))
    assert r.returncode == 0, r.stderr[-3000:]
    return logs / "ref" / "checkpoints"


def test_clip_killed_while_writing_an_epoch_checkpoint(shards, clip_reference, tmp_path):
    args = _clip_args(shards, tmp_path, "run", 4)  # the reference's schedule (the lr follows --epochs)
    r = _run("sparo_clip.train", args, fault=("write", "epoch_2.pt", "epoch=2"))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["epoch_1.pt"]
    assert len(_orphans(ckpts)) == 1  # the half-written epoch_2.pt, under its temporary name
    r = _run("sparo_clip.train", [*args, "--resume", "latest"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _orphans(ckpts) == []  # removed when the run started again
    log = (tmp_path / "run" / "out.log").read_text()
    assert "the temporary file of an interrupted checkpoint write" in log
    for epoch in (2, 4):
        _assert_same(_weights(ckpts / f"epoch_{epoch}.pt"), _weights(clip_reference / f"epoch_{epoch}.pt"))


def test_clip_killed_while_replacing_epoch_latest_resumes_from_the_newer_epoch_file(
    shards, clip_reference, tmp_path
):
    """Two kills in one run: mid-write of epoch 2's ``tmp.pt``, then between epoch 3's ``tmp.pt`` and its rename
    to ``epoch_latest.pt``. Each time ``epoch_latest.pt`` holds an older epoch than ``epoch_N.pt``."""
    args = _clip_args(shards, tmp_path, "run", 4, "--save-most-recent")
    ckpts = tmp_path / "run" / "checkpoints"
    r = _run("sparo_clip.train", args, fault=("write", "tmp.pt", "epoch=2"))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert torch.load(ckpts / "epoch_latest.pt", weights_only=True)["epoch"] == 1
    good = (ckpts / "epoch_2.pt").read_bytes()
    assert torch.load(ckpts / "epoch_2.pt", weights_only=True)["epoch"] == 2

    r = _run("sparo_clip.train", [*args, "--resume", "latest"], fault=("rename", "tmp.pt", "epoch=3"))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    log = (tmp_path / "run" / "out.log").read_text()
    assert f"resuming from {ckpts / 'epoch_2.pt'} (epoch 2, the newest good checkpoint)" in log
    assert (ckpts / "epoch_2.pt").read_bytes() == good  # never trained again, never overwritten
    assert torch.load(ckpts / "epoch_latest.pt", weights_only=True)["epoch"] == 1  # still the first run's
    assert torch.load(ckpts / "tmp.pt", weights_only=True)["epoch"] == 3  # written whole, never renamed

    r = _run("sparo_clip.train", [*args, "--resume", "latest"])
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "run" / "out.log").read_text()
    assert "(epoch 3, the newest good checkpoint)" in log
    assert (ckpts / "epoch_2.pt").read_bytes() == good
    assert _orphans(ckpts) == []
    for epoch in (3, 4):
        _assert_same(_weights(ckpts / f"epoch_{epoch}.pt"), _weights(clip_reference / f"epoch_{epoch}.pt"))
    _assert_same(_weights(ckpts / "epoch_latest.pt"), _weights(clip_reference / "epoch_4.pt"))


def test_clip_full_disk_while_saving_is_one_line_and_keeps_what_was_saved(shards, tmp_path):
    args = _clip_args(shards, tmp_path, "run", 1)
    assert _run("sparo_clip.train", args).returncode == 0
    ckpts = tmp_path / "run" / "checkpoints"
    first = (ckpts / "epoch_1.pt").read_bytes()
    more = [*args, "--epochs", "2", "--resume", "latest"]
    r = _run("sparo_clip.train", more, limit=len(first) // 2)  # every file smaller than a checkpoint
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    assert last.startswith(f"sparo-clip train: error: cannot write {ckpts / 'epoch_2.pt'}: File too large"), (
        last
    )
    assert (ckpts / "epoch_1.pt").read_bytes() == first
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_1.pt"]  # no torn file, no temporary file


# --------------------------------------------------------------------------------------------------- DINO


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return class_folder(tmp_path_factory.mktemp("dino") / "imgs", {"a": 8, "b": 8})


@pytest.fixture(scope="module")
def dino_reference(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dino-ref") / "run"
    r = _run("sparo_clip.dino.train", [*DINO_TINY, "--train-data", str(images), "--output", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "checkpoints"


def test_dino_killed_while_writing_a_step_checkpoint(images, dino_reference, tmp_path):
    out = tmp_path / "run"
    args = [*DINO_TINY, "--train-data", str(images), "--output", str(out)]
    r = _run("sparo_clip.dino.train", args, fault=("write", "step_00000003.pt", "step=3"))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["step_00000001.pt", "step_00000002.pt"]
    assert len(_orphans(ckpts)) == 1
    r = _run("sparo_clip.dino.train", args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {ckpts / 'step_00000002.pt'} at step 2" in r.stderr
    assert "the temporary file of an interrupted checkpoint write" in r.stderr
    assert _orphans(ckpts) == []
    final = "step_00000008.pt"
    for net in ("student", "teacher"):
        _assert_same(_weights(ckpts / final, net), _weights(dino_reference / final, net))


def test_dino_full_disk_while_saving_is_one_line_and_keeps_what_was_saved(images, tmp_path):
    out = tmp_path / "run"
    args = [*DINO_TINY, "--train-data", str(images), "--output", str(out)]
    assert _run("sparo_clip.dino.train", [*args, "--max-steps", "1"]).returncode == 0
    ckpts = out / "checkpoints"
    first = (ckpts / "step_00000001.pt").read_bytes()
    r = _run("sparo_clip.dino.train", [*args, "--max-steps", "2"], limit=len(first) // 2)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"sparo-dino train: error: cannot write {ckpts / 'step_00000002.pt'}: File too large"
    )
    assert (ckpts / "step_00000001.pt").read_bytes() == first
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000001.pt"]
