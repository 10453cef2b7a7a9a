"""The kinds of failure sparo-clip reports, one class each; every command prints them as one line.

Each derives from :class:`SparoClipError` (catch that for "any failure we explain") and from the builtin a
caller of the replaced code would expect (``ValueError`` for bad input, ``RuntimeError`` for a strict load that
does not fit, ``FloatingPointError`` for a diverged loss, ``OSError`` for a write that failed).
"""

from __future__ import annotations

import os


class SparoClipError(Exception):
    """A failure sparo-clip explains in one line (what is wrong, and what is allowed)."""


class ConfigError(SparoClipError, ValueError):
    """An option, setting or model config that is not allowed; found before any work starts."""


class DataError(SparoClipError, ValueError):
    """Input data that is missing, unreadable, badly laid out, or too little to use."""


class UnreadableImage(DataError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, or a decompression bomb)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"image {path} cannot be read: {reason}")
        self.path = str(path)
        self.reason = reason


class CheckpointError(SparoClipError, ValueError):
    """A checkpoint file that is missing, empty, truncated, foreign or unsafe to load."""


class CheckpointMismatch(CheckpointError, RuntimeError):
    """A readable checkpoint whose tensors do not fit the model (a RuntimeError too, as torch's strict load)."""


class NonFiniteLossError(SparoClipError, FloatingPointError):
    """The training loss became NaN or infinite."""


class WriteError(SparoClipError, OSError):
    """A destination that cannot be written (read-only, full disk); what was there before is left intact."""


def one_line(e: BaseException) -> str:
    """The first line of an error's message, also when a DataLoader worker re-raised it with its traceback."""
    text = str(e)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        head, _, rest = last.partition(": ")
        text = rest if rest and head.endswith("Error") else last
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__
