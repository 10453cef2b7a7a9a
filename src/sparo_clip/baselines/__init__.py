"""Read-out baselines that SPARO is compared against, at OpenCLIP's interface.

Importing this package registers :class:`BaselineCLIP` as the builder of every model config holding
``bottleneck_cfg``, ``codebook_cfg`` or ``text_pool_cfg`` (see :mod:`sparo_clip.registry`). The global
average pool baseline needs no code: it is OpenCLIP's ``vision_cfg.pool_type = "avg"``.
"""

from ..registry import register_model_builder
from .config import BottleneckCfg, CodebookCfg, TextPoolCfg
from .layers import CodebookPool, MaskedAttentionalPooler
from .model import BASELINE_KEYS, BaselineCLIP
from .sparsemax import sparsemax

for _key in BASELINE_KEYS:
    register_model_builder(_key, BaselineCLIP)

__all__ = [
    "BASELINE_KEYS",
    "BaselineCLIP",
    "BottleneckCfg",
    "CodebookCfg",
    "CodebookPool",
    "MaskedAttentionalPooler",
    "TextPoolCfg",
    "sparsemax",
]
