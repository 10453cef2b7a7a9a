"""Multi-crop views made on tensors, for small images that fit in memory once decoded.

DINO's multi-crop (two global and several local random resized crops per image, each flipped at random) costs
more in Python per view than a tiny ViT's step on two CPU cores. Here the training images are decoded once
into a uint8 tensor (N, 3, S, S), and every view of a whole batch is one ``grid_sample`` of an affine grid per
image (crop box and flip), so a batch of views costs a few tensor operations. Crops follow torchvision's
``RandomResizedCrop`` rule (area share in ``scale``, aspect ratio log-uniform in [3/4, 4/3]); brightness,
contrast, saturation and hue jitter (DINO's strengths, in a random order per view, as torchvision's
``ColorJitter``), greyscale and solarisation are optional per-view tensor operations. Every draw
comes from a generator seeded by (seed, step), so a step's views are the same for any number of processes and
after a resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sparo_clip.errors import DataError, UnreadableImage
from sparo_clip.inputs import read_image

logger = logging.getLogger(__name__)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def decode_images(paths: Sequence[Path], size: int, strict: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Decode every image once, resized to ``size`` x ``size``: (N, 3, size, size) uint8, and the skipped files.

    Raises:
        DataError: with ``strict``, at the first unreadable image; without it, when none can be read.
    """
    from torchvision.transforms.functional import pil_to_tensor

    images, skipped = [], []
    for path in paths:
        try:
            img = read_image(path)
        except UnreadableImage as e:
            if strict:
                raise DataError(f"{e} (--strict; without it unreadable images are skipped)") from e
            logger.warning("skipping unreadable image: %s", e)
            skipped.append(str(e))
            continue
        if img.size != (size, size):
            img = img.resize((size, size))
        images.append(pil_to_tensor(img))
    if not images:
        raise DataError(f"none of the {len(paths)} training images can be read (first: {skipped[0]})")
    return torch.stack(images), skipped


@dataclass(frozen=True)
class CropCfg:
    """What the views of a step are made of (DINO's defaults: crops 0.4-1.0 and 0.05-0.4 of the area)."""

    global_size: int
    local_size: int
    local_crops: int
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    flip: float = 0.5
    jitter: float = 0.0  # probability of DINO's colour jitter (brightness, contrast, saturation, hue: JITTER)
    grayscale: float = 0.0
    solarize: float = 0.0


def _boxes(n: int, scale: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """(n, 4) crop boxes (x0, y0, w, h) as shares of the image side, by RandomResizedCrop's rule."""
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=gen)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    x0 = torch.rand(n, generator=gen) * (1 - w)
    y0 = torch.rand(n, generator=gen) * (1 - h)
    return torch.stack([x0, y0, w, h], dim=1)


def crop_views(images: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Resample each image's box to ``size`` x ``size`` (bilinear), mirrored where ``flip``: (B, 3, size, size).

    Args:
        images: (B, 3, S, S) float in [0, 1].
        boxes: (B, 4) (x0, y0, w, h) in shares of the side.
        flip: (B,) bool.
    """
    b = images.shape[0]
    x0, y0, w, h = boxes.unbind(1)
    sx = torch.where(flip, -w, w)  # a mirrored view samples the box right to left
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, 2 * x0 + w - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * y0 + h - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# DINO's colour jitter (torchvision ColorJitter(0.4, 0.4, 0.2, 0.1), as lightly's DINOTransform builds it):
# brightness, contrast and saturation factors uniform in [1 - s, 1 + s], hue shift uniform in [-0.1, 0.1] turns.
JITTER = (0.4, 0.4, 0.2, 0.1)
_LUMA = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)  # torchvision's rgb_to_grayscale


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * _LUMA).sum(1, keepdim=True)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by ``shift`` turns (B,), in HSV, as ``torchvision``'s ``adjust_hue`` on tensors.

    RGB -> HSV (hue in turns), hue + shift mod 1, -> RGB; value and saturation are unchanged, so greys stay.
    """
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    low, _ = x.min(1)
    chroma = value - low
    saturation = torch.where(value > 0, chroma / value.clamp(min=1e-12), torch.zeros_like(value))
    c = chroma.clamp(min=1e-12)
    hue = torch.where(
        value == r, ((g - b) / c) % 6, torch.where(value == g, (b - r) / c + 2, (r - g) / c + 4)
    )
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    sector = hue * 6
    k = torch.stack([(5 + sector) % 6, (3 + sector) % 6, (1 + sector) % 6], dim=1)  # r, g, b
    return value.unsqueeze(1) - (value * saturation).unsqueeze(1) * (torch.minimum(k, 4 - k).clamp(0, 1))


def jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (ops 0-3) with ``factors`` (B, 4), in each view's ``order`` (B, 4).

    Each op is torchvision's on float images: brightness scales, contrast blends with the mean grey level,
    saturation blends with the grey image, each clamped to [0, 1]; hue shifts by ``factors[:, 3]`` turns.
    """
    x = x.clone()
    for position in range(4):
        for op in range(4):
            # the views whose op at this position is op
            index = (order[:, position] == op).nonzero().flatten()
            if index.numel() == 0:
                continue
            v, f = x[index], factors[index, op].view(-1, 1, 1, 1)
            if op == 0:
                v = v * f
            elif op == 1:
                v = f * v + (1 - f) * _gray(v).mean((2, 3), keepdim=True)
            elif op == 2:
                v = f * v + (1 - f) * _gray(v)
            else:
                v = shift_hue(v, f.flatten())
            x[index] = v.clamp(0, 1)
    return x


def _colour(views: torch.Tensor, cfg: CropCfg, gen: torch.Generator) -> torch.Tensor:
    b = views.shape[0]
    if cfg.jitter > 0:
        on = torch.rand(b, generator=gen) < cfg.jitter
        strength = torch.tensor(JITTER)
        factors = torch.empty(b, 4).uniform_(-1, 1, generator=gen) * strength + torch.tensor(
            [1.0, 1.0, 1.0, 0.0]
        )
        order = torch.rand(b, 4, generator=gen).argsort(dim=1)  # each view its own order, as ColorJitter
        # every draw is made for the whole batch; only the views drawn "on" are jittered
        views = views.clone()
        views[on] = jitter(views[on], factors[on], order[on])
    if cfg.grayscale > 0:
        on = (torch.rand(b, generator=gen) < cfg.grayscale).view(b, 1, 1, 1)
        views = torch.where(on, _gray(views).expand_as(views), views)
    if cfg.solarize > 0:
        on = (torch.rand(b, generator=gen) < cfg.solarize).view(b, 1, 1, 1)
        views = torch.where(on & (views >= 0.5), 1 - views, views)
    return views


def multi_crop(images: torch.Tensor, cfg: CropCfg, gen: torch.Generator) -> list[torch.Tensor]:
    """The views of a batch: 2 global then ``local_crops`` local, each (B, 3, size, size), normalised.

    Args:
        images: (B, 3, S, S) uint8.
        gen: the step's generator (every draw comes from it, in a fixed order).
    """
    x = images.float() / 255
    b = x.shape[0]
    views = []
    for size, scale, count in (
        (cfg.global_size, cfg.global_scale, 2),
        (cfg.local_size, cfg.local_scale, cfg.local_crops),
    ):
        for _ in range(count):
            boxes = _boxes(b, scale, gen)
            flip = torch.rand(b, generator=gen) < cfg.flip
            v = _colour(crop_views(x, boxes, flip, size), cfg, gen)
            views.append((v - MEAN) / STD)
    return views
