"""The main job on one CPU machine: a tiny SPARO model and its CLIP twin, trained and evaluated side by side.

``./scripts/quickstart.sh [--minutes M]`` runs ``python -m sparo_clip.quickstart``:

1. generate the shapes world (cached: a second run reuses it);
2. time a few training steps of each model and give both the same number of steps (the same samples, the
   same batch size) so that the slower one's training fits the budget;
3. train each through ``torchrun -m sparo_clip.train`` (OpenCLIP's training loop);
4. evaluate both with the ``sparo-clip eval`` commands: zero-shot on seen and unseen compositions,
   retrieval R@1, every compositionality set;
5. write ``report.md``, ``results.json`` and slot-attention pictures of the SPARO model.

Every number in the report is read from the evaluation outputs; nothing is written by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import sparo_clip

_logger = logging.getLogger("sparo_clip.quickstart")

# The two models and the hyper-parameters they share. How these were chosen: docs/quickstart.md.
MODELS = {"CLIP": "tiny-CLIP", "SPARO": "tiny-SPARO"}
BATCH_SIZE = 128
LR = 1e-3
WARMUP = 10
WD = 0.1
SMALL_WORLD_SIZES = dict(train=512, val=48, shards=4, zeroshot_per_class=4, sugarcrepe_per_task=16)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=6.0, help="training budget for both models together")
    p.add_argument("--out", default="runs/quickstart", help="folder for checkpoints, logs and the report")
    p.add_argument("--data", default="data/shapes", help="folder of the generated shapes world (cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--small", action="store_true", help="a tiny world and evaluation sets (smoke tests)")
    p.add_argument("--min-steps", type=int, default=20, help="fewest training steps per model")
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps per model (for tests)")
    p.add_argument("--workers", type=int, default=1, help="data loader workers per training process")
    return p


def calibrate_step_time(
    model_name: str, batch_size: int, context_length: int, image_size: int, reps: int = 3
) -> float:
    """Median seconds of one training step (forward, ClipLoss, backward, AdamW) on random data."""
    from open_clip.loss import ClipLoss

    model = sparo_clip.create_model(model_name)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ClipLoss()
    images = torch.randn(batch_size, 3, image_size, image_size)
    text = torch.randint(1, 400, (batch_size, context_length))
    text[:, context_length // 2] = 49407  # captions of half the context, end-of-text then padding
    text[:, context_length // 2 + 1 :] = 0
    times = []
    for i in range(reps + 1):
        t = time.perf_counter()
        out = model(images, text)
        loss = loss_fn(*out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def plan_steps(minutes: float, step_times: dict[str, float], min_steps: int, max_steps: int | None) -> int:
    """The same number of steps for every model, so that all of them together train in ``minutes``."""
    total_per_step = sum(step_times.values())
    steps = max(min_steps, int(minutes * 60 / total_per_step))
    return min(steps, max_steps) if max_steps else steps


def train_command(
    model: str, name: str, data: dict[str, Any], steps: int, args: argparse.Namespace, logs: Path
) -> list[str]:
    """``torchrun -m sparo_clip.train`` with one epoch of ``steps`` steps on the shapes world's shards."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29571",
        "-m", "sparo_clip.train",
        "--model", model,
        "--train-data", data["train"]["pattern"],
        "--dataset-type", "webdataset",
        "--train-num-samples", str(steps * args.batch_size),
        "--batch-size", str(args.batch_size),
        "--epochs", "1",
        "--lr", str(args.lr), "--warmup", str(min(WARMUP, max(1, steps // 5))), "--wd", str(WD),
        "--workers", str(args.workers),
        "--precision", "fp32",
        "--seed", str(args.seed),
        "--logs-dir", str(logs), "--name", name,
        "--log-every-n-steps", "10",
        "--report-to", "none",
        "--save-frequency", "1",
    ]  # fmt: skip


def train(
    model: str, name: str, data: dict[str, Any], steps: int, args: argparse.Namespace, out: Path
) -> Path:
    """Train one model (reusing a finished run with the same settings) and return its checkpoint."""
    logs = out / "logs"
    ckpt = logs / name / "checkpoints" / "epoch_1.pt"
    settings = {
        "model": model,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }
    stamp = logs / name / "quickstart.json"
    if ckpt.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        _logger.info("%s: reusing %s", name, ckpt)
        return ckpt
    shutil.rmtree(logs / name, ignore_errors=True)
    cmd = train_command(model, name, data, steps, args, logs)
    _logger.info("%s: training %s for %d steps of %d: %s", name, model, steps, args.batch_size, " ".join(cmd))
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1))
    t = time.perf_counter()
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0 or not ckpt.is_file():
        raise RuntimeError(
            f"training {model} failed (exit code {result.returncode}); see {logs / name / 'out.log'}"
        )
    _logger.info("%s: trained in %.0f s", name, time.perf_counter() - t)
    stamp.write_text(json.dumps(settings))
    return ckpt


