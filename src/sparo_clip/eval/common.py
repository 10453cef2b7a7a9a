"""What every evaluation shares: options, model loading, encoding into slot tensors, slot selection."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip_train.precision import get_autocast
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..model import SparoCLIP
from ..readout import select_slots

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16", "pure_bf16", "pure_fp16")


class EvalError(ValueError):
    """Bad evaluation input (data layout, options, slot selection); the CLIs report it and exit with 2."""


def common_parser(with_slots: bool = True) -> argparse.ArgumentParser:
    """The options every evaluation command shares (an argparse parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and run")
    g.add_argument(
        "--model", required=True, help="any OpenCLIP model name (incl. SPARO configs, local-dir:DIR)"
    )
    g.add_argument(
        "--pretrained", default=None, help="checkpoint path or OpenCLIP pretrained tag (default: random init)"
    )
    g.add_argument("--precision", default=None, choices=PRECISIONS, help="default: amp on cuda, fp32 on cpu")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--batch-size", type=int, default=64, help="images or texts per forward pass")
    g.add_argument("--workers", type=int, default=4, help="data loader worker processes")
    if with_slots:
        g.add_argument(
            "--slots",
            default=None,
            help="evaluate with only these SPARO slots: a JSON file written by select-slots, or a list like 0,3,7",
        )
    g.add_argument("--output", default=None, help="write the results as JSON to this file")
    return p


def check_common_args(args: argparse.Namespace) -> None:
    """Resolve device/precision defaults and reject impossible values before any work is done."""
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise EvalError(f"--workers must be >= 0, got {args.workers}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise EvalError(f"--device {args.device!r} is not a torch device: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.precision is None:
        args.precision = "amp" if device.type == "cuda" else "fp32"
    if args.pretrained is not None and not os.path.exists(args.pretrained):
        tags = open_clip.list_pretrained_tags_by_model(args.model)
        if args.pretrained not in tags:
            raise EvalError(
                f"--pretrained {args.pretrained!r}: no such file, and not a pretrained tag of {args.model!r} "
                f"(tags: {tags})"
            )


@dataclass
class EvalContext:
    """A loaded model with what is needed to encode images and texts into slot tensors (N, L, V).

    For a SPARO model the slots are ``encode_*(return_sparo=True)``; any other OpenCLIP model is seen as a
    single slot holding its normalised features, so every evaluation has one code path.
    """

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: torch.device
    precision: str
    batch_size: int = 64
    workers: int = 0

    @property
    def is_sparo(self) -> bool:
        return isinstance(self.model, SparoCLIP)

    @property
    def num_slots(self) -> int:
        return self.model.sparo_cfg.num_slots if self.is_sparo else 1

    def autocast(self):
        return get_autocast(self.precision, device_type=self.device.type)()

    def _input_dtype(self) -> torch.dtype | None:
        return open_clip.get_input_dtype(self.precision)

    @torch.inference_mode()
    def image_slots(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, V) float32 on the CPU."""
        images = images.to(device=self.device, dtype=self._input_dtype())
        with self.autocast():
            if self.is_sparo:
                out = self.model.encode_image(images, return_sparo=True)
            else:
                out = self.model.encode_image(images, normalize=True)[:, None, :]
        return out.float().cpu()

    @torch.inference_mode()
    def text_slots(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokenised texts (B, n) -> (B, L, V) float32 on the CPU."""
        tokens = tokens.to(self.device)
        with self.autocast():
            if self.is_sparo:
                out = self.model.encode_text(tokens, return_sparo=True)
            else:
                out = self.model.encode_text(tokens, normalize=True)[:, None, :]
        return out.float().cpu()

    def encode_dataset(self, dataset: Dataset, desc: str) -> torch.Tensor:
        """Encode a map-style dataset of ``(image, index)`` in order: (N, L, V)."""
        loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers, shuffle=False)
        chunks = [self.image_slots(images) for images, _ in tqdm(loader, desc=desc, unit="batch")]
        if not chunks:
            raise EvalError(f"{desc}: no images to encode")
        return torch.cat(chunks)

    def encode_texts(self, texts: Sequence[str], desc: str) -> torch.Tensor:
        """Encode captions in batches: (M, L, V)."""
        chunks = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc=desc, unit="batch"):
            chunks.append(self.text_slots(self.tokenizer(list(texts[start : start + self.batch_size]))))
        return torch.cat(chunks)


