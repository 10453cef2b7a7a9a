"""sparo-clip train builds open_clip_train's AdamW with torch's fused kernel: the same update, checked against a
float64 AdamW written from its equations, and used by a real run unless --no-fused-adamw."""

import math

import torch

from sparo_clip.training.entry import main
from sparo_clip.training.run import fused_adamw

from .train_helpers import base_args, make_shards


def reference_adamw(params, grads_per_step, lr, betas, eps, wds):
    """Decoupled weight decay Adam (Loshchilov & Hutter), float64, one parameter list per weight-decay group."""
    b1, b2 = betas
    values = [p.detach().clone().double() for p in params]
    m = [torch.zeros_like(v) for v in values]
    v2 = [torch.zeros_like(v) for v in values]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            values[i] = values[i] * (1 - lr * wds[i])
            m[i] = b1 * m[i] + (1 - b1) * g
            v2[i] = b2 * v2[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v2[i] / (1 - b2**t)
            values[i] = values[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return values


def test_fused_adamw_matches_the_equations_in_float64():
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64, generator=gen))
    bias = torch.nn.Parameter(torch.randn(4, dtype=torch.float64, generator=gen))
    start = [weight.detach().clone(), bias.detach().clone()]
    opt = fused_adamw(
        [{"params": [bias], "weight_decay": 0.0}, {"params": [weight], "weight_decay": 0.1}],
        lr=1e-2, betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    assert opt.param_groups[0]["fused"] is True
    steps = [[torch.randn(4, 3, generator=gen), torch.randn(4, generator=gen)] for _ in range(5)]
    for grads in steps:
        weight.grad, bias.grad = grads[0].double(), grads[1].double()
        opt.step()
    ref = reference_adamw(
        [torch.nn.Parameter(s) for s in start], steps, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, wds=[0.1, 0.0]
    )
    torch.testing.assert_close(weight.detach(), ref[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(bias.detach(), ref[1], rtol=0, atol=1e-12)
    assert not torch.equal(weight.detach(), start[0])


def test_fused_adamw_falls_back_where_the_kernel_cannot_run():
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    assert not torch.optim.AdamW([meta]).param_groups[0]["fused"]
    assert not fused_adamw([meta], lr=1e-3).param_groups[0]["fused"]  # no fused kernel on the meta device
    cpu = torch.nn.Parameter(torch.zeros(3))
    assert not fused_adamw([cpu], lr=1e-3, fused=False).param_groups[0]["fused"]  # the caller's choice stands
    assert fused_adamw([cpu], lr=1e-3).param_groups[0]["fused"]


def _optimizer_fused(logs, name):
    ckpt = torch.load(logs / name / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    params = (logs / name / "params.txt").read_text()
    return [g.get("fused") for g in ckpt["optimizer"]["param_groups"]], params


def test_a_run_trains_with_the_fused_adamw_unless_told_not_to(tmp_path):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=8)
    assert main(base_args(pattern, tmp_path / "logs", "fused", num_samples=16)) == 0
    groups, params = _optimizer_fused(tmp_path / "logs", "fused")
    assert groups == [True, True] and "fused_adamw: True" in params
    argv = base_args(pattern, tmp_path / "logs", "plain", num_samples=16, no_fused_adamw=True)
    assert main(argv) == 0
    groups, params = _optimizer_fused(tmp_path / "logs", "plain")
    assert not any(groups) and "fused_adamw: False" in params
    for name in ("fused", "plain"):  # both trained: finite weights
        state = torch.load(tmp_path / "logs" / name / "checkpoints" / "epoch_1.pt", weights_only=True)
        assert all(math.isfinite(v.float().abs().max().item()) for v in state["state_dict"].values())
