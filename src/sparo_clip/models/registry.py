"""Registration of SPARO configs into OpenCLIP, and which model class builds which config.

OpenCLIP's ``create_model`` picks its model class from ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` and calls
``model_class(**model_cfg)``. Through the factory hook in :mod:`sparo_clip.integration` (the one module that
touches OpenCLIP's internals; see :mod:`sparo_clip.models.builder` for the whole path), a config holding one of
the keys in :data:`MODEL_BUILDERS`
(``sparo_cfg`` -> :class:`SparoCLIP`) is built by that builder, any other config by the original class.
The choice comes from config fields, never from the model's name. Config registration uses OpenCLIP's
public ``add_model_config``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip

from sparo_clip import integration
from sparo_clip.errors import ConfigError
from sparo_clip.models.sparo import SparoCLIP

OPEN_CLIP_VERSION = integration.OPEN_CLIP_VERSION  # the version the hook was checked against
CONFIG_DIR = Path(__file__).parent / "model_configs"

# top-level model-config key -> model class built for configs that hold it
MODEL_BUILDERS: dict[str, Callable[..., Any]] = {"sparo_cfg": SparoCLIP}


def register_model_builder(config_key: str, builder: Callable[..., Any]) -> None:
    """Build configs that hold ``config_key`` with ``builder`` (called with the whole model config)."""
    MODEL_BUILDERS[config_key] = builder


def select_builder(model_cfg: dict[str, Any]) -> Callable[..., Any] | None:
    """The builder for a model config (by its top-level keys in :data:`MODEL_BUILDERS`), or None for OpenCLIP's."""
    keys = [key for key in MODEL_BUILDERS if key in model_cfg]
    builders = {MODEL_BUILDERS[key] for key in keys}
    if len(builders) > 1:
        raise ConfigError(
            f"the model config holds {keys}, which belong to different models "
            f"({sorted(b.__name__ for b in builders)}): use one of them"
        )
    return builders.pop() if builders else None


def register_configs(path: str | Path = CONFIG_DIR) -> list[str]:
    """Add a folder (or file) of model configs to OpenCLIP's registry; returns the names it holds."""
    path = Path(path)
    if not integration.model_config_path_registered(path):
        open_clip.add_model_config(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    return [f.stem for f in files]


def sparo_model_names() -> list[str]:
    """Registered model names whose config has a ``sparo_cfg``."""
    return [n for n in open_clip.list_models() if "sparo_cfg" in (open_clip.get_model_config(n) or {})]
