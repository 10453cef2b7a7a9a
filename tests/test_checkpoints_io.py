"""Checkpoint files: atomic writes, safe loads, newest readable."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from sparo_clip.checkpoints.files import atomic_save, atomic_write_text, load_checkpoint_file, newest_readable
from sparo_clip.errors import CheckpointError, WriteError


class _RunsCode:
    """Unpickling this calls os.system: a stand-in for a crafted checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_atomic_save_roundtrip_and_leaves_no_temporary(tmp_path):
    path = atomic_save({"w": torch.arange(3.0)}, tmp_path / "sub" / "ckpt.pt")
    assert torch.equal(load_checkpoint_file(path)["w"], torch.arange(3.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]


def test_atomic_save_failure_keeps_the_old_file(tmp_path):
    path = atomic_save({"w": torch.ones(2)}, tmp_path / "ckpt.pt")
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic_save({"f": lambda: 0}, path)  # lambdas cannot be pickled: the write fails midway
    assert torch.equal(load_checkpoint_file(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_write_text_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "sub" / "recipe.json", '{"lr": 1}\n')
    atomic_write_text(path, '{"lr": 2}\n')
    assert path.read_text() == '{"lr": 2}\n' and [p.name for p in path.parent.iterdir()] == ["recipe.json"]

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(
        WriteError, match=r"cannot write .*recipe.json: No space left on device \(the file there"
    ):
        atomic_write_text(path, '{"lr": 3}\n')
    assert path.read_text() == '{"lr": 2}\n' and [p.name for p in path.parent.iterdir()] == ["recipe.json"]
    monkeypatch.undo()
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="nothing was written"):
        atomic_write_text(tmp_path / "file" / "recipe.json", "{}")


def test_crafted_pickle_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"not a checkpoint\n", "not a readable PyTorch checkpoint"),
        (
            b"this is a text file\n",
            "not a readable PyTorch checkpoint",
        ),  # IndexError inside torch's unpickler
        (None, "does not exist"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint_file(path)
    assert "\n" not in str(err.value)


def test_truncated_checkpoint_is_skipped_for_the_newest_readable(tmp_path):
    good = atomic_save({"epoch": 1}, tmp_path / "epoch_1.pt")
    atomic_save({"epoch": 2, "w": torch.randn(1000)}, tmp_path / "epoch_2.pt")
    data = (tmp_path / "epoch_2.pt").read_bytes()
    (tmp_path / "epoch_2.pt").write_bytes(data[: len(data) // 2])
    path, ckpt, skipped = newest_readable([tmp_path / "epoch_2.pt", good])
    assert path == good and ckpt["epoch"] == 1
    assert [p.name for p, _ in skipped] == ["epoch_2.pt"]
    assert newest_readable([tmp_path / "epoch_2.pt"])[0] is None


def test_atomic_writes_get_the_mode_a_plain_write_would_give(tmp_path):
    mask = os.umask(0o022)
    try:
        new = atomic_write_text(tmp_path / "new.json", "{}")
        assert new.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: others can read a checkpoint or doc
        kept = tmp_path / "kept.pt"
        kept.write_bytes(b"x")
        kept.chmod(0o640)
        atomic_save({"a": 1}, kept)
        assert kept.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    finally:
        os.umask(mask)
