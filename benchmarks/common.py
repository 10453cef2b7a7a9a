"""Measurement tools shared by the benchmark sections: timing, tensor memory, FLOPs, the machine."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from open_clip.loss import ClipLoss
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from sparo_clip.checkpoints.files import atomic_write_text


@dataclass(frozen=True)
class Env:
    """Where the benchmark runs: the device, and autocast (bf16 on CUDA, none on CPU)."""

    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def precision(self) -> str:
        return "bf16 autocast" if self.cuda else "fp32"


def machine_info(env: Env) -> dict[str, object]:
    """Versions, processor, threads and accelerator, recorded with every result."""
    import open_clip

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(env.device),
        "precision": env.precision,
    }
    if env.cuda:
        info["gpu"] = torch.cuda.get_device_name(env.device)
    return info


# ------------------------------------------------------------------------------------------- timing
def interleaved(
    fns: dict[str, Callable[[], object]], env: Env, warmup: int, reps: int
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured A B A B ... after ``warmup`` rounds of each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    env.sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            env.sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def matmul_peak(env: Env, sizes: tuple[int, ...], reps: int) -> dict[str, object]:
    """FLOP/s of the fastest square GEMM seen: fp32 on CPU, bf16 on CUDA (the physical limit).

    Each size runs two warm-up and ``reps`` timed products; the best single product counts.
    """
    dtype = torch.bfloat16 if env.cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    best = {"size": 0, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": 0.0}
    for size in sizes:
        a = torch.randn(size, size, generator=gen).to(env.device, dtype)
        b = torch.randn(size, size, generator=gen).to(env.device, dtype)
        times = interleaved({"mm": lambda a=a, b=b: torch.mm(a, b)}, env, warmup=2, reps=reps)["mm"]
        rate = 2 * size**3 / min(times)
        if rate > best["flops_per_s"]:
            best.update(size=size, flops_per_s=rate)
    return best


# ------------------------------------------------------------------------------------------- memory
class TensorMemory(TorchDispatchMode):
    """Peak bytes held by tensors that operators create while the mode is active.

    Every output of every aten operator (forward and backward) is counted by its storage from the
    moment it is created until the storage is freed, so activations saved for the backward pass,
    temporaries and gradients all count; views and in-place results add nothing. Tensors that existed
    before (inputs, parameters) are not counted, nor is scratch memory inside a kernel.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[StorageWeakRef, int] = {}
        self.current = 0
        self.peak = 0

    def _release_expired(self) -> None:
        for ref in [r for r in self._live if r.expired()]:
            self.current -= self._live.pop(ref)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._release_expired()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ref = StorageWeakRef(t.untyped_storage())
                if ref not in self._live:
                    nbytes = t.untyped_storage().nbytes()
                    self._live[ref] = nbytes
                    self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def peak_tensor_bytes(fn: Callable[[], object], env: Env) -> int:
    """Peak tensor memory of one call, above what was allocated before it."""
    if env.cuda:
        env.sync()
        torch.cuda.reset_peak_memory_stats(env.device)
        base = torch.cuda.memory_allocated(env.device)
        fn()
        env.sync()
        return torch.cuda.max_memory_allocated(env.device) - base
    with TensorMemory() as mem:
        fn()
    return mem.peak


# ------------------------------------------------------------------------------------------- FLOPs
def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch counts the CUDA attention kernels; the CPU flash-attention kernels are added here
_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul, convolution and attention FLOPs of one call (``FlopCounterMode``)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------- inputs
_CAPTION_WORDS = (
    "a an the photo picture image of two three small large old young red blue green white black "
    "yellow wooden dog cat man woman child people car bus train bike street road city park beach "
    "field tree house window table kitchen room bed sitting standing running walking holding "
    "playing near next to on in at with under over during sunny day night snow water river"
).split()


def captions(count: int, seed: int = 0, min_words: int = 8, max_words: int = 20) -> list[str]:
    """Web-caption-like text: ``min_words`` to ``max_words`` common words, uniformly, reproducible."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_CAPTION_WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(count)
    ]


def add_machine_args(p: argparse.ArgumentParser) -> None:
    """The device and thread flags every timing benchmark takes."""
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def machine_env(p: argparse.ArgumentParser, args: argparse.Namespace, known: dict) -> Env:
    """Check ``--pairs`` against ``known`` (unless ``--quick``), set the thread count, pick the device."""
    unknown = sorted(set(args.pairs.split(",")) - set(known))
    if unknown and not args.quick:
        p.error(f"--pairs: unknown {unknown}; allowed: {sorted(known)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return Env(torch.device("cuda" if cuda else "cpu"))


def clip_train_step(model: torch.nn.Module, forward: Callable, images, text, env: Env) -> Callable[[], None]:
    """One CLIP optimisation step as the benchmarks time it: ``forward(images, text)``, OpenCLIP's ClipLoss,
    backward, fused AdamW (one pass per tensor, as training uses)."""
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


def save_result(
    result: dict, text: str, json_path: Path, docs: Path | None, fill: Callable[[], None], what: str
):
    """Print a benchmark's table, write its JSON (atomically) and, with ``docs``, fill its block there."""
    print(text)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")
    if docs:
        fill()
        print(f"filled the {what} block of {docs}")
