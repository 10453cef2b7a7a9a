"""What DINO training logs to see collapse coming, and the warning when a run sits in it.

DINO fails quietly in two ways (Caron et al. 2021, section 5.3): every image gets the same uniform target
(the centre caught up before sharpening amplified differences between images), or every image gets the same
one-hot target (sharpening won). Both show in two entropies of the teacher's targets
``t = softmax((teacher_logits - centre) / teacher_temp)`` over a batch:

- ``H(t|x)``: the mean entropy of one image's target; ``log K`` for uniform targets, 0 for one-hot ones;
- ``H(mean t)``: the entropy of the batch-mean target; ``log K`` when the batch spreads over all K prototypes,
  0 when every image picks the same one.

Their difference ``H(mean t) - H(t|x)`` is the information the targets carry about the image (a mutual
information): near 0 in both collapses. A healthy run keeps ``H(mean t)`` near ``log K`` and ``H(t|x)`` clearly
below it. ``KL(t || s)`` (teacher target vs student prediction, the part of the loss the student can still
reduce) is logged beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TargetStats:
    """Entropies (nats) of one batch of teacher targets, and the student/teacher KL."""

    h_target: float  # H(t|x): mean entropy of each image's target
    h_mean: float  # H(mean t): entropy of the batch-mean target
    kl: float  # mean KL(t || s) over the images
    log_k: float  # the largest entropy, log K

    @property
    def information(self) -> float:
        """H(mean t) - H(t|x): how much the targets tell images apart (0 in both collapses)."""
        return self.h_mean - self.h_target

    def to_dict(self) -> dict[str, float]:
        return {"h_target": self.h_target, "h_mean": self.h_mean, "kl": self.kl, "log_k": self.log_k}


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of a probability matrix (0 log 0 = 0)."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


@torch.no_grad()
def target_stats(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
) -> TargetStats:
    """The collapse statistics of one batch (computed in float64).

    Args:
        teacher_logits: (B, K) teacher head outputs of the images' global views.
        student_logits: (B, K) student head outputs of the same views.
        center: (1, K) or (K,) the loss's running centre.
        teacher_temp, student_temp: the temperatures of the loss at this step.
    """
    t = F.softmax((teacher_logits.double() - center.double().reshape(1, -1)) / teacher_temp, dim=-1)
    log_s = F.log_softmax(student_logits.double() / student_temp, dim=-1)
    h_target = entropy(t).mean()
    h_mean = entropy(t.mean(0, keepdim=True))[0]
    kl = (t * (t.clamp_min(1e-30).log() - log_s)).sum(-1).mean()
    return TargetStats(float(h_target), float(h_mean), float(kl), math.log(teacher_logits.shape[-1]))


@dataclass
class CollapseMonitor:
    """Warns once per collapse mode when a run stays in it for ``patience`` consecutive observations.

    Modes: ``uniform`` (targets as flat as their batch mean: information below ``info_floor`` x log K while
    ``H(t|x)`` is above ``(1 - info_floor)`` x log K) and ``one-prototype`` (``H(mean t)`` below ``info_floor``
    x log K).

    Attributes:
        patience: consecutive observations a mode must last before the warning.
        info_floor: the share of log K below which the targets count as carrying no information.
    """

    patience: int = 20
    info_floor: float = 0.05
    runs: dict[str, int] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)

    def mode(self, s: TargetStats) -> str | None:
        """The collapse mode one observation is in, or None."""
        floor = self.info_floor * s.log_k
        if s.h_mean < floor:
            return "one-prototype"
        if s.information < floor and s.h_target > s.log_k - floor:
            return "uniform"
        return None

    def observe(self, step: int, s: TargetStats) -> str | None:
        """Record one observation; return the warning text the first time a mode has lasted ``patience``."""
        current = self.mode(s)
        for m in ("uniform", "one-prototype"):
            self.runs[m] = self.runs.get(m, 0) + 1 if current == m else 0
        if current is None or current in self.warned or self.runs[current] < self.patience:
            return None
        self.warned.add(current)
        what = (
            "every image gets the same flat target"
            if current == "uniform"
            else "every image gets the same one-hot target"
        )
        return (
            f"DINO collapse ({current}) since {self.patience} logged steps, at step {step}: H(t|x) = "
            f"{s.h_target:.3f}, H(mean t) = {s.h_mean:.3f} nats (log K = {s.log_k:.3f}); {what}, the targets no "
            "longer tell images apart (docs/dino.md: reading the collapse diagnostics)"
        )


def clip_per_parameter(parameters, max_norm: float) -> list[float]:
    """DINO's gradient clipping: each parameter's gradient scaled to norm ``max_norm`` at most, on its own.

    Unlike one global norm, a large gradient in one tensor (e.g. the frozen last layer's, dropped afterwards)
    does not shrink the others. Returns the gradient norms before clipping.
    """
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        norm = float(p.grad.detach().norm(2))
        norms.append(norm)
        coef = max_norm / (norm + 1e-6)
        if coef < 1:
            p.grad.detach().mul_(coef)
    return norms
