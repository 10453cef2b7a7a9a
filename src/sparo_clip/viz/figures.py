"""Slot pictures with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend).

Two kinds of figure, both sized in whole pixels so their size is known before drawing:
- a pair figure: one row per slot (the image with the slot's patch attention as a red overlay on a grey
  copy, the CLS weight in the row title, and the caption's tokens shaded by the slot's text attention);
- a slot gallery: the pairs that agree most on one slot, one column each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from sparo_clip.viz.samples import EOT_LABEL, SOT_LABEL, SlotReadout, display_map, map_to_pixels

HEAT_ALPHA = 0.8  # opacity of the red overlay at the strongest patch
_GREY, _RED = np.array([0.5, 0.5, 0.5]), np.array([1.0, 0.0, 0.0])
HEAT_CMAP = LinearSegmentedColormap.from_list(
    "sparo_heat", [_GREY, _GREY * (1 - HEAT_ALPHA) + _RED * HEAT_ALPHA]
)
TOKEN_CMAP = LinearSegmentedColormap.from_list("sparo_tokens", ["#ffffff", "#d62728"])

# layout in inches
_MARGIN, _TITLE, _ROW, _IMG, _COLORBARS, _TOKENS_W, _GAP = 0.25, 0.75, 2.1, 1.6, 0.75, 5.0, 0.35
_COL_IMG, _COL_TOKENS, _COL_TITLE, _GALLERY_TITLE = 1.9, 1.4, 0.45, 0.4


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """Red heat over a grey copy of ``image``.

    Args:
        image: (H, W, 3) floats in [0, 1].
        heat: (H, W) floats in [0, 1] (pixel-level, e.g. from :func:`map_to_pixels`).
        alpha: the red's opacity where heat is 1.

    Returns:
        (H, W, 3) floats in [0, 1].
    """
    grey = image @ np.array([0.299, 0.587, 0.114])  # luminance, (H, W)
    a = alpha * np.clip(heat, 0, 1)[..., None]
    return grey[..., None] * (1 - a) + _RED * a


@dataclass(frozen=True)
class FigureLayout:
    """A figure's size in whole pixels at ``dpi``."""

    width_px: int
    height_px: int
    dpi: int

    def figure(self) -> Figure:
        fig = Figure(figsize=(self.width_px / self.dpi, self.height_px / self.dpi), dpi=self.dpi)
        FigureCanvasAgg(fig)
        return fig

    def axes(self, fig: Figure, left: float, top: float, width: float, height: float):
        """Axes at a box given in inches from the figure's top-left corner."""
        w, h = self.width_px / self.dpi, self.height_px / self.dpi
        return fig.add_axes((left / w, 1 - (top + height) / h, width / w, height / h))


def _img_width(image_hw: Sequence[int], height: float) -> float:
    return height * image_hw[1] / image_hw[0]


def pair_figure_layout(num_slots: int, image_hw: Sequence[int], dpi: int = 100) -> FigureLayout:
    """The size of a pair figure with ``num_slots`` rows for images of ``image_hw`` = (H, W)."""
    width = 2 * _MARGIN + _img_width(image_hw, _IMG) + _GAP + _TOKENS_W
    height = _TITLE + num_slots * _ROW + _COLORBARS
    return FigureLayout(round(width * dpi), round(height * dpi), dpi)


def gallery_figure_layout(num_pairs: int, image_hw: Sequence[int], dpi: int = 100) -> FigureLayout:
    """The size of a slot gallery with ``num_pairs`` columns for images of ``image_hw`` = (H, W)."""
    col = max(_img_width(image_hw, _COL_IMG), 2.4)
    width = 2 * _MARGIN + num_pairs * col + (num_pairs - 1) * _GAP
    height = _GALLERY_TITLE + _COL_TITLE + _COL_IMG + _COL_TOKENS + _COLORBARS
    return FigureLayout(round(max(width, 6.0) * dpi), round(height * dpi), dpi)


def _escape(s: str) -> str:
    return s.replace("$", r"\$")


