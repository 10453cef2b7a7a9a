"""The one parameter counter (training's --max-params, parity configs and benchmarks all use it), and the
memory a model needs to train, checked against this machine before any work (:func:`check_training_memory`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from sparo_clip.errors import ConfigError

# fp32 bytes per trainable parameter while training with AdamW: weights, gradients and two moments
ADAMW_BYTES_PER_PARAM = 16


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


def machine_memory(device: str | torch.device) -> tuple[int | None, str]:
    """(bytes of memory of ``device`` on this machine, what they are), or (None, ...) when unknown."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, f"GPU {index}'s memory"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    except (ValueError, OSError, AttributeError):
        return None, "this machine's memory"


def _gb(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_training_memory(
    module: torch.nn.Module,
    device: str | torch.device,
    where: str,
    flag: str = "--no-memory-check",
    bytes_per_param: int = ADAMW_BYTES_PER_PARAM,
) -> int:
    """Refuse a model whose weights, gradients and optimiser state alone exceed the memory of ``device``.

    The estimate counts ``bytes_per_param`` per parameter of ``module`` (built on the meta device, so this
    costs nothing) and no activations: it is a lower bound, and a model refused here cannot train here.

    Returns:
        The estimate in bytes.

    Raises:
        ConfigError: naming the parameter count, the estimate, the memory there is, and ``flag``.
    """
    params = count_parameters(module)
    need = params * bytes_per_param
    have, what = machine_memory(device)
    if have is not None and need > have:
        raise ConfigError(
            f"{where}: the model has {params:,} parameters; training it needs at least {_gb(need)} (weights, "
            f"gradients and optimiser state, before activations) but {what} is {_gb(have)}: use a smaller "
            f"model, or {flag} to try anyway"
        )
    return need
