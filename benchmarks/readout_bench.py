"""Section 3: the SPARO read-out alone against a naive formulation and its key projection alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from sparo_clip.models.readout import SparoReadout

from .common import Env, interleaved, median, peak_tensor_bytes


@dataclass(frozen=True)
class ReadoutShape:
    """B tokens sequences of N tokens of width D, read by L slots of attention width d."""

    batch: int = 32
    tokens: int = 50
    width: int = 768
    slots: int = 64
    attn_dim: int = 64


def naive_readout(m: SparoReadout, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Raw slots (B, L, V) as a straightforward implementation computes them.

    Keys and values are projected for every token, copied out per slot and multiplied slot by slot
    (batched), with an explicit softmax: the same equations as the read-out, written directly.
    """
    B, N, _ = x.shape
    L, H, d, dv = m.num_slots, m.heads, m.attn_dim, m.value_dim
    k = m.key(x).view(B, N, H, d)
    v = k if m.value is None else m.value(x).view(B, N, H, dv)
    # each slot gets its own copy of its head's keys and values: (B, L, N, d)
    k = k.permute(0, 2, 1, 3).repeat_interleave(L // H, dim=1)
    v = v.permute(0, 2, 1, 3).repeat_interleave(L // H, dim=1)
    q = m.query.reshape(L, d, 1).to(k.dtype)
    scores = (k @ q).squeeze(-1) * d**-0.5  # (B, L, N)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
    attn = scores.float().softmax(dim=-1).to(v.dtype)
    o = (attn.unsqueeze(-2) @ v).squeeze(-2)  # (B, L, dv)
    return m.out(o)


def readout_forms(m: SparoReadout) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The read-out as shipped, its project-then-attend form, the naive form, and the key projection alone."""

    def shipped(x: torch.Tensor) -> torch.Tensor:
        return m.forward_raw(x)[0]

    def projected(x: torch.Tensor) -> torch.Tensor:
        m.pool_first = False
        try:
            return m.forward_raw(x)[0]
        finally:
            m.pool_first = None

    return {
        "readout": shipped,
        "projected": projected,
        "naive": lambda x: naive_readout(m, x),
        "projection": m.key,
    }


def bench_readout(env: Env, shape: ReadoutShape, warmup: int, reps: int) -> dict[str, object]:
    """Forward + backward time (median) and peak tensor memory of each form at one shape."""
    gen = torch.Generator().manual_seed(0)
    m = SparoReadout(shape.width, shape.slots, slot_dim=shape.attn_dim, attn_dim=shape.attn_dim)
    m = m.to(env.device)
    x = torch.randn(shape.batch, shape.tokens, shape.width, generator=gen).to(env.device)
    x.requires_grad_(True)
    forms = readout_forms(m)
    grads = {}
    with env.autocast():
        for name, form in forms.items():
            out = form(x)
            grads[name] = torch.randn(out.shape, generator=gen).to(env.device, out.dtype)

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            m.zero_grad(set_to_none=True)
            x.grad = None
            with env.autocast():
                out = forms[name](x)
            out.backward(grads[name])

        return run

    steps = {name: step(name) for name in forms}
    times = interleaved(steps, env, warmup=warmup, reps=reps)
    result: dict[str, object] = {"shape": asdict(shape), "reps": reps, "forms": {}}
    for name in forms:
        steps[name]()  # settle allocations before measuring memory
        result["forms"][name] = {
            "ms": 1e3 * median(times[name]),
            "peak_mib": peak_tensor_bytes(steps[name], env) / 2**20,
        }
    f = result["forms"]
    proj = f["projection"]["ms"]
    result["readout_over_projection"] = f["readout"]["ms"] / proj
    result["naive_over_readout"] = f["naive"]["ms"] / f["readout"]["ms"]
    # attention part = everything after the projection, for the forms that project every token
    result["projected_attention_ms"] = f["projected"]["ms"] - proj
    result["naive_attention_ms"] = f["naive"]["ms"] - proj
    result["readout_memory_over_naive"] = f["readout"]["peak_mib"] / f["naive"]["peak_mib"]
    return result
