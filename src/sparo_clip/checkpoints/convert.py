"""Convert checkpoints of the reference implementation (the authors' OpenCLIP 2.20 fork) to ours.

The reference layout this converter reads (a ``CLIP`` with SPARO read-outs; see docs/architecture.md):

| reference key | ours | shape |
|---|---|---|
| ``visual.<tower>`` (conv1, class_embedding, ..., ln_post; no ``proj``) | same | same |
| ``visual.sparo.query`` | ``image_readout.query`` | 5-D, the (heads, L / heads, d) queries with singleton dims for broadcasting, e.g. (1, H, L/H, 1, d) |
| ``visual.sparo.key.{weight,bias}`` | ``image_readout.key.*`` | (H * d, width), (H * d) |
| ``visual.sparo.value.{weight,bias}`` (``share_kv=false`` only) | ``image_readout.value.*`` | (H * value_dim, width) |
| ``visual.sparo.out.{weight,bias}`` | ``image_readout.out.*`` | (V [+ 1], value_dim) |
| ``token_embedding``, ``positional_embedding``, ``transformer.*``, ``ln_final`` (top level; no ``text_projection``) | ``text.<same>`` | same |
| ``text_sparo.*`` (as ``visual.sparo.*``; no ``query`` with ``share_queries``) | ``text_readout.*`` | as above |
| ``logit_scale`` (``logit_bias``) | same | same |

The conversion is exact (names and reshapes only) and strict: every reference tensor must find its place
and every tensor of the target model must be filled, or it stops naming the keys. Files are read with
``torch.load(weights_only=True)``.

CLI: ``python -m sparo_clip.checkpoints.convert REF.pt OUT.pt --model ViT-B-32-SPARO`` (also ``sparo-clip convert``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparo_clip.checkpoints.transfer import read_state_dict
from sparo_clip.errors import CheckpointError, WriteError

_PREFIXES = {"visual.sparo.": "image_readout.", "text_sparo.": "text_readout."}
_TOP_LEVEL_TEXT = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")


def _our_name(key: str) -> str:
    for theirs, ours in _PREFIXES.items():
        if key.startswith(theirs):
            return ours + key.removeprefix(theirs)
    return "text." + key if key.startswith(_TOP_LEVEL_TEXT) else key


def _query(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A reference query tensor (5-D, singleton dims for broadcasting) as ours (heads, L / heads, d).

    Returned unchanged when its dims other than the singletons differ from ours (reported as a shape error).
    """
    core = [s for s in value.shape if s != 1]
    if value.ndim != 5 or core != [s for s in target.shape if s != 1]:
        return value
    return value.reshape(target.shape)


def convert_reference_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict for ``model`` (a SparoCLIP of the same config) from a reference state dict.

    Raises:
        ValueError: a reference tensor with no place in ``model``, a shape that differs, or a model tensor
            the checkpoint does not fill.
    """
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown, shapes = [], []
    for key, value in state.items():
        ours = _our_name(key)
        if ours not in target:
            unknown.append(key)
            continue
        if ours.endswith("readout.query"):
            value = _query(value, target[ours])
        if value.shape != target[ours].shape:
            shapes.append(f"{key} {tuple(value.shape)} -> {ours} {tuple(target[ours].shape)}")
            continue
        out[ours] = value
    shared = getattr(getattr(model, "sparo_cfg", None), "share_queries", False)
    if shared and "text_readout.query" not in out and "image_readout.query" in out:
        out["text_readout.query"] = out["image_readout.query"]  # one parameter in the reference
    missing = sorted(set(target) - set(out))
    if unknown or shapes or missing:
        raise ValueError(
            "the checkpoint does not match the model's config: "
            + "; ".join(
                f"{what}: {items[:6]}{' ...' if len(items) > 6 else ''}"
                for what, items in (("unknown keys", unknown), ("shapes", shapes), ("missing", missing))
                if items
            )
        )
    return out


def convert_file(
    src: str | Path, dst: str | Path, model_name: str, override: dict[str, Any] | None = None
) -> nn.Module:
    """Convert ``src`` for the registered config ``model_name``; write ``dst`` (.pt or .safetensors).

    Returns:
        The model with the converted weights loaded (strictly).
    """
    from sparo_clip.checkpoints.files import atomic_save
    from sparo_clip.inputs import check_output_file
    from sparo_clip.models.builder import create_model

    if Path(src).is_dir():
        raise CheckpointError(f"checkpoint {src} is a folder; give the reference checkpoint file")
    if not Path(src).is_file():
        raise CheckpointError(f"checkpoint {src} does not exist")
    check_output_file(dst, "output")  # before the model is built and the checkpoint read
    model = create_model(model_name, override_config=override)
    converted = convert_reference_state_dict(read_state_dict(src), model)
    model.load_state_dict(converted, strict=True)
    dst = Path(dst)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        try:
            save_file(state, str(dst))
        except OSError as e:
            raise WriteError(f"cannot write {dst}: {e.strerror or e}") from e
    else:
        atomic_save({"state_dict": state}, dst)
    return model
