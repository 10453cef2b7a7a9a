"""Runs a training entry point and kills its own process (SIGKILL) at a chosen point of a checkpoint write.

``python -m tests.fault_driver WHEN FILE PROGRESS MODULE [ARGS...]``:

- ``WHEN`` ``write``: while ``FILE`` is being written (half of its bytes are on disk in the temporary file);
  ``rename``: after ``FILE`` was written whole, just before it is renamed into place (open_clip_train writes
  ``tmp.pt`` and then renames it to ``epoch_latest.pt``);
- ``FILE``: the checkpoint's file name (``epoch_2.pt``, ``tmp.pt``, ``step_00000003.pt``);
- ``PROGRESS``: the epoch (``epoch=2``) or step (``step=3``) the checkpoint being written records.

The kill is a real SIGKILL: no ``finally`` block or atomic-write cleanup runs, as when a machine loses power
or the scheduler kills the job. ``MODULE`` runs as ``python -m MODULE ARGS`` would (runpy).
"""

from __future__ import annotations

import io
import os
import runpy
import signal
import sys

import torch


def _records(obj: object, key: str, value: int) -> bool:
    return isinstance(obj, dict) and key in obj and int(obj[key]) == value


def install(when: str, name: str, progress: str) -> None:
    key, value = progress.split("=")
    value = int(value)
    real_save, real_replace = torch.save, os.replace
    pending: set[str] = set()  # temporary files holding the watched checkpoint

    def save(obj, f, *args, **kwargs):
        target = getattr(getattr(f, "f", f), "name", f)  # atomic_save passes a writer around its temp file
        if isinstance(target, int):  # a file opened from a descriptor: its path, as the kernel knows it
            target = os.readlink(f"/proc/self/fd/{target}")
        base = os.path.basename(str(target))
        ours = (base == name or base.startswith(f".{name}.")) and _records(obj, key, value)
        if ours and when == "write":
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if ours:
            pending.add(os.path.basename(str(target)))
        return real_save(obj, f, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if when == "rename" and os.path.basename(str(src)) == name and pending:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    torch.save = save
    os.replace = replace


def main(argv: list[str]) -> None:
    when, name, progress, module, *args = argv
    install(when, name, progress)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
