"""Starting a SPARO model from a plain OpenCLIP checkpoint: the loader, --init-from, the fine-tuning recipe."""

import pickle
import shlex

import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.checkpoints.transfer import init_from_checkpoint, read_state_dict
from sparo_clip.errors import CheckpointError
from sparo_clip.training.entry import main as train_main

from .test_scripts import _env, _run
from .train_helpers import base_args, make_shards


@pytest.fixture
def clip_checkpoint(tmp_path):
    """A plain OpenCLIP model saved as open_clip_train saves it (DDP's `module.` prefix, top-level text)."""
    clip = open_clip.create_model("test-CLIP")
    path = tmp_path / "clip.pt"
    state = {"module." + k: v for k, v in clip.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state}, path)
    return clip, path


def test_loads_every_matching_tensor_and_reports_the_rest(clip_checkpoint):
    clip, path = clip_checkpoint
    model = open_clip.create_model("test-SPARO")
    report = init_from_checkpoint(model, path)
    sd = model.state_dict()
    # the towers (but their last blocks and projections) come from the checkpoint
    torch.testing.assert_close(sd["visual.conv1.weight"], clip.visual.conv1.weight)
    torch.testing.assert_close(sd["text.token_embedding.weight"], clip.token_embedding.weight)
    torch.testing.assert_close(sd["text.ln_final.weight"], clip.ln_final.weight)
    torch.testing.assert_close(sd["logit_scale"], clip.logit_scale)
    assert "text.transformer.resblocks.0.attn.in_proj_weight" in report.loaded
    assert report.skipped["visual.proj"] == "not in the model"
    assert report.skipped["text.text_projection"] == "not in the model"
    assert "visual.transformer.resblocks.1.mlp.c_fc.weight" in report.skipped  # the dropped block
    assert {"image_readout.query", "text_readout.key.weight"} <= set(report.new)
    assert not set(report.new) & set(report.loaded)
    assert set(report.new) | set(report.loaded) == set(sd)
    new_params = sum(p.numel() for n, p in model.named_parameters() if n in report.new)
    assert (
        report.loaded_params + new_params == report.total_params == sum(p.numel() for p in model.parameters())
    )
    assert "loaded" in report.summary() and "newly initialised" in report.summary()


def test_refuses_a_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(open_clip.create_model("tiny-CLIP").state_dict(), path)
    model = open_clip.create_model("test-SPARO")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"it is a checkpoint of another architecture"):
        init_from_checkpoint(model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # nothing was loaded


def test_never_unpickles_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "x": Payload()}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle|not a readable"):  # nothing is run
        read_state_dict(path)


def test_safetensors_and_state_dict_inputs(tmp_path):
    from safetensors.torch import save_file

    model = open_clip.create_model("test-SPARO")
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = open_clip.create_model("test-SPARO")
    report = init_from_checkpoint(other, path)
    assert not report.new and not report.skipped and report.fraction == 1.0
    assert init_from_checkpoint(other, model.state_dict()).fraction == 1.0
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")


def test_init_from_in_training_with_locked_towers(tmp_path, clip_checkpoint):
    """--init-from loads the towers; with both towers locked at 1 group, only the read-outs train."""
    clip, path = clip_checkpoint
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    logs = tmp_path / "logs"
    flags = dict(
        num_samples=8,
        init_from=str(path),
        lock_image=True,
        lock_image_unlocked_groups=1,
        lock_text=True,
        lock_text_unlocked_layers=1,
    )
    assert train_main(base_args(pattern, logs, "ft", **flags)) == 0
    assert f"init_from: {path}" in (logs / "ft" / "params.txt").read_text()
    state = torch.load(logs / "ft" / "checkpoints" / "epoch_1.pt", weights_only=True)["state_dict"]
    trained = {k.removeprefix("module."): v for k, v in state.items()}
    torch.testing.assert_close(trained["visual.conv1.weight"], clip.visual.conv1.weight)
    torch.testing.assert_close(trained["text.ln_final.weight"], clip.ln_final.weight)
    fresh = open_clip.create_model("test-SPARO")
    init_from_checkpoint(fresh, path)
    assert not torch.equal(trained["image_readout.key.weight"], fresh.image_readout.key.weight)


def test_init_from_missing_file_fails_before_training(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "bad", num_samples=8, init_from=str(tmp_path / "no.pt"))
    assert train_main(args) == 2
    assert f"--init-from {tmp_path / 'no.pt'} is not a file" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "bad").exists()


def test_init_from_another_architecture_fails_before_training(tmp_path, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    path = tmp_path / "other.pt"
    torch.save(open_clip.create_model("tiny-CLIP").state_dict(), path)
    args = base_args(pattern, tmp_path / "logs", "bad", num_samples=8, init_from=str(path))
    assert train_main(args) == 2
    assert "it is a checkpoint of another architecture" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "bad").exists()


def test_finetune_recipe_prints_warmup_then_full(tmp_path):
    ckpt = tmp_path / "vitb32.pt"
    ckpt.write_bytes(b"")
    r = _run("finetune_vitb32_sparo.sh", _env(tmp_path, INIT_FROM=str(ckpt), LOGS_DIR=str(tmp_path / "l")))
    assert r.returncode == 0, r.stderr
    warmup, full = (shlex.split(line) for line in r.stdout.strip().splitlines())

    def flags(argv):
        return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}

    w, f = flags(warmup), flags(full)
    # like argparse, the dict keeps the last value: each phase's epochs / lr win over the recipe's
    assert (w["--epochs"], w["--lr"], f["--epochs"], f["--lr"]) == ("1", "1e-3", "5", "1e-5")
    assert w["--init-from"] == str(ckpt) and w["--model"] == f["--model"] == "ViT-B-32-SPARO"
    assert w["--lock-image-unlocked-groups"] == "1" and w["--lock-text-unlocked-layers"] == "1"
    assert "--lock-image" in warmup and "--lock-text" in warmup
    assert "--lock-image" not in full and "--lock-text" not in full
    assert f["--init-from"] == f"{tmp_path}/l/finetune-vitb32-sparo-warmup/checkpoints/epoch_latest.pt"
    assert w["--name"] == "finetune-vitb32-sparo-warmup" and f["--name"] == "finetune-vitb32-sparo-full"
    missing = _run("finetune_vitb32_sparo.sh", _env(tmp_path))
    assert missing.returncode == 2 and "INIT_FROM is not set" in missing.stderr


def test_lock_text_tower_one_trains_only_the_read_out():
    """lock_text_tower(1) and lock_image_tower(1) both leave exactly the read-out trainable."""
    model = sparo_clip.create_model("test-SPARO")
    model.lock_image_tower(1)
    model.lock_text_tower(1)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"image_readout", "text_readout", "logit_scale"}
