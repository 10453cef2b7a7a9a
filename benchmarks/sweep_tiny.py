"""How the quickstart's tiny SPARO settings were chosen: a small sweep at the quickstart's budget.

``python -m benchmarks.sweep_tiny [--steps 50] [--write-docs]`` trains tiny-SPARO variants (slot count x slot
width, learning rate) on the shapes world for the same number of steps through the quickstart's
:func:`~sparo_clip.commands.quickstart.train_model`, evaluates each with :func:`~sparo_clip.commands.quickstart.evaluate`
(compositional zero-shot, compositionality on novel scenes, retrieval), prints a table, writes
``runs/sweep_tiny/results.json`` and, with ``--write-docs``, fills the measured table into docs/quickstart.md
between its markers.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

import sparo_clip
from sparo_clip.commands import quickstart
from sparo_clip.data.generate import generate

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
    label: str, sparo: dict[str, Any], lr: float, data: dict[str, Any], steps: int, batch_size: int, out: Path
) -> dict:
    name = "sparo-" + "".join(c if c.isalnum() else "-" for c in label).strip("-")
    override = {"sparo_cfg": sparo}
    cfg = quickstart.TrainCfg("tiny-SPARO", steps, batch_size, lr, override=override)
    record = quickstart.train_model(cfg, name, data, out)
    ckpt = record["checkpoint"]
    model = sparo_clip.create_model("tiny-SPARO", pretrained=str(ckpt), override_config=override)
    local = sparo_clip.save_pretrained(model, out / "models" / name)
    results = quickstart.evaluate(f"local-dir:{local}", ckpt, data, out / "eval" / name)
    return {"label": label, "sparo_cfg": sparo, "lr": lr, "seconds": record["seconds"], "results": results}


def table(rows: list[dict[str, Any]], steps: int, batch: int) -> str:
    head = (
        f"Measured by `python -m benchmarks.sweep_tiny` ({steps} steps x {batch}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}):\n\n"
        "| variant | compositional AUC | best HM | compositionality mean, novel scenes | "
        "validation R@1 (i2t / t2i) | train s |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        res = r["results"]
        ret, comp = res["retrieval_val"], res["compositional"]
        lines.append(
            f"| {r['label']} | {comp['auc']:.3f} | {comp['best_hm']:.3f} | "
            f"{res['sugarcrepe']['groups']['novel']['mean']:.3f} | "
            f"{ret['image_to_text_R@1']:.3f} / {ret['text_to_image_R@1']:.3f} | {r['seconds']:.0f} |"
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
    out = Path(args.out)
    rows = [
        run_variant(label, sparo, lr, data, args.steps, args.batch_size, out) for label, sparo, lr in VARIANTS
    ]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows, args.steps, args.batch_size)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
