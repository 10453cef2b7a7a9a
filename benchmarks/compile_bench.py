"""SPARO under torch.compile: text trimmed (eager) against untrimmed (eager) against compiled, beside CLIP.

    python -m benchmarks.compile_bench                # tiny pair at batch 32 (a few minutes on 2 CPU cores)
    python -m benchmarks.compile_bench --quick        # test configs, batch 4, the "eager" backend (for tests)
    python -m benchmarks.compile_bench --write-docs   # also fill the compile block of docs/performance.md

Eager SPARO runs its text tower only up to the longest caption of the batch (``trim_text``); while
``torch.compile`` traces, it runs over the whole context instead (a length read from the data would break the
graph), so the compiled model is one graph with static shapes. This measures what each choice costs, one
process, side by side: a training step (forward, ClipLoss, backward, AdamW) and ``encode_text`` (no grad) of
SPARO trimmed, SPARO untrimmed (``trim_text=false``, the same weights), SPARO compiled, CLIP eager and CLIP
compiled; times are medians of interleaved repetitions after each variant's first call, which for the compiled
ones includes compilation and is reported on its own. Compiled outputs are checked against the eager ones.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.loss import ClipLoss

import sparo_clip

from .common import Env, captions, interleaved, machine_info, median, replace_block

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- compile-benchmark:begin -->", "<!-- compile-benchmark:end -->"
VARIANTS = ("sparo_trimmed", "sparo_untrimmed", "sparo_compiled", "clip_eager", "clip_compiled")


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


PAIRS = {"tiny": CompilePair("tiny", "tiny-SPARO", "tiny-CLIP", batch=32, warmup=1, reps=8)}
QUICK = CompilePair("test", "test-SPARO", "test-CLIP", batch=4, warmup=0, reps=2, backend="eager")


def _models(pair: CompilePair, env: Env) -> dict[str, torch.nn.Module]:
    """Eager models of every variant (compiled ones wrap their own copy, so no variant shares a cache)."""
    torch.manual_seed(0)
    sparo = sparo_clip.create_model(pair.sparo, device=env.device)
    models = {"sparo_trimmed": sparo}
    for name, override in (
        ("sparo_untrimmed", {"sparo_cfg": {"trim_text": False}}),
        ("sparo_compiled", None),
    ):
        models[name] = sparo_clip.create_model(pair.sparo, device=env.device, override_config=override)
        models[name].load_state_dict(sparo.state_dict())
    torch.manual_seed(0)
    models["clip_eager"] = open_clip.create_model(pair.clip, device=env.device)
    models["clip_compiled"] = open_clip.create_model(pair.clip, device=env.device)
    models["clip_compiled"].load_state_dict(models["clip_eager"].state_dict())
    return models


def _inputs(pair: CompilePair, env: Env) -> tuple[torch.Tensor, torch.Tensor]:
    size = open_clip.get_model_config(pair.clip)["vision_cfg"]["image_size"]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(pair.batch, 3, size, size, generator=gen).to(env.device)
    text = open_clip.get_tokenizer(pair.clip)(captions(pair.batch)).to(env.device)
    return images, text


def _train_step(model: torch.nn.Module, forward: Callable, images, text, env: Env) -> Callable[[], None]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1, fused=True)
    loss_fn = ClipLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with env.autocast():
            image_features, text_features, logit_scale = forward(images, text)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        opt.step()

    return step


def _encode_text(encode: Callable, text: torch.Tensor, env: Env) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad(), env.autocast():
            return encode(text)

    return run


def bench_compile(pair: CompilePair, env: Env) -> dict[str, Any]:
    """Text-encoder and training-step times of every variant; compile times; compiled-vs-eager differences."""
    images, text = _inputs(pair, env)
    lengths = (text.argmax(dim=-1) + 1).float()
    out: dict[str, Any] = {"pair": pair.name, "batch": pair.batch, "reps": pair.reps, "backend": pair.backend}
    out["caption_tokens"] = {
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
        "context": text.shape[1],
    }
    for section in ("encode_text", "train_step"):
        torch._dynamo.reset()  # each section compiles afresh: its first call is its compile time
        models = _models(pair, env)
        fns, first = {}, {}
        for name, model in models.items():
            compiled = name.endswith("_compiled")
            if section == "encode_text":
                model.eval()
                encode = (
                    torch.compile(model.encode_text, backend=pair.backend) if compiled else model.encode_text
                )
                fns[name] = _encode_text(encode, text, env)
            else:
                forward = torch.compile(model, backend=pair.backend) if compiled else model
                fns[name] = _train_step(model, forward, images, text, env)
        first, results = {}, {}
        for name, fn in fns.items():  # the first call: a warm-up, and for the compiled ones, compilation
            start = time.perf_counter()
            results[name] = fn()
            env.sync()
            first[name] = time.perf_counter() - start
        if section == "encode_text":
            reference = results["sparo_trimmed"].float()
            out["max_abs_diff_vs_trimmed"] = {
                name: float((results[name].float() - reference).abs().max())
                for name in ("sparo_untrimmed", "sparo_compiled")
            }
        times = interleaved(fns, env, warmup=pair.warmup, reps=pair.reps)
        rows = {name: 1e3 * median(times[name]) for name in fns}
        out[section] = {
            "ms": rows,
            "first_call_s": {name: first[name] for name in ("sparo_compiled", "clip_compiled")},
            "ratio_vs_trimmed": {name: rows[name] / rows["sparo_trimmed"] for name in rows},
            "sparo_over_clip_eager": rows["sparo_trimmed"] / rows["clip_eager"],
            "sparo_over_clip_compiled": rows["sparo_compiled"] / rows["clip_compiled"],
        }
    return out


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
            "| variant | encode_text ms | **/ SPARO trimmed** | train step ms | **/ SPARO trimmed** |",
            "|---|---|---|---|---|",
        ]
        for name in VARIANTS:
            e, t = r["encode_text"], r["train_step"]
            lines.append(
                f"| {labels[name]} | {e['ms'][name]:.1f} | **{e['ratio_vs_trimmed'][name]:.3f}** | "
                f"{t['ms'][name]:.1f} | **{t['ratio_vs_trimmed'][name]:.3f}** |"
            )
        e, t = r["encode_text"], r["train_step"]
        lines += [
            "",
            f"SPARO / CLIP: eager {e['sparo_over_clip_eager']:.3f} (encode_text), "
            f"{t['sparo_over_clip_eager']:.3f} (train step); compiled {e['sparo_over_clip_compiled']:.3f} "
            f"(encode_text), {t['sparo_over_clip_compiled']:.3f} (train step). First call (compilation) of "
            f"encode_text: SPARO {e['first_call_s']['sparo_compiled']:.1f} s, CLIP "
            f"{e['first_call_s']['clip_compiled']:.1f} s; of the train step: SPARO "
            f"{t['first_call_s']['sparo_compiled']:.1f} s, CLIP {t['first_call_s']['clip_compiled']:.1f} s. "
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
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "compile_benchmark.json")
    p.add_argument("--write-docs", nargs="?", type=Path, const=ROOT / "docs" / "performance.md", default=None)
    args = p.parse_args(argv)
    unknown = sorted(set(args.pairs.split(",")) - set(PAIRS))
    if unknown and not args.quick:
        p.error(f"--pairs: unknown {unknown}; allowed: {sorted(PAIRS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    env = Env(torch.device("cuda" if cuda else "cpu"))
    pairs = [QUICK] if args.quick else [PAIRS[n] for n in args.pairs.split(",")]
    changes = {k: v for k, v in (("batch", args.batch), ("reps", args.reps), ("backend", args.backend)) if v}
    pairs = [CompilePair(**{**asdict(q), **changes}) for q in pairs]
    start = time.perf_counter()
    result: dict[str, Any] = {
        "command": shlex.join(["python -m benchmarks.compile_bench", *argv]),
        "machine": machine_info(env),
        "pairs": [asdict(q) for q in pairs],
        "compile": [bench_compile(q, env) for q in pairs],
    }
    result["seconds"] = time.perf_counter() - start
    print(markdown(result).replace("**", ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.write_docs:
        write_docs(result, args.write_docs)
        print(f"filled the compile block of {args.write_docs}")
    return result


if __name__ == "__main__":
    main()
