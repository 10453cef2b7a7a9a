"""Per-slot patch attention of a SPARO-DINO encoder as one PNG (rows: images; columns: the image, then slots).

Uses the project's picture helpers (``sparo_clip.viz``): CLS/patch split, sharpening, patch upsampling and
the red-on-grey overlay, so DINO pictures read like the CLIP ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from sparo_clip import viz
from sparo_clip.dino.evaluation import IMAGENET_MEAN, IMAGENET_STD, dino_eval_transform
from sparo_clip.dino.model import DinoEncoder


@torch.no_grad()
def slot_attention_png(
    encoder: DinoEncoder, image_paths: list[Path], path: str | Path, titles: list[str] | None = None
) -> Path:
    """Render every slot's attention over the patches of each image; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if encoder.readout is None:
        raise ValueError("slot attention pictures need a SPARO-DINO encoder (readout='sparo')")
    transform = dino_eval_transform(encoder.cfg.global_crop_size)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in image_paths])
    _, attn = encoder.eval().slots(images, return_attn=True)  # (B, L, N)
    prefix = encoder.backbone.num_prefix_tokens
    if prefix != 1:  # viz's split expects one class token first; fold other prefix tokens into it
        attn = torch.cat([attn[..., :prefix].sum(-1, keepdim=True), attn[..., prefix:]], dim=-1)
    cls_weight, maps = viz.attention_maps(attn, encoder.grid_size(images))
    pixels = viz.denormalize(images, IMAGENET_MEAN, IMAGENET_STD)
    rows, cols = len(image_paths), encoder.num_slots + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.35 * rows), squeeze=False)
    for b in range(rows):
        axes[b, 0].imshow(pixels[b])
        axes[b, 0].set_title(titles[b] if titles else "image", fontsize=7)
        for slot in range(encoder.num_slots):
            heat = viz.map_to_pixels(viz.display_map(maps[b, slot].numpy()), pixels.shape[1:3])
            ax = axes[b, slot + 1]
            ax.imshow(viz.overlay(pixels[b], heat))
            ax.set_title(f"slot {slot} (cls {float(cls_weight[b, slot]):.2f})", fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor="white")
    plt.close(fig)
    return path
