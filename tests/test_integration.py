"""The single seam to OpenCLIP / open_clip_train internals: the factory hook and the per-run adaptations."""

import logging
import os
import subprocess
import sys

import open_clip
import open_clip.factory as oc_factory
import pytest
import torch

import sparo_clip
from sparo_clip import integration
from sparo_clip.training.entry import _Run, main

from .train_helpers import base_args, make_shards

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_factory_names_still_work_for_isinstance():
    sparo = open_clip.create_model("test-SPARO")
    plain = open_clip.create_model("test-CLIP")
    assert isinstance(plain, oc_factory.CLIP) and not isinstance(plain, oc_factory.CustomTextCLIP)
    assert isinstance(sparo, oc_factory.CustomTextCLIP) and isinstance(sparo, sparo_clip.SparoCLIP)
    assert issubclass(sparo_clip.SparoCLIP, oc_factory.CustomTextCLIP)
    assert issubclass(open_clip.CLIP, oc_factory.CLIP) and not issubclass(torch.nn.Linear, oc_factory.CLIP)
    assert integration.hook_installed()


def _process_state():
    root = logging.getLogger()
    return {
        **integration.run_patch_targets(),
        "DistributedDataParallel": torch.nn.parallel.DistributedDataParallel,
        "torch.save": torch.save,
        "imagenetv2_pytorch": sys.modules.get("imagenetv2_pytorch"),
        "root handlers": list(root.handlers),
        "root level": root.level,
    }


def _assert_same(before, after):
    for key, value in before.items():
        assert after[key] is value or after[key] == value, f"{key} was not restored"


def test_run_restores_every_replaced_object(tmp_path):
    before = _process_state()
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    assert main(base_args(pattern, tmp_path / "logs", "a", num_samples=8)) == 0
    _assert_same(before, _process_state())


def test_run_restores_every_replaced_object_on_error():
    import open_clip_train.main as oc_main

    before = _process_state()
    with pytest.raises(RuntimeError, match="inside the run"):
        with integration.open_clip_train_run(_Run(None, {}).adapters()):
            assert oc_main.parse_args is not before[("open_clip_train.main", "parse_args")]
            assert oc_main.torch is not torch and oc_main.torch.save is not torch.save
            logging.getLogger().addHandler(logging.NullHandler())  # as open_clip_train's setup_logging does
            raise RuntimeError("inside the run")
    _assert_same(before, _process_state())


def _weights(logs, name):
    path = logs / name / "checkpoints" / "epoch_1.pt"
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_two_runs_in_one_process_match_a_run_in_its_own_process(tmp_path):
    data, logs = tmp_path / "data", tmp_path / "logs"
    pattern = make_shards(data, num_shards=2, per_shard=8)

    def args(name):  # 4 steps of 4 samples: the sample order decides the weights
        return base_args(pattern, logs, name, batch_size=4, num_samples=16)

    assert main(args("first")) == 0
    first_log = (logs / "first" / "out.log").read_text()
    assert main(args("second")) == 0
    threads = str(torch.get_num_threads())  # the same kernels' reduction order as in this process
    env = dict(ENV, OMP_NUM_THREADS=threads)
    r = subprocess.run(
        [sys.executable, "-m", "sparo_clip.train", *args("own")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    own = _weights(logs, "own")
    for name in ("first", "second"):
        for key, value in _weights(logs, name).items():
            assert torch.equal(value, own[key]), f"{name}: {key}"
    # the second run logged to its own file only, once per line
    assert (logs / "first" / "out.log").read_text() == first_log
    second = (logs / "second" / "out.log").read_text()
    assert second.count("Train Epoch: 0 [16/16") == 1
    assert second.count("Start epoch 0") == 1
