"""The evaluation tasks: each module reads and checks its data (``prepare``), encodes it into a cache
(``encode``) whose ``metrics(slot_mask)`` scores any slot subset, and names its metrics (``METRICS``)."""

from __future__ import annotations

from types import ModuleType

from sparo_clip.eval import compositional, retrieval, sugarcrepe, zeroshot

TASKS: dict[str, ModuleType] = {
    "zeroshot": zeroshot,
    "retrieval": retrieval,
    "sugarcrepe": sugarcrepe,
    "compositional": compositional,
}

HELP = {
    "zeroshot": "zero-shot classification: ImageNet val/V2/R/A/Sketch or any class-per-folder data",
    "retrieval": "image<->text retrieval R@1/5/10 on a webdataset or a CSV of image,caption pairs",
    "sugarcrepe": "SugarCrepe compositionality: per-task and mean accuracy",
    "compositional": "generalised compositional zero-shot (seen/unseen accuracy, HM, AUC) on attribute-object data",
}

DEFAULT_METRIC = {
    "zeroshot": "top1",
    "retrieval": "mean_recall",
    "sugarcrepe": "mean",
    "compositional": "auc",
}

# Tasks whose caches can save what their metrics are computed from, per item (``--save-items``).
ITEM_TASKS = ("retrieval", "sugarcrepe", "compositional")
