"""Evaluation of SPARO and any OpenCLIP model: zero-shot classification, retrieval, SugarCrepe, slot selection.

Command line: ``sparo-clip eval {zeroshot,retrieval,sugarcrepe}`` (:mod:`.cli`) and
``sparo-clip select-slots`` (:mod:`.select`). Each task encodes its data once into slot tensors
(N, L, V) (a non-SPARO model is one slot of its normalised features) and scores any slot subset on them.
"""

from .common import EvalContext, EvalError, features, load_context, parse_slots, slot_mask
from .folders import LabelledImages, image_folder, imagenet_subset, imagenet_variant, imagenet_wnids
from .retrieval import RetrievalCache, recall_metrics
from .search import backward_elimination, forward_selection, search
from .similarity import SlotScores
from .sugarcrepe import SugarCrepeCache
from .zeroshot import ZeroShotCache, class_slots, classification_metrics

__all__ = [
    "EvalContext",
    "EvalError",
    "LabelledImages",
    "RetrievalCache",
    "SlotScores",
    "SugarCrepeCache",
    "ZeroShotCache",
    "backward_elimination",
    "class_slots",
    "classification_metrics",
    "features",
    "forward_selection",
    "image_folder",
    "imagenet_subset",
    "imagenet_variant",
    "imagenet_wnids",
    "load_context",
    "parse_slots",
    "recall_metrics",
    "search",
    "slot_mask",
]
