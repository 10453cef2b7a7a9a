"""SPARO under torch.compile: text trimmed (eager) against untrimmed (eager) against compiled, beside CLIP.

    python -m benchmarks.compile_bench                # tiny pair at batch 32 (a few minutes on 2 CPU cores)
    python -m benchmarks.compile_bench --quick        # test configs, batch 4, the "eager" backend (for tests)
    python -m benchmarks.compile_bench --write-docs   # also fill the compile block of docs/performance.md

Eager SPARO runs its text tower only up to the longest caption of the batch (``trim_text``); while
``torch.compile`` traces, it runs over the whole context instead (a length read from the data would break the
graph), so the compiled model is one graph with static shapes. This measures what each choice costs, one
process, side by side: a training step (forward, ClipLoss, backward, AdamW) and ``encode_text`` (no grad) of
SPARO trimmed, SPARO untrimmed (``trim_text=false``, the same weights), SPARO compiled, CLIP eager and CLIP
compiled; times are medians of interleaved repetitions after each variant's first call, with the minimum beside
them (on a CPU shared with other work, the least disturbed repetition). Compilation is timed as a new user meets
it, in a fresh process with an empty inductor cache (:func:`cold_first_call`). Compiled outputs are checked
against the eager ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

import sparo_clip
from sparo_clip.checkpoints.files import replace_block

from .common import (
    Env,
    add_machine_args,
    captions,
    clip_train_step,
    interleaved,
    machine_env,
    machine_info,
    median,
    save_result,
)

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- compile-benchmark:begin -->", "<!-- compile-benchmark:end -->"
VARIANTS = ("sparo_trimmed", "sparo_untrimmed", "sparo_compiled", "clip_eager", "clip_compiled")
COMPILED = ("sparo_compiled", "clip_compiled")


@dataclass(frozen=True)
class CompilePair:
    """A SPARO config and its CLIP twin, one batch size, the torch.compile backend."""

    name: str
    sparo: str
    clip: str
    batch: int
    warmup: int
    reps: int
    backend: str = "inductor"


PAIRS = {"tiny": CompilePair("tiny", "tiny-SPARO", "tiny-CLIP", batch=32, warmup=2, reps=12)}
QUICK = CompilePair("test", "test-SPARO", "test-CLIP", batch=4, warmup=0, reps=2, backend="eager")


def _model(pair: CompilePair, variant: str, env: Env) -> torch.nn.Module:
    """The model of one variant; every SPARO variant has the same weights, and so has every CLIP one (same seed)."""
    torch.manual_seed(0)
    if variant.startswith("clip"):
        return open_clip.create_model(pair.clip, device=env.device)
    override = {"sparo_cfg": {"trim_text": False}} if variant == "sparo_untrimmed" else None
    return sparo_clip.create_model(pair.sparo, device=env.device, override_config=override)


def _inputs(pair: CompilePair, env: Env) -> tuple[torch.Tensor, torch.Tensor]:
    size = open_clip.get_model_config(pair.clip)["vision_cfg"]["image_size"]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(pair.batch, 3, size, size, generator=gen).to(env.device)
    text = open_clip.get_tokenizer(pair.clip)(captions(pair.batch)).to(env.device)
    return images, text


def _encode_text(encode: Callable, text: torch.Tensor, env: Env) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad(), env.autocast():
            return encode(text)

    return run


def _step_of(pair: CompilePair, variant: str, section: str, env: Env) -> Callable[[], Any]:
    """The timed function of one variant and section (what :func:`bench_compile` interleaves)."""
    images, text = _inputs(pair, env)
    model = _model(pair, variant, env)
    compiled = variant.endswith("_compiled")
    if section == "encode_text":
        model.eval()
        encode = torch.compile(model.encode_text, backend=pair.backend) if compiled else model.encode_text
        return _encode_text(encode, text, env)
    forward = torch.compile(model, backend=pair.backend) if compiled else model
    return clip_train_step(model, forward, images, text, env)


_CHILD = """
import json, time, torch
from benchmarks.common import Env
from benchmarks.compile_bench import CompilePair, _step_of
torch.set_num_threads({threads})
pair, env = CompilePair(**{pair!r}), Env(torch.device({device!r}))
t = time.perf_counter()
torch.compile(lambda x: x.sin() + 1, backend=pair.backend)(torch.randn(8, device=env.device))
start = time.perf_counter() - t
fn = _step_of(pair, {variant!r}, {section!r}, env)
t = time.perf_counter()
fn()
env.sync()
print(json.dumps({{"backend_start_s": start, "first_call_s": time.perf_counter() - t}}))
"""


def cold_first_call(pair: CompilePair, variant: str, section: str, env: Env) -> dict[str, float]:
    """Compilation time of a compiled variant as a new user meets it: a fresh process, an empty inductor cache.

    In one process (or on a machine that compiled the model before) compiled graphs are reused. The backend's
    one-time start (imports, toolchain checks: the same for every model) is timed apart, on a trivial function.
    """
    code = _CHILD.format(
        threads=torch.get_num_threads(),
        pair=asdict(pair),
        device=str(env.device),
        variant=variant,
        section=section,
    )
    with tempfile.TemporaryDirectory(prefix="compile-bench-") as cache:
        child_env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=child_env, cwd=ROOT
        )
    if r.returncode != 0:
        raise RuntimeError(f"cold compile of {variant} ({section}) failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_compile(pair: CompilePair, env: Env, cold: bool = True) -> dict[str, Any]:
    """Text-encoder and training-step times of every variant, compile times, compiled-vs-eager differences.

    Args:
        cold: time compilation in fresh processes (:func:`cold_first_call`); else report this process's first
            calls (caches as found).
    """
    images, text = _inputs(pair, env)
    lengths = (text.argmax(dim=-1) + 1).float()
    out: dict[str, Any] = {"pair": pair.name, "batch": pair.batch, "reps": pair.reps, "backend": pair.backend}
    out["caption_tokens"] = {
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
        "context": text.shape[1],
    }
    for section in ("encode_text", "train_step"):
        torch._dynamo.reset()  # each section compiles afresh
        fns = {name: _step_of(pair, name, section, env) for name in VARIANTS}
        first, results = {}, {}
        for name, fn in fns.items():  # the first call: a warm-up, and for the compiled ones, compilation
            start = time.perf_counter()
            results[name] = fn()
            env.sync()
            first[name] = {"first_call_s": time.perf_counter() - start}
        if cold:
            first.update({name: cold_first_call(pair, name, section, env) for name in COMPILED})
        if section == "encode_text":
            reference = results["sparo_trimmed"].float()
            out["max_abs_diff_vs_trimmed"] = {
                name: float((results[name].float() - reference).abs().max())
                for name in ("sparo_untrimmed", "sparo_compiled")
            }
        times = interleaved(fns, env, warmup=pair.warmup, reps=pair.reps)
        rows = {name: 1e3 * median(times[name]) for name in fns}
        best = {name: 1e3 * min(times[name]) for name in fns}  # the least disturbed repetition (shared CPU)
        out[section] = {
            "ms": rows,
            "min_ms": best,
            "first_call": {name: first[name] for name in COMPILED},
            "cold_first_call": cold,
            "ratio_vs_trimmed": {name: rows[name] / rows["sparo_trimmed"] for name in rows},
            "min_ratio_vs_trimmed": {name: best[name] / best["sparo_trimmed"] for name in best},
            "sparo_over_clip_eager": rows["sparo_trimmed"] / rows["clip_eager"],
            "sparo_over_clip_compiled": rows["sparo_compiled"] / rows["clip_compiled"],
            "min_sparo_over_clip_eager": best["sparo_trimmed"] / best["clip_eager"],
            "min_sparo_over_clip_compiled": best["sparo_compiled"] / best["clip_compiled"],
        }
    return out


def _first_calls(e: dict[str, Any], t: dict[str, Any]) -> str:
    def one(section: dict[str, Any], name: str) -> str:
        call = section["first_call"][name]
        start = f" (+ {call['backend_start_s']:.1f} s backend start)" if "backend_start_s" in call else ""
        return f"{call['first_call_s']:.1f} s{start}"

    how = "in a fresh process, empty inductor cache" if e["cold_first_call"] else "in this process"
    return (
        f"First call (compilation; {how}): encode_text SPARO {one(e, 'sparo_compiled')}, CLIP "
        f"{one(e, 'clip_compiled')}; train step SPARO {one(t, 'sparo_compiled')}, CLIP {one(t, 'clip_compiled')}."
    )


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    head = (
        f"Measured {m['date']} by `{result['command']}` on {m.get('gpu', m['cpu'])}, {m['threads']} torch "
        f"threads; device `{m['device']}`, {m['precision']}; torch {m['torch']}, open_clip {m['open_clip']}. "
        f"Total {result['seconds']:.0f} s."
    )
    labels = {
        "sparo_trimmed": "SPARO eager, trimmed (default)",
        "sparo_untrimmed": "SPARO eager, untrimmed (`trim_text=false`)",
        "sparo_compiled": "SPARO compiled (whole context)",
        "clip_eager": "CLIP eager",
        "clip_compiled": "CLIP compiled",
    }
    blocks = [head]
    for r in result["compile"]:
        tokens = r["caption_tokens"]
        lines = [
            f"**{r['pair']}**, batch {r['batch']}, backend `{r['backend']}`, captions {tokens['mean']:.1f} tokens "
            f"on average, {tokens['max']} at most, of {tokens['context']}; {r['reps']} reps.",
            "",
            "| variant | encode_text ms, median (min) | **/ SPARO trimmed**, median (min) | train step ms, median (min) "
            "| **/ SPARO trimmed**, median (min) |",
            "|---|---|---|---|---|",
        ]
        e, t = r["encode_text"], r["train_step"]
        for name in VARIANTS:
            lines.append(
                f"| {labels[name]} | {e['ms'][name]:.1f} ({e['min_ms'][name]:.1f}) | "
                f"**{e['ratio_vs_trimmed'][name]:.3f}** ({e['min_ratio_vs_trimmed'][name]:.3f}) | "
                f"{t['ms'][name]:.1f} ({t['min_ms'][name]:.1f}) | "
                f"**{t['ratio_vs_trimmed'][name]:.3f}** ({t['min_ratio_vs_trimmed'][name]:.3f}) |"
            )
        lines += [
            "",
            f"SPARO / CLIP, medians (minimums): eager {e['sparo_over_clip_eager']:.3f} "
            f"({e['min_sparo_over_clip_eager']:.3f}) for encode_text, {t['sparo_over_clip_eager']:.3f} "
            f"({t['min_sparo_over_clip_eager']:.3f}) for the train step; compiled "
            f"{e['sparo_over_clip_compiled']:.3f} ({e['min_sparo_over_clip_compiled']:.3f}) and "
            f"{t['sparo_over_clip_compiled']:.3f} ({t['min_sparo_over_clip_compiled']:.3f}). "
            f"{_first_calls(e, t)} "
            "Largest difference from SPARO trimmed (encode_text): untrimmed "
            f"{r['max_abs_diff_vs_trimmed']['sparo_untrimmed']:.1e}, compiled "
            f"{r['max_abs_diff_vs_trimmed']['sparo_compiled']:.1e}.",
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_docs(result: dict[str, Any], path: Path) -> None:
    """Replace the compile block of ``path`` (between its markers) with this result."""
    replace_block(path, BEGIN, END, markdown(result))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="test configs, batch 4, 2 reps, eager backend (for tests)"
    )
    p.add_argument("--pairs", default="tiny", help=f"comma list from {sorted(PAIRS)}")
    p.add_argument("--batch", type=int, default=None, help="batch size (default per pair)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default per pair)")
    p.add_argument(
        "--backend", default=None, help="torch.compile backend (default: inductor; --quick: eager)"
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="report this process's first calls (default: cold compiles, each in a fresh process and cache)",
    )
    add_machine_args(p)
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "compile_benchmark.json")
    p.add_argument("--write-docs", nargs="?", type=Path, const=ROOT / "docs" / "performance.md", default=None)
    args = p.parse_args(argv)
    env = machine_env(p, args, PAIRS)
    pairs = [QUICK] if args.quick else [PAIRS[n] for n in args.pairs.split(",")]
    changes = {k: v for k, v in (("batch", args.batch), ("reps", args.reps), ("backend", args.backend)) if v}
    pairs = [CompilePair(**{**asdict(q), **changes}) for q in pairs]
    start = time.perf_counter()
    result: dict[str, Any] = {
        "command": shlex.join(["python -m benchmarks.compile_bench", *argv]),
        "machine": machine_info(env),
        "pairs": [asdict(q) for q in pairs],
    }
    result["compile"] = [bench_compile(q, env, cold=not (args.quick or args.warm_cache)) for q in pairs]
    result["seconds"] = time.perf_counter() - start
    text = markdown(result).replace("**", "")
    save_result(
        result, text, args.json, args.write_docs, lambda: write_docs(result, args.write_docs), "compile"
    )
    return result


if __name__ == "__main__":
    main()
