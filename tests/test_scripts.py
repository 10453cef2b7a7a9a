"""The reference-recipe training scripts: environment checks, the recipe's flags, one end-to-end run."""

import os
import shlex
import subprocess
from pathlib import Path

import open_clip
import pytest

import sparo_clip

from .train_helpers import make_shards

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train_vitb32.sh", "train_vitb32_sparo.sh", "train_vitb16_sparo.sh", "train_vitb32_gap.sh"]
RECIPE = {
    "--warmup": "3600",
    "--batch-size": "512",
    "--accum-freq": "4",
    "--wd": "0.5",
    "--epochs": "25",
    "--workers": "4",
    "--precision": "amp_bfloat16",
    "--seed": "0",
    "--train-num-samples": "12825420",
    "--dataset-type": "webdataset",
    "--resume": "latest",
    "--save-frequency": "1",
    "--zeroshot-frequency": "1",
    "--log-every-n-steps": "1",
}


def _env(tmp_path, **extra):
    for d in ("cc12m", "cc3m", "val"):
        (tmp_path / d).mkdir(exist_ok=True)
    env = dict(os.environ, CC12M_DIR=str(tmp_path / "cc12m"), CC3M_DIR=str(tmp_path / "cc3m"))
    env.update(IMAGENET_VAL=str(tmp_path / "val"), NUM_GPUS="8", DRY_RUN="1")
    env.update(extra)
    return env


def _run(script, env, *args):
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / script), *args], capture_output=True, text=True, env=env
    )


def recipe_command(tmp_path, script):
    """The command a script prints with DRY_RUN=1, checked against the reference recipe: (argv, flags)."""
    r = _run(script, _env(tmp_path))
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    flags = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    for flag, value in RECIPE.items():
        assert flags.get(flag) == value, flag
    for flag in ("--grad-checkpointing", "--local-loss", "--gather-with-grad", "--save-most-recent"):
        assert flag in argv
    return argv, flags


@pytest.mark.parametrize("script", SCRIPTS)
def test_recipe_flags(tmp_path, script):
    argv, flags = recipe_command(tmp_path, script)
    assert flags["--nproc_per_node"] == "8"
    assert (
        flags["--train-data"]
        == f"{tmp_path}/cc12m/{{00000..01242}}.tar::{tmp_path}/cc3m/{{00000..00331}}.tar"
    )
    assert "--logs" not in argv and "--logs-dir" in argv  # torchrun cannot take --logs
    if "sparo" in script:
        budget = {"train_vitb32_sparo.sh": "151277313", "train_vitb16_sparo.sh": "149620737"}[script]
        assert flags["--max-params"] == budget
    if "gap" in script:
        assert (
            flags["--override-model-config"]
            == '{"vision_cfg": {"pool_type": "avg", "final_ln_after_pool": true}}'
        )


@pytest.mark.parametrize(
    "unset, message",
    [
        ("CC12M_DIR", "CC12M_DIR is not set"),
        ("CC3M_DIR", "CC3M_DIR is not set"),
        ("IMAGENET_VAL", "IMAGENET_VAL"),
    ],
)
def test_missing_environment_is_a_clear_error(tmp_path, unset, message):
    env = _env(tmp_path)
    del env[unset]
    r = _run("train_vitb32_sparo.sh", env)
    assert r.returncode == 2 and message in r.stderr


def test_missing_gpu_count_without_nvidia_smi(tmp_path):
    env = _env(tmp_path, PATH="/usr/bin:/bin")
    del env["NUM_GPUS"]
    if subprocess.run(["bash", "-c", "command -v nvidia-smi"], env=env, capture_output=True).returncode == 0:
        pytest.skip("nvidia-smi is present")
    r = _run("train_vitb32.sh", env)
    assert r.returncode == 2 and "set NUM_GPUS" in r.stderr


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_script_runs_end_to_end_through_torchrun(tmp_path):
    """The SPARO script with the recipe, shrunk by extra flags (later flags win), on generated shards."""
    make_shards(tmp_path / "cc12m", num_shards=2, per_shard=4)
    make_shards(tmp_path / "cc3m", num_shards=2, per_shard=4)
    for d in ("cc12m", "cc3m"):  # name shards as the recipe expects
        for i, f in enumerate(sorted((tmp_path / d).glob("shard-*.tar"))):
            f.rename(f.with_name(f"{i:05d}.tar"))
        (tmp_path / d / "sizes.json").write_text('{"00000.tar": 4, "00001.tar": 4}')
    # the recipe lists 1243 + 332 shards: give it exactly two of each through its own flag
    env = _env(tmp_path, NUM_GPUS="1", DRY_RUN="0", LOGS_DIR=str(tmp_path / "logs"), MASTER_PORT="29541")
    pattern = f"{tmp_path}/cc12m/{{00000..00001}}.tar::{tmp_path}/cc3m/{{00000..00001}}.tar"
    from PIL import Image

    for i in range(2):  # zero-shot is switched off below; the folder only has to be a valid ImageFolder
        (tmp_path / "val" / f"n{i:08d}").mkdir()
        Image.new("RGB", (32, 32), (i % 256, 0, 0)).save(tmp_path / "val" / f"n{i:08d}" / "a.png")
    shrink = ["--model", "test-SPARO", "--train-data", pattern, "--train-num-samples", "16", "--batch-size", "4",
              "--accum-freq", "1", "--epochs", "1", "--workers", "0", "--precision", "fp32", "--warmup", "1",
              "--max-params", "3294881", "--zeroshot-frequency", "0"]  # fmt: skip
    r = _run("train_vitb32_sparo.sh", env, *shrink)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "logs" / "vitb32-sparo" / "checkpoints" / "epoch_1.pt"
    model, _, _ = open_clip.create_model_and_transforms("test-SPARO", pretrained=str(ckpt))
    assert isinstance(model, sparo_clip.SparoCLIP)
    params = (tmp_path / "logs" / "vitb32-sparo" / "params.txt").read_text()
    assert "grad_checkpointing: True" in params and "gather_with_grad: True" in params
