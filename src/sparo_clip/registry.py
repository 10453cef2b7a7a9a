"""Registration of SPARO configs into OpenCLIP, and the one hook into its factory.

OpenCLIP's ``create_model`` picks its model class from ``CLIP`` / ``CustomTextCLIP`` / ``CoCa`` and calls
``model_class(**model_cfg)``. The hook replaces the ``CLIP`` and ``CustomTextCLIP`` names inside
``open_clip.factory`` with a dispatcher: a config holding one of the keys in :data:`MODEL_BUILDERS`
(``sparo_cfg`` -> :class:`SparoCLIP`) is built by that builder, any other config by the original class.
The choice comes from config fields, never from the model's name. Everything else goes through
OpenCLIP's public API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import open_clip.factory as oc_factory

from .model import SparoCLIP

OPEN_CLIP_VERSION = "3.3.0"  # the version the hook was written and tested against
CONFIG_DIR = Path(__file__).parent / "model_configs"
_HOOK_ATTR = "_sparo_clip_hook"
_logger = logging.getLogger(__name__)

# top-level model-config key -> model class built for configs that hold it
MODEL_BUILDERS: dict[str, Callable[..., Any]] = {"sparo_cfg": SparoCLIP}


def register_model_builder(config_key: str, builder: Callable[..., Any]) -> None:
    """Build configs that hold ``config_key`` with ``builder`` (called with the whole model config)."""
    MODEL_BUILDERS[config_key] = builder


def _make_dispatch(original: type) -> Any:
    def build(*args: Any, **kwargs: Any) -> Any:
        keys = [key for key in MODEL_BUILDERS if key in kwargs]
        builders = {MODEL_BUILDERS[key] for key in keys}
        if len(builders) > 1:
            raise ValueError(
                f"the model config holds {keys}, which belong to different models "
                f"({sorted(b.__name__ for b in builders)}): use one of them"
            )
        return builders.pop()(*args, **kwargs) if builders else original(*args, **kwargs)

    build.__name__ = build.__qualname__ = original.__name__
    build.__doc__ = f"{original.__name__}, or the sparo_clip builder named by a config key (sparo_clip hook)."
    setattr(build, _HOOK_ATTR, original)
    return build


def install_factory_hook() -> None:
    """Install the model-class dispatch into ``open_clip.factory`` (idempotent)."""
    if open_clip.__version__ != OPEN_CLIP_VERSION:
        _logger.warning(
            "sparo_clip's factory hook was written for open_clip_torch %s, found %s",
            OPEN_CLIP_VERSION,
            open_clip.__version__,
        )
    for name in ("CLIP", "CustomTextCLIP"):
        current = getattr(oc_factory, name)
        if not hasattr(current, _HOOK_ATTR):
            setattr(oc_factory, name, _make_dispatch(current))


def hook_installed() -> bool:
    return all(hasattr(getattr(oc_factory, n), _HOOK_ATTR) for n in ("CLIP", "CustomTextCLIP"))


def register_configs(path: str | Path = CONFIG_DIR) -> list[str]:
    """Add a folder (or file) of model configs to OpenCLIP's registry; returns the names it holds."""
    path = Path(path)
    if path not in oc_factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(path)
    files = [path] if path.is_file() else sorted(path.glob("*.json"))
    return [f.stem for f in files]


def sparo_model_names() -> list[str]:
    """Registered model names whose config has a ``sparo_cfg``."""
    return [n for n in open_clip.list_models() if "sparo_cfg" in (open_clip.get_model_config(n) or {})]
