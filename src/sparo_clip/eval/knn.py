"""Weighted k-nearest-neighbour classification on frozen features (DINO's kNN protocol).

For a test feature x and unit-norm training features f_i with labels y_i (cosine similarity s_i = x . f_i),
the k most similar training images vote for their class with weight exp(s_i / T)::

    score_c(x) = sum_{i in topk(x)} exp(s_i / T) [y_i = c],     prediction = argmax_c score_c(x)

Defaults follow DINO: k in {10, 20, 100, 200}, T = 0.07, features L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_T = 0.07


def knn_scores(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    k: int,
    temperature: float = DEFAULT_T,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores (M, C) of the weighted vote; features are L2-normalised here.

    Args:
        train: (N, F) training features.
        train_labels: (N,) integer labels.
        test: (M, F) test features.
        k: neighbours (clipped to N).
        temperature: T of the vote weights exp(s / T).
        num_classes: C (default: max label + 1).
        chunk: test rows per similarity block (memory bound).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    train = F.normalize(train.float(), dim=-1)
    test = F.normalize(test.float(), dim=-1)
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (m, N)
        top, idx = sim.topk(k, dim=-1)  # (m, k)
        weights = (top / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        scores.scatter_add_(1, train_labels.to(idx.device)[idx], weights)  # (m, C)
        out.append(scores)
    return torch.cat(out)


def accuracy(scores: torch.Tensor, labels: torch.Tensor, top: int = 1) -> float:
    """Share of rows whose label is among the ``top`` highest scores."""
    top = min(top, scores.shape[1])
    hit = (scores.topk(top, dim=-1).indices == labels[:, None]).any(dim=-1)
    return float(hit.float().mean())


def per_class_accuracy(scores: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict[str, float]:
    """Top-1 accuracy of each class present in ``labels``."""
    pred = scores.argmax(dim=-1)
    out = {}
    for c, name in enumerate(classnames):
        sel = labels == c
        if bool(sel.any()):
            out[name] = float((pred[sel] == c).float().mean())
    return out
