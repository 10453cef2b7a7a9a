"""sparo-clip: SPARO (separate-head attention read-out, Vani et al., ECCV 2024) for OpenCLIP.

Importing this package registers the SPARO model configs into OpenCLIP's model zoo and installs the
factory hook (:mod:`sparo_clip.integration`) that lets ``open_clip.create_model*`` build :class:`SparoCLIP`
for them::

    import open_clip, sparo_clip
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-SPARO", pretrained="epoch_25.pt")

Packages, by role (docs/architecture.md): ``models`` (what a model is), ``checkpoints`` (files and loading),
``training`` (open_clip_train runs), ``data`` (the shapes world), ``eval``, ``viz``, ``dino``, ``commands``
(the command line); ``integration`` is the one seam to OpenCLIP's internals.
"""

from sparo_clip import integration
from sparo_clip.checkpoints.loading import checked_load_checkpoint, load_model
from sparo_clip.checkpoints.sharing import push_to_hf_hub, save_pretrained
from sparo_clip.models import baselines  # noqa: F401  (registers the baseline model builders)
from sparo_clip.models.builder import (
    create_model,
    create_model_and_transforms,
    deep_merge,
    get_tokenizer,
    resolve_model_config,
)
from sparo_clip.models.config import SparoCfg
from sparo_clip.models.parity import parity_config
from sparo_clip.models.readout import SparoReadout, normalize_slots, select_slots
from sparo_clip.models.registry import (
    register_configs,
    register_model_builder,
    select_builder,
    sparo_model_names,
)
from sparo_clip.models.sparo import SparoCLIP

__version__ = "0.2.0"

integration.install_factory_hook(select_builder)
integration.install_checkpoint_hook(checked_load_checkpoint)
register_configs()

from sparo_clip import dino  # noqa: E402,F401  (registers the dino: image encoder for kNN / linear probes)

__all__ = [
    "SparoCfg",
    "SparoCLIP",
    "SparoReadout",
    "create_model",
    "create_model_and_transforms",
    "deep_merge",
    "get_tokenizer",
    "load_model",
    "normalize_slots",
    "parity_config",
    "push_to_hf_hub",
    "register_configs",
    "register_model_builder",
    "resolve_model_config",
    "save_pretrained",
    "select_slots",
    "sparo_model_names",
]
