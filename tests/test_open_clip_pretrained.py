"""``open_clip.create_model_and_transforms(name, pretrained=FILE)`` after ``import sparo_clip``: bad files."""

from __future__ import annotations

import pickle

import open_clip
import pytest
import torch

import sparo_clip  # noqa: F401 (installs the hooks)
from sparo_clip.errors import CheckpointError


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"this is a text file\n", "not a readable PyTorch checkpoint"),
        (b"PK\x03\x04", "not a"),
    ],
)
def test_bad_files_are_one_clear_line(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        open_clip.create_model_and_transforms("test-SPARO", pretrained=str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": open_clip.create_model("test-CLIP").state_dict()}, path)
    with pytest.raises(
        RuntimeError, match=r"does not fit model SparoCLIP: \d+ missing, \d+ unexpected"
    ) as err:
        open_clip.create_model_and_transforms("test-SPARO", pretrained=str(path))
    assert "\n" not in str(err.value)


def test_good_checkpoint_loads_and_plain_models_keep_openclips_behaviour(tmp_path):
    model = open_clip.create_model("test-SPARO")
    path = tmp_path / "sparo.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = open_clip.create_model_and_transforms("test-SPARO", pretrained=str(path))[0]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises((EOFError, RuntimeError, pickle.UnpicklingError)) as err:  # OpenCLIP's own error
        open_clip.create_model_and_transforms("test-CLIP", pretrained=str(empty))
    assert not isinstance(err.value, CheckpointError)
