"""Linear probe on frozen features: multinomial logistic regression, L-BFGS, weight decay chosen on a split.

The protocol (CLIP's linear-probe protocol, on frozen features rather than DINO's 100 augmented epochs,
see docs/dino.md): features standardised with the training features' mean and standard deviation (MAE's
probe does the same with a BatchNorm without affine parameters; the classifier stays linear in the raw
features, only its conditioning changes), then a linear layer with bias, softmax cross-entropy plus
``wd * ||W||^2 / 2``, fitted full-batch with L-BFGS. ``wd`` is picked from a log grid by accuracy on a seeded 20% split of the training
features, then the classifier is refit on all training features with it.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_WDS = tuple(10.0**e for e in range(-6, 1))  # 1e-6 .. 1


def fit_linear(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, wd: float, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + wd/2 ||W||^2 with L-BFGS; returns (W (C, F), b (C,))."""
    x = x.float()
    w = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * wd * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    num_classes: int,
    wds: tuple[float, ...] = DEFAULT_WDS,
    seed: int = 0,
    max_iter: int = 100,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Test scores (M, C) of the probe, and how its weight decay was chosen.

    With one value in ``wds`` it is used directly; otherwise each is scored on a held-out 20% of ``train``.
    """
    mean, std = train.float().mean(0), train.float().std(0).clamp_min(1e-6)
    train, test = (train.float() - mean) / std, (test.float() - mean) / std
    search: dict[str, float] = {}
    if len(wds) == 1:
        best = wds[0]
    else:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(train.shape[0], generator=g).to(train.device)
        n_val = max(1, train.shape[0] // 5)
        va, tr = perm[:n_val], perm[n_val:]
        for wd in wds:
            w, b = fit_linear(train[tr], train_labels[tr], num_classes, wd, max_iter)
            pred = (train[va].float() @ w.T + b).argmax(-1)
            search[f"{wd:g}"] = float((pred == train_labels[va]).float().mean())
        best = max(wds, key=lambda wd: (search[f"{wd:g}"], wd))  # ties: the stronger regulariser
        logger.info("linear probe: weight decay %g chosen (split accuracy %s)", best, search)
    w, b = fit_linear(train, train_labels, num_classes, best, max_iter)
    return test.float() @ w.T + b, {"wd": best, "wd_search": search}
