"""Generalised compositional zero-shot metrics (GCZSL) from a score matrix over all compositions.

The protocol of the compositional zero-shot literature (Purushwalkam et al. 2019; Mancini et al. 2021):
test images of seen and of held-out (unseen) attribute-object pairs are each classified over *all*
compositions. A calibration bias ``b`` is added to the unseen classes' scores; as ``b`` runs from -inf to
+inf, accuracy on seen-pair images falls and accuracy on unseen-pair images rises. The metrics:

- ``seen`` / ``unseen``: accuracy on seen-pair / unseen-pair images at ``b = 0``, and ``hm``, their harmonic
  mean;
- ``best_seen`` (``b = -inf``), ``best_unseen`` (``b = +inf``), ``best_hm`` (best harmonic mean over ``b``)
  and ``best_hm_bias``;
- ``auc``: area under the seen-accuracy / unseen-accuracy curve traced by ``b``, through every operating
  point where a decision changes (no grid), joined by straight lines (trapezoid rule);
- ``unseen_attribute`` / ``unseen_object``: on unseen-pair images, how often the predicted composition
  (at ``b = 0``) has the right attribute / the right object. A classifier that only knows attributes scores
  high on the first and near zero on ``unseen``.

Decision rule at bias ``b``: the best unseen class wins over the best seen class iff
``unseen score + b > seen score`` (ties go to the seen class).
"""

from __future__ import annotations

import torch


def _check(logits: torch.Tensor, labels: torch.Tensor, unseen: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or unseen.shape != (logits.shape[1],):
        raise ValueError(
            f"expected logits (N, C), labels (N,), unseen (C,); got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)}, {tuple(unseen.shape)}"
        )
    if bool(unseen.all()) or not bool(unseen.any()):
        raise ValueError("the classes must include both seen and unseen compositions")
    is_unseen = unseen[labels]
    if bool(is_unseen.all()) or not bool(is_unseen.any()):
        raise ValueError("the images must include both seen-pair and unseen-pair images")


def _best_of(logits: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score, best class index) of each row among ``columns`` (class indices)."""
    values, where = logits[:, columns].max(dim=1)
    return values, columns[where]


def decisions(logits: torch.Tensor, unseen: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: the best seen class, the best unseen class, and the margin ``d = seen - unseen`` score.

    At bias ``b`` the unseen class is predicted iff ``d < b``.
    """
    seen_cols = torch.nonzero(~unseen).flatten().to(logits.device)
    unseen_cols = torch.nonzero(unseen).flatten().to(logits.device)
    s_val, s_cls = _best_of(logits, seen_cols)
    u_val, u_cls = _best_of(logits, unseen_cols)
    return {"seen_class": s_cls, "unseen_class": u_cls, "margin": s_val - u_val}


def predict(logits: torch.Tensor, unseen: torch.Tensor, bias: float = 0.0) -> torch.Tensor:
    """Predicted class of every image over all compositions with ``bias`` added to the unseen classes."""
    d = decisions(logits, unseen)
    return torch.where(d["margin"] < bias, d["unseen_class"], d["seen_class"])


def operating_points(
    logits: torch.Tensor, labels: torch.Tensor, unseen: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Every (bias, seen accuracy, unseen accuracy) point the calibration bias can reach, in bias order.

    The biases are -inf, each margin of an image that some bias classifies correctly, and +inf; between
    two consecutive ones no decision changes. Accuracies are float64.
    """
    _check(logits, labels, unseen)
    labels = labels.to(logits.device)
    unseen = unseen.to(logits.device)
    d = decisions(logits.double(), unseen)
    is_unseen = unseen[labels]
    # an image can only ever be right if the best class of its own group is its label
    seen_ok = ~is_unseen & (d["seen_class"] == labels)  # right for every b <= margin
    unseen_ok = is_unseen & (d["unseen_class"] == labels)  # right for every b > margin
    n_seen, n_unseen = int((~is_unseen).sum()), int(is_unseen.sum())
    seen_margins = d["margin"][seen_ok].sort().values
    unseen_margins = d["margin"][unseen_ok].sort().values
    inf = torch.tensor([float("inf")], dtype=torch.float64, device=logits.device)
    biases = torch.cat([-inf, torch.cat([seen_margins, unseen_margins]).unique(), inf])
    # seen right: margin >= b; unseen right: margin < b
    seen_right = len(seen_margins) - torch.searchsorted(seen_margins, biases, right=False)
    unseen_right = torch.searchsorted(unseen_margins, biases, right=False)
    return {
        "bias": biases,
        "seen": seen_right.double() / n_seen,
        "unseen": unseen_right.double() / n_unseen,
    }


def harmonic_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2ab / (a + b), 0 where both are 0."""
    total = a + b
    return torch.where(total > 0, 2 * a * b / total.clamp_min(1e-300), torch.zeros_like(total))


def gczsl_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    unseen: torch.Tensor,
    attributes: torch.Tensor,
    objects: torch.Tensor,
    with_curve: bool = False,
) -> dict[str, object]:
    """The GCZSL metrics of a score matrix (see the module docstring).

    Args:
        logits: scores (N, C) of N images over all C compositions.
        labels: true composition of each image (N,).
        unseen: (C,) bool, True for held-out compositions.
        attributes: attribute id of each composition (C,).
        objects: object id of each composition (C,).
        with_curve: also return the curve (``curve``: bias, seen, unseen lists).

    Returns:
        Floats keyed by metric name, plus image and class counts.
    """
    points = operating_points(logits, labels, unseen)
    seen, unseen_acc = points["seen"], points["unseen"]
    hm = harmonic_mean(seen, unseen_acc)
    best = int(hm.argmax())
    # trapezoid rule over unseen accuracy (increasing with the bias)
    auc = float(((unseen_acc[1:] - unseen_acc[:-1]) * (seen[1:] + seen[:-1]) / 2).sum())
    labels = labels.to(logits.device)
    unseen = unseen.to(logits.device)
    pred = predict(logits.double(), unseen, 0.0)
    is_unseen = unseen[labels]
    right = pred == labels
    acc_seen, acc_unseen = right[~is_unseen].double().mean(), right[is_unseen].double().mean()
    attributes, objects = attributes.to(logits.device), objects.to(logits.device)
    out: dict[str, object] = {
        "auc": auc,
        "best_hm": float(hm[best]),
        "best_hm_bias": float(points["bias"][best]) if float(hm[best]) > 0 else None,
        "best_seen": float(seen[0]),
        "best_unseen": float(unseen_acc[-1]),
        "seen": float(acc_seen),
        "unseen": float(acc_unseen),
        "hm": float(harmonic_mean(acc_seen, acc_unseen)),
        "unseen_attribute": float((attributes[pred] == attributes[labels])[is_unseen].double().mean()),
        "unseen_object": float((objects[pred] == objects[labels])[is_unseen].double().mean()),
        "num_seen_images": int((~is_unseen).sum()),
        "num_unseen_images": int(is_unseen.sum()),
        "num_classes": int(unseen.numel()),
        "num_unseen_classes": int(unseen.sum()),
    }
    if with_curve:
        finite = [b if abs(b) != float("inf") else None for b in points["bias"].tolist()]  # JSON-safe
        out["curve"] = {"bias": finite, "seen": seen.tolist(), "unseen": unseen_acc.tolist()}
    return out


METRICS = (
    "auc",
    "best_hm",
    "best_seen",
    "best_unseen",
    "seen",
    "unseen",
    "hm",
    "unseen_attribute",
    "unseen_object",
)
