"""Training through open_clip_train's loop via ``sparo_clip.training.entry`` (CPU, tiny configs, generated shards)."""

import json
import os
import signal
import subprocess
import sys
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F

import sparo_clip
from sparo_clip.training.entry import main

from .train_helpers import base_args, first_step_loss, load_shard_samples, make_shards, run_train_cli

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
# deterministic crops (whole image) so that two runs see identical pixels
NO_AUG = ["--aug-cfg", "scale=(1.0,1.0)", "ratio=(1.0,1.0)"]
SGD = dict(opt="timm/momentum", momentum=0, wd=0)  # update = -lr * gradient


def _run(args, timeout=240):
    return run_train_cli(args, timeout)


def _state(logs, name, epoch):
    ckpt = torch.load(logs / name / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)
    return ckpt, {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}


def _local_loss(model, images, texts, rows):
    """Rank-local CLIP loss (OpenCLIP's local_loss + gather_with_grad) of `rows` against the whole batch."""
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(texts, normalize=True)
    scale = model.logit_scale.exp()
    labels = torch.as_tensor(rows)
    per_image = scale * img[rows] @ txt.T
    per_text = scale * txt[rows] @ img.T
    return ((F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2).item()


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_torchrun_two_processes_match_one_process(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=4)
    flags = dict(num_samples=8, local_loss=True, gather_with_grad=True, **SGD)
    two = base_args(pattern, logs, "two", batch_size=4, **flags) + NO_AUG + ["--lr", "0.5"]
    one = base_args(pattern, logs, "one", batch_size=8, **flags) + NO_AUG + ["--lr", "0.5"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    r2 = subprocess.run(
        [*cmd, "-m", "sparo_clip.train", *two], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "world_size: 2" in (logs / "two" / "params.txt").read_text()
    r1 = _run(one)
    assert r1.returncode == 0, r1.stderr[-3000:]

    # gradients: one SGD step from the same seeded init gives the same parameters
    torch.manual_seed(0)
    init = open_clip.create_model("test-SPARO")
    _, s2 = _state(logs, "two", 1)
    _, s1 = _state(logs, "one", 1)
    moved = 0
    for name, p0 in init.state_dict().items():
        d1, d2 = s1[name] - p0, s2[name] - p0
        torch.testing.assert_close(d2, d1, atol=1e-5, rtol=1e-4, msg=name)
        moved += int(d1.abs().max() > 0)
    assert moved > 0.9 * len(s1)  # (nearly) every tensor was updated

    # loss: the 1-process loss is the global batch loss; rank 0 logged its local loss of one shard
    _, _, preprocess = open_clip.create_model_and_transforms("test-SPARO")
    tok = open_clip.get_tokenizer("test-SPARO")
    parts = [load_shard_samples(data, f"shard-{i:03d}.tar", preprocess, tok) for i in range(2)]
    images, texts = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    with torch.no_grad():
        global_loss = _local_loss(init, images, texts, list(range(8)))
        local = [_local_loss(init, images, texts, list(range(4 * i, 4 * i + 4))) for i in range(2)]
    assert first_step_loss(logs, "one") == pytest.approx(global_loss, abs=2e-4)
    assert sum(local) / 2 == pytest.approx(global_loss, abs=1e-5)
    assert min(abs(first_step_loss(logs, "two") - v) for v in local) < 2e-4


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_accum_freq_and_zeroshot_imagenet_in_training(tmp_path):
    from PIL import Image

    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=8)
    val = tmp_path / "imagenet" / "val"
    wnids = [f"n{i:08d}" for i in range(1000)]  # sorted, one folder per class as in ImageNet's val layout
    for i, wnid in enumerate(wnids):
        (val / wnid).mkdir(parents=True)
        Image.new("RGB", (32, 32), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(val / wnid / "a.png")
    v2 = tmp_path / "imagenetv2" / "ImageNetV2-matched-frequency"  # class-index folders, ImageNetV2's release
    for i in range(1000):
        (v2 / str(i)).mkdir(parents=True)
        Image.new("RGB", (32, 32), ((3 * i) % 256, i % 256, 90)).save(v2 / str(i) / "b.png")
    args = base_args(pattern, logs, "accum", batch_size=4, num_samples=16, accum_freq=2, zeroshot_frequency=1)
    assert main([*args, "--imagenet-val", str(val), "--imagenet-v2", str(v2.parent)]) == 0
    results = [
        json.loads(line)
        for line in (logs / "accum" / "checkpoints" / "results.jsonl").read_text().splitlines()
    ]
    metrics = results[-1]
    for split in ("imagenet-zeroshot-val", "imagenetv2-zeroshot-val"):
        assert 0.0 <= metrics[f"{split}-top1"] <= metrics[f"{split}-top5"] <= 1.0
    assert "Train Epoch: 0 [16/16" in (logs / "accum" / "out.log").read_text()  # 2 optimizer steps of 2x4
    # the training checkpoint loads with OpenCLIP's own factory
    model, _, _ = open_clip.create_model_and_transforms(
        "test-SPARO", pretrained=str(logs / "accum" / "checkpoints" / "epoch_1.pt")
    )
    assert isinstance(model, sparo_clip.SparoCLIP)


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_kill_after_first_checkpoint_then_resume_latest(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=8)
    args = base_args(pattern, logs, "resume", batch_size=8, num_samples=16, save_most_recent=True)
    ckpt_dir = logs / "resume" / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparo_clip.train", *[a if a != "1" else a for a in args], "--epochs", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while not (ckpt_dir / "epoch_latest.pt").exists():  # written atomically after epoch_1.pt
        assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first, _ = _state(logs, "resume", 1)
    done_epochs = torch.load(ckpt_dir / "epoch_latest.pt", weights_only=True)["epoch"]
    assert done_epochs < 200

    r = _run([*args, "--epochs", str(done_epochs + 2), "--resume", "latest"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "=> resuming checkpoint" in (logs / "resume" / "out.log").read_text()
    final = torch.load(ckpt_dir / f"epoch_{done_epochs + 2}.pt", weights_only=True)
    steps = [s["step"] for s in final["optimizer"]["state"].values()]
    # 2 optimizer steps per epoch; Adam's step counters carried over from the killed run's checkpoint
    assert all(int(s) == 2 * (done_epochs + 2) for s in steps)
    assert int(next(iter(first["optimizer"]["state"].values()))["step"]) == 2


def test_corrupt_shard_is_skipped_with_a_warning(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=4, per_shard=8)
    broken = data / "shard-001.tar"
    broken.write_bytes(broken.read_bytes()[:700])  # truncated mid-member
    args = base_args(pattern, logs, "corrupt", batch_size=4, num_samples=32)
    assert main(args) == 0
    log = (logs / "corrupt" / "out.log").read_text()
    assert "Handling webdataset error" in log
    assert (logs / "corrupt" / "checkpoints" / "epoch_1.pt").is_file()


def test_override_recorded_and_applied(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    logs = tmp_path / "logs"
    override = {"sparo_cfg": {"slot_norm": "sqrtsem:norm", "num_slots": 2, "slot_dim": 32}}
    args = base_args(pattern, logs, "ovr", num_samples=8, override_model_config=json.dumps(override))
    assert main(args) == 0
    params = (logs / "ovr" / "params.txt").read_text()
    assert f"override_model_config: {json.dumps(override)}" in params
    saved = json.loads((logs / "ovr" / "model_config.json").read_text())
    assert saved["model_cfg"]["sparo_cfg"]["slot_norm"] == "sqrtsem:norm"
    _, sd = _state(logs, "ovr", 1)
    assert sd["image_readout.query"].shape[:2] == (2, 1)  # 2 slots, one per head
    model = sparo_clip.create_model(
        "test-SPARO", pretrained=str(logs / "ovr" / "checkpoints" / "epoch_1.pt"), override_config=override
    )
    assert model.sparo_cfg.slot_norm == "sqrtsem:norm"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--override-model-config", "{not json"], "--override-model-config is not valid JSON"),
        (["--override-model-config", '{"sparo_cfg": {"bogus": 1}}'], "unknown sparo_cfg key(s) ['bogus']"),
        (["--override-model-config", '{"sparo_cfg": {"heads": 3}}'], "heads=3 does not divide num_slots=4"),
        (["--override-model-config", "[1, 2]"], "must be a JSON object"),
        (
            ["--max-params", "1000"],
            "--max-params: test-SPARO has 3,294,881 parameters, more than the budget of 1,000",
        ),
    ],
)
def test_bad_config_fails_before_training(tmp_path, capsys, extra, message):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "bad", num_samples=8) + extra
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "logs" / "bad").exists()  # nothing started


def test_missing_train_data_fails_at_once(tmp_path, capsys):
    args = base_args(str(tmp_path / "nowhere" / "shard-{000..003}.tar"), tmp_path / "logs", "missing")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--train-data: 4 of 4 path(s) do not exist" in err and "shard-000.tar" in err


def test_shards_without_captions_fail_at_once(tmp_path, capsys):
    import tarfile

    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    for shard in sorted((tmp_path / "data").glob("*.tar")):
        with tarfile.open(shard) as tar:
            keep = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".png")]
        with tarfile.open(shard, "w") as tar:
            import io

            for m, b in keep:
                tar.addfile(m, io.BytesIO(b))
    assert main(base_args(pattern, tmp_path / "logs", "nocap", num_samples=8)) == 2
    assert "has no '.txt' captions" in capsys.readouterr().err


def test_max_params_within_budget_trains(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "budget", num_samples=8, max_params=3_294_881)
    assert main(args) == 0
    assert "max_params: 3294881" in (tmp_path / "logs" / "budget" / "params.txt").read_text()


def test_imagenet_v2_reader_stands_in_for_a_run_only(tmp_path):
    """ImageNetV2Folder reads the release layout; it is ``imagenetv2_pytorch`` inside a run and nowhere else."""
    import sys

    from sparo_clip.training.run import ImageNetV2Folder

    assert "imagenetv2_pytorch" not in sys.modules  # nothing registers it at import or after a run
    from PIL import Image

    for i in (0, 999):
        (tmp_path / "ImageNetV2-matched-frequency" / str(i)).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ImageNetV2-matched-frequency" / str(i) / "x.png")
    data = ImageNetV2Folder(location=str(tmp_path), transform=None)
    assert sorted(data.targets) == [0, 999] and len(data) == 2
