"""Checkpoint files: atomic writes, loads that never run code, and the newest good checkpoint of a run.

Every checkpoint this project writes goes through :func:`atomic_save` (a temporary file in the same folder,
flushed to disk, then renamed over the target: a kill leaves the old file or the new one, never half of one;
a write that fails, e.g. on a full disk, is one :class:`WriteError` line and replaces nothing), and every
checkpoint it reads goes through :func:`load_checkpoint_file` (``torch.load(weights_only=True)``: tensors and
plain containers only, so a crafted file cannot run code) with one clear error per failure.

A run resumes from :func:`newest_state`: the readable checkpoint whose *recorded* progress (epoch or step) is
the highest, whatever the files are called. :func:`remove_orphan_temporaries` deletes the temporary files a
killed :func:`atomic_save` left behind.
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

from sparo_clip.errors import CheckpointError, WriteError

TEMPORARY_SUFFIX = ".tmp"  # atomic_save's temporary files: ``.<name>.<random>.tmp`` next to the target


class _WriteRecorder:
    """A file for ``torch.save`` that remembers the OSError of a failed write (torch reports it as a bare
    RuntimeError of its zip writer)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _mode_for(path: Path) -> int:
    """The permissions of the file being replaced, or those a new file gets under this process's umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _write_atomically(path: Path, write: Any) -> Path:
    """``write(f)`` into a temporary binary file next to ``path``, flushed and fsynced, then renamed over it.

    An OSError (full disk, read-only folder) becomes one WriteError line; anything else is re-raised. Either
    way the file there before, if any, is intact and no temporary file is left.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    except OSError as e:
        kept = "the file there before is intact" if path.exists() else "nothing was written"
        raise WriteError(f"cannot write {path}: {e.strerror or e} ({kept})") from e
    try:
        os.fchmod(
            fd, _mode_for(path)
        )  # mkstemp makes it 0600: the file gets the mode a plain write would give
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = "the file there before is intact" if path.exists() else "nothing was written"
            raise WriteError(f"cannot write {path}: {e.strerror or e} ({kept})") from e
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_save` does (records such as a recipe or a
    study's cache: a kill leaves the old file or the new one).

    Raises:
        WriteError: the folder or file cannot be written; the file there before, if any, is intact.
    """
    return _write_atomically(Path(path), lambda f: f.write(text.encode("utf-8")))


def replace_block(path: Path, begin: str, end: str, text: str) -> None:
    """Replace what stands between the markers ``begin`` and ``end`` in ``path`` with ``text`` (atomically): how
    every command that measures something writes its numbers into a doc.

    Raises:
        ValueError: ``path`` has no such block.
    """
    doc = path.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise ValueError(f"{path}: no {begin} ... {end} block to fill")
    block = f"{begin}\n{text}\n{end}"
    atomic_write_text(path, pattern.sub(lambda _: block, doc, count=1))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file + fsync + rename in the same folder).

    Raises:
        WriteError: the folder or file cannot be written (read-only, full disk, file size limit); the file
            that was at ``path`` before, if any, is intact and no temporary file is left.
    """

    def write(f: Any) -> None:
        recorder = _WriteRecorder(f)
        try:
            torch.save(obj, recorder)
        except BaseException as e:
            if recorder.error is not None:  # torch reports a failed write as its zip writer's RuntimeError
                raise recorder.error from e
            raise

    return _write_atomically(Path(path), write)


def remove_orphan_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files of interrupted :func:`atomic_save` calls in ``folder``; returns them.

    Only names :func:`atomic_save` makes are touched (``.<name>.<random>.tmp``). Call it when a run starts,
    before anything of that run writes into ``folder``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        if p.is_file() and re.fullmatch(rf"\..+\.[A-Za-z0-9_]+{re.escape(TEMPORARY_SUFFIX)}", p.name):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass  # a read-only folder: the orphan stays, and is never read
    return removed


def load_checkpoint_file(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` with one clear line.

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load``.
        mmap: map the tensors from the file instead of reading them (a cheap check of a large file); files in
            torch's legacy (non-zip) format are then read whole.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
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
    """A run's checkpoints by name: ``epoch_latest.pt``, then ``epoch_N.pt`` by decreasing ``N``.

    The names say nothing sure about the order (``epoch_latest.pt`` may be older than ``epoch_N.pt`` after a
    kill): :func:`newest_state` orders them by what they record. Temporary files of interrupted writes
    (``tmp.pt``, ``.<name>.*.tmp``) are never candidates.
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


def recorded_progress(obj: Any, key: str) -> int | None:
    """The progress a loaded checkpoint records under ``key`` (``epoch``, ``step``), or None."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def newest_state(
    paths: Iterable[str | os.PathLike[str]], key: str
) -> tuple[Path | None, int | None, list[tuple[Path, str]]]:
    """Of ``paths``, the readable checkpoint recording the highest ``key`` (``epoch`` or ``step``).

    Every file is read (tensors memory-mapped, so this is cheap for large files); files that cannot be read,
    or record no ``key``, are skipped. Ties go to the earlier path.

    Returns:
        (path or None, its recorded progress or None, [(skipped path, reason), ...]).
    """
    best: tuple[Path, int] | None = None
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        p = Path(p)
        try:
            progress = recorded_progress(load_checkpoint_file(p, mmap=True), key)
        except CheckpointError as e:
            skipped.append((p, str(e)))
            continue
        if progress is None:
            skipped.append((p, f"checkpoint {p} records no {key!r}"))
        elif best is None or progress > best[1]:
            best = (p, progress)
    return (best[0], best[1], skipped) if best else (None, None, skipped)
