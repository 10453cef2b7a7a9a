"""Slot subset search: greedy forward selection and backward elimination of a score over slot masks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from sparo_clip.inputs import slot_mask

Score = Callable[[torch.Tensor], float]  # (L,) bool mask -> score, higher is better
METHODS = ("forward", "backward", "both")


def _step(step: int, action: str, slot: int | None, slots: list[int], score: float) -> dict[str, Any]:
    return {
        "step": step,
        "action": action,
        "slot": slot,
        "num_slots": len(slots),
        "slots": sorted(slots),
        "score": score,
    }


def _best_change(
    score: Score, current: list[int], candidates: list[int], add: bool, num_slots: int, bar: tqdm
):
    """The candidate whose addition (or removal) scores highest; ties go to the lowest slot index."""
    best_slot, best_score = None, float("-inf")
    for j in candidates:
        trial = current + [j] if add else [s for s in current if s != j]
        value = float(score(slot_mask(trial, num_slots)))
        bar.update(1)
        if value > best_score:
            best_slot, best_score = j, value
    return best_slot, best_score


def forward_selection(score: Score, num_slots: int, progress: bool = True) -> list[dict[str, Any]]:
    """Start empty; at each step add the slot that maximises the score, until every slot is in.

    Returns:
        The trace: one entry per step with the slot added, the subset and its score. The last entry is
        the full set, so the best entry never scores below all slots.
    """
    selected: list[int] = []
    trace = []
    with tqdm(total=num_slots * (num_slots + 1) // 2, desc="forward selection", disable=not progress) as bar:
        while len(selected) < num_slots:
            remaining = [j for j in range(num_slots) if j not in selected]
            slot, value = _best_change(score, selected, remaining, True, num_slots, bar)
            selected.append(slot)
            trace.append(_step(len(selected), "add", slot, selected, value))
    return trace


def backward_elimination(score: Score, num_slots: int, progress: bool = True) -> list[dict[str, Any]]:
    """Start with every slot; at each step drop the slot whose removal maximises the score, down to one slot.

    Returns:
        The trace, starting with the full set (step 0).
    """
    current = list(range(num_slots))
    with tqdm(
        total=num_slots * (num_slots + 1) // 2, desc="backward elimination", disable=not progress
    ) as bar:
        trace = [_step(0, "start", None, current, float(score(slot_mask(current, num_slots))))]
        bar.update(1)
        while len(current) > 1:
            slot, value = _best_change(score, current, list(current), False, num_slots, bar)
            current = [s for s in current if s != slot]
            trace.append(_step(len(trace), "remove", slot, current, value))
    return trace


def best_entry(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest score; ties go to fewer slots, then to the earlier step."""
    return max(trace, key=lambda e: (e["score"], -e["num_slots"], -e["step"]))


def search(score: Score, num_slots: int, method: str = "both", progress: bool = True) -> dict[str, Any]:
    """Run the chosen searches; returns ``{"traces": {method: trace}, "best": entry, "best_method": name}``."""
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; allowed: {METHODS}")
    traces = {}
    if method in ("forward", "both"):
        traces["forward"] = forward_selection(score, num_slots, progress)
    if method in ("backward", "both"):
        traces["backward"] = backward_elimination(score, num_slots, progress)
    bests = {name: best_entry(trace) for name, trace in traces.items()}
    best_method = max(bests, key=lambda m: (bests[m]["score"], -bests[m]["num_slots"]))
    return {"traces": traces, "best": bests[best_method], "best_method": best_method}
