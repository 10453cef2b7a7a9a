"""Sections 1, 2 and 4: SPARO models against their CLIP twins, training and inference, side by side."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch

import sparo_clip  # noqa: F401  (registers the SPARO configs)
from sparo_clip.models.param_count import count_parameters

from .common import Env, captions, clip_train_step, count_flops, interleaved, median


@dataclass(frozen=True)
class Pair:
    """A SPARO model and the OpenCLIP model it replaces, measured at a few batch sizes."""

    name: str
    sparo: str
    baseline: str
    batches: tuple[int, ...]
    warmup: int
    reps: int


def _inputs(model_name: str, batch: int, env: Env, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = open_clip.get_model_config(model_name)
    size = cfg["vision_cfg"]["image_size"]
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=gen).to(env.device)
    text = open_clip.get_tokenizer(model_name)(captions(batch, seed=seed)).to(env.device)
    return images, text


def _build(name: str, env: Env) -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(name, device=env.device)


def _encode(model: torch.nn.Module, encoder: str, data: torch.Tensor, env: Env) -> Callable:
    """One call of ``encode_image`` or ``encode_text`` for inference."""
    fn = model.encode_image if encoder == "image" else model.encode_text

    def run() -> None:
        with torch.inference_mode(), env.autocast():
            fn(data)

    return run


def _caption_tokens(text: torch.Tensor) -> dict[str, float]:
    lengths = (text.argmax(dim=-1) + 1).float()  # up to and including end-of-text
    return {"mean": float(lengths.mean()), "max": int(lengths.max()), "context": text.shape[1]}


def bench_pair(pair: Pair, env: Env) -> dict[str, list[dict[str, object]]]:
    """Training step (time and FLOPs) and encoder throughput of both models of a pair, interleaved."""
    models = {"sparo": _build(pair.sparo, env), "baseline": _build(pair.baseline, env)}
    params = {k: count_parameters(m) for k, m in models.items()}
    train, infer = [], []
    for batch in pair.batches:
        images, text = _inputs(pair.baseline, batch, env)
        steps = {k: clip_train_step(m, m, images, text, env) for k, m in models.items()}
        flops = {k: count_flops(step) for k, step in steps.items()}  # also a warm-up step
        times = interleaved(steps, env, warmup=pair.warmup, reps=pair.reps)
        row: dict[str, object] = {"pair": pair.name, "batch": batch, "reps": pair.reps}
        for k in models:
            ms = 1e3 * median(times[k])
            row[f"{k}_ms"] = ms
            row[f"{k}_gflop"] = flops[k] / 1e9
            row[f"{k}_params"] = params[k]
        row["ratio"] = row["sparo_ms"] / row["baseline_ms"]
        row["caption_tokens"] = _caption_tokens(text)
        train.append(row)

        for m in models.values():
            m.eval()
        for encoder, data in (("image", images), ("text", text)):
            encoders = {k: _encode(m, encoder, data, env) for k, m in models.items()}
            times = interleaved(encoders, env, warmup=pair.warmup, reps=pair.reps)
            row = {"pair": pair.name, "encoder": encoder, "batch": batch, "reps": pair.reps}
            for k in models:
                ms = 1e3 * median(times[k])
                row[f"{k}_ms"] = ms
                row[f"{k}_per_s"] = batch / (ms / 1e3)
            row["ratio"] = row["sparo_ms"] / row["baseline_ms"]
            infer.append(row)
    return {"train": train, "inference": infer}