def _eval(argv: list[str], output: Path) -> dict[str, Any]:
    from .eval.cli import main as eval_main

    rc = eval_main([*argv, "--output", str(output)])
    if rc != 0:
        raise RuntimeError(f"sparo-clip eval {' '.join(argv)} failed with exit code {rc}")
    return json.loads(output.read_text())


def evaluate(model: str, ckpt: Path, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Zero-shot on seen/unseen/all compositions, retrieval, compositionality: the eval commands' JSON."""
    out.mkdir(parents=True, exist_ok=True)
    common = ["--model", model, "--pretrained", str(ckpt), "--batch-size", "256", "--workers", "0"]
    results: dict[str, Any] = {}
    for split, spec in data["zeroshot"].items():
        argv = ["zeroshot", *common, "--data", spec["dir"], "--classnames", spec["classnames"]]
        r = _eval([*argv, "--templates", spec["templates"]], out / f"zeroshot_{split}.json")
        results[f"zeroshot_{split}"] = {**r["metrics"]["folder"], "chance": 1 / spec["num_classes"]}
    r = _eval(["retrieval", *common, "--csv", data["val"]["csv"]], out / "retrieval.json")
    results["retrieval"] = r["metrics"]
    sc = data["sugarcrepe"]
    r = _eval(
        ["sugarcrepe", *common, "--root", sc["root"], "--image-dir", sc["image_dir"]], out / "sugarcrepe.json"
    )
    results["sugarcrepe"] = r["metrics"]
    return results


def _rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, float]]]:
    """(metric label, {model: value}) rows of the side-by-side table."""
    names = list(results)
    first = results[names[0]]
    rows = []
    for split in ("seen", "unseen", "all"):
        key = f"zeroshot_{split}"
        if key in first:
            n = first[key]["num_classes"]
            rows.append((f"zero-shot top-1, {split} compositions ({n} classes, chance {1 / n:.3f})",
                         {m: results[m][key]["top1"] for m in names}))  # fmt: skip
            rows.append(
                (f"zero-shot top-5, {split} compositions", {m: results[m][key]["top5"] for m in names})
            )
    for key in ("image_to_text_R@1", "text_to_image_R@1", "image_to_text_R@5", "text_to_image_R@5"):
        rows.append((f"retrieval {key.replace('_', ' ')}", {m: results[m]["retrieval"][key] for m in names}))
    for task in sorted(k for k in first["sugarcrepe"] if k not in ("mean", "num_items")):
        rows.append(
            (f"compositionality {task} (chance 0.5)", {m: results[m]["sugarcrepe"][task] for m in names})
        )
    rows.append(("compositionality mean", {m: results[m]["sugarcrepe"]["mean"] for m in names}))
    return rows


