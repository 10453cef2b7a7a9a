"""Is SPARO slower than the CLIP it replaces? One run, interleaved, medians.

    python -m benchmarks.run                 # full run (about 6 minutes on 2 quiet CPU cores)
    python -m benchmarks.run --quick         # tiny models and sizes (seconds)
    python -m benchmarks.run --write-docs    # also fill docs/performance.md's result block

Sections: (1) training step time and (2) encoder throughput of each SPARO model against its CLIP twin,
(3) the read-out alone against a naive formulation and its key projection alone, with peak memory,
(4) FLOPs of a training step as a fraction of the machine's measured matmul peak. Prints a table,
writes JSON. Runs on CUDA (bf16 autocast) when present, else on CPU (fp32); ``--device`` picks.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from . import dino_bench
from .common import Env, machine_info, matmul_peak, save_result
from .models_bench import Pair, bench_pair
from .readout_bench import ReadoutShape, bench_readout
from .report import targets, text_table, write_docs

ROOT = Path(__file__).resolve().parent.parent
PAIRS = {
    "tiny": Pair("tiny", "tiny-SPARO", "tiny-CLIP", batches=(32, 128), warmup=1, reps=8),
    "vitb32": Pair("ViT-B-32", "ViT-B-32-SPARO", "ViT-B-32", batches=(8, 32), warmup=1, reps=5),
}
QUICK_PAIR = Pair("tiny", "tiny-SPARO", "tiny-CLIP", batches=(4,), warmup=0, reps=2)
QUICK_READOUT = ReadoutShape(batch=4, tokens=10, width=64, slots=4, attn_dim=16)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, tiny sizes, 1-2 reps (for tests)")
    p.add_argument("--pairs", default="tiny,vitb32", help=f"comma list from {sorted(PAIRS)}, or 'none'")
    p.add_argument("--batches", default=None, help="comma list of batch sizes for every pair")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per model (default per pair)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds before timing")
    p.add_argument("--readout-reps", type=int, default=10, help="timed repetitions of the read-out forms")
    p.add_argument("--no-readout", action="store_true", help="skip the read-out section")
    p.add_argument(
        "--dino", action="store_true", help="also SPARO-DINO vs CLS-DINO (benchmarks/dino_bench.py)"
    )
    p.add_argument("--device", default="auto", help="auto (cuda when present, default), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "benchmark.json", help="where to write")
    p.add_argument(
        "--write-docs",
        nargs="?",
        type=Path,
        const=ROOT / "docs" / "performance.md",
        default=None,
        help="fill the result block of docs/performance.md (or the given file)",
    )
    args = p.parse_args(argv)
    if args.device not in ("cpu", "cuda", "auto"):
        p.error(f"--device must be one of ['auto', 'cpu', 'cuda'], got {args.device!r}")
    names = [] if args.pairs == "none" else [n for n in args.pairs.split(",") if n]
    unknown = sorted(set(names) - set(PAIRS))
    if unknown:
        p.error(f"--pairs: unknown {unknown}; allowed: {sorted(PAIRS)} or 'none'")
    args.pair_names = names
    return args


def _pairs(args: argparse.Namespace) -> list[Pair]:
    pairs = [QUICK_PAIR] if args.quick else [PAIRS[n] for n in args.pair_names]
    out = []
    for p in pairs:
        out.append(
            Pair(
                p.name,
                p.sparo,
                p.baseline,
                batches=tuple(int(b) for b in args.batches.split(",")) if args.batches else p.batches,
                warmup=p.warmup if args.warmup is None else args.warmup,
                reps=p.reps if args.reps is None else args.reps,
            )
        )
    return out


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Every section, in one process; returns the JSON-ready result."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    env = Env(torch.device("cuda" if cuda else "cpu"))
    start = time.perf_counter()
    result: dict = {
        "command": shlex.join(["python -m benchmarks.run", *argv]),
        "machine": machine_info(env),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    sizes = (512, 1024) if args.quick else ((4096, 8192) if cuda else (2048, 4096))
    peaks = [matmul_peak(env, sizes, reps=3 if args.quick else 5)]
    result["train"], result["inference"] = [], []
    for pair in _pairs(args):
        out = bench_pair(pair, env)
        result["train"] += out["train"]
        result["inference"] += out["inference"]
    if not args.no_readout:
        shape = QUICK_READOUT if args.quick else ReadoutShape()
        reps = 2 if args.quick else args.readout_reps
        result["readout"] = bench_readout(env, shape, warmup=1 if args.quick else 2, reps=reps)
    if args.dino:
        result["dino"] = dino_bench.bench_dino(
            [dino_bench.QUICK] if args.quick else list(dino_bench.PAIRS.values()), env
        )
    peaks.append(matmul_peak(env, sizes, reps=3 if args.quick else 5))  # at the start and at the end
    result["matmul_peak"] = peak = max(peaks, key=lambda p: p["flops_per_s"])
    for row in result["train"]:  # section 4: achieved FLOP/s of a training step / matmul peak
        for k in ("sparo", "baseline"):
            row[f"{k}_flop_fraction"] = row[f"{k}_gflop"] * 1e9 / (row[f"{k}_ms"] / 1e3) / peak["flops_per_s"]
    result["targets"] = targets(result)
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    result = run(args, argv)

    def fill() -> None:
        write_docs(result, args.write_docs)
        if "dino" in result:
            dino_bench.write_docs(result, args.write_docs)

    save_result(result, text_table(result), args.json, args.write_docs, fill, "result")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