def load_context(args: argparse.Namespace) -> EvalContext:
    """Build the model, its eval transform and tokenizer with OpenCLIP's factory."""
    check_common_args(args)
    if args.pretrained is None and not args.model.startswith(("local-dir:", "hf-hub:")):
        logger.warning("no --pretrained given: evaluating %s with randomly initialised weights", args.model)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            args.model, pretrained=args.pretrained, precision=args.precision, device=args.device
        )
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise EvalError(f"cannot create model {args.model!r} (pretrained={args.pretrained!r}): {e}") from e
    model.eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    return EvalContext(
        model, preprocess, tokenizer, torch.device(args.device), args.precision, args.batch_size, args.workers
    )


def parse_slots(value: str | None, num_slots: int, is_sparo: bool = True) -> list[int] | None:
    """Resolve ``--slots``: a JSON file from select-slots or a comma list, validated against the model.

    Returns:
        Sorted unique slot indices, or None when ``value`` is None (all slots).
    """
    if value is None:
        return None
    if not is_sparo:
        raise EvalError("--slots selects SPARO slots; the model is not a SPARO model (it has no slots)")
    if os.path.isfile(value):
        try:
            data = json.loads(Path(value).read_text())
        except json.JSONDecodeError as e:
            raise EvalError(f"--slots {value}: not a JSON file ({e})") from e
        if not isinstance(data, dict) or "selected_slots" not in data:
            raise EvalError(
                f"--slots {value}: expected a JSON object with 'selected_slots' (written by select-slots)"
            )
        if data.get("num_slots", num_slots) != num_slots:
            raise EvalError(
                f"--slots {value} was selected for a model with {data['num_slots']} slots; this model has {num_slots}"
            )
        items = data["selected_slots"]
    else:
        items = [s.strip() for s in value.split(",") if s.strip()]
        if not items:
            raise EvalError(f"--slots {value!r}: neither a file nor a comma-separated list of slot indices")
    try:
        slots = sorted({int(s) for s in items})
    except (TypeError, ValueError) as e:
        raise EvalError(
            f"--slots {value!r}: no such file, and not a comma-separated list of integer slot indices ({items})"
        ) from e
    bad = [s for s in slots if not 0 <= s < num_slots]
    if bad:
        raise EvalError(f"--slots: indices {bad} out of range; this model's slots are 0..{num_slots - 1}")
    if not slots:
        raise EvalError("--slots: the selection is empty; select at least one slot")
    return slots


def slot_mask(slots: Sequence[int] | None, num_slots: int) -> torch.Tensor | None:
    """Slot indices -> (L,) bool mask (None stays None: all slots)."""
    if slots is None:
        return None
    mask = torch.zeros(num_slots, dtype=torch.bool)
    mask[list(slots)] = True
    return mask


def features(slots: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Flat unit-norm features (N, L*V) from slots (N, L, V), keeping only the slots in ``mask``.

    The same as ``encode_*(slots=mask)`` of a SPARO model: unselected slots are zeroed, the rest renormalised.
    """
    if mask is None:
        return F.normalize(slots.flatten(1), dim=-1)
    return select_slots(slots, mask.to(slots.device)).flatten(1)


def write_results(result: dict[str, Any], output: str | None, omit_from_stdout: Sequence[str] = ()) -> None:
    """Print the results as JSON (the CLI's result, less ``omit_from_stdout``) and write them all to ``output``."""
    text = json.dumps(result, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in omit_from_stdout}, indent=2))
    if output:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        logger.info("results written to %s", path)


def data_info(args: argparse.Namespace, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The data options given: everything but the shared model/run options and ``exclude``."""
    shared = {a.dest for a in common_parser(with_slots=True)._actions} | {"task", *exclude}
    return {k: v for k, v in vars(args).items() if k not in shared and v is not None}


def run_info(args: argparse.Namespace, ctx: EvalContext, slots: list[int] | None) -> dict[str, Any]:
    """The header every result JSON starts with."""
    return {
        "model": args.model,
        "pretrained": args.pretrained,
        "precision": args.precision,
        "num_slots": ctx.num_slots if ctx.is_sparo else None,
        "slots": slots,
    }
