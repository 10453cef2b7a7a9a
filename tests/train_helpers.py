"""Tiny generated webdataset shards and training-run helpers for the training tests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root: Path, num_shards: int = 4, per_shard: int = 8, size: int = 32, seed: int = 0) -> str:
    """Write ``num_shards`` webdataset shards of coloured-square images with captions; returns the pattern."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    sizes = {}
    for s in range(num_shards):
        shard = f"shard-{s:03d}.tar"
        with tarfile.open(root / shard, "w") as tar:
            for i in range(per_shard):
                colour = names[rng.integers(len(names))]
                img = np.full((size, size, 3), 128, np.uint8)
                x, y = rng.integers(0, size // 2, 2)
                img[y : y + size // 2, x : x + size // 2] = COLOURS[colour]
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                key = f"{s:03d}{i:05d}"
                _add(tar, f"{key}.png", buf.getvalue())
                _add(tar, f"{key}.txt", f"a {colour} square".encode())
        sizes[shard] = per_shard
    (root / "sizes.json").write_text(json.dumps(sizes))
    return str(root / f"shard-{{000..{num_shards - 1:03d}}}.tar")


def base_args(train_data: str, logs: Path, name: str, model: str = "test-SPARO", **flags) -> list[str]:
    args = [
        "--model", model,
        "--train-data", train_data,
        "--dataset-type", "webdataset",
        "--train-num-samples", str(flags.pop("num_samples", 32)),
        "--batch-size", str(flags.pop("batch_size", 8)),
        "--epochs", str(flags.pop("epochs", 1)),
        "--workers", str(flags.pop("workers", 0)),
        "--lr", "1e-3", "--warmup", "1",
        "--precision", "fp32",
        "--logs-dir", str(logs),
        "--name", name,
        "--seed", "0",
        "--report-to", "none",
        "--log-every-n-steps", "1",
    ]  # fmt: skip
    for key, value in flags.items():
        args.append("--" + key.replace("_", "-"))
        if value is not True:
            args.append(str(value))
    return args


def run_dir(logs: Path, name: str) -> Path:
    return logs / name


def first_step_loss(logs: Path, name: str) -> float:
    """The contrastive loss open_clip_train logged for the first step of a run."""
    import re

    text = (logs / name / "out.log").read_text()
    match = re.search(r"Contrastive_loss: ([0-9.]+) \(", text)
    assert match, f"no loss logged in {logs / name / 'out.log'}"
    return float(match.group(1))


def load_shard_samples(pattern_dir: Path, shard: str, preprocess, tokenizer):
    """(images, texts) of one shard in file order, preprocessed as the model sees them."""
    import io as _io

    import torch

    images, texts = [], []
    with tarfile.open(pattern_dir / shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for name in sorted(n for n in members if n.endswith(".png")):
        key = name[: -len(".png")]
        images.append(preprocess(Image.open(_io.BytesIO(members[name])).convert("RGB")))
        texts.append(members[key + ".txt"].decode())
    return torch.stack(images), tokenizer(texts)


def damage_shard(path: Path, how: str, seed: int = 0) -> None:
    """Damage a shard in place: ``random`` (all bytes), ``tail`` (garbage after 2 good samples),
    ``cut`` (cut at a member boundary after 2 samples, no end-of-archive marker), ``truncate`` (mid-member)."""
    rng = np.random.default_rng(seed)
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    after_two = members[4].offset  # 2 samples = 4 members (image + caption)
    if how == "random":
        data = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
    elif how == "tail":
        data = data[:after_two] + rng.integers(1, 256, 3000, dtype=np.uint8).tobytes()
    elif how == "cut":
        data = data[:after_two]
    elif how == "truncate":
        data = data[: members[1].offset + 256]
    else:
        raise ValueError(how)
    path.write_bytes(data)


def set_captions(path: Path, caption: str, count: int) -> None:
    """Rewrite the first ``count`` captions of a shard to ``caption``."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    done = 0
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            if name.endswith(".txt") and done < count:
                data, done = caption.encode(), done + 1
            _add(tar, name, data)


# one thread a process, unbuffered output: the training CLI in a subprocess behaves the same on every machine
TRAIN_ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_train_cli(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python -m sparo_clip.train ARGS`` in its own process; a hang fails the test at ``timeout``."""
    return subprocess.run(
        [sys.executable, "-m", "sparo_clip.train", *args],
        capture_output=True,
        text=True,
        env=TRAIN_ENV,
        timeout=timeout,
    )
