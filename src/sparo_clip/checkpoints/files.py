"""Checkpoint files: atomic writes, loads that never run code, and the newest readable checkpoint.

Every checkpoint this project writes goes through :func:`atomic_save` (a temporary file in the same folder,
flushed to disk, then renamed over the target: a kill leaves the old file or the new one, never half of one),
and every checkpoint it reads goes through :func:`load_checkpoint_file` (``torch.load(weights_only=True)``:
tensors and plain containers only, so a crafted file cannot run code) with one clear error per failure.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from sparo_clip.errors import CheckpointError


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file + fsync + rename in the same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint_file(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` with one clear line.

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load``.
        mmap: map the tensors from the file instead of reading them (a cheap check of a large file); files in
            torch's legacy (non-zip) format are then read whole.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
        )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted write?")
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "global" in ln]
        if refused:  # torch's weights-only unpickler met a class or function: the file wants to run code
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain containers; refusing to "
                f"unpickle it (that could run code): {refused[0]}"
            ) from e
        raise CheckpointError(
            f"checkpoint {path} ({size:,} bytes) is not a readable PyTorch checkpoint (truncated or another "
            f"format): {_first_line(e)}"
        ) from e
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        AttributeError,
        IndexError,
        TypeError,
        MemoryError,
    ) as e:
        first = _first_line(e)
        raise CheckpointError(
            f"checkpoint {path} ({size:,} bytes) is not a readable PyTorch checkpoint (truncated or another "
            f"format): {first}"
        ) from e


def _first_line(e: BaseException) -> str:
    """The informative line of an exception (torch's weights-only errors wrap it in boilerplate)."""
    boiler = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(boiler)]
    return lines[0] if lines else type(e).__name__


def newest_readable(
    paths: Iterable[str | os.PathLike[str]], map_location: Any = "cpu"
) -> tuple[Path | None, Any, list[tuple[Path, str]]]:
    """The first of ``paths`` (give them newest first) that loads, its content, and what was skipped and why.

    Returns:
        (path or None, loaded object or None, [(skipped path, reason), ...]).
    """
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        p = Path(p)
        try:
            return p, load_checkpoint_file(p, map_location=map_location), skipped
        except CheckpointError as e:
            skipped.append((p, str(e)))
    return None, None, skipped


def training_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """A run's checkpoints, newest first: ``epoch_latest.pt``, then ``epoch_N.pt`` by decreasing ``N``.

    Temporary files of interrupted writes (``tmp.pt``, ``.<name>.*.tmp``) are never candidates.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    numbered = []
    for p in folder.glob("epoch_*.pt"):
        match = re.fullmatch(r"epoch_(\d+)\.pt", p.name)
        if match:
            numbered.append((int(match.group(1)), p))
    latest = [folder / "epoch_latest.pt"] if (folder / "epoch_latest.pt").is_file() else []
    return latest + [p for _, p in sorted(numbered, reverse=True)]