def write_report(out: Path, summary: dict[str, Any]) -> Path:
    """report.md from the measured results (no number typed by hand)."""
    results = summary["results"]
    names = list(results)
    lines = [
        "# sparo-clip quickstart report",
        "",
        f"Shapes world: {summary['data']['train_samples']} training images, held-out compositions "
        f"{', '.join(summary['data']['held_out'])} (never in a training image or caption).",
        "",
        "| model | config | parameters | steps x batch | training time (s) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        run = summary["runs"].get(name)
        if run:
            lines.append(
                f"| {name} | {run['model']} | {run['parameters']:,} | {run['steps']} x {run['batch_size']} "
                f"| {run['seconds']:.0f} |"
            )
    lines += ["", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, values in _rows(results):
        best = max(values[n] for n in names if n in summary["runs"])
        cells = [
            f"**{values[n]:.3f}**" if n in summary["runs"] and values[n] == best else f"{values[n]:.3f}"
            for n in names
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bold: the better trained model. `untrained` is the SPARO model at initialisation, for reference.",
        "Both models trained through `torchrun -m sparo_clip.train` with the same steps, batch size, learning",
        "rate and data; evaluated by `sparo-clip eval` (per-command JSON under `eval/`).",
    ]
    if summary.get("pictures"):
        lines += ["", "## SPARO slot attention", ""]
        lines += [f"![{Path(p).stem}]({Path(p).relative_to(out)})" for p in summary["pictures"]]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def draw_pictures(model: str, ckpt: Path, data: dict[str, Any], out: Path, count: int = 6) -> list[str]:
    """Slot-attention pictures of the SPARO model on validation pairs (``sparo-clip viz``)."""
    from .viz import main as viz_main

    folder = out / "viz_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    rows = Path(data["val"]["csv"]).read_text().splitlines()[1 : count + 1]
    captions = []
    for i, row in enumerate(rows):
        path, text = row.split("\t", 1)
        shutil.copyfile(Path(data["val"]["csv"]).parent / path, folder / f"{i:02d}.png")
        captions.append(text)
    (out / "viz_captions.txt").write_text("\n".join(captions) + "\n")
    viz_out = out / "viz"
    argv = ["--model", model, "--pretrained", str(ckpt), "--images", str(folder)]
    argv += ["--captions", str(out / "viz_captions.txt"), "--out", str(viz_out)]
    if viz_main(argv) != 0:
        raise RuntimeError("sparo-clip viz failed")
    return [str(p) for p in sorted(viz_out.rglob("*.png"))[:4]]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[quickstart] %(message)s")
    from .data.shapes import SizeCfg, generate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = SizeCfg(**SMALL_WORLD_SIZES) if args.small else SizeCfg()
    data = generate(args.data, sizes=sizes)
    context = sparo_clip.resolve_model_config(MODELS["SPARO"])["text_cfg"]["context_length"]
    image_size = sparo_clip.resolve_model_config(MODELS["SPARO"])["vision_cfg"]["image_size"]
    step_times = {n: calibrate_step_time(m, args.batch_size, context, image_size) for n, m in MODELS.items()}
    steps = plan_steps(args.minutes, step_times, args.min_steps, args.max_steps)
    _logger.info("step times %s s: %d steps of %d for each model", step_times, steps, args.batch_size)

    runs: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for name, model in MODELS.items():
        t = time.perf_counter()
        ckpt = train(model, name, data, steps, args, out)
        seconds = time.perf_counter() - t
        with torch.device("meta"):
            params = sum(p.numel() for p in sparo_clip.create_model(model, device="meta").parameters())
        runs[name] = {"model": model, "checkpoint": str(ckpt), "steps": steps, "batch_size": args.batch_size,
                      "lr": args.lr, "seconds": seconds, "parameters": params}  # fmt: skip
        results[name] = evaluate(model, ckpt, data, out / "eval" / name)
    untrained = out / "untrained-SPARO.pt"
    torch.manual_seed(args.seed)
    torch.save(sparo_clip.create_model(MODELS["SPARO"]).state_dict(), untrained)
    results["untrained"] = evaluate(MODELS["SPARO"], untrained, data, out / "eval" / "untrained")
    pictures = draw_pictures(MODELS["SPARO"], Path(runs["SPARO"]["checkpoint"]), data, out)
    summary = {
        "data": {
            "root": args.data,
            "train_samples": data["train"]["num_samples"],
            "held_out": data["held_out"],
        },
        "step_times": step_times,
        "runs": runs,
        "results": results,
        "pictures": pictures,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_report(out, summary)
    print(report.read_text())
    _logger.info("wrote %s, %s and %d pictures", report, out / "results.json", len(pictures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
