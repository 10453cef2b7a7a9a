"""How much of a tiny model's training step is the optimiser? open_clip_train's AdamW against the fused one.

    python -m benchmarks.optimizer_bench                 # tiny-CLIP and tiny-SPARO, batch 128, one thread
    python -m benchmarks.optimizer_bench --write-docs    # also fill docs/performance.md's optimizer block

``sparo-clip train`` builds open_clip_train's AdamW (its two parameter groups, its betas and eps) with torch's
fused kernel (:func:`sparo_clip.training.run.fused_adamw`; ``--no-fused-adamw`` keeps the default, a loop over
the parameters on CPU). One process, the two optimisers' steps interleaved (A B A B ...), medians; the main job
trains one model per core, so the default is one thread.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss

import sparo_clip  # noqa: F401  (registers the SPARO configs)
from sparo_clip.checkpoints.files import replace_block
from sparo_clip.training.run import fused_adamw

from .common import Env, captions, interleaved, median, save_result

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("tiny-CLIP", "tiny-SPARO")
BEGIN, END = "<!-- optimizer-benchmark:begin -->", "<!-- optimizer-benchmark:end -->"


def open_clip_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """open_clip_train's two groups: no weight decay on gains, biases and the logit scale."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    plain = [p for n, p in named if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    ids = {id(p) for p in plain}
    return [{"params": plain, "weight_decay": 0.0}, {"params": [p for _, p in named if id(p) not in ids]}]


def bench_model(name: str, batch: int, warmup: int, reps: int) -> dict:
    """Step time (forward, ClipLoss, backward, AdamW step) and the optimiser step alone, default vs fused."""
    torch.manual_seed(0)
    models = {kind: open_clip.create_model(name) for kind in ("default", "fused")}
    models["fused"].load_state_dict(models["default"].state_dict())
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = open_clip.get_tokenizer(name)(captions(batch, seed=0))
    kwargs = {"lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.1}
    opts = {
        "default": torch.optim.AdamW(open_clip_groups(models["default"], 0.1), **kwargs),
        "fused": fused_adamw(open_clip_groups(models["fused"], 0.1), **kwargs),
    }
    loss_fn = ClipLoss()

    def train_step(kind: str):
        model, opt = models[kind], opts[kind]

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(*model(images, text)[:3]).backward()
            opt.step()

        return step

    def opt_step(kind: str):
        return opts[kind].step

    env = Env(torch.device("cpu"))
    steps = interleaved({k: train_step(k) for k in opts}, env, warmup, reps)
    alone = interleaved({k: opt_step(k) for k in opts}, env, warmup, reps)  # gradients of the last step
    row = {
        "model": name,
        "batch": batch,
        "parameters": sum(p.numel() for p in models["default"].parameters()),
    }
    for k in opts:
        row[f"{k}_step_ms"] = 1e3 * median(steps[k])
        row[f"{k}_optimizer_ms"] = 1e3 * median(alone[k])
    row["step_ratio"] = row["fused_step_ms"] / row["default_step_ms"]
    row["optimizer_ratio"] = row["fused_optimizer_ms"] / row["default_optimizer_ms"]
    return row


def table(result: dict) -> str:
    lines = [
        f"Measured by `{result['command']}` ({result['machine']}, {result['threads']} thread(s), torch "
        f"{result['torch']}): one training step (forward, ClipLoss, backward, AdamW) at batch {result['batch']}, "
        "open_clip_train's AdamW against the fused one that `sparo-clip train` builds, interleaved, medians of "
        f"{result['reps']}.",
        "",
        "| model | parameters | step, default AdamW | step, fused | fused / default | AdamW step alone, "
        "default | fused | fused / default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['default_step_ms']:.0f} ms | {r['fused_step_ms']:.0f} ms | "
            f"{r['step_ratio']:.2f} | {r['default_optimizer_ms']:.1f} ms | {r['fused_optimizer_ms']:.1f} ms | "
            f"{r['optimizer_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.optimizer_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of model names (default {MODELS})")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / "optimizer_benchmark.json")
    p.add_argument("--write-docs", nargs="?", type=Path, const=ROOT / "docs" / "performance.md", default=None)
    args = p.parse_args(argv)
    for name in ("batch", "reps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    unknown = [m for m in args.models.split(",") if m and open_clip.get_model_config(m) is None]
    if unknown:
        p.error(f"--models: unknown {unknown}; allowed: registered model names, e.g. {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    result = {
        "command": shlex.join(["python -m benchmarks.optimizer_bench", *argv]),
        "machine": platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "batch": args.batch,
        "reps": args.reps,
        "rows": [bench_model(m, args.batch, args.warmup, args.reps) for m in args.models.split(",") if m],
    }
    text = table(result)
    save_result(
        result,
        text,
        args.json,
        args.write_docs,
        lambda: replace_block(args.write_docs, BEGIN, END, text),
        "optimizer",
    )
    return result


if __name__ == "__main__":
    main()
