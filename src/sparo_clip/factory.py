"""Model creation with config overrides, and saving models in OpenCLIP's ``local-dir:`` layout."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import open_clip
import torch

from .model import SparoCLIP

WEIGHTS_NAME = "open_clip_model.safetensors"
CONFIG_NAME = "open_clip_config.json"


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_model_config(model_name: str, override_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The registered (or ``local-dir:``) config of ``model_name`` with ``override_config`` deep-merged in."""
    cfg = open_clip.get_model_config(model_name.replace("/", "-"))
    if cfg is None:
        raise ValueError(f"unknown model {model_name!r}: registered models are {open_clip.list_models()}")
    if override_config:
        if not isinstance(override_config, dict):
            raise ValueError(f"override_config must be a dict, got {type(override_config).__name__}")
        cfg = deep_merge(cfg, override_config)
    return cfg


def _override_kwargs(model_name: str, override_config: dict[str, Any] | None) -> dict[str, Any]:
    """Top-level model kwargs that carry a deep-merged override through OpenCLIP's ``create_model``."""
    if not override_config:
        return {}
    merged = resolve_model_config(model_name, override_config)
    return {key: merged[key] for key in override_config}


def refuse_jit(model_name: str, override_config: dict[str, Any] | None, jit: bool) -> None:
    """OpenCLIP falls back silently to an unscripted model when scripting fails: refuse up front instead."""
    from .base import TORCHSCRIPT_UNSUPPORTED
    from .registry import MODEL_BUILDERS

    cfg = open_clip.get_model_config(model_name.replace("/", "-")) or {}
    if jit and any(key in {**cfg, **(override_config or {})} for key in MODEL_BUILDERS):
        raise NotImplementedError(f"{model_name}: {TORCHSCRIPT_UNSUPPORTED}")


def create_model(model_name: str, *args: Any, override_config: dict[str, Any] | None = None, **kwargs: Any):
    """``open_clip.create_model`` with ``override_config`` deep-merged into the model config."""
    refuse_jit(model_name, override_config, kwargs.get("jit", False))
    return open_clip.create_model(
        model_name, *args, **kwargs, **_override_kwargs(model_name, override_config)
    )


def create_model_and_transforms(
    model_name: str, *args: Any, override_config: dict[str, Any] | None = None, **kwargs: Any
):
    """``open_clip.create_model_and_transforms`` with ``override_config`` deep-merged into the model config.

    Example:
        >>> model, _, preprocess = create_model_and_transforms(
        ...     "ViT-B-32-SPARO", override_config={"sparo_cfg": {"slot_norm": "sqrtsem:norm"}})
    """
    refuse_jit(model_name, override_config, kwargs.get("jit", False))
    extra = _override_kwargs(model_name, override_config)
    return open_clip.create_model_and_transforms(model_name, *args, **kwargs, **extra)


def save_pretrained(
    model: torch.nn.Module, out_dir: str | Path, model_cfg: dict[str, Any] | None = None
) -> Path:
    """Write ``open_clip_config.json`` (model + preprocess config) and the weights into ``out_dir``.

    The folder loads with ``open_clip.create_model_and_transforms('local-dir:' + out_dir)``.

    Args:
        model: a SparoCLIP, or any OpenCLIP model when ``model_cfg`` is given.
        out_dir: folder to write (created if needed).
        model_cfg: the model config; defaults to ``model.model_cfg`` of a SparoCLIP.
    """
    from safetensors.torch import save_file

    if model_cfg is None:
        if not isinstance(model, SparoCLIP):
            raise ValueError("save_pretrained needs model_cfg= for models that are not SparoCLIP")
        model_cfg = model.model_cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    # safetensors refuses tensors that share storage (shared queries): store independent copies
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    return out
