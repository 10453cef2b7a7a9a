"""What the evaluation and picture commands read from a user: a model and its checkpoint, a slot selection,
image files. Each reader checks its input and fails with one line naming the file or value and what is
allowed, before any work starts.

- :func:`load_model`: model name + checkpoint -> (model, eval transform, tokenizer). Checkpoint files go
  through :func:`sparo_clip.factory.create_model_and_transforms`, which reads them weights-only (a crafted
  file cannot run code) and names a file that is empty, not a checkpoint, or saved from another model.
- :func:`parse_slots`: ``--slots`` as a comma list (``0,3,7``) or a JSON file written by ``select-slots``.
- :func:`read_image`: one image file as RGB, or :class:`UnreadableImage` naming the file (corrupt,
  truncated, not an image, or a decompression bomb by PIL's pixel limit).
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

SLOT_FILE_KEYS = ("selected_slots", "slots")  # select-slots writes the first


class UnreadableImage(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, or a decompression bomb)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"image {path} cannot be read: {reason}")
        self.path = str(path)
        self.reason = reason


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image as RGB.

    PIL's decompression-bomb warning (more than ``Image.MAX_IMAGE_PIXELS`` pixels) counts as unreadable too:
    such a file can exhaust memory when decoded.

    Raises:
        UnreadableImage: naming the file and why.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB")  # convert() decodes every pixel: truncation shows up here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(path, f"decompression bomb ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise UnreadableImage(path, f"{type(e).__name__}: {e}") from e


def parse_slots(value: str | None, num_slots: int | None = None) -> list[int] | None:
    """Resolve ``--slots``: a comma list of slot indices or a JSON file from select-slots.

    Args:
        value: ``"0,3,7"``, or a JSON file holding ``{"selected_slots": [...]}`` (or ``"slots"``), with an
            optional ``"num_slots"`` checked against the model. None: all slots.
        num_slots: the model's slot count; when given, indices must lie in ``0..num_slots-1``.

    Returns:
        The slot indices in the order given, or None when ``value`` is None.

    Raises:
        ValueError: not a file and not a list of integers, an empty list, a non-integer (``1.5``), a
            duplicate, an index out of range, or a file selected for a model with another slot count.
    """
    if value is None:
        return None
    if value.endswith(".json") or os.path.isfile(value):
        items = _slots_from_file(value, num_slots)
    else:
        items = [s.strip() for s in value.split(",") if s.strip()]
        if not items:
            raise ValueError(f"--slots {value!r}: neither a file nor a comma-separated list of slot indices")
    slots = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"--slots {value!r}: slot indices must be integers, got {item!r}")
        try:
            slots.append(int(item))
        except ValueError as e:
            raise ValueError(
                f"--slots {value!r}: no such file, and not a comma-separated list of integer slot indices like "
                f"0,3,7 (slot indices must be integers; {item!r} is not)"
            ) from e
    if not slots:
        raise ValueError(f"--slots {value!r}: the selection is empty; select at least one slot")
    duplicates = sorted({s for s in slots if slots.count(s) > 1})
    if duplicates:
        raise ValueError(f"--slots {value!r}: slot(s) {duplicates} given more than once")
    if num_slots is not None:
        bad = [s for s in slots if not 0 <= s < num_slots]
        if bad:
            raise ValueError(
                f"--slots: indices {bad} out of range; this model's slots are 0..{num_slots - 1}"
            )
    return slots


def _slots_from_file(path: str, num_slots: int | None) -> list[Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--slots {path}: cannot read it as JSON ({e})") from e
    key = next((k for k in SLOT_FILE_KEYS if isinstance(data, dict) and isinstance(data.get(k), list)), None)
    if key is None:
        raise ValueError(
            f"--slots {path}: expected a JSON object with a list of slot ids under {SLOT_FILE_KEYS} "
            "(select-slots writes 'selected_slots')"
        )
    if num_slots is not None and data.get("num_slots", num_slots) != num_slots:
        raise ValueError(
            f"--slots {path} was selected for a model with {data['num_slots']} slots; this model has {num_slots}"
        )
    return data[key]


def check_model_name(model_name: str) -> None:
    """Raise ValueError unless ``model_name`` is registered in OpenCLIP (or a ``local-dir:``/``hf-hub:`` name)."""
    import open_clip

    from .registry import sparo_model_names

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :])
        if not (folder / "open_clip_config.json").is_file():
            raise ValueError(
                f"--model {model_name}: {folder} holds no open_clip_config.json (a save_pretrained folder)"
            )
        return
    models = open_clip.list_models()
    if model_name.startswith("hf-hub:") or model_name.replace("/", "-") in models:
        return
    close = difflib.get_close_matches(model_name, models, n=5, cutoff=0.6)
    hint = f"close names: {close}" if close else f"SPARO models: {sparo_model_names()}"
    raise ValueError(
        f"--model {model_name!r} is not a registered model (OpenCLIP's registry, {len(models)} models); {hint}"
    )


def check_pretrained(model_name: str, pretrained: str | None) -> None:
    """Raise ValueError unless ``pretrained`` is None, an existing file, or a pretrained tag of the model."""
    import open_clip

    if pretrained is None or os.path.isfile(pretrained):
        return
    if os.path.isdir(pretrained):
        raise ValueError(
            f"--pretrained {pretrained}: is a folder; give a checkpoint file (.pt, .safetensors)"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise ValueError(
            f"--pretrained {pretrained!r}: no such file, and not a pretrained tag of {model_name!r} (tags: {tags})"
        )


def load_model(
    model_name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor], Callable[[Sequence[str]], torch.Tensor]]:
    """The one model loader of the evaluation and picture commands: (model in eval mode, eval transform, tokenizer).

    Raises:
        ValueError: unknown model name or pretrained tag; :class:`~sparo_clip.checkpoints.CheckpointError`
            (a ValueError) for a checkpoint file that is missing, empty, not a checkpoint, unsafe or saved
            from another model.
    """
    import open_clip

    from .factory import create_model_and_transforms

    check_model_name(model_name)
    check_pretrained(model_name, pretrained)
    model, _, preprocess = create_model_and_transforms(
        model_name, pretrained=pretrained, precision=precision, device=device
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


def check_output_file(path: str | os.PathLike[str] | None, option: str = "--output") -> None:
    """Fail now, not after the work, when ``path`` cannot be written (its folder is created if missing).

    Raises:
        ValueError: naming the path and the reason.
    """
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot be written ({e.strerror or e})") from e
    if not existed:
        path.unlink()


def check_output_folder(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Fail now, not after the work, when files cannot be written into the folder ``path`` (created if missing).

    Raises:
        ValueError: naming the folder and the reason.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write into this folder ({e.strerror or e})") from e


def check_device(device: str, option: str = "--device") -> torch.device:
    """The torch device named by ``device``; ValueError when it is not one or is not available here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{option} {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {device}: CUDA is not available here; use {option} cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{option} {device}: there are {torch.cuda.device_count()} CUDA devices here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option} {device}: MPS is not available here; use {option} cpu")
    return dev
