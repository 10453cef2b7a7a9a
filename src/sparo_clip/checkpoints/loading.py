"""Loading checkpoints into models: the one place a checkpoint file meets a model.

- :func:`checked_load_checkpoint`: what ``open_clip.create_model(pretrained=FILE)`` loads a file with (installed
  by :func:`sparo_clip.integration.install_checkpoint_hook`). For sparo_clip's models (and for every model built
  through :func:`sparo_clip.create_model`) the file is read once, weights-only, by OpenCLIP's own loader; when
  that fails, the file is examined (:func:`checkpoint_tensor_shapes`) and the failure becomes one line: a
  :class:`~sparo_clip.errors.CheckpointError` for a missing, empty, text, truncated or unsafe file, or a
  :class:`~sparo_clip.errors.CheckpointMismatch` naming what does not fit.
- :func:`load_model`: model name + checkpoint -> (model in eval mode, eval transform, tokenizer), for the
  evaluation and picture commands, after :func:`check_model_name` and :func:`check_pretrained`.
- :func:`check_finite_weights`: weights with NaN or infinite values are refused at load (they evaluate at
  chance without a word), naming the tensors; ``allow`` (``--allow-nonfinite``) turns that into a warning.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from sparo_clip import integration
from sparo_clip.checkpoints.files import load_checkpoint_file
from sparo_clip.errors import CheckpointError, CheckpointMismatch, ConfigError
from sparo_clip.models.base import ReadoutCLIP

_logger = logging.getLogger(__name__)
_BIG_VISION = (".npz", ".npy")  # SigLIP's numpy weights: OpenCLIP converts them itself


def checked_load_checkpoint(
    original: Callable[..., Any], model: torch.nn.Module, checkpoint_path: Any, *args: Any, **kwargs: Any
) -> Any:
    """OpenCLIP's ``load_checkpoint`` with one clear error, for our models and inside :func:`create_model`.

    Other models (a third party's plain CLIP through ``open_clip.create_model``) go to ``original`` untouched.
    Ours are always read weights-only, whatever the caller asked: nothing loaded from disk can run code.
    """
    path = Path(os.fspath(checkpoint_path))
    name = integration.checked_build_name()
    ours = isinstance(model, ReadoutCLIP) or name is not None
    if not ours or path.suffix in _BIG_VISION:
        return original(model, checkpoint_path, *args, **kwargs)
    if kwargs.get("weights_only") is False:
        _logger.warning("%s: loading weights-only (sparo_clip models never unpickle code)", path)
    kwargs["weights_only"] = True
    try:
        return original(model, checkpoint_path, *args, **kwargs)  # the one read of a good file
    except Exception as e:  # noqa: BLE001 (torch's strict load raises RuntimeError; conversions KeyError, ...)
        shapes = checkpoint_tensor_shapes(path)  # a CheckpointError line for an unreadable or unsafe file
        report = fit_report(model, shapes)
        if report is None:  # the tensors fit: the failure is not the checkpoint's
            raise
        raise CheckpointMismatch(
            f"checkpoint {path} does not fit model {name or type(model).__name__}: {report}; was it saved from another "
            "model?"
        ) from e


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


def nonfinite_tensors(weights: Mapping[str, torch.Tensor] | torch.nn.Module) -> tuple[list[str], int]:
    """(names of the floating-point tensors holding NaN or inf, number of tensors looked at)."""
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    bad = [k for k, v in tensors.items() if v.device.type != "meta" and not bool(torch.isfinite(v).all())]
    return bad, len(tensors)


ALLOW_HINT = " (--allow-nonfinite loads it anyway, for debugging)"


def check_finite_weights(
    weights: Mapping[str, torch.Tensor] | torch.nn.Module,
    source: str,
    allow: bool = False,
    hint: str = ALLOW_HINT,
    few: int = 3,
) -> None:
    """Refuse weights holding NaN or inf (a diverged run's checkpoint evaluates at chance without a word).

    Args:
        weights: a model or a state dict.
        source: what the weights are, for the message (``checkpoint run/epoch_3.pt``).
        allow: only warn (``--allow-nonfinite``, for debugging).
        hint: what the message ends with (how to load it anyway).

    Raises:
        CheckpointError: naming the first tensors with non-finite values and how many there are.
    """
    bad, total = nonfinite_tensors(weights)
    if not bad:
        return
    shown = ", ".join(bad[:few]) + (f" (+{len(bad) - few} more)" if len(bad) > few else "")
    message = (
        f"{source} has non-finite values (NaN or inf) in {len(bad)} of its {total} tensors: {shown}; a "
        "diverged training run?"
    )
    if not allow:
        raise CheckpointError(message + hint)
    _logger.warning("%s", message)


def check_checkpoint_finite(
    path: str | os.PathLike[str], allow: bool = False, hint: str = ALLOW_HINT
) -> None:
    """:func:`check_finite_weights` of the model tensors in a checkpoint file (read weights-only, mapped).

    Raises:
        CheckpointError: an unreadable file, or one holding non-finite weights (unless ``allow``).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    else:
        obj = load_checkpoint_file(path, mmap=True)
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    if isinstance(state, dict):
        check_finite_weights(state, f"checkpoint {path}", allow, hint)


def check_model_name(model_name: str) -> None:
    """Raise ConfigError unless ``model_name`` is registered in OpenCLIP, or a ``local-dir:`` / ``hf-hub:`` name
    whose config can be read (an ``hf-hub:`` one from the hub, or from its cache when offline)."""
    import open_clip

    from sparo_clip.models.builder import resolve_model_config
    from sparo_clip.models.registry import sparo_model_names

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :])
        if not (folder / "open_clip_config.json").is_file():
            raise ConfigError(
                f"--model {model_name}: {folder} holds no open_clip_config.json (a save_pretrained folder)"
            )
        return
    if model_name.startswith("hf-hub:"):
        resolve_model_config(model_name)  # one ConfigError line when neither the hub nor its cache has it
        return
    models = open_clip.list_models()
    if model_name.replace("/", "-") in models:
        return
    close = difflib.get_close_matches(model_name, models, n=5, cutoff=0.6)
    hint = f"close names: {close}" if close else f"SPARO models: {sparo_model_names()}"
    raise ConfigError(
        f"--model {model_name!r} is not a registered model (OpenCLIP's registry, {len(models)} models); {hint}"
    )


