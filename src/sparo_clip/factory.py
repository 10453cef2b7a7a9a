"""Model creation with config overrides and checked checkpoint files, and saving in OpenCLIP's ``local-dir:`` layout.

A checkpoint file given as ``pretrained=`` to :func:`create_model` / :func:`create_model_and_transforms` is
first read here weights-only (:func:`sparo_clip.checkpoints.load_checkpoint_file`: tensors and plain
containers, never code), so an empty, foreign or unsafe file ends in one :class:`CheckpointError` naming it;
OpenCLIP then loads it as usual (``weights_only=True``, strict), and when that fails the error says which
tensors do not fit the model.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from pathlib import Path
from typing import Any

import open_clip
import torch

from .checkpoints import CheckpointError, load_checkpoint_file
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

    if not jit:
        return
    registered = not model_name.startswith(("local-dir:", "hf-hub:"))  # those keep their config elsewhere
    cfg = (open_clip.get_model_config(model_name.replace("/", "-")) or {}) if registered else {}
    if any(key in {**cfg, **(override_config or {})} for key in MODEL_BUILDERS):
        raise NotImplementedError(f"{model_name}: {TORCHSCRIPT_UNSUPPORTED}")


class CheckpointMismatch(CheckpointError, RuntimeError):
    """A readable checkpoint whose tensors do not fit the model (a RuntimeError too, as torch's strict load)."""


def checkpoint_file(model_name: str, pretrained: Any) -> Path | None:
    """The local checkpoint file ``pretrained`` names for ``model_name`` (None: no file, e.g. a pretrained tag)."""
    if pretrained is None or model_name.startswith(("local-dir:", "hf-hub:")):  # OpenCLIP ignores pretrained
        return None
    text = os.fspath(pretrained)
    looks_like_file = os.sep in text or Path(text).suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
    return Path(text) if os.path.exists(text) or looks_like_file else None


def checkpoint_tensor_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the model tensors in a checkpoint file, read weights-only.

    Accepts a state dict, a training checkpoint holding one under ``state_dict`` (``module.`` prefixes of
    DDP are dropped) or a ``.safetensors`` file.

    Raises:
        CheckpointError: missing, empty, unreadable or unsafe file, or one holding no tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file() and path.stat().st_size > 0:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    obj = load_checkpoint_file(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        found = type(state).__name__ if not isinstance(state, dict) else f"a dict with keys {list(state)[:5]}"
        raise CheckpointError(
            f"checkpoint {path} holds no model weights: expected a state dict of tensors (or a training "
            f"checkpoint with one under 'state_dict'), found {found}"
        )
    return {(k[7:] if k.startswith("module.") else k): tuple(v.shape) for k, v in state.items()}


def fit_report(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], few: int = 3) -> str | None:
    """Why a checkpoint's tensors do not fit ``model`` (None when every name and shape matches)."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(own.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & shapes.keys() if own[k] != shapes[k])
    if not (missing or unexpected or wrong):
        return None
    parts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} with a size mismatch"
    shown = [f"Missing {missing[:few]}"] if missing else []
    shown += [f"Unexpected {unexpected[:few]}"] if unexpected else []
    shown += [f"size mismatch {k}: file {shapes[k]} vs model {own[k]}" for k in wrong[:few]]
    return f"{parts} of the model's {len(own)} tensors ({'; '.join(shown)})"


def _create(build: Any, model_name: str, args: tuple, kwargs: dict[str, Any], override: dict | None) -> Any:
    """Run OpenCLIP's ``build`` with a checked checkpoint file and weights-only loading.

    A checkpoint file is read twice when it loads (here weights-only for the check, then by OpenCLIP); its
    tensors are not kept in between.
    """
    refuse_jit(model_name, override, kwargs.get("jit", False))
    kwargs = dict(kwargs, **_override_kwargs(model_name, override))
    kwargs.setdefault("weights_only", True)
    if kwargs["weights_only"] is not True:
        raise ValueError("weights_only=False is not supported: checkpoints load weights-only (no code runs)")
    pretrained = args[0] if args else kwargs.get("pretrained")
    path = checkpoint_file(model_name, pretrained)
    if path is None or path.suffix in (".npz", ".npy"):  # tags, hub names, big_vision numpy weights
        return build(model_name, *args, **kwargs)
    shapes = checkpoint_tensor_shapes(path)  # one clear error for a missing, empty, foreign or unsafe file
    try:
        return build(model_name, *args, **kwargs)
    except Exception as e:  # noqa: BLE001 (OpenCLIP's strict load raises RuntimeError, KeyError, ...)
        report = _fit_report_for(model_name, kwargs, override, shapes)
        if report is None:  # the tensors fit: the failure is not the checkpoint's
            raise
        raise CheckpointMismatch(
            f"checkpoint {path} does not fit model {model_name}: {report}; was it saved from another model?"
        ) from e


def checked_load_checkpoint(
    original: Any, model: torch.nn.Module, checkpoint_path: Any, *args: Any, **kwargs: Any
):
    """OpenCLIP's checkpoint load inside ``create_model(pretrained=FILE)``, with one clear error for our models.

    Installed by :func:`sparo_clip.integration.install_checkpoint_hook`. For a sparo_clip model the file is
    first read weights-only (:func:`checkpoint_tensor_shapes`: one :class:`CheckpointError` line for a missing,
    empty, text, truncated or unsafe file); a strict load that fails because the tensors do not fit becomes a
    :class:`CheckpointMismatch` naming the counts and the first names. Other models go to ``original`` as is.
    """
    from .base import ReadoutCLIP

    path = Path(os.fspath(checkpoint_path))
    if not isinstance(model, ReadoutCLIP) or path.suffix in (".npz", ".npy"):
        return original(model, checkpoint_path, *args, **kwargs)
    shapes = checkpoint_tensor_shapes(path)
    try:
        return original(model, checkpoint_path, *args, **kwargs)
    except Exception as e:  # noqa: BLE001 (torch's strict load raises RuntimeError; conversions KeyError, ...)
        report = fit_report(model, shapes)
        if report is None:  # the tensors fit: the failure is not the checkpoint's
            raise
        raise CheckpointMismatch(
            f"checkpoint {path} does not fit model {type(model).__name__}: {report}; was it saved from another "
            "model?"
        ) from e


def _fit_report_for(
    model_name: str, kwargs: dict[str, Any], override: dict | None, shapes: dict[str, tuple[int, ...]]
) -> str | None:
    """:func:`fit_report` against a freshly built model of the same architecture (None if it cannot be built)."""
    accepted = inspect.signature(open_clip.create_model).parameters
    skip = ("pretrained", "load_weights", "device", "precision", "jit", "require_pretrained")
    same_arch = {
        k: v for k, v in kwargs.items() if (k in accepted and k not in skip) or k in (override or {})
    }
    try:
        plain = open_clip.create_model(model_name, **same_arch)
    except Exception:  # noqa: BLE001 (then the original error is the one to show)
        return None
    return fit_report(plain, shapes)


def create_model(model_name: str, *args: Any, override_config: dict[str, Any] | None = None, **kwargs: Any):
    """``open_clip.create_model`` with ``override_config`` deep-merged into the model config.

    A checkpoint file in ``pretrained`` is checked first and loaded weights-only (module docstring).
    """
    return _create(open_clip.create_model, model_name, args, kwargs, override_config)


def create_model_and_transforms(
    model_name: str, *args: Any, override_config: dict[str, Any] | None = None, **kwargs: Any
):
    """``open_clip.create_model_and_transforms`` with ``override_config`` deep-merged into the model config.

    A checkpoint file in ``pretrained`` is checked first and loaded weights-only (module docstring).

    Example:
        >>> model, _, preprocess = create_model_and_transforms(
        ...     "ViT-B-32-SPARO", override_config={"sparo_cfg": {"slot_norm": "sqrtsem:norm"}})
    """
    return _create(open_clip.create_model_and_transforms, model_name, args, kwargs, override_config)


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
