"""Training runs given bad data, bad flags, interrupted writes and hostile files (tiny models, seconds each).

Every hang is tested on a subprocess with a hard timeout.
"""

import importlib.util
import os

import pytest
import torch

from sparo_clip.training.entry import main

from .train_helpers import base_args, damage_shard, make_shards, run_train_cli, set_captions

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _run(args, timeout=120):
    return run_train_cli(args, timeout)


# ----------------------------------------------------------------------------------------------- data


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_no_readable_shard_fails_before_work(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    for shard in sorted((tmp_path / "data").glob("*.tar")):
        damage_shard(shard, "random")
    r = _run(base_args(pattern, tmp_path / "logs", "none", num_samples=8))  # looped forever before
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--train-data: 0 of 2 shards readable: " in r.stderr
    assert "shard-000.tar" in r.stderr and "shard-001.tar" in r.stderr
    assert not (tmp_path / "logs" / "none").exists()


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_shards_unreadable_after_their_first_header_end_the_run_in_bounded_time(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    for shard in sorted((tmp_path / "data").glob("*.tar")):
        damage_shard(shard, "truncate")  # the first header reads; no sample does
    r = _run(base_args(pattern, tmp_path / "logs", "trunc", batch_size=4, num_samples=8))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "error: 0 of 2 shards readable in the main process's data loader of rank 0: " in r.stderr
    assert "shard-000.tar" in r.stderr and "shard-001.tar" in r.stderr


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_fewer_samples_than_a_batch_fails_before_training(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=5)
    r = _run(base_args(pattern, tmp_path / "logs", "small", batch_size=64, num_samples=10))  # hung before
    assert r.returncode == 2, r.stderr[-2000:]
    assert (
        "--batch-size 64: a data worker can get as few as 10 samples (2 shards, 10 samples per sizes.json"
        in r.stderr
    )
    assert not (tmp_path / "logs" / "small").exists()


@pytest.mark.slow  # an end-to-end run in its own process(es)
@pytest.mark.parametrize("workers", [0, 2])
def test_fewer_samples_than_a_batch_without_sizes_ends_in_bounded_time(tmp_path, workers):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=5)
    (tmp_path / "data" / "sizes.json").unlink()  # counts unknown before the run: found by the loader
    r = _run(base_args(pattern, tmp_path / "logs", "small", batch_size=64, num_samples=10, workers=workers))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "samples from its " in r.stderr and "fewer than one batch (--batch-size 64)" in r.stderr
    assert "Traceback" not in r.stderr


def test_broken_shards_among_good_ones_are_named_and_counted(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=4, per_shard=8)
    damage_shard(data / "shard-001.tar", "random")
    damage_shard(data / "shard-002.tar", "tail")
    damage_shard(data / "shard-003.tar", "cut")
    assert main(base_args(pattern, logs, "broken", batch_size=4, num_samples=16)) == 0
    log = (logs / "broken" / "out.log").read_text()
    assert f"shard {data / 'shard-001.tar'}: unreadable (" in log
    assert "read 0 samples, skipped 8 of its 8 samples (sizes.json)" in log
    assert f"shard {data / 'shard-002.tar'}: unreadable (3,000 unreadable bytes after byte 4,096)" in log
    assert f"shard {data / 'shard-003.tar'}: unreadable (no end-of-archive marker after byte 4,096" in log
    assert log.count("read 2 samples, skipped 6 of its 8 samples (sizes.json)") >= 2
    assert (logs / "broken" / "checkpoints" / "epoch_1.pt").is_file()


def test_blank_captions_are_skipped_with_a_count(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=8)
    set_captions(data / "shard-000.tar", "  \n", count=3)
    assert main(base_args(pattern, logs, "blank", batch_size=4, num_samples=8)) == 0
    log = (logs / "blank" / "out.log").read_text()
    assert f"shard {data / 'shard-000.tar'}: skipped 3 sample(s) with a blank caption" in log


# ---------------------------------------------------------------------------------------- checkpoints


def _ckpt(logs, name, epoch):
    return logs / name / "checkpoints" / f"epoch_{epoch}.pt"


def test_interrupted_checkpoint_write_leaves_no_torn_file(tmp_path, monkeypatch):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=4)
    args = base_args(pattern, logs, "kill", batch_size=8, num_samples=8, epochs=2)
    real_save = torch.save

    def killed_while_writing_epoch_2(obj, f, *a, **kw):
        if not (isinstance(obj, dict) and obj.get("epoch") == 2):
            return real_save(obj, f, *a, **kw)
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 half a checkpoint")
        else:
            f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(torch, "save", killed_while_writing_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.setattr(torch, "save", real_save)
    folder = logs / "kill" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_1.pt"]  # no torn epoch_2.pt, no temp file
    assert main([*args, "--resume", "latest"]) == 0
    assert torch.load(_ckpt(logs, "kill", 2), weights_only=True)["epoch"] == 2


def test_resume_latest_skips_unreadable_checkpoints(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=4)
    args = base_args(pattern, logs, "skip", batch_size=8, num_samples=8, epochs=3, save_most_recent=True)
    assert main([*args, "--epochs", "2"]) == 0
    marker = tmp_path / "ran"
    _ckpt(logs, "skip", 2).write_bytes(b"")  # killed mid-write by an older version
    torch.save({"epoch": 9, "state_dict": _Evil(marker)}, logs / "skip" / "checkpoints" / "epoch_latest.pt")
    assert main([*args, "--resume", "latest"]) == 0
    log = (logs / "skip" / "out.log").read_text()
    assert "--resume latest: skipping checkpoint" in log and "epoch_latest.pt holds objects other than" in log
    assert f"--resume latest: skipping checkpoint {_ckpt(logs, 'skip', 2)} is empty" in log
    assert f"resuming from {_ckpt(logs, 'skip', 1)} (epoch 1, the newest good checkpoint)" in log
    assert not marker.exists()
    assert torch.load(_ckpt(logs, "skip", 3), weights_only=True)["epoch"] == 3


def test_resume_latest_with_no_readable_checkpoint_stops_with_one_line(tmp_path, capsys):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=4)
    args = base_args(pattern, logs, "none", batch_size=8, num_samples=8, epochs=2)
    assert main(args) == 0
    for epoch in (1, 2):
        _ckpt(logs, "none", epoch).write_bytes(b"not a checkpoint")
    capsys.readouterr()
    params = (logs / "none" / "params.txt").read_bytes()
    assert main([*args, "--resume", "latest"]) == 2  # refused before the run starts
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"sparo-clip train: error: --resume latest: no readable checkpoint in {logs / 'none'}"
    )
    assert "(2 unreadable)" in err
    assert (logs / "none" / "params.txt").read_bytes() == params


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: code run by the load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_unpickles_foreign_objects(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"epoch": 1, "state_dict": _Evil(marker), "optimizer": {}}, evil)
    assert main([*base_args(pattern, tmp_path / "logs", "evil", num_samples=8), "--resume", str(evil)]) == 2
    assert "--resume: checkpoint" in capsys.readouterr().err and not marker.exists()
    assert not (tmp_path / "logs" / "evil").exists()


