"""sparo-clip: SPARO (separate-head attention read-out, Vani et al., ECCV 2024) for OpenCLIP.

Importing this package registers the SPARO model configs into OpenCLIP's model zoo and installs the
factory hook (:mod:`sparo_clip.integration`) that lets ``open_clip.create_model*`` build :class:`SparoCLIP`
for them::

    import open_clip, sparo_clip
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-SPARO", pretrained="epoch_25.pt")
"""

from . import baselines  # noqa: F401  (registers the baseline model builders)
from .config import SparoCfg
from .factory import (
    create_model,
    create_model_and_transforms,
    deep_merge,
    resolve_model_config,
    save_pretrained,
)
from .loading import load_model
from .model import SparoCLIP
from .parity import parity_config
from .readout import SparoReadout, normalize_slots, select_slots
from .registry import install_factory_hook, register_configs, register_model_builder, sparo_model_names

__version__ = "0.1.0"

install_factory_hook()
register_configs()

__all__ = [
    "SparoCfg",
    "SparoCLIP",
    "SparoReadout",
    "create_model",
    "create_model_and_transforms",
    "deep_merge",
    "load_model",
    "normalize_slots",
    "parity_config",
    "register_model_builder",
    "resolve_model_config",
    "save_pretrained",
    "select_slots",
    "sparo_model_names",
]
