"""Start a SPARO model from a pretrained OpenCLIP checkpoint: load every tensor that fits, report the rest.

``init_from_checkpoint(model, path)`` loads each checkpoint tensor whose name and shape match a model
tensor, and reports what was loaded, what was skipped (and why) and what keeps its fresh initialisation
(the read-outs, and anything else the checkpoint lacks). ViT-B-32 -> ViT-B-32-SPARO loads both towers
except their last blocks and projections. It refuses when too little matches, which means the
checkpoint is of another architecture. Files are read with ``torch.load(weights_only=True)`` (or as
safetensors): loading never runs code from the file.

From the command line: ``sparo-clip train --model ViT-B-32-SPARO --init-from epoch_32.pt ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# OpenCLIP's CLIP keeps its text tower at the top level; CustomTextCLIP-style models (SparoCLIP) under `text.`
_TOP_LEVEL_TEXT = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


@dataclass
class TransferReport:
    """What :func:`init_from_checkpoint` did.

    Attributes:
        loaded: model tensor names filled from the checkpoint.
        skipped: checkpoint tensor name -> why it was not used (no such tensor, or another shape).
        new: model tensor names the checkpoint did not fill (they keep their initialisation).
        loaded_params: number of parameter values loaded.
        total_params: number of parameter values of the model.
    """

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    loaded_params: int = 0
    total_params: int = 0

    @property
    def fraction(self) -> float:
        """Fraction of the model's parameter values that came from the checkpoint."""
        return self.loaded_params / max(self.total_params, 1)

    def summary(self, max_names: int = 8) -> str:
        """A few lines for a log: counts, and the first names of the skipped and new tensors."""

        def names(items: list[str]) -> str:
            shown = ", ".join(items[:max_names])
            return shown + (f", ... (+{len(items) - max_names})" if len(items) > max_names else "")

        return "\n".join(
            [
                f"loaded {len(self.loaded)} tensors ({self.loaded_params:,} of {self.total_params:,} "
                f"parameters, {100 * self.fraction:.1f}%)",
                f"skipped {len(self.skipped)}: {names([f'{k} ({v})' for k, v in self.skipped.items()])}",
                f"newly initialised {len(self.new)}: {names(self.new)}",
            ]
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: an open_clip_train checkpoint, a plain state dict or safetensors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no state dict, or cannot be read (a :class:`CheckpointError`: empty,
            truncated, another format, or objects that would run code on unpickling).
    """
    from sparo_clip.checkpoints.files import load_checkpoint_file
    from sparo_clip.errors import CheckpointError

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    else:
        state = load_checkpoint_file(path)  # weights-only; one clear CheckpointError (a ValueError)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} holds no state dict of tensors")
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def _to_model_layout(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Move a CLIP checkpoint's top-level text tower under ``text.`` when the model keeps it there."""
    if not hasattr(model, "text") or "positional_embedding" not in state:
        return state
    return {("text." + k if k.startswith(_TOP_LEVEL_TEXT) else k): v for k, v in state.items()}


def init_from_checkpoint(
    model: nn.Module,
    checkpoint: str | Path | dict[str, torch.Tensor],
    min_fraction: float = 0.5,
    check_only: bool = False,
) -> TransferReport:
    """Load every tensor of ``checkpoint`` whose name and shape match ``model``'s; report the rest.

    Args:
        model: the model to initialise (e.g. a :class:`~sparo_clip.SparoCLIP`), changed in place.
        checkpoint: a checkpoint file (see :func:`read_state_dict`) or a state dict.
        min_fraction: refuse when fewer than this fraction of the model's parameter values would load.
        check_only: report (and refuse) without loading anything (works on a meta-device model).

    Returns:
        The :class:`TransferReport`.

    Raises:
        ValueError: when too little matches (the checkpoint is of another architecture); nothing is loaded.
    """
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction={min_fraction!r} must be between 0 and 1")
    source = str(checkpoint) if not isinstance(checkpoint, dict) else "the given state dict"
    state = read_state_dict(checkpoint) if not isinstance(checkpoint, dict) else dict(checkpoint)
    state = _to_model_layout(state, model)
    target = model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))
    report = TransferReport(total_params=sum(p.numel() for p in model.parameters()))
    usable = {}
    for key, value in state.items():
        if key not in target:
            report.skipped[key] = "not in the model"
        elif value.shape != target[key].shape:
            report.skipped[key] = f"shape {tuple(value.shape)} != model's {tuple(target[key].shape)}"
        else:
            usable[key] = value
    report.loaded = sorted(usable)
    report.new = sorted(k for k in target if k not in usable)
    seen: set[int] = set()
    for key in usable:
        p = params.get(key)
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            report.loaded_params += p.numel()
    if report.fraction < min_fraction:
        raise ValueError(
            f"{source} fills only {report.loaded_params:,} of the model's {report.total_params:,} parameters "
            f"({100 * report.fraction:.1f}% < {100 * min_fraction:.0f}%): it is a checkpoint of another "
            f"architecture. First skipped: {list(report.skipped.items())[:3]}"
        )
    if not check_only:
        model.load_state_dict(usable, strict=False)
    return report


def check_init_from(
    model_name: str, override: dict[str, Any] | None, checkpoint: str | Path
) -> TransferReport:
    """Check ``checkpoint`` against a registered model built on the meta device (before any training).

    Raises:
        FileNotFoundError / ValueError: as :func:`init_from_checkpoint`; also (a :class:`CheckpointError`) when
            its tensors hold NaN or inf.
    """
    from sparo_clip.checkpoints.loading import check_finite_weights
    from sparo_clip.models.param_count import meta_model

    state = read_state_dict(checkpoint) if not isinstance(checkpoint, dict) else dict(checkpoint)
    report = init_from_checkpoint(meta_model(model_name, override), state, check_only=True)
    check_finite_weights(state, f"checkpoint {checkpoint}", hint="")
    return report
