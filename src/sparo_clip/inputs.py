"""What commands read from a user besides models and checkpoints: image files, slot selections, shard lists,
output paths and devices. Each reader checks its input and fails with one line naming the file or value and
what is allowed, before any work starts.

- :func:`read_image`: one image file as RGB, or :class:`~sparo_clip.errors.UnreadableImage` naming the file
  (corrupt, truncated, not an image, or a decompression bomb by PIL's pixel limit).
- :func:`parse_slots`: ``--slots`` as a comma list (``0,3,7``) or a JSON file written by ``select-slots``;
  :func:`slot_mask` turns the indices into the (L,) mask the read-out takes.
- :func:`expand_urls`: a ``::``-joined, brace-expanded shard or file list (``train-{000..015}.tar``).
- :func:`check_output_file`, :func:`check_output_folder`, :func:`check_writable_folder`, :func:`check_device`;
  :class:`FolderSnapshot`: what a run finds in its output folder, so that a run that fails before doing any
  work takes back what it wrote.
- :func:`check_finite_numbers`: every float option of a command is a finite number (``--lr nan`` is refused
  before any work, not by the optimiser at step 1); :func:`load_json` reads JSON that holds no NaN/Infinity.
- :func:`parse_override`: ``--override-model-config`` as JSON or ``@file.json`` (training, evaluation, pictures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image

from sparo_clip.errors import ConfigError, UnreadableImage

SLOT_FILE_KEYS = ("selected_slots", "slots")  # select-slots writes the first


def read_image(path: str | os.PathLike[str] | IO[bytes], name: str | None = None) -> Image.Image:
    """Open and fully decode an image as RGB.

    PIL's decompression-bomb warning (more than ``Image.MAX_IMAGE_PIXELS`` pixels) counts as unreadable too:
    such a file can exhaust memory when decoded.

    Args:
        path: the image file, or a binary file object holding one (a member of a shard).
        name: how the error names the image (default: ``path``).

    Raises:
        UnreadableImage: naming the file and why.
    """
    shown = name if name is not None else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB")  # convert() decodes every pixel: truncation shows up here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(shown, f"decompression bomb ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise UnreadableImage(shown, f"{type(e).__name__}: {e}") from e


def parse_slots(value: str | None, num_slots: int | None = None, is_sparo: bool = True) -> list[int] | None:
    """Resolve ``--slots``: a comma list of slot indices or a JSON file from select-slots.

    Args:
        value: ``"0,3,7"``, or a JSON file holding ``{"selected_slots": [...]}`` (or ``"slots"``), with an
            optional ``"num_slots"`` checked against the model. None: all slots.
        num_slots: the model's slot count; when given, indices must lie in ``0..num_slots-1``.
        is_sparo: whether the model has slots at all (a selection for a model without is refused).

    Returns:
        The slot indices, sorted, or None when ``value`` is None (all slots).

    Raises:
        ConfigError: not a file and not a list of integers, an empty list, a non-integer (``1.5``), a
            duplicate, an index out of range, or a file selected for a model with another slot count.
    """
    if value is None:
        return None
    if not is_sparo:
        raise ConfigError("--slots selects SPARO slots; the model is not a SPARO model (it has no slots)")
    if value.endswith(".json") or os.path.isfile(value):
        items = _slots_from_file(value, num_slots)
    else:
        items = [s.strip() for s in value.split(",") if s.strip()]
        if not items:
            raise ConfigError(f"--slots {value!r}: neither a file nor a comma-separated list of slot indices")
    slots = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ConfigError(f"--slots {value!r}: slot indices must be integers, got {item!r}")
        try:
            slots.append(int(item))
        except ValueError as e:
            raise ConfigError(
                f"--slots {value!r}: no such file, and not a comma-separated list of integer slot indices like "
                f"0,3,7 (slot indices must be integers; {item!r} is not)"
            ) from e
    if not slots:
        raise ConfigError(f"--slots {value!r}: the selection is empty; select at least one slot")
    duplicates = sorted({s for s in slots if slots.count(s) > 1})
    if duplicates:
        raise ConfigError(f"--slots {value!r}: slot(s) {duplicates} given more than once")
    if num_slots is not None:
        bad = [s for s in slots if not 0 <= s < num_slots]
        if bad:
            raise ConfigError(
                f"--slots: indices {bad} out of range; this model's slots are 0..{num_slots - 1}"
            )
    return sorted(slots)


def slot_mask(slots: Sequence[int] | None, num_slots: int) -> torch.Tensor | None:
    """Slot indices -> (L,) bool mask (None stays None: all slots)."""
    if slots is None:
        return None
    mask = torch.zeros(num_slots, dtype=torch.bool)
    mask[list(slots)] = True
    return mask


def is_local(url: str) -> bool:
    """Whether a shard URL names a local file (not ``s3://...``, ``pipe:...``)."""
    return "://" not in url and not url.startswith("pipe:")


def expand_urls(spec: str) -> list[str]:
    """The files a ``::``-joined, brace-expanded list names (``a-{000..003}.tar::b.tar`` -> 5 names)."""
    from braceexpand import braceexpand

    return [u for part in spec.split("::") if part.strip() for u in braceexpand(part.strip())]


def _slots_from_file(path: str, num_slots: int | None) -> list[Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--slots {path}: cannot read it as JSON ({e})") from e
    key = next((k for k in SLOT_FILE_KEYS if isinstance(data, dict) and isinstance(data.get(k), list)), None)
    if key is None:
        raise ConfigError(
            f"--slots {path}: expected a JSON object with a list of slot ids under {SLOT_FILE_KEYS} "
            "(select-slots writes 'selected_slots')"
        )
    if num_slots is not None and data.get("num_slots", num_slots) != num_slots:
        raise ConfigError(
            f"--slots {path} was selected for a model with {data['num_slots']} slots; this model has {num_slots}"
        )
    return data[key]


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_write(folder: Path) -> None:
    """Create and delete a file in ``folder`` (raises OSError when that is not allowed)."""
    fd, tmp = tempfile.mkstemp(prefix=".sparo-write-check.", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path: str | os.PathLike[str] | None, option: str = "--output") -> None:
    """Fail now, not after the work, when ``path`` cannot be written; creates nothing (its folders are made
    when the file is written).

    Raises:
        ConfigError: naming the path and the reason.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    try:
        if path.exists():
            with path.open("a"):
                pass
        else:
            existing = _existing_ancestor(path.parent)
            if not existing.is_dir():
                raise ConfigError(f"{option} {path}: cannot be written ({existing} is a file, not a folder)")
            _probe_write(existing)
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot be written ({e.strerror or e})") from e


def check_output_folder(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Fail now, not after the work, when files cannot be written into the folder ``path``; creates nothing
    (the command creates the folder when it writes).

    Raises:
        ConfigError: naming the folder and the reason.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is a file; give a folder")
    existing = _existing_ancestor(path)
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: cannot write into this folder ({existing} is a file)")
    try:
        _probe_write(existing)
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot write into this folder ({e.strerror or e})") from e


def check_writable_folder(path: str | os.PathLike[str], option: str = "--output") -> None:
    """Fail now when ``path`` (a folder, maybe not there yet) cannot be created or written; creates nothing.

    Raises:
        ConfigError: naming the folder and the reason (a file in its place, a read-only parent).
    """
    path = Path(path)
    existing = _existing_ancestor(path)
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"{option} {path}: {where}; give a folder")
    try:
        _probe_write(existing)
    except OSError as e:
        what = "cannot write into this folder" if existing == path else f"cannot be created in {existing}"
        raise ConfigError(f"{option} {path}: {what} ({e.strerror or e})") from e


class FolderSnapshot:
    """A folder as a run found it: a run that fails before its first step calls :meth:`take_back`.

    A folder the run creates (or the topmost missing folder above it) is removed whole. In a folder that was
    there, the entries the run added are removed and the small files named in ``restore`` (e.g. a config the
    run rewrites) get their earlier content back; everything else (checkpoints, logs) is left as it is.
    """

    def __init__(self, path: str | os.PathLike[str], restore: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.restore = tuple(restore)
        target, top = self.path, None
        while not target.exists() and target != target.parent:
            top, target = target, target.parent
        self.created = top  # None: the folder was there
        self.before = set(self.path.rglob("*")) if self.path.is_dir() else set()
        self.saved = {n: (self.path / n).read_bytes() for n in self.restore if (self.path / n).is_file()}

    def take_back(self) -> None:
        """Undo the run's writes (see the class docstring); errors are ignored (a read-only folder)."""
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        if not self.path.is_dir():
            return
        added = set(self.path.rglob("*")) - self.before
        for p in sorted(added, key=lambda q: len(q.parts), reverse=True):
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            except OSError:
                pass
        for name in self.restore:
            try:
                if name in self.saved:
                    (self.path / name).write_bytes(self.saved[name])
                else:
                    (self.path / name).unlink(missing_ok=True)
            except OSError:
                pass


def check_finite_numbers(args: argparse.Namespace | dict[str, Any]) -> None:
    """Every float option (or list of floats) must be finite: ``--lr nan`` or ``--wd inf`` is refused here.

    Raises:
        ConfigError: naming the option and its value.
    """
    values = vars(args) if isinstance(args, argparse.Namespace) else args
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ConfigError(
                f"--{name.replace('_', '-')} {' '.join(map(str, items))}: must be a finite number (not nan or inf)"
            )


def load_json(text: str, what: str) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (which Python's json accepts) with one line.

    Raises:
        ConfigError: not valid JSON, or a non-finite number in it.
    """

    def refuse(constant: str) -> Any:
        raise ConfigError(f"{what}: {constant} is not allowed; numbers must be finite")

    def finite(number: str) -> float:
        value = float(number)
        return value if math.isfinite(value) else refuse(number)

    try:
        return json.loads(text, parse_constant=refuse, parse_float=finite)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON ({e.msg} at char {e.pos}): {text!r}") from e


def check_device(device: str, option: str = "--device") -> torch.device:
    """The torch device named by ``device``; ConfigError when it is not one or is not available here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"{option} {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} {device}: CUDA is not available here; use {option} cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{option} {device}: there are {torch.cuda.device_count()} CUDA devices here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option} {device}: MPS is not available here; use {option} cpu")
    return dev


def parse_override(value: str | None, flag: str = "--override-model-config") -> dict[str, Any] | None:
    """Parse a model-config override: a JSON object, or ``@path`` to a JSON file (None: no override).

    Raises:
        ConfigError: a missing file, invalid JSON, or JSON that is not an object.
    """
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ConfigError(f"{flag}: file {path} does not exist")
        text = path.read_text()
    override = load_json(text, flag)  # NaN / Infinity refused too
    if not isinstance(override, dict):
        raise ConfigError(f"{flag} must be a JSON object, got {type(override).__name__}: {text!r}")
    return override
