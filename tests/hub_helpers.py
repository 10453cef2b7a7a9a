"""An offline Hugging Face Hub cache made in a test: ``hf-hub:`` names load from it with no network."""

from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex-digit commit id


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder``'s files out as huggingface_hub's cache holds a downloaded model repository.

    ``<cache>/models--<org>--<name>/snapshots/<commit>/<files>`` and ``refs/main`` naming the commit: with
    ``HF_HUB_OFFLINE`` set, ``hf_hub_download(repo_id, filename)`` answers from there (huggingface_hub 2.x).
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def go_offline(monkeypatch, cache: Path) -> None:
    """This process (and processes it starts) reads the hub from ``cache`` only, never the network."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read at each call by huggingface_hub and transformers
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