def _fit(text: str, width_in: float, fontsize: float) -> str:
    """Shorten ``text`` to one line of about ``width_in`` inches (the tokens below show it whole)."""
    chars = max(int(width_in * 72 / (0.6 * fontsize)), 10)
    return text if len(text) <= chars else text[: chars - 3].rstrip() + "..."


def _draw_heat(ax, readout: SlotReadout, pair: int, slot: int, sharpen: float) -> None:
    image = readout.images[pair]
    heat = display_map(readout.patch_maps[pair, slot], sharpen)
    heat = map_to_pixels(heat, image.shape[:2], readout.patch_size)
    ax.imshow(overlay(image, heat), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_tokens(ax, tokens: Sequence[str], weights: np.ndarray, max_font: float = 10.0) -> None:
    """Caption tokens left to right, wrapped, each shaded by ``weights / max(weights)`` with its weight below.

    The font shrinks (down to 5 pt) until the tokens fit the axes.
    """
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(tokens),):
        raise ValueError(f"need one weight per token: {len(tokens)} tokens, weights of shape {weights.shape}")
    peak = weights.max() if weights.size and weights.max() > 0 else 1.0
    px_per_pt = fig.dpi / 72
    labels = [_escape(t.strip() or "·") for t in tokens]
    word_end = [t != t.rstrip() or t in (SOT_LABEL, EOT_LABEL) for t in tokens]

    def place(size: float, force: bool = False) -> list[tuple[float, float]] | None:
        prop = FontProperties(size=size)
        pad, word_gap = 3 * px_per_pt, 0.6 * size * px_per_pt
        line_h = 2.4 * size * px_per_pt  # token box + weight line
        x, y, spots = 0.0, 0.0, []
        for label, end in zip(labels, word_end, strict=True):
            w = renderer.get_text_width_height_descent(label, prop, ismath=False)[0] + 2 * pad
            if x > 0 and x + w > box.width:
                x, y = 0.0, y + line_h
            spots.append((x + pad, y))
            x += w + (word_gap if end else 1.0)
        return spots if force or y + line_h <= box.height else None

    size = max_font
    spots = place(size)
    while spots is None and size > 5:
        size -= 1
        spots = place(size)
    spots = spots or place(size, force=True)  # smallest font; may overflow
    for (x, y), label, w in zip(spots, labels, weights, strict=True):  # type: ignore[arg-type]
        shade = w / peak
        fx, fy = x / box.width, 1 - y / box.height
        ax.text(
            fx, fy, label, fontsize=size, va="top", ha="left", color="white" if shade > 0.6 else "black",
            bbox={"boxstyle": "square,pad=0.2", "facecolor": TOKEN_CMAP(shade), "edgecolor": "#bbbbbb",
                  "linewidth": 0.5},
        )  # fmt: skip
        ax.text(fx, fy - 1.3 * size * px_per_pt / box.height, f"{w:.2f}", fontsize=0.7 * size,
                va="top", ha="left", color="#555555")  # fmt: skip


def _colorbars(fig: Figure, layout: FigureLayout, sharpen: float) -> None:
    width_in = layout.width_px / layout.dpi
    top = layout.height_px / layout.dpi - _COLORBARS + 0.2
    bar_w = (width_in - 2 * _MARGIN - _GAP) / 2
    cax = layout.axes(fig, _MARGIN, top, bar_w, 0.15)
    fig.colorbar(ScalarMappable(Normalize(0, 1), HEAT_CMAP), cax=cax, orientation="horizontal")
    cax.set_title(f"patch attention / max, ^{sharpen:g} (red overlay)", fontsize=8)
    cax.tick_params(labelsize=7)
    tax = layout.axes(fig, _MARGIN + bar_w + _GAP, top, bar_w, 0.15)
    fig.colorbar(ScalarMappable(Normalize(0, 1), TOKEN_CMAP), cax=tax, orientation="horizontal")
    tax.set_title("token attention / max (weight under each token)", fontsize=8)
    tax.tick_params(labelsize=7)


