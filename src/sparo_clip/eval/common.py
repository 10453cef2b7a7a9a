"""What every evaluation shares: options, model loading, encoding into slot tensors, slot selection."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip_train.precision import get_autocast
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sparo_clip import inputs
from sparo_clip.checkpoints import loading
from sparo_clip.errors import ConfigError, DataError, SparoClipError, WriteError, one_line
from sparo_clip.models.readout import select_slots
from sparo_clip.models.sparo import SparoCLIP

logger = logging.getLogger(__name__)

MAX_LISTED_SKIPPED = 20  # skipped files named in a result JSON (the count is always complete)
PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16", "pure_bf16", "pure_fp16")


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
    g.add_argument(
        "--override-model-config",
        dest="override",
        default=None,
        help="JSON (or @file.json) deep-merged into the model config, as the model was trained with",
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
    g.add_argument(
        "--strict",
        action="store_true",
        help="stop with an error at the first unreadable image instead of skipping it with a warning",
    )
    g.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load weights holding NaN or inf (refused by default: they evaluate at chance), for debugging",
    )
    return p


@dataclass
class ModelSpec:
    """The model an evaluation loads and how it runs; the command line builds it (:meth:`from_args`).

    Attributes:
        model: an OpenCLIP model name (SPARO configs, ``local-dir:DIR``, ``hf-hub:org/name``) or an image encoder
            named by a registered prefix (``dino:CKPT``; :mod:`sparo_clip.eval.encoders`).
        pretrained: checkpoint file or pretrained tag (None: random weights).
        override: ``--override-model-config`` as given (JSON or ``@file.json``), deep-merged into the config.
        precision: OpenCLIP precision name; None: ``amp`` on CUDA, ``fp32`` on the CPU.
        device: torch device; None: CUDA when available, else the CPU.
        batch_size: images or texts per forward pass.
        workers: data loader worker processes.
        strict: stop at the first unreadable image instead of skipping it with a warning.
        allow_nonfinite: load weights holding NaN or inf with a warning instead of refusing them.
    """

    model: str
    pretrained: str | None = None
    override: str | None = None
    precision: str | None = None
    device: str | None = None
    batch_size: int = 64
    workers: int = 0
    strict: bool = False
    allow_nonfinite: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelSpec:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})

    def resolved(self, registered_model: bool = True) -> ModelSpec:
        """A copy with device and precision filled in, every value checked (one :class:`ConfigError` line).

        Args:
            registered_model: whether ``model`` must be an OpenCLIP model (False for a prefixed encoder).
        """
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        device = inputs.check_device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        precision = self.precision or ("amp" if device.type == "cuda" else "fp32")
        if registered_model:
            loading.check_model_name(self.model)
            loading.check_pretrained(self.model, self.pretrained)
            inputs.parse_override(self.override)
        elif self.override is not None:
            raise ConfigError(
                f"--override-model-config does not apply to {self.model!r} (not an OpenCLIP model)"
            )
        return dataclasses.replace(self, device=str(device), precision=precision)

    def override_config(self) -> dict[str, Any] | None:
        """The parsed ``--override-model-config`` (None: none given)."""
        return inputs.parse_override(self.override)


@dataclass
class EncodedImages:
    """Slots (N, L, V) of the readable images, their dataset indices, and ``"image PATH cannot be read: ..."``
    for each skipped one."""

    slots: torch.Tensor
    kept: list[int]
    skipped: list[str] = field(default_factory=list)


def encode_image_dataset(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    desc: str,
    batch_size: int = 64,
    workers: int = 0,
    strict: bool = False,
) -> EncodedImages:
    """Encode a map-style dataset of ``(image, index)`` in order with ``encode`` (images -> slots), skipping
    the unreadable images.

    The dataset yields ``(reason, index)`` for a file it cannot read (:class:`~.folders.ImageList` does): it is
    skipped with a warning naming it, or, with ``strict``, stops the run with that reason.
    """
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, shuffle=False, collate_fn=_collate
    )
    chunks, kept, skipped = [], [], []
    for images, index, failures in tqdm(loader, desc=desc, unit="batch"):
        for reason in failures:
            if strict:
                raise DataError(f"{reason} (--strict; without it unreadable images are skipped)")
            logger.warning("skipping unreadable image: %s", reason)
            skipped.append(reason)
        if images is not None:
            chunks.append(encode(images))
            kept += index
    if not chunks:
        raise DataError(f"{desc}: no readable images to encode ({len(skipped)} skipped)")
    return EncodedImages(torch.cat(chunks), kept, skipped)


def _collate(batch: list[tuple[Any, int]]) -> tuple[torch.Tensor | None, list[int], list[str]]:
    """Stack the readable images of a batch; the failures (a reason instead of an image) come apart."""
    good = [(x, i) for x, i in batch if not isinstance(x, str)]
    failures = [x for x, _ in batch if isinstance(x, str)]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], failures


def skipped_report(skipped: Sequence[str]) -> dict[str, Any]:
    """The result JSON's record of skipped images: the full count and the first few reasons."""
    return {"count": len(skipped), "files": list(skipped[:MAX_LISTED_SKIPPED])}


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
    strict: bool = False

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

    def encode_images(self, dataset: Dataset, desc: str) -> EncodedImages:
        """Encode a map-style dataset of ``(image, index)`` in order, skipping unreadable images.

        The dataset yields ``(reason, index)`` for a file it cannot read (:class:`~.folders.ImageList`
        does): it is skipped with a warning naming it, or, with ``strict``, stops the run with that reason.
        """
        return encode_image_dataset(
            self.image_slots, dataset, desc, self.batch_size, self.workers, self.strict
        )

    def encode_dataset(self, dataset: Dataset, desc: str) -> torch.Tensor:
        """Encode every image of a map-style dataset of ``(image, index)`` in order: (N, L, V).

        For evaluations whose samples refer to images by position (pairs, triplets): an unreadable image
        is an error naming the file, since skipping it would change what the other samples refer to.
        """
        enc = self.encode_images(dataset, desc)
        if enc.skipped:
            raise DataError(
                f"{desc}: {len(enc.skipped)} unreadable image(s), first: {enc.skipped[0]}; this evaluation "
                "cannot skip images (other samples refer to them): replace or remove them"
            )
        return enc.slots

    def encode_texts(self, texts: Sequence[str], desc: str) -> torch.Tensor:
        """Encode captions in batches: (M, L, V)."""
        chunks = []
        for start in tqdm(range(0, len(texts), self.batch_size), desc=desc, unit="batch"):
            chunks.append(self.text_slots(self.tokenizer(list(texts[start : start + self.batch_size]))))
        return torch.cat(chunks)


