"""Reliability, second pass: what each fix promises, on tiny real runs (the bad-input table is tests/test_bad_inputs.py,
the kills and full disks tests/test_resume_faults.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch

from sparo_clip.checkpoints.files import (
    atomic_save,
    load_checkpoint_file,
    newest_state,
    remove_orphan_temporaries,
)
from sparo_clip.checkpoints.loading import check_finite_weights
from sparo_clip.dino import train as dino_train
from sparo_clip.errors import CheckpointError, ConfigError, DataError, WriteError
from sparo_clip.eval import cli as eval_cli
from sparo_clip.inputs import check_finite_numbers, load_json
from sparo_clip.models.param_count import check_training_memory, meta_model
from sparo_clip.training.entry import main as train_main
from sparo_clip.training.entry import prepare

from .eval_helpers import class_folder, noise_image, save_checkpoint, write_csv, write_tar
from .train_helpers import base_args, make_shards


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err), err
    return err[-1]


# ------------------------------------------------------------------------------------- checkpoint files


def test_newest_state_goes_by_the_recorded_epoch_not_the_name(tmp_path):
    atomic_save({"epoch": 1}, tmp_path / "epoch_latest.pt")  # a kill kept it from being replaced
    atomic_save({"epoch": 2}, tmp_path / "epoch_2.pt")
    (tmp_path / "epoch_3.pt").write_bytes(b"torn")
    path, epoch, skipped = newest_state(
        [tmp_path / n for n in ("epoch_latest.pt", "epoch_3.pt", "epoch_2.pt")], "epoch"
    )
    assert (path, epoch) == (tmp_path / "epoch_2.pt", 2)
    assert [p.name for p, _ in skipped] == ["epoch_3.pt"]


def test_orphan_temporaries_of_atomic_writes_are_removed_and_nothing_else(tmp_path):
    orphan = tmp_path / ".epoch_2.pt.k3j_x9a1.tmp"
    orphan.write_bytes(b"half a checkpoint")
    keep = [tmp_path / "tmp.pt", tmp_path / "notes.tmp", tmp_path / "epoch_1.pt"]
    for p in keep:
        p.write_bytes(b"x")
    assert remove_orphan_temporaries(tmp_path) == [orphan]
    assert not orphan.exists() and all(p.exists() for p in keep)


def test_a_write_that_fails_is_one_line_and_replaces_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WriteError, match="cannot write .*afile/sub/ckpt.pt"):
        atomic_save({"w": torch.ones(2)}, tmp_path / "afile" / "sub" / "ckpt.pt")
    with pytest.raises(CheckpointError, match="is a folder; give a checkpoint file"):
        load_checkpoint_file(tmp_path)


def test_non_finite_weights_are_named(tmp_path):
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")]), "c": torch.tensor(float("-inf")),
             "steps": torch.tensor(3)}  # fmt: skip
    with pytest.raises(
        CheckpointError, match=r"x has non-finite values \(NaN or inf\) in 2 of its 3 tensors: b, c"
    ):
        check_finite_weights(state, "x")
    check_finite_weights(state, "x", allow=True)  # a warning only
    check_finite_weights({"a": torch.ones(3)}, "x")


def test_non_finite_numbers_and_json_are_refused():
    import argparse

    with pytest.raises(ConfigError, match="--lr nan: must be a finite number"):
        check_finite_numbers(argparse.Namespace(lr=float("nan"), epochs=3))
    with pytest.raises(ConfigError, match="--image-mean 0.5 inf: must be a finite number"):
        check_finite_numbers(argparse.Namespace(image_mean=[0.5, float("inf")]))
    for text in ('{"a": NaN}', '{"a": -Infinity}', '{"a": 1e999}'):
        with pytest.raises(ConfigError, match="is not allowed; numbers must be finite"):
            load_json(text, "--x")
    assert load_json('{"a": 1.5}', "--x") == {"a": 1.5}


def test_memory_estimate_refuses_absurd_sizes_with_the_number():
    huge = meta_model("test-SPARO", {"embed_dim": 16_000_000_000, "sparo_cfg": {"num_slots": 1_000_000_000}})
    with pytest.raises(
        ConfigError, match=r"4,224,003,277,985 parameters; training it needs at least 62,9.*GiB"
    ):
        check_training_memory(huge, "cpu", "--override-model-config")
    assert check_training_memory(meta_model("test-SPARO"), "cpu", "--model") == 3_294_881 * 16


# ------------------------------------------------------------------------------------------ CLIP training


@pytest.mark.slow  # two training runs
def test_resume_latest_takes_the_newest_recorded_epoch_and_keeps_it(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    logs = tmp_path / "logs"
    args = base_args(pattern, logs, "run", batch_size=8, num_samples=8, epochs=2, save_most_recent=True)
    assert train_main(args) == 0
    ckpts = logs / "run" / "checkpoints"
    shutil.copyfile(
        ckpts / "epoch_1.pt", ckpts / "epoch_latest.pt"
    )  # as a kill during its replacement leaves it
    good = (ckpts / "epoch_2.pt").read_bytes()
    assert train_main([*args, "--epochs", "3", "--resume", "latest"]) == 0
    log = (logs / "run" / "out.log").read_text()
    assert f"resuming from {ckpts / 'epoch_2.pt'} (epoch 2, the newest good checkpoint)" in log
    assert "(epoch 2)" in log.split("=> resuming checkpoint")[1].splitlines()[0]
    assert (ckpts / "epoch_2.pt").read_bytes() == good  # epoch 2 was not trained again
    assert torch.load(ckpts / "epoch_latest.pt", weights_only=True)["epoch"] == 3


def test_a_folder_with_checkpoints_is_not_overwritten_by_a_new_run(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    ckpts = tmp_path / "logs" / "taken" / "checkpoints"
    ckpts.mkdir(parents=True)
    atomic_save({"epoch": 5}, ckpts / "epoch_5.pt")  # no out.log: a run copied without its log
    other = tmp_path / "other.pt"
    save_checkpoint(other)
    args = base_args(pattern, tmp_path / "logs", "taken", num_samples=8)
    assert train_main([*args, "--resume", str(other)]) == 2
    assert "a run of that name already exists" in _err_line(capsys)
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_5.pt"]


def test_a_resumed_run_failing_before_its_first_step_restores_what_it_rewrote(tmp_path, capsys):
    from .train_helpers import damage_shard

    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    logs = tmp_path / "logs"
    args = base_args(pattern, logs, "run", batch_size=4, num_samples=8)
    assert train_main(args) == 0
    run = logs / "run"
    before = {
        p: p.read_bytes()
        for p in (run / "params.txt", run / "model_config.json", run / "checkpoints" / "epoch_1.pt")
    }
    files = sorted(run.rglob("*"))
    for shard in sorted((tmp_path / "data").glob("*.tar")):
        damage_shard(shard, "truncate")  # headers read; no sample does: the run ends before a step
    assert train_main([*args, "--epochs", "2", "--resume", "latest"]) == 1
    assert "0 of 2 shards readable" in _err_line(capsys)
    assert sorted(run.rglob("*")) == files
    assert all(p.read_bytes() == data for p, data in before.items())


def test_a_new_run_failing_before_its_first_step_leaves_no_folder(tmp_path, capsys):
    from .train_helpers import damage_shard

    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    for shard in sorted((tmp_path / "data").glob("*.tar")):
        damage_shard(shard, "truncate")
    assert train_main(base_args(pattern, tmp_path / "logs" / "new", "run", batch_size=4, num_samples=8)) == 1
    assert "0 of 2 shards readable" in _err_line(capsys)
    assert not (tmp_path / "logs").exists()  # the logs folder was created by the run: taken back whole


def test_csv_images_are_checked_before_and_skipped_while_training(tmp_path, capsys):
    rows = [(str(noise_image(tmp_path / "img" / f"{i}.png", i)), f"picture {i}") for i in range(8)]
    (tmp_path / "img" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # exists, cannot be decoded
    csv = write_csv(tmp_path / "train.csv", rows)
    args = base_args(str(csv), tmp_path / "logs", "csv", batch_size=4, num_samples=8)
    args[args.index("--dataset-type") + 1] = "csv"
    assert train_main(args) == 0
    log = (tmp_path / "logs" / "csv" / "out.log").read_text()
    assert (
        f"skipping unreadable training image (row 4): image {tmp_path / 'img' / '3.png'} cannot be read"
        in log
    )
    (tmp_path / "img" / "5.png").unlink()
    assert train_main([*args[:-2], "--name", "csv2"]) == 2
    assert "1 of the 8 image paths in" in _err_line(capsys)
    assert not (tmp_path / "logs" / "csv2").exists()


def test_memory_check_can_be_overridden(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    huge = json.dumps({"embed_dim": 16_000_000_000, "sparo_cfg": {"num_slots": 1_000_000_000}})
    args = base_args(pattern, tmp_path / "logs", "huge", num_samples=8, override_model_config=huge)
    with pytest.raises(ConfigError, match="training it needs at least"):
        prepare(args)
    prepare([*args, "--no-memory-check"])  # checked as far as it can be without allocating it


def test_shards_without_usable_samples_say_what_they_hold(tmp_path):
    from sparo_clip.training.shards import PassRules, shard_samples

    write_tar(tmp_path / "a.tar", [("k0", {"txt": b"a caption", "json": b"{}"})])
    with pytest.raises(DataError, match=r"a.tar \(no usable samples .*\); found .json, .txt\)"):
        list(shard_samples([{"url": str(tmp_path / "a.tar")}], lambda e: True, PassRules(batch_size=1)))


# ------------------------------------------------------------------------------------------------- eval


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    t = tmp_path_factory.mktemp("probe")
    ckpt = save_checkpoint(t / "ckpt.pt")
    return t, ckpt


def _probe(task, train, val, ckpt, *extra):
    return [task, "--model", "test-SPARO", "--pretrained", str(ckpt), "--train", str(train), "--val", str(val),
            "--workers", "0", "--k", "1", *extra] if task == "knn" else [
            task, "--model", "test-SPARO", "--pretrained", str(ckpt), "--train", str(train), "--val", str(val),
            "--workers", "0", "--wd", "1e-3", "--max-iter", "5", *extra]  # fmt: skip


@pytest.mark.parametrize("task", ["knn", "linear"])
def test_probes_skip_and_list_unreadable_images(probe_data, tmp_path, capsys, task):
    _, ckpt = probe_data
    train = class_folder(tmp_path / "train", {"a": 3, "b": 3})
    val = class_folder(tmp_path / "val", {"a": 2, "b": 2}, seed=5)
    (train / "b" / "1.png").write_bytes(b"")  # zero bytes
    (val / "a" / "0.png").write_bytes(b"GIF89a")  # a truncated picture
    out = tmp_path / "r.json"
    assert eval_cli.main([*_probe(task, train, val, ckpt, "--cache-dir", ""), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["data"]["num_train"] == 5 and result["data"]["num_val"] == 3
    assert result["skipped_images"]["count"] == 2
    files = " ".join(result["skipped_images"]["files"])
    assert str(train / "b" / "1.png") in files and str(val / "a" / "0.png") in files
    assert eval_cli.main([*_probe(task, train, val, ckpt, "--cache-dir", ""), "--strict"]) == 2
    line = _err_line(capsys)
    assert "cannot be read" in line and "(--strict; without it unreadable images are skipped)" in line


def test_feature_cache_follows_image_content(probe_data, tmp_path):
    _, ckpt = probe_data
    train = class_folder(tmp_path / "train", {"a": 2, "b": 2})
    val = class_folder(tmp_path / "val", {"a": 1, "b": 1}, seed=7)
    shutil.copyfile(train / "a" / "0.png", val / "a" / "0.png")  # val images equal to a training image
    shutil.copyfile(train / "b" / "0.png", val / "b" / "0.png")
    cache = tmp_path / "cache"

    def top1(cache_dir):
        out = tmp_path / "r.json"
        assert (
            eval_cli.main(
                [*_probe("knn", train, val, ckpt, "--cache-dir", str(cache_dir)), "--output", str(out)]
            )
            == 0
        )
        return json.loads(out.read_text())["metrics"]["k=1"]["top1"]

    assert top1(cache) == 1.0
    # swap the two val images in place: both are now nearest to the other class
    a, b = (val / "a" / "0.png").read_bytes(), (val / "b" / "0.png").read_bytes()
    (val / "a" / "0.png").write_bytes(b)
    (val / "b" / "0.png").write_bytes(a)
    assert top1(cache) == top1("") == 0.0


def test_allow_nonfinite_loads_with_a_warning(probe_data, tmp_path, capsys, caplog):
    _, ckpt = probe_data
    state = torch.load(ckpt, weights_only=True)
    state["logit_scale"] = torch.tensor(float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    folder = class_folder(tmp_path / "f", {"a": 2, "b": 2})
    argv = _probe("knn", folder, folder, bad, "--cache-dir", "")
    assert eval_cli.main(argv) == 2
    assert f"checkpoint {bad} has non-finite values (NaN or inf) in 1 of its" in _err_line(capsys)
    with caplog.at_level(logging.WARNING):
        assert eval_cli.main([*argv, "--allow-nonfinite"]) == 0
    assert "non-finite values" in caplog.text


def test_k_larger_than_the_training_set_warns(probe_data, tmp_path, caplog):
    _, ckpt = probe_data
    folder = class_folder(tmp_path / "f", {"a": 2, "b": 2})
    with caplog.at_level(logging.WARNING):
        assert (
            eval_cli.main([*_probe("knn", folder, folder, ckpt, "--cache-dir", "")[:-2], "--k", "1,20"]) == 0
        )
    assert "--k 20: more neighbours than the 4 training images in --train" in caplog.text


# ------------------------------------------------------------------------------------------------- DINO


DINO = ["--model", "tiny_sparo_dino", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--local-crops", "2",
        "--log-every", "1", "--save-every", "100"]  # fmt: skip


def _rows(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_dino_skips_unreadable_images_names_and_counts_them(tmp_path, caplog, capsys):
    images = class_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    (images / "a" / "1.png").write_bytes(b"")
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert dino_train.main([*DINO, "--train-data", str(images), "--output", str(out)]) == 0
    assert f"skipping: image {images / 'a' / '1.png'} cannot be read" in caplog.text
    assert _rows(out)[-1]["skipped_images"] == 1  # once per epoch: one epoch of 2 steps
    assert (
        dino_train.main(
            [*DINO, "--train-data", str(images), "--output", str(tmp_path / "strict"), "--strict"]
        )
        == 1
    )
    line = _err_line(capsys)
    assert (
        line.startswith("sparo-dino train: error: image ")
        and "1.png cannot be read" in line
        and "--strict" in line
    )


@pytest.mark.timeout(120)
def test_dino_skips_unreadable_shards_and_images_in_shards(tmp_path, caplog):
    from .eval_helpers import png_bytes

    good = [(f"k{i}", {"png": png_bytes(i)}) for i in range(6)] + [("bad", {"png": b"not a png"})]
    write_tar(tmp_path / "s-0.tar", good)
    (tmp_path / "s-1.tar").write_bytes(b"\x00" * 100 + b"garbage" * 100)  # a corrupt shard
    out = tmp_path / "run"
    args = [
        *DINO,
        "--train-data",
        str(tmp_path / "s-{0..1}.tar"),
        "--train-num-samples",
        "16",
        "--output",
        str(out),
    ]
    with caplog.at_level(logging.WARNING):
        assert dino_train.main(args) == 0
    assert "skipping: shard " in caplog.text and "s-1.tar cannot be read" in caplog.text
    assert "s-0.tar:bad.png cannot be read" in caplog.text
    assert _rows(out)[-1]["skipped_images"] >= 2


@pytest.mark.timeout(120)
def test_dino_shards_that_are_all_unreadable_end_in_bounded_time(tmp_path, capsys):
    write_tar(tmp_path / "s-0.tar", [(f"k{i}", {"png": b"not a png"}) for i in range(2)])
    for i in (1, 2):
        (tmp_path / f"s-{i}.tar").write_bytes(b"garbage" * 200)
    args = [*DINO, "--train-data", str(tmp_path / "s-{0..2}.tar"), "--train-num-samples", "8", "--output",
            str(tmp_path / "run")]  # fmt: skip
    assert dino_train.main(args) == 1
    assert "50 batches in a row for step 0 held no readable image" in _err_line(capsys)
    assert not (tmp_path / "run").exists()  # failed before its first step


@pytest.mark.slow  # two training runs
def test_dino_resume_goes_by_the_recorded_step_and_cleans_orphans(tmp_path, caplog):
    images = class_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    out = tmp_path / "run"
    args = [*DINO, "--train-data", str(images), "--output", str(out), "--save-every", "1", "--keep", "10",
            "--epochs", "2"]  # fmt: skip
    assert dino_train.main([*args, "--max-steps", "2"]) == 0
    ckpts = out / "checkpoints"
    shutil.copyfile(ckpts / "step_00000001.pt", ckpts / "step_00000099.pt")  # named later, records step 1
    (ckpts / ".step_00000003.pt.abcd1234.tmp").write_bytes(b"half")
    with caplog.at_level(logging.INFO):
        assert dino_train.main(args) == 0
    assert f"resumed from {ckpts / 'step_00000002.pt'} at step 2" in caplog.text
    assert "the temporary file of an interrupted checkpoint write" in caplog.text
    assert not (ckpts / ".step_00000003.pt.abcd1234.tmp").exists()
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_dino_read_only_output_is_one_line(tmp_path, capsys):
    images = class_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert dino_train.main([*DINO, "--train-data", str(images), "--output", str(out)]) == 2
        assert f"--output {out}: cannot write into this folder" in _err_line(capsys)
    finally:
        out.chmod(0o755)
