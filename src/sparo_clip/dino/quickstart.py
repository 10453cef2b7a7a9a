"""SPARO-DINO main job: ``python -m sparo_clip.dino.quickstart`` (``sparo-clip dino quickstart``).

Trains tiny CLS-DINO and tiny SPARO-DINO twins (``tiny_dino`` / ``tiny_sparo_dino``, same steps, batch and
recipe) on the shapes world's training images, then probes each teacher with kNN and a linear classifier
on the colour-shape classes (single-object images), seen and held-out pairs apart, beside the same
encoders at initialisation. Writes ``report.json``, ``report.md`` and a slot attention PNG of SPARO-DINO;
``--write-docs`` puts the measured table into docs/dino.md. ``--small`` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sparo_clip.data.generate import SizeCfg, generate
from sparo_clip.data.world import WorldCfg
from sparo_clip.dino import train as dino_train
from sparo_clip.dino.config import load_config
from sparo_clip.dino.model import DinoNet, load_encoder
from sparo_clip.dino.pictures import slot_attention_png
from sparo_clip.dino.shapes import probe_sets
from sparo_clip.errors import ConfigError, SparoClipError, one_line
from sparo_clip.eval import cli as eval_cli
from sparo_clip.inputs import check_writable_folder

ROOT = Path(__file__).resolve().parents[3]
MODELS = {"CLS-DINO": "tiny_dino", "SPARO-DINO": "tiny_sparo_dino"}
BEGIN, END = "<!-- dino-quickstart:begin -->", "<!-- dino-quickstart:end -->"
logger = logging.getLogger("sparo_clip.dino.quickstart")


@dataclass(frozen=True)
class Budget:
    """How much the job does: world size, training steps and batch, probe images per class."""

    train_images: int = 4000
    per_class: int = 40
    steps: int = 200
    epochs: int = 10
    batch: int = 32
    local_crops: int = 4
    lr: float = 4e-3
    momentum: float = 0.99
    probe_args: tuple[str, ...] = ()


SMALL = Budget(
    64,
    per_class=4,
    steps=2,
    epochs=1,
    batch=8,
    local_crops=2,
    probe_args=("--wd", "1e-3", "--max-iter", "20"),
)


def train_args(budget: Budget, model: str, data: dict[str, Any], out: Path) -> list[str]:
    """The recipe both twins get (DINO's, shortened: see docs/dino.md)."""
    return [
        "--model", model, "--train-data", data["pattern"], "--dataset-type", "webdataset",
        "--train-num-samples", str(budget.steps // budget.epochs * budget.batch),
        "--epochs", str(budget.epochs), "--batch-size", str(budget.batch), "--local-crops", str(budget.local_crops),
        "--lr", str(budget.lr), "--warmup-epochs", "1", "--warmup-teacher-temp-epochs", "0",
        "--momentum-teacher", str(budget.momentum), "--workers", "1", "--device", "cpu", "--precision", "fp32",
        "--save-every", str(budget.steps), "--log-every", "10", "--output", str(out), "--resume", "auto",
    ]  # fmt: skip


def init_checkpoint(model: str, path: Path, seed: int = 0) -> Path:
    """The twins' initial teacher (what training starts from), saved like a training checkpoint."""
    cfg = load_config(model)
    torch.manual_seed(seed)
    net = DinoNet(cfg)
    torch.save({"dino_cfg": cfg.to_dict(), "teacher": net.state_dict(), "student": net.state_dict()}, path)
    return path


def probe(ckpt: Path, probes: dict[str, Any], out: Path, linear_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """kNN (k=10, 20) and linear-probe accuracy over all, seen and held-out classes."""
    result = {}
    common = ["--model", f"dino:{ckpt}", "--train", probes["train"], "--val", probes["val"], "--workers", "0",
              "--device", "cpu", "--precision", "fp32", "--cache-dir", str(out / "features")]  # fmt: skip
    for task, extra in (("knn", ["--k", "10,20"]), ("linear", list(linear_args))):
        path = out / "probes" / f"{ckpt.parent.parent.name}-{ckpt.stem}-{task}.json"
        with contextlib.redirect_stdout(io.StringIO()):  # the JSON goes to the file, not the console
            rc = eval_cli.main([task, *common, *extra, "--output", str(path)])
        if rc != 0:
            raise RuntimeError(f"eval {task} of {ckpt} failed")
        metrics = json.loads(path.read_text())["metrics"]
        metrics = metrics["k=20"] if task == "knn" else metrics
        per_class = metrics["per_class_top1"]
        row = {"all": metrics["top1"]}
        for group in ("seen", "held_out"):
            names = [c for c in probes[group] if c in per_class]
            row[group] = sum(per_class[c] for c in names) / len(names) if names else None
        result[task] = row
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def report_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | weights | kNN all | kNN seen | kNN held-out | linear all | linear seen | linear held-out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_weights in results.items():
        for weights, r in by_weights.items():
            cells = [_pct(r[t][g]) for t in ("knn", "linear") for g in ("all", "seen", "held_out")]
            lines.append(f"| {name} | {weights} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs(block: str, doc: Path) -> None:
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc}: no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{block}\n{END}{tail}")


def run(budget: Budget, out: Path, world: WorldCfg) -> dict[str, Any]:
    start = time.perf_counter()
    # the DINO job reads the training images and the zero-shot folders; the other sets stay at their minimum
    sizes = SizeCfg(train=budget.train_images, val=8, shards=4, zeroshot_per_class=2 * budget.per_class,
                    sugarcrepe_per_task=4, test=2, sugarcrepe_val_per_task=4, binding_per_group=2)  # fmt: skip
    manifest = generate(out / "data", world, sizes)
    probes = probe_sets(out / "data", out / "probe")
    data = {"pattern": manifest["train"]["pattern"]}
    results: dict[str, dict[str, Any]] = {}
    checkpoints = {}
    for name, model in MODELS.items():
        run_dir = out / "runs" / model
        if dino_train.main(train_args(budget, model, data, run_dir)) != 0:
            raise RuntimeError(f"training {model} failed")
        trained = dino_train.latest_checkpoint(run_dir)
        checkpoints[name] = trained
        init = init_checkpoint(model, out / "runs" / f"{model}-init.pt")
        results[name] = {
            "init": probe(init, probes, out, budget.probe_args),
            f"{budget.steps} steps": probe(trained, probes, out, budget.probe_args),
        }
    val = sorted(Path(probes["val"]).rglob("*.png"))
    picks = [
        sorted((Path(probes["val"]) / c).glob("*.png"))[0]
        for c in (probes["seen"][:2] + probes["held_out"][:2])
    ]
    picture = slot_attention_png(load_encoder(checkpoints["SPARO-DINO"]), picks, out / "slot_attention.png",
                                 [p.parent.name.replace("_", " ") + (" (held-out)" if p.parent.name in probes["held_out"] else "") for p in picks])  # fmt: skip
    return {
        "budget": asdict(budget),
        "world": world.to_dict(),
        "probe": {
            "per_class_train": probes["per_class"],
            "val_images": len(val),
            "seen": probes["seen"],
            "held_out": probes["held_out"],
        },  # fmt: skip
        "results": results,
        "picture": str(picture),
        "seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparo_clip.dino.quickstart", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="runs/dino_quickstart", help="working folder (data, runs, report)")
    p.add_argument("--small", action="store_true", help="a seconds-long smoke run (tests)")
    p.add_argument("--steps", type=int, default=None, help="training steps of each twin (default 200)")
    p.add_argument("--fresh", action="store_true", help="delete earlier runs under --out first")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)"
    )
    p.add_argument("--write-docs", action="store_true", help="put the measured table into docs/dino.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    budget = SMALL if args.small else Budget()
    if args.steps is not None:
        if args.steps < budget.epochs or args.steps % budget.epochs:
            print(
                f"sparo-dino quickstart: error: --steps must be a positive multiple of {budget.epochs}, got "
                f"{args.steps}",
                file=sys.stderr,
            )
            return 2
        budget = Budget(**{**asdict(budget), "steps": args.steps})
    if args.threads < 1:
        print(f"sparo-dino quickstart: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    try:
        check_writable_folder(args.out, "--out")
    except ConfigError as e:
        print(f"sparo-dino quickstart: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.fresh and (out / "runs").exists():
        shutil.rmtree(out / "runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # for this job only: a caller in the same process gets its own back
    try:
        report = run(budget, out, WorldCfg())
    except (SparoClipError, RuntimeError, OSError) as e:  # a step failed: it said why above; say which
        print(f"sparo-dino quickstart: error: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
    table = report_table(report["results"])
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(table + "\n")
    print(table)
    if args.write_docs:
        img = ROOT / "docs" / "img" / "dino" / "slot_attention.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report["picture"], img)
        b = report["budget"]
        block = (
            f"Measured by `python -m sparo_clip.dino.quickstart --write-docs` ({report['seconds'] / 60:.1f} min, "
            f"{report['torch_threads']} CPU threads): {b['steps']} steps of batch {b['batch']} "
            f"(2 global + {b['local_crops']} local crops) per twin on {b['train_images']} shapes-world images; "
            f"probes on {report['probe']['per_class_train']} training images per colour-shape class, "
            f"{report['probe']['val_images']} test images; held-out pairs: "
            f"{', '.join(p.replace('_', ' ') for p in report['probe']['held_out'])}. Top-1 %, kNN k=20.\n\n"
            f"{table}\n\n![SPARO-DINO slot attention](img/dino/slot_attention.png)"
        )
        write_docs(block, ROOT / "docs" / "dino.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
