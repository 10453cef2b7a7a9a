"""Slot attention pictures: which image patches and caption tokens each SPARO slot reads.

Data API (for notebooks)::

    from sparo_clip import viz

    from sparo_clip.checkpoints.files import loading

    model, preprocess, tokenizer = loading.load_model("tiny-SPARO", "ckpt.pt")
    readout = viz.compute_readout(model, images, captions, tokenizer)
    readout.agreement        # (B, L) image-text cosine per slot
    readout.patch_maps       # (B, L, grid_h, grid_w) attention over patches; readout.cls_weight (B, L)
    readout.tokens, readout.token_weights  # decoded tokens and (L, n_tokens) weights per caption
    viz.render_pair(readout, 0, "pair.png")

Command line: ``sparo-clip viz --help`` (:func:`main`).
"""

from sparo_clip.viz.cli import main
from sparo_clip.viz.figures import (
    draw_tokens,
    gallery_figure_layout,
    overlay,
    pair_figure_layout,
    render_pair,
    render_slot_gallery,
)
from sparo_clip.viz.samples import (
    SlotReadout,
    attention_maps,
    caption_tokens,
    compute_readout,
    decode_tokens,
    denormalize,
    display_map,
    map_to_pixels,
    slot_agreement,
    valid_slots,
)

__all__ = [
    "SlotReadout",
    "attention_maps",
    "caption_tokens",
    "compute_readout",
    "decode_tokens",
    "denormalize",
    "display_map",
    "draw_tokens",
    "gallery_figure_layout",
    "main",
    "map_to_pixels",
    "overlay",
    "pair_figure_layout",
    "render_pair",
    "render_slot_gallery",
    "slot_agreement",
    "valid_slots",
]