def check_pretrained(model_name: str, pretrained: str | None) -> None:
    """Raise ConfigError unless ``pretrained`` is None, an existing file, or a pretrained tag of the model."""
    import open_clip

    from sparo_clip.models.builder import check_schema_pretrained

    check_schema_pretrained(model_name, pretrained, "--pretrained")
    if pretrained is None or os.path.isfile(pretrained):
        return
    if os.path.isdir(pretrained):
        raise ConfigError(
            f"--pretrained {pretrained}: is a folder; give a checkpoint file (.pt, .safetensors)"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise ConfigError(
            f"--pretrained {pretrained!r}: no such file, and not a pretrained tag of {model_name!r} (tags: {tags})"
        )


def load_model(
    model_name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    override_config: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
) -> tuple[torch.nn.Module, Callable[[Any], torch.Tensor], Callable[[Sequence[str]], torch.Tensor]]:
    """The one model loader of the evaluation and picture commands: (model in eval mode, eval transform, tokenizer).

    ``override_config`` is deep-merged into the model config (``--override-model-config``, as in training); the
    tokenizer is the one of the text tower the model is built with (:func:`sparo_clip.models.builder.get_tokenizer`).
    ``allow_nonfinite`` loads weights with NaN or inf values with a warning instead of refusing them.

    Raises:
        ConfigError: unknown model name or pretrained tag.
        CheckpointError: a checkpoint file that is missing, empty, not a checkpoint, unsafe, saved from another
            model, or holding non-finite weights.
    """
    from sparo_clip.models.builder import create_model_and_transforms, get_tokenizer

    check_model_name(model_name)
    check_pretrained(model_name, pretrained)
    model, _, preprocess = create_model_and_transforms(
        model_name, pretrained=pretrained, precision=precision, device=device, override_config=override_config
    )
    model.eval()
    source = f"checkpoint {pretrained}" if pretrained else f"model {model_name}"
    check_finite_weights(model, source, allow_nonfinite)
    return model, preprocess, get_tokenizer(model_name, override_config)
