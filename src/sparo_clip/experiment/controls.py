"""The text-only control of one world: a bigram reader fit on its training captions, scored on every matching
set (the clean binding test, the compositionality sets), per task and group. Each model's other control (its
preference with a blank image) comes from the eval commands on the sets' ``_blank`` copies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparo_clip.eval.text_prior import BigramScorer, text_only_accuracy


def text_only_controls(data: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per matching set, task and group: the text-only reader's accuracy and the item count."""
    rows = Path(data["train"]["csv"]).read_text().splitlines()[1:]
    scorer = BigramScorer(row.split("\t", 1)[1] for row in rows)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in ("binding", "sugarcrepe"):
        root = Path(data[name]["root"])
        for task_file in sorted(root.glob("*.json")):
            items = list(json.loads(task_file.read_text()).values())
            for group in sorted({it["group"] for it in items}):
                chosen = [it for it in items if it["group"] == group]
                acc = text_only_accuracy(
                    scorer, [it["caption"] for it in chosen], [it["negative_caption"] for it in chosen]
                )
                out.setdefault(name, {}).setdefault(task_file.stem, {})[group] = {
                    "accuracy": sum(acc) / len(acc),
                    "items": len(acc),
                }
    return out
