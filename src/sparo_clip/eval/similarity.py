"""Cosine similarities between slot tensors for any subset of slots, and seeded splits of cached data."""

from __future__ import annotations

import dataclasses

import torch

from sparo_clip.errors import DataError
from sparo_clip.eval.common import features

# Per-slot partial products are kept for the slot search when they hold at most this many elements.
MAX_PART_ELEMENTS = 2**27


class SlotScores:
    """Cosine similarities between slot tensors ``a`` (N, L, V) and ``b`` (M, L, V) restricted to a slot subset.

    ``paired=False`` gives all pairs (N, M); ``paired=True`` (N == M) gives row i of a with row i of b, (N,).
    With slot mask S the similarity is that of ``encode_*(slots=S)`` features on both sides:
    sum_{l in S} a_l . b_l / (|a_S| |b_S|). :meth:`precompute` stores the per-slot products a_l . b_l so
    that each subset then costs one weighted sum instead of a matrix product (used by the slot search).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, paired: bool = False) -> None:
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"slot shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
        if paired and a.shape[0] != b.shape[0]:
            raise ValueError(
                f"paired scores need as many rows on both sides, got {a.shape[0]} and {b.shape[0]}"
            )
        self.a, self.b, self.paired = a, b, paired
        self.parts: torch.Tensor | None = None

    def precompute(self, max_elements: int = MAX_PART_ELEMENTS) -> bool:
        """Store per-slot products (L, N[, M]) if they fit in ``max_elements``; returns whether they do."""
        n, num_slots = self.a.shape[0], self.a.shape[1]
        size = num_slots * n * (1 if self.paired else self.b.shape[0])
        if size > max_elements:
            return False
        if self.paired:
            self.parts = torch.einsum("nlv,nlv->ln", self.a, self.b)
        else:
            self.parts = torch.einsum("nlv,mlv->lnm", self.a, self.b)
        self._sq_a = self.a.pow(2).sum(-1)  # (N, L)
        self._sq_b = self.b.pow(2).sum(-1)  # (M, L)
        return True

    def __call__(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or self.parts is None:
            fa, fb = features(self.a, mask), features(self.b, mask)
            return (fa * fb).sum(-1) if self.paired else fa @ fb.T
        mask = mask.to(self.a.device)
        num = torch.tensordot(mask.to(self.parts.dtype), self.parts, dims=1)
        norm_a = self._sq_a[:, mask].sum(1).sqrt().clamp_min(1e-12)
        norm_b = self._sq_b[:, mask].sum(1).sqrt().clamp_min(1e-12)
        if self.paired:
            return num / (norm_a * norm_b)
        return num / (norm_a[:, None] * norm_b[None, :])


class SlotCache:
    """Base of the task caches: dataclasses of encoded tensors whose ``__post_init__`` builds SlotScores."""

    @property
    def num_slots(self) -> int:
        return self.images.shape[1]

    def to(self, device: torch.device | str):
        """The same cache with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        moved = {k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)}
        return dataclasses.replace(self, **moved)

    def prepare_search(self, device: torch.device | str):
        """The cache on ``device`` with per-slot products precomputed where they fit (for the slot search)."""
        out = self.to(device)
        for scores in vars(out).values():
            if isinstance(scores, SlotScores):
                scores.precompute()
        return out


def split_groups(
    groups: torch.Tensor, val_fraction: float, seed: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices 0..N-1 into validation and test, stratified by ``groups`` (N,).

    Each group sends ``round(val_fraction * size)`` of its members to validation.

    Raises:
        DataError: if ``val_fraction`` is not in (0, 1) or either split ends up empty.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must lie strictly between 0 and 1, got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    val, test = [], []
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_val = int(round(val_fraction * len(members)))
        val.append(members[:n_val])
        test.append(members[n_val:])
    val_idx, test_idx = torch.cat(val).sort().values, torch.cat(test).sort().values
    if len(val_idx) == 0 or len(test_idx) == 0:
        raise DataError(
            f"{what}: --val-fraction {val_fraction} leaves an empty {'validation' if len(val_idx) == 0 else 'test'} "
            f"split of {len(groups)} items; use more data, another fraction, or --test-split"
        )
    return val_idx, test_idx
