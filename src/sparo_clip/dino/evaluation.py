"""How the evaluation commands see a DINO / SPARO-DINO checkpoint: ``--model dino:CKPT`` in ``sparo-clip eval knn``
and ``linear`` (the teacher's encoder, as DINO evaluates), registered into :mod:`sparo_clip.eval.encoders`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from open_clip_train.precision import get_autocast
from torchvision import transforms

from sparo_clip.dino.model import load_encoder
from sparo_clip.eval.common import ModelSpec
from sparo_clip.eval.encoders import ImageEncoder, register_image_encoder

PREFIX = "dino"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dino_eval_transform(size: int) -> Callable:
    """DINO's evaluation transform: resize to size * 256/224 (bicubic), centre crop, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def dino_image_encoder(path: str, spec: ModelSpec) -> ImageEncoder:
    """The teacher encoder of the DINO checkpoint ``path`` on ``spec.device`` (CheckpointError for a bad file)."""
    device = torch.device(spec.device)
    encoder = load_encoder(path, allow_nonfinite=spec.allow_nonfinite).to(device)
    autocast = get_autocast(spec.precision, device_type=device.type)

    @torch.inference_mode()
    def encode(images: torch.Tensor) -> torch.Tensor:
        with autocast():
            return encoder.slots(images.to(device)).float().cpu()

    return ImageEncoder(
        encode,
        dino_eval_transform(encoder.cfg.global_crop_size),
        encoder.num_slots,
        encoder.readout is not None,
        device,
        weights=path,
        identity=[f"{PREFIX}:{path}", spec.precision],
    )


register_image_encoder(PREFIX, dino_image_encoder)
