"""How the quickstart's tiny SPARO settings were chosen: a small sweep at the quickstart's budget.

``python -m benchmarks.sweep_tiny [--steps 50] [--write-docs]`` trains tiny-SPARO variants (slot count x slot
width, learning rate) on the shapes world for the same number of steps through ``torchrun -m
sparo_clip.train``, evaluates each with the quickstart's evaluation (zero-shot seen/unseen, retrieval,
compositionality), prints a table, writes ``runs/sweep_tiny/results.json`` and, with ``--write-docs``,
fills the measured table into docs/quickstart.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch

import sparo_clip
from sparo_clip import quickstart
from sparo_clip.data.shapes import generate

BEGIN, END = "<!-- sweep-results:begin -->", "<!-- sweep-results:end -->"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"
# (label, sparo_cfg override, learning rate); the same widths and depth as tiny-SPARO (256, 4 - 1 layers)
VARIANTS: list[tuple[str, dict[str, Any], float]] = [
    ("L=4, V=64", {"num_slots": 4, "slot_dim": 64}, 1e-3),
    ("L=8, V=32", {"num_slots": 8, "slot_dim": 32}, 1e-3),
    ("L=16, V=16", {"num_slots": 16, "slot_dim": 16}, 1e-3),
    ("L=4, V=64, lr 3e-4", {"num_slots": 4, "slot_dim": 64}, 3e-4),
]


def run_variant(
    label: str, sparo: dict[str, Any], lr: float, data: dict[str, Any], args: argparse.Namespace
) -> dict:
    name = "sparo-" + "".join(c if c.isalnum() else "-" for c in label).strip("-")
    out = Path(args.out)
    override = {"sparo_cfg": sparo}
    qs_args = argparse.Namespace(batch_size=args.batch_size, lr=lr, seed=0, workers=1)
    cmd = quickstart.train_command("tiny-SPARO", name, data, args.steps, qs_args, out / "logs")
    cmd += ["--override-model-config", json.dumps(override)]
    t = time.perf_counter()
    import subprocess

    if subprocess.run(cmd, capture_output=True).returncode != 0:
        raise RuntimeError(f"training {label} failed: see {out / 'logs' / name / 'out.log'}")
    seconds = time.perf_counter() - t
    ckpt = out / "logs" / name / "checkpoints" / "epoch_1.pt"
    model = sparo_clip.create_model("tiny-SPARO", pretrained=str(ckpt), override_config=override)
    local = sparo_clip.save_pretrained(model, out / "models" / name)
    results = quickstart.evaluate(f"local-dir:{local}", ckpt, data, out / "eval" / name)
    return {"label": label, "sparo_cfg": sparo, "lr": lr, "seconds": seconds, "results": results}


def table(rows: list[dict[str, Any]], steps: int, batch: int) -> str:
    head = (
        f"Measured by `python -m benchmarks.sweep_tiny` ({steps} steps x {batch}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}):\n\n"
        "| variant | zero-shot top-1 seen | zero-shot top-1 unseen | retrieval R@1 (i2t / t2i) | compositionality mean | train s |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        res = r["results"]
        ret = res["retrieval"]
        lines.append(
            f"| {r['label']} | {res['zeroshot_seen']['top1']:.3f} | {res['zeroshot_unseen']['top1']:.3f} | "
            f"{ret['image_to_text_R@1']:.3f} / {ret['text_to_image_R@1']:.3f} | {res['sugarcrepe']['mean']:.3f} "
            f"| {r['seconds']:.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def write_docs(text: str, path: Path = DOCS) -> None:
    doc = path.read_text()
    if BEGIN not in doc or END not in doc:
        raise ValueError(f"{path} has no {BEGIN} ... {END} block to fill")
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    path.write_text(doc[:start] + "\n" + text + doc[end:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=quickstart.BATCH_SIZE)
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--out", default="runs/sweep_tiny")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[sweep] %(message)s")
    data = generate(args.data)
    rows = [run_variant(label, sparo, lr, data, args) for label, sparo, lr in VARIANTS]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows, args.steps, args.batch_size)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