def test_resume_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "again", num_samples=8)
    assert main([*args, "--resume", str(tmp_path / "nope.pt")]) == 2
    assert f"--resume: checkpoint {tmp_path / 'nope.pt'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "again").exists()  # the rerun is not blocked
    other = tmp_path / "clip.pt"
    import open_clip

    torch.save(open_clip.create_model("test-CLIP").state_dict(), other)
    assert main([*args, "--resume", str(other)]) == 2
    assert f"--resume: {other} is not a checkpoint of --model test-SPARO: " in capsys.readouterr().err
    assert main(args) == 0


# --------------------------------------------------------------------------------- precision and loss


@pytest.mark.skipif(torch.cuda.is_available(), reason="half precision is refused on CPU only")
@pytest.mark.parametrize("precision", ["fp16", "pure_fp16"])
def test_half_precision_on_cpu_is_refused(tmp_path, capsys, precision):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "half", num_samples=8) + ["--precision", precision]
    assert main(args) == 2
    assert f"--precision {precision}: half precision is not supported on CPU" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "half").exists()


def test_non_finite_loss_stops_before_saving(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=8)
    args = base_args(pattern, tmp_path / "logs", "nan", batch_size=4, num_samples=16, opt="timm/momentum")
    args[args.index("--lr") + 1] = "1e30"  # the first step sends the weights to infinity
    assert main([*args, "--momentum", "0", "--wd", "0"]) == 1
    assert "error: the training loss is nan at batch 2 of this run" in capsys.readouterr().err
    assert not any((tmp_path / "logs" / "nan" / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------ reproducibility


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_same_command_same_worker_count_same_weights(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=4, per_shard=8)
    logs = tmp_path / "logs"
    for name in ("a", "b"):
        r = _run(base_args(pattern, logs, name, batch_size=4, num_samples=32, workers=2), timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (torch.load(_ckpt(logs, n, 1), weights_only=True)["state_dict"] for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------- bad flags, at once


def _file_as_logs_parent(tmp_path):
    (tmp_path / "afile").write_text("x")
    return ["--logs-dir", str(tmp_path / "afile" / "logs")]


BAD_FLAGS = [
    (
        ["--override-model-config", '{"text_cfg": {"heads": 3}}'],
        "text_cfg.heads=3 does not divide text_cfg.width=",
    ),
    (["--workers", "4"], "--workers 4: 4 x 1 process(es) = 4 data workers but only 2 shard(s)"),
    (["--model", "no-such-model"], "--model: model 'no-such-model' cannot be built"),
    (["--train-num-samples", "0"], "--train-num-samples 0: must be a positive number of samples"),
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--dataset-type", "csv"], "is a tar shard, but --dataset-type is csv; use webdataset"),
    ("file-as-logs", "is a file, not a folder"),
    (["--lr", "-1"], "--lr -1.0: must be zero or more"),
    (["--warmup", "-5"], "--warmup -5: must be zero or more"),
    (["--force-image-size", "0"], "--force-image-size 0: image sizes must be positive"),
]
if importlib.util.find_spec("tensorboard") is None:  # open_clip_train would assert after creating the run
    BAD_FLAGS.append(
        (["--report-to", "tensorboard"], "--report-to tensorboard: tensorboard is not installed")
    )


@pytest.mark.parametrize("extra, message", BAD_FLAGS, ids=[m[:24] for _, m in BAD_FLAGS])
def test_bad_flags_fail_at_once_in_one_line(tmp_path, capsys, extra, message):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=8)
    extra = _file_as_logs_parent(tmp_path) if extra == "file-as-logs" else extra
    assert main(base_args(pattern, tmp_path / "logs", "bad", num_samples=8, batch_size=4) + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "logs" / "bad").exists()


def test_bad_csv_and_imagenet_folders_fail_at_once(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(4):
        Image.new("RGB", (32, 32), (60 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"{tmp_path / 'img' / f'{i}.png'}\ta red square\n")
    good, wrong = tmp_path / "train.csv", tmp_path / "wrong.csv"
    good.write_text("filepath\ttitle\n" + "".join(rows))
    wrong.write_text("path,caption\n" + "".join(r.replace("\t", ",") for r in rows))
    (tmp_path / "emptyval").mkdir()
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    cases = [
        (
            base_args(str(wrong), tmp_path / "logs", "bad", num_samples=4, batch_size=2),
            "has no column(s) ['filepath', ",
        ),
        (
            base_args(str(good), tmp_path / "logs", "bad", num_samples=4, batch_size=8),
            "has 4 rows, fewer than one batch",
        ),
        (
            base_args(pattern, tmp_path / "logs", "bad", num_samples=8)
            + ["--imagenet-val", str(tmp_path / "emptyval")],
            "emptyval has no class sub-folders",
        ),
    ]
    for args, message in cases:
        if args[args.index("--train-data") + 1].endswith(".csv"):
            args[args.index("--dataset-type") + 1] = "csv"
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "logs" / "bad").exists()
    args = base_args(str(good), tmp_path / "logs", "good", num_samples=4, batch_size=2)
    args[args.index("--dataset-type") + 1] = "csv"
    assert main(args) == 0  # the same CSV with a batch it fills trains


def test_existing_run_name_is_refused_before_work(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    run = tmp_path / "logs" / "taken"
    run.mkdir(parents=True)
    (run / "out.log").write_text("an earlier run\n")
    assert main(base_args(pattern, tmp_path / "logs", "taken", num_samples=8)) == 2
    err = capsys.readouterr().err
    assert "--name taken: a run of that name already exists" in err and "{}" not in err
    assert (run / "out.log").read_text() == "an earlier run\n"
