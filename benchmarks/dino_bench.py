"""SPARO-DINO against CLS-DINO: training-step time and peak memory at equal batch, as ratios, in one run.

    python -m benchmarks.dino_bench                # tiny pair + ViT-S/16 pair (a few minutes on 2 CPU cores)
    python -m benchmarks.dino_bench --quick        # tiny pair, tiny batch (seconds; what the tests run)
    python -m benchmarks.dino_bench --write-docs   # also fill the DINO block of docs/performance.md

A step is DINO's: the EMA teacher on the 2 global crops (no grad), the student on 2 global + local crops,
lightly's DINOLoss, backward, gradient clipping, AdamW and the EMA update. Models are built from the
registered configs; both of a pair see the same crops. Times are medians of interleaved repetitions; peak
memory is CUDA's max allocated, or on CPU the peak of live tensors (``TensorMemory``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import replace_block
from sparo_clip.dino import DinoNet, load_config, parity
from sparo_clip.dino.lightly_api import require_lightly

from .common import (
    Env,
    add_machine_args,
    count_flops,
    interleaved,
    machine_env,
    machine_info,
    median,
    peak_tensor_bytes,
    save_result,
)

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- dino-benchmark:begin -->", "<!-- dino-benchmark:end -->"


@dataclass(frozen=True)
class DinoPair:
    """A SPARO-DINO config and its CLS-DINO twin, one batch size, the crops of a step."""

    name: str
    sparo: str
    cls: str
    batch: int
    local_crops: int
    warmup: int
    reps: int


PAIRS = {
    "tiny": DinoPair("tiny", "tiny_sparo_dino", "tiny_dino", batch=32, local_crops=8, warmup=1, reps=10),
    "vits16": DinoPair("ViT-S/16", "vit_small_patch16_sparo_dino", "vit_small_patch16_dino", 8, 8, 1, 7),
}
QUICK = DinoPair("tiny", "tiny_sparo_dino", "tiny_dino", batch=4, local_crops=2, warmup=0, reps=2)


def _views(model: str, pair: DinoPair, env: Env) -> list[torch.Tensor]:
    cfg = load_config(model)
    g = torch.Generator().manual_seed(0)
    sizes = [cfg.global_crop_size] * 2 + [cfg.local_crop_size] * pair.local_crops
    return [torch.randn(pair.batch, 3, s, s, generator=g).to(env.device) for s in sizes]


def dino_step(model: str, views: list[torch.Tensor], env: Env) -> Callable[[], None]:
    """One DINO training step of a freshly built student/teacher pair (fixed schedule values)."""
    lightly = require_lightly()
    cfg = load_config(model)
    torch.manual_seed(0)
    student, teacher = DinoNet(cfg).to(env.device), DinoNet(cfg).to(env.device)
    teacher.load_state_dict(student.state_dict())
    lightly.deactivate_requires_grad(teacher)
    loss_fn = lightly.DINOLoss(output_dim=cfg.head.output_dim, warmup_teacher_temp_epochs=1).to(env.device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=0.04)

    def step() -> None:
        with env.autocast():
            with torch.no_grad():
                t_out = teacher(views[:2])
            s_out = student(views)
        loss = loss_fn([t.float() for t in t_out], [s.float() for s in s_out], teacher_temp=0.04)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 3.0)
        opt.step()
        with torch.no_grad():
            lightly.update_momentum(student, teacher, 0.996)

    return step


def bench_dino(pairs: list[DinoPair], env: Env) -> list[dict[str, Any]]:
    """Step time and peak memory of each pair's SPARO and CLS models, interleaved; ratios SPARO / CLS."""
    rows = []
    for pair in pairs:
        steps = {
            k: dino_step(getattr(pair, k), _views(getattr(pair, k), pair, env), env) for k in ("sparo", "cls")
        }
        peaks = {k: peak_tensor_bytes(fn, env) for k, fn in steps.items()}  # also a warm-up step
        flops = {k: count_flops(fn) for k, fn in steps.items()}  # load-independent: matmul/conv/attention
        times = interleaved(steps, env, warmup=pair.warmup, reps=pair.reps)
        p = parity(load_config(pair.sparo))
        row: dict[str, Any] = {"pair": pair.name, "batch": pair.batch, "local_crops": pair.local_crops}
        row |= {"reps": pair.reps, "encoder_params": p["encoder"], "cls_encoder_params": p["cls_encoder"]}
        for k in steps:
            row[f"{k}_ms"] = 1e3 * median(times[k])
            row[f"{k}_peak_mib"] = peaks[k] / 2**20
            row[f"{k}_gflop"] = flops[k] / 1e9
        row["time_ratio"] = row["sparo_ms"] / row["cls_ms"]
        row["memory_ratio"] = row["sparo_peak_mib"] / row["cls_peak_mib"]
        row["flop_ratio"] = row["sparo_gflop"] / row["cls_gflop"]
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    head = (
        f"Measured {m['date']} by `{result['command']}` on {m.get('gpu', m['cpu'])}, {m['threads']} torch "
        f"threads; device `{m['device']}`, {m['precision']}; torch {m['torch']}. Total {result['seconds']:.0f} s."
    )
    lines = [
        "| pair | batch (2 global + local crops) | encoder params SPARO / CLS | SPARO ms | CLS ms | "
        "**time SPARO/CLS** | GFLOP SPARO / CLS | **FLOPs SPARO/CLS** | peak MiB SPARO / CLS | "
        "**memory SPARO/CLS** | reps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["dino"]:
        lines.append(
            f"| {r['pair']} | {r['batch']} (2 + {r['local_crops']}) | "
            f"{r['encoder_params']:,} / {r['cls_encoder_params']:,} | {r['sparo_ms']:.1f} | {r['cls_ms']:.1f} | "
            f"**{r['time_ratio']:.3f}** | {r['sparo_gflop']:.1f} / {r['cls_gflop']:.1f} | **{r['flop_ratio']:.3f}** | "
            f"{r['sparo_peak_mib']:.1f} / {r['cls_peak_mib']:.1f} | "
            f"**{r['memory_ratio']:.3f}** | {r['reps']} |"
        )
    met = [f"{r['pair']}: {'met' if r['time_ratio'] <= 1.0 else 'not met'}" for r in result["dino"]]
    target = (
        "Target SPARO-DINO step <= 1.0x CLS-DINO at parameter parity: "
        + "; ".join(met)
        + ". On a shared CPU the "
        "time ratio moves by several percent between runs; the FLOP ratio (matmul, convolution and attention "
        "FLOPs of a step, counted by torch) does not depend on the load."
    )
    return "\n\n".join([head, "\n".join(lines), target])


def write_docs(result: dict[str, Any], path: Path) -> None:
    """Replace the DINO block of ``path`` (between its markers) with this result."""
    replace_block(path, BEGIN, END, markdown(result))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.dino_bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny pair, tiny batch, 2 reps (for tests)")
    p.add_argument("--pairs", default="tiny,vits16", help=f"comma list from {sorted(PAIRS)}")
    add_machine_args(p)
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "dino_benchmark.json")
    p.add_argument("--write-docs", nargs="?", type=Path, const=ROOT / "docs" / "performance.md", default=None)
    args = p.parse_args(argv)
    env = machine_env(p, args, PAIRS)
    pairs = [QUICK] if args.quick else [PAIRS[n] for n in args.pairs.split(",")]
    start = time.perf_counter()
    result = {
        "command": shlex.join(["python -m benchmarks.dino_bench", *argv]),
        "machine": machine_info(env),
        "pairs": [asdict(q) for q in pairs],
        "dino": bench_dino(pairs, env),
    }
    result["seconds"] = time.perf_counter() - start
    text = markdown(result).replace("**", "")
    save_result(result, text, args.json, args.write_docs, lambda: write_docs(result, args.write_docs), "DINO")
    return result


if __name__ == "__main__":
    main()
