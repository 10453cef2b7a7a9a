"""Drawing scenes with PIL and encoding them as byte-stable PNG files."""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw

from sparo_clip.data.world import BACKGROUND, PALETTE, Obj, Scene, WorldCfg

SUPERSAMPLE = 4  # draw at 4x and box-filter down: smooth edges, same bytes on every run
PNG_COMPRESS_LEVEL = 6

Point = tuple[float, float]


def _star(cx: float, cy: float, radius: float) -> list[Point]:
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.5
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def _cross(cx: float, cy: float, half: float) -> list[Point]:
    t = half * 0.36  # half the arm thickness
    return [
        (cx - t, cy - half), (cx + t, cy - half), (cx + t, cy - t), (cx + half, cy - t),
        (cx + half, cy + t), (cx + t, cy + t), (cx + t, cy + half), (cx - t, cy + half),
        (cx - t, cy + t), (cx - half, cy + t), (cx - half, cy - t), (cx - t, cy - t),
    ]  # fmt: skip


def draw_object(draw: ImageDraw.ImageDraw, obj: Obj, extent: float, scale: float) -> None:
    """Draw one object filled with its colour; ``extent`` is its side in pixels before ``scale``."""
    cx, cy, half = obj.x * scale, obj.y * scale, extent * scale / 2
    fill = PALETTE[obj.color]
    if obj.shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=fill)
    elif obj.shape == "square":
        h = half * 0.9  # a square looks larger than a circle of the same extent
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy + half * 0.1, half * 1.05), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - half), (cx + half, cy), (cx, cy + half), (cx - half, cy)], fill=fill)
    elif obj.shape == "cross":
        draw.polygon(_cross(cx, cy, half), fill=fill)
    else:
        raise ValueError(
            f"shape {obj.shape!r} cannot be drawn: expected one of circle, square, triangle, star, diamond, cross"
        )


def render_scene(scene: Scene, world: WorldCfg) -> Image.Image:
    """The scene as an RGB image of ``world.image_size`` pixels a side on the flat background."""
    big = world.image_size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj, world.size_px(obj.size), SUPERSAMPLE)
    return image.resize((world.image_size, world.image_size), Image.Resampling.BOX)


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding with fixed settings and no metadata: equal images give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
