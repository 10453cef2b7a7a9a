"""Evaluation of SPARO and any OpenCLIP model: zero-shot classification, retrieval, SugarCrepe, slot selection.

Command line: ``sparo-clip eval {zeroshot,retrieval,sugarcrepe}`` (:mod:`.cli`) and
``sparo-clip select-slots`` (:mod:`.select`). Each task encodes its data once into slot tensors
(N, L, V) (a non-SPARO model is one slot of its normalised features) and scores any slot subset on them.
"""

from sparo_clip.errors import ConfigError
from sparo_clip.eval.common import EvalContext, ModelSpec, features, load_context
from sparo_clip.eval.encoders import ImageEncoder, load_image_encoder, register_image_encoder
from sparo_clip.eval.folders import (
    LabelledImages,
    image_folder,
    imagenet_subset,
    imagenet_variant,
    imagenet_wnids,
)
from sparo_clip.eval.retrieval import RetrievalCache, recall_metrics
from sparo_clip.eval.search import backward_elimination, forward_selection, search
from sparo_clip.eval.similarity import SlotScores
from sparo_clip.eval.sugarcrepe import SugarCrepeCache
from sparo_clip.eval.zeroshot import ZeroShotCache, class_slots, classification_metrics

__all__ = [
    "EvalContext",
    "ImageEncoder",
    "ModelSpec",
    "ConfigError",
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
    "load_image_encoder",
    "register_image_encoder",
    "recall_metrics",
    "search",
]