def load_context(spec: ModelSpec) -> EvalContext:
    """Build the model, its eval transform and tokenizer (:func:`sparo_clip.checkpoints.loading.load_model`)."""
    spec = spec.resolved()
    if spec.pretrained is None and not spec.model.startswith(("local-dir:", "hf-hub:")):
        logger.warning("no --pretrained given: evaluating %s with randomly initialised weights", spec.model)
    try:
        model, preprocess, tokenizer = loading.load_model(
            spec.model,
            spec.pretrained,
            precision=spec.precision,
            device=spec.device,
            override_config=spec.override_config(),
            allow_nonfinite=spec.allow_nonfinite,
        )
    except (RuntimeError, FileNotFoundError) as e:
        if isinstance(e, SparoClipError):
            raise
        raise ConfigError(f"cannot create model {spec.model!r} (pretrained={spec.pretrained!r}): {e}") from e
    return EvalContext(
        model, preprocess, tokenizer, torch.device(spec.device), spec.precision, spec.batch_size, spec.workers,
        spec.strict,
    )  # fmt: skip


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
        except OSError as e:  # checked before the work; a disk can still fill up since
            raise WriteError(f"cannot write {path}: {e.strerror or e} (the results are printed above)") from e
        logger.info("results written to %s", path)


def data_info(args: argparse.Namespace, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The data options given: everything but the shared model/run options and ``exclude``."""
    shared = {a.dest for a in common_parser(with_slots=True)._actions} | {"task", *exclude}
    return {k: v for k, v in vars(args).items() if k not in shared and v is not None}


def run_info(spec: ModelSpec, ctx: EvalContext, slots: list[int] | None) -> dict[str, Any]:
    """The header every result JSON starts with."""
    override = {"override_model_config": spec.override_config()} if spec.override else {}
    return {
        "model": spec.model,
        "pretrained": spec.pretrained,
        **override,
        "precision": ctx.precision,
        "num_slots": ctx.num_slots if ctx.is_sparo else None,
        "slots": slots,
    }


def run_command(
    prog: str, compute: Callable[[], dict[str, Any]], write: Callable[[dict[str, Any]], None]
) -> int:
    """Exit status of an evaluation command: 2 when its input is wrong (nothing written), 1 when its result
    cannot be written, else 0; either error is one line on stderr, prefixed with ``prog``."""
    try:
        result = compute()
    except SparoClipError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        write(result)
    except SparoClipError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0