def _slot_title(readout: SlotReadout, pair: int, slot: int) -> str:
    return (
        f"slot {slot} · agreement {float(readout.agreement[pair, slot]):.2f} · "
        f"CLS {float(readout.cls_weight[pair, slot]):.2f}"
    )


def render_pair(
    readout: SlotReadout, pair: int, path: str | Path, top_k: int = 3, sharpen: float = 2.0, dpi: int = 100
) -> Path:
    """Write the pair figure of ``pair``: its ``top_k`` slots by agreement (see ``SlotReadout.pair_slots``)."""
    slots, filtered = readout.pair_slots(pair, top_k)
    image_hw = readout.images.shape[1:3]
    layout = pair_figure_layout(len(slots), image_hw, dpi)
    fig = layout.figure()
    note = "" if filtered else "  [no slot passed the filters: unfiltered]"
    fig.suptitle(
        f"{_escape(readout.names[pair])}: top {len(slots)} slots by image-text agreement{note}\n"
        f"“{_escape(_fit(readout.captions[pair], layout.width_px / dpi - 2 * _MARGIN, 10))}”",
        fontsize=10, y=1 - 0.1 / (layout.height_px / dpi), va="top",
    )  # fmt: skip
    img_w = _img_width(image_hw, _IMG)
    for row, slot in enumerate(slots):
        top = _TITLE + row * _ROW + 0.3
        ax = layout.axes(fig, _MARGIN, top, img_w, _IMG)
        _draw_heat(ax, readout, pair, slot, sharpen)
        ax.set_title(_slot_title(readout, pair, slot), fontsize=9, loc="left")
        tax = layout.axes(fig, _MARGIN + img_w + _GAP, top, _TOKENS_W, _IMG)
        draw_tokens(tax, readout.tokens[pair], readout.token_weights[pair][slot].numpy())
    _colorbars(fig, layout, sharpen)
    return _save(fig, path)


def render_slot_gallery(
    readout: SlotReadout,
    slot: int,
    path: str | Path,
    pairs: Sequence[int] | None = None,
    num_pairs: int = 6,
    sharpen: float = 2.0,
    dpi: int = 100,
    title: str = "",
) -> Path:
    """Write the gallery of ``slot``: the pairs that agree most on it (or ``pairs``), one column each."""
    pairs = list(pairs) if pairs is not None else readout.slot_pairs(slot, num_pairs)
    if not pairs:
        raise ValueError(f"slot {slot}: no pairs to show")
    image_hw = readout.images.shape[1:3]
    layout = gallery_figure_layout(len(pairs), image_hw, dpi)
    fig = layout.figure()
    mean = float(readout.agreement[:, slot].mean())
    fig.suptitle(
        title or f"slot {slot}: the {len(pairs)} pairs that agree most on it (mean agreement {mean:.2f})",
        fontsize=10, y=1 - 0.1 / (layout.height_px / dpi), va="top",
    )  # fmt: skip
    col = max(_img_width(image_hw, _COL_IMG), 2.4)
    img_w = _img_width(image_hw, _COL_IMG)
    for c, pair in enumerate(pairs):
        left = _MARGIN + c * (col + _GAP)
        ax = layout.axes(fig, left + (col - img_w) / 2, _GALLERY_TITLE + _COL_TITLE, img_w, _COL_IMG)
        _draw_heat(ax, readout, pair, slot, sharpen)
        name = readout.names[pair]
        name = name if len(name) <= 24 else name[:21] + "..."
        ax.set_title(
            f"{_escape(name)}\nagreement {float(readout.agreement[pair, slot]):.2f} · "
            f"CLS {float(readout.cls_weight[pair, slot]):.2f}",
            fontsize=8,
        )
        tax = layout.axes(fig, left, _GALLERY_TITLE + _COL_TITLE + _COL_IMG + 0.1, col, _COL_TOKENS - 0.1)
        draw_tokens(tax, readout.tokens[pair], readout.token_weights[pair][slot].numpy(), max_font=9)
    _colorbars(fig, layout, sharpen)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, facecolor="white")
    return path
