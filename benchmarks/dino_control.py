"""The supervised control of the DINO main job's probes: what its linear probe reaches when the same backbone
is trained *with* the probe's labels.

The DINO main job (`python -m sparo_clip.dino.quickstart`) reports kNN and linear probes of each twin's
teacher beside the same encoder untrained. That brackets a score from below only. This control brackets it
from above: the class-token backbone of the twins (``tiny_dino``: the same timm ViT) is trained with a linear
classifier on the probe's own training images and labels (colour-shape classes, and shape alone), then read
exactly as the main job reads a teacher (unit-norm class token, the linear probe of ``sparo_clip.eval.linear``
on the probe's validation images). A self-supervised score far below this one is a gap in what the recipe
learns, not in what the images show or the architecture can hold.

    python -m benchmarks.dino_control --write-docs    # the main job's worlds (generated or reused), 3 seeds
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sparo_clip.checkpoints.files import replace_block
from sparo_clip.errors import DataError, SparoClipError, UnreadableImage, one_line
from sparo_clip.inputs import check_writable_folder, read_image

from .common import save_result

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- dino-supervised:begin -->", "<!-- dino-supervised:end -->"


@dataclass(frozen=True)
class Training:
    """How the control trains: AdamW, a batch of ``batch`` training images per step, horizontal flips and shifts
    of up to ``shift`` pixels (the objects' positions vary anyway)."""

    steps: int = 1500
    batch: int = 64
    lr: float = 1e-3
    wd: float = 0.05
    shift: int = 3


def _images(folder: str | Path, transform: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The images of an ImageFolder-style ``folder`` and their class indices; an unreadable image is skipped
    with a warning naming it (``sparo_clip.inputs.read_image``)."""
    from torchvision.datasets import ImageFolder

    data = ImageFolder(str(folder), loader=lambda path: path)  # the paths; each is read below
    images, targets = [], []
    for path, target in data.samples:
        try:
            images.append(transform(read_image(path)))
        except UnreadableImage as e:
            logger.warning("skipping an unreadable image: %s", e)
            continue
        targets.append(target)
    if not images:
        raise DataError(f"{folder}: no readable image")
    return torch.stack(images), torch.tensor(targets), data.classes


def supervised_probe(
    train: str | Path,
    val: str | Path,
    model: str = "tiny_dino",
    training: Training = Training(),
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``model``'s encoder with a linear head on the labels of the ImageFolder ``train``; return the linear
    probe's accuracy on ``val`` read from its unit-norm features (as the DINO probes read a teacher), and the
    trained head's own accuracy."""
    from sparo_clip.dino.config import load_config
    from sparo_clip.dino.evaluation import dino_eval_transform
    from sparo_clip.dino.model import DinoEncoder
    from sparo_clip.eval.linear import linear_probe

    cfg = load_config(model)
    transform = dino_eval_transform(cfg.global_crop_size)
    xtr, ytr, classes = _images(train, transform)
    xva, yva, val_classes = _images(val, transform)
    if val_classes != classes:
        raise DataError(f"{val}: classes {val_classes} differ from {train}'s {classes}")
    torch.manual_seed(seed)
    enc = DinoEncoder(cfg)
    head = torch.nn.Linear(enc.feature_dim, len(classes))
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=training.lr, weight_decay=training.wd)
    gen = torch.Generator().manual_seed(seed)
    enc.train()
    for _ in tqdm(range(training.steps), desc=f"supervised control ({Path(train).parent.name})", leave=False):
        i = torch.randint(0, len(xtr), (training.batch,), generator=gen)
        x = torch.where(torch.rand(training.batch, 1, 1, 1, generator=gen) < 0.5, xtr[i].flip(-1), xtr[i])
        dy, dx = torch.randint(-training.shift, training.shift + 1, (2,), generator=gen).tolist()
        loss = F.cross_entropy(head(enc(torch.roll(x, (dy, dx), (2, 3)))), ytr[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        head_acc = float((head(enc(xva)).argmax(-1) == yva).float().mean())
        ftr, fva = enc.slots(xtr).flatten(1), enc.slots(xva).flatten(1)
    scores, info = linear_probe(ftr, ytr, fva, len(classes), seed=seed)
    return {"linear": float((scores.argmax(-1) == yva).float().mean()), "head": head_acc, "wd": info["wd"],
            "classes": len(classes), "train_images": len(xtr), "val_images": len(xva)}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]

    def cell(task: str, key: str) -> str:
        values = [100 * r[task][key] for r in rows.values()]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {sd:.1f}"

    first = next(iter(rows.values()))
    return "\n".join([
        f"Measured by `{result['command']}` ({len(rows)} seeds, the main job's worlds and probe splits; "
        f"{result['training']['steps']} steps of {result['training']['batch']} images, "
        f"{result['seconds'] / 60:.1f} min). The class-token backbone of the twins trained *with* the probe's labels "
        f"on the probe's own {first['class']['train_images']} training images, then read as the probes read a "
        "teacher: the linear probe on its unit-norm class token, on the validation images. What the linear probe "
        "can reach on these images with this architecture, beside what the self-supervised teachers reach "
        "(the tables above):",
        "",
        "| labels trained with and probed | classes | linear probe | the trained classifier itself |",
        "|---|---|---|---|",
        f"| colour-shape classes | {first['class']['classes']} | {cell('class', 'linear')} | {cell('class', 'head')} |",
        f"| shape | {first['shape']['classes']} | {cell('shape', 'linear')} | {cell('shape', 'head')} |",
    ])  # fmt: skip


def write_docs(result: dict[str, Any], path: Path) -> None:
    replace_block(path, BEGIN, END, markdown(result))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.dino_control", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds (each the main job's world of that seed)")
    p.add_argument("--steps", type=int, default=Training.steps, help="training steps per control")
    p.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "dino_quickstart", help="the main job's folder"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "dino_control.json")
    p.add_argument("--write-docs", nargs="?", type=Path, const=ROOT / "docs" / "dino.md", default=None)
    args = p.parse_args(argv)
    for name in ("seeds", "steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    try:
        check_writable_folder(args.out, "--out")
    except SparoClipError as e:
        p.error(one_line(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    from sparo_clip.dino import quickstart as q

    budget, _ = q.load_budget()
    training = Training(steps=args.steps)
    start = time.perf_counter()
    rows = {}
    try:
        for seed in range(args.seeds):
            probes, _ = q.prepare_world(budget, args.out, seed, q.WORLD)
            shape = probes["factors"]["shape"]
            rows[str(seed)] = {
                "class": supervised_probe(probes["train"], probes["val"], training=training, seed=seed),
                "shape": supervised_probe(shape["train"], shape["val"], training=training, seed=seed),
            }
    except (
        SparoClipError,
        OSError,
    ) as e:  # a world that cannot be written or read: one line, nothing written
        p.exit(1, f"{p.prog}: error: {one_line(e)}\n")
    result = {
        "command": shlex.join(["python -m benchmarks.dino_control", *argv]),
        "training": training.__dict__,
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    save_result(result, markdown(result), args.json, args.write_docs, lambda: write_docs(result, args.write_docs),
                "supervised-control")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
