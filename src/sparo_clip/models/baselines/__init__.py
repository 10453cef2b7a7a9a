"""Read-out baselines that SPARO is compared against, at OpenCLIP's interface.

Importing this package registers :class:`BaselineCLIP` as the builder of every model config holding
``bottleneck_cfg``, ``codebook_cfg`` or ``text_pool_cfg`` (see :mod:`sparo_clip.models.registry`). The global
average pool baseline needs no code: it is OpenCLIP's ``vision_cfg.pool_type = "avg"``.
"""

from sparo_clip.models.baselines.config import BottleneckCfg, CodebookCfg, TextPoolCfg
from sparo_clip.models.baselines.layers import CodebookPool, MaskedAttentionalPooler
from sparo_clip.models.baselines.model import BASELINE_KEYS, BaselineCLIP
from sparo_clip.models.baselines.sparsemax import sparsemax
from sparo_clip.models.registry import register_model_builder

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
