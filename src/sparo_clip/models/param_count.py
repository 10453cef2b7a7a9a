"""The one parameter counter (training's --max-params, parity configs and benchmarks all use it)."""

from __future__ import annotations

import logging
from typing import Any

import torch


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters counted once).

    Args:
        module: any module, also one built on the meta device.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def meta_model(
    model_name: str, override: dict[str, Any] | None = None, **model_kwargs: Any
) -> torch.nn.Module:
    """Build a registered model on the meta device (no memory, no weights): validates its config.

    Args:
        model_name: any name OpenCLIP takes (registered, ``local-dir:DIR``, ``hf-hub:org/name``).
        override: deep-merged into the model config (as ``--override-model-config``).
        **model_kwargs: passed to :func:`sparo_clip.create_model` (e.g. ``force_image_size``).
    """
    from sparo_clip.models.builder import create_model

    # OpenCLIP logs through the root logger; a placeholder handler keeps that from calling basicConfig()
    # (a training run installs its own handlers later, and would print every line twice).
    placeholder = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(placeholder)
    try:
        with torch.device("meta"):
            # no weights are read for counting: neither a tower's own (a Hugging Face text tower would fetch
            # them) nor those a local-dir: / hf-hub: model is saved with
            model_kwargs.setdefault("pretrained_text", False)
            model_kwargs.setdefault("load_weights", False)
            return create_model(model_name, override_config=override, device="meta", **model_kwargs)
    finally:
        root.removeHandler(placeholder)


def count_model_parameters(
    model_name: str, override: dict[str, Any] | None = None, **model_kwargs: Any
) -> int:
    """Parameters of a registered model, counted on the meta device (see :func:`meta_model`)."""
    return count_parameters(meta_model(model_name, override, **model_kwargs))
