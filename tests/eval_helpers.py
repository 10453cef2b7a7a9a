"""Tiny generated data and an independent reference for the evaluation tests."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

MODEL = "test-SPARO"


def save_checkpoint(path: Path, model_name: str = MODEL, seed: int = 0) -> Path:
    """A randomly initialised model's state dict, loadable with ``pretrained=path``."""
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name)
    torch.save(model.state_dict(), path)
    return path


def noise_image(path: Path, seed: int, size: int = 32) -> Path:
    """A distinct random RGB picture (no two images tie)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def class_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with ``counts[class]`` noise images each."""
    k = seed * 1000
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise_image(root / name / f"{i}.png", k)
            k += 1
    return root


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[tuple[str, str]], sep: str = "\t") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter=sep)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return path


def write_tar(path: Path, samples: Sequence[tuple[str, dict[str, bytes]]]) -> Path:
    """A webdataset shard: for each (key, {ext: bytes}) the members ``key.ext``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def png_bytes(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def sugarcrepe_root(root: Path, tasks: dict[str, int], num_images: int = 4) -> Path:
    """SugarCrepe's layout: ``<task>.json`` (id -> filename, caption, negative_caption) and ``images/``."""
    for i in range(num_images):
        noise_image(root / "images" / f"{i:012d}.png", 500 + i)
    words = ["red", "blue", "green", "small", "large", "round", "square"]
    for t, (task, n) in enumerate(tasks.items()):
        data = {
            str(i): {
                "filename": f"{(i + t) % num_images:012d}.png",
                "caption": f"a {words[i % 7]} cat on a {words[(i + t) % 7]} mat",
                "negative_caption": f"a {words[(i + t) % 7]} cat on a {words[i % 7]} dog",
            }
            for i in range(n)
        }
        (root / f"{task}.json").write_text(json.dumps(data))
    return root


class Reference:
    """The model's own encoders, called image by image and text by text: the independent computation."""

    def __init__(self, checkpoint: Path, model_name: str = MODEL) -> None:
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=str(checkpoint)
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)

    @torch.no_grad()
    def images(self, paths: Sequence[Path], slots: Sequence[int] | None = None) -> np.ndarray:
        out = []
        for p in paths:
            x = self.preprocess(Image.open(p).convert("RGB"))[None]
            extra = {} if slots is None else {"slots": slots}
            out.append(self.model.encode_image(x, normalize=True, **extra)[0].numpy())
        return np.stack(out).astype(np.float64)

    @torch.no_grad()
    def texts(self, texts: Sequence[str], slots: Sequence[int] | None = None) -> np.ndarray:
        tokens = self.tokenizer(list(texts))
        extra = {} if slots is None else {"slots": slots}
        return self.model.encode_text(tokens, normalize=True, **extra).numpy().astype(np.float64)

    def classifier(
        self, classnames: Sequence[str], templates: Sequence[str], slots: Sequence[int] | None = None
    ):
        """(C, D): per class, the normalised mean of its normalised prompt embeddings."""
        prompts = [t.replace("{c}", c) for c in classnames for t in templates]
        emb = self.texts(prompts, slots).reshape(len(classnames), len(templates), -1).mean(1)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def topk_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1/top-5/mean per-class recall by sorting in numpy."""
    order = np.argsort(-logits, axis=1, kind="stable")
    k = min(5, logits.shape[1])
    top1 = order[:, 0] == labels
    top5 = (order[:, :k] == labels[:, None]).any(1)
    recalls = [top1[labels == c].mean() for c in np.unique(labels)]
    out = {"top1": top1.mean(), "mean_per_class_recall": float(np.mean(recalls))}
    return out | ({"top5": top5.mean()} if logits.shape[1] >= 10 else {})


def recall_reference(sim: np.ndarray, text_image: np.ndarray, k: int) -> tuple[float, float]:
    """(image->text, text->image) R@k by explicit ranking loops."""
    i2t = []
    for i in range(sim.shape[0]):
        ranked = list(np.argsort(-sim[i], kind="stable"))
        i2t.append(any(text_image[t] == i for t in ranked[:k]))
    t2i = [text_image[t] in list(np.argsort(-sim[:, t], kind="stable"))[:k] for t in range(sim.shape[1])]
    return float(np.mean(i2t)), float(np.mean(t2i))
