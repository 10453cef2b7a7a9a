"""Sparsemax (Martins & Astudillo, ICML 2016): the Euclidean projection of a score vector onto the simplex.

``sparsemax(z) = argmin_{p >= 0, sum(p) = 1} ||p - z||^2 = max(z - tau, 0)``, where the threshold ``tau`` makes
the result sum to one. Unlike softmax it gives exact zeros. With the scores sorted in decreasing order
``z_(1) >= z_(2) >= ...``, the support size is ``k = max{j : 1 + j z_(j) > z_(1) + ... + z_(j)}`` and
``tau = (z_(1) + ... + z_(k) - 1) / k``. On the support the Jacobian is ``I - 1 1^T / k`` (zero elsewhere).
"""

from __future__ import annotations

from typing import Any

import torch


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, dim: int) -> torch.Tensor:
        z = scores - scores.amax(dim=dim, keepdim=True)  # translation invariant; keeps the cumsum small
        z_sorted = torch.sort(z, dim=dim, descending=True).values
        cumsum = z_sorted.cumsum(dim)
        shape = [1] * z.dim()
        shape[dim] = -1
        j = torch.arange(1, z.shape[dim] + 1, device=z.device, dtype=z.dtype).view(shape)
        support = (1 + j * z_sorted) > cumsum  # true for a prefix of the sorted scores, never empty
        k = support.sum(dim=dim, keepdim=True)
        tau = (cumsum.gather(dim, k - 1) - 1) / k.to(z.dtype)
        out = (z - tau).clamp_min(0)
        ctx.save_for_backward(out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (out,) = ctx.saved_tensors
        support = out > 0
        mean = (grad * support).sum(ctx.dim, keepdim=True) / support.sum(ctx.dim, keepdim=True)
        return torch.where(support, grad - mean, torch.zeros_like(grad)), None


def sparsemax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax of ``scores`` along ``dim`` (same shape and dtype; sums to one along ``dim``).

    Args:
        scores: finite scores, any shape.
        dim: the dimension that is projected onto the simplex.
    """
    dim = dim % scores.dim()
    return _Sparsemax.apply(scores, dim)
