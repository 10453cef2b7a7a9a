"""The shapes world: its vocabulary, held-out compositions, and seeded scene sampling.

A scene holds 1-3 objects on a flat background. Every object has a colour, a shape, a size and a position;
the objects of one scene have pairwise different colours and pairwise different shapes, so "the red circle"
always names exactly one object and every caption (and every wrong caption) is unambiguous. Every pair of
objects is clearly left/right of or above/below each other (the centres differ along one axis at least
``RELATION_RATIO`` times more than along the other), so spatial relations are never borderline.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

# Colour name -> RGB. No name starts with a vowel, so "a <colour> <shape>" is always good English.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 175, 70),
    "blue": (45, 100, 235),
    "yellow": (240, 215, 50),
    "white": (240, 240, 240),
    "purple": (155, 70, 205),
    "cyan": (40, 205, 215),
    "pink": (250, 135, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
# Size name -> extent of the object as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.2, "large": 0.32}
BACKGROUND: tuple[int, int, int] = (32, 32, 32)
# Relation of object a to object b -> caption text ("a red circle to the left of a blue square").
RELATIONS: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}
INVERSE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
RELATION_RATIO = 1.5  # dominant-axis offset / other-axis offset needed for a relation to hold

DEFAULT_COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "white", "purple")
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

Composition = tuple[str, str]  # (colour, shape)


def composition_name(comp: Composition) -> str:
    """``("red", "circle")`` -> ``"red circle"`` (the zero-shot class name)."""
    return f"{comp[0]} {comp[1]}"


def _as_tuple(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"{name}={value!r} is not valid: expected a list of names or a comma-separated string"
        )
    return tuple(value)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} is not valid: expected {allowed}")


@dataclass(frozen=True)
class WorldCfg:
    """What the shapes world contains. Same fields -> same world (held-out pairs included).

    Attributes:
        colors: colour names, a subset of ``PALETTE`` (comma-separated string or list).
        shapes: shape names, a subset of ``SHAPES``.
        image_size: image side in pixels (>= 32).
        min_objects: fewest objects in a training/validation scene.
        max_objects: most objects in a scene; below both the number of colours and of shapes, so that a
            colour and a shape absent from every scene exist (wrong captions need them).
        holdout_fraction: share of colour-shape pairs held out of training, chosen with ``seed`` and spread
            so that every colour and every shape keeps seen pairs. Ignored when ``holdout`` is given.
        holdout: explicit held-out pairs, e.g. ``("red circle", "blue star")``; ``None`` = seeded choice.
        seed: seed of every random choice of the generator.
        relational_share: share of 2-3 object captions that state relations (the rest list the objects);
            0 gives listings only (and no ``swap_obj`` set).
        size_share: chance that a caption says an object's size.
    """

    colors: tuple[str, ...] = DEFAULT_COLORS
    shapes: tuple[str, ...] = DEFAULT_SHAPES
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    holdout_fraction: float = 0.2
    holdout: tuple[str, ...] | None = None
    seed: int = 0
    relational_share: float = 0.7
    size_share: float = 0.5
    _unseen: frozenset[Composition] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        colors, shapes = _as_tuple(self.colors, "colors"), _as_tuple(self.shapes, "shapes")
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "shapes", shapes)
        for name, values, allowed in (("colors", colors, list(PALETTE)), ("shapes", shapes, list(SHAPES))):
            unknown = [v for v in values if v not in allowed]
            if unknown or len(set(values)) != len(values) or len(values) < 2:
                raise ValueError(
                    f"{name}={list(values)} is not valid: expected at least 2 distinct names from {allowed}"
                    + (f" (unknown: {unknown})" if unknown else "")
                )
        _check_int("image_size", self.image_size, 32, 1024)
        _check_int("seed", self.seed, 0)
        limit = min(3, len(colors) - 1, len(shapes) - 1)
        if not isinstance(self.max_objects, int) or not 1 <= self.max_objects <= limit:
            raise ValueError(
                f"max_objects={self.max_objects!r} is not valid: expected an integer in [1, {limit}] (at most 3, "
                "and below the number of colours and of shapes so that wrong captions can name absent ones)"
            )
        _check_int("min_objects", self.min_objects, 1, self.max_objects)
        for name in ("relational_share", "size_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r} is not valid: expected a share in [0, 1]")
        if not isinstance(self.holdout_fraction, (int, float)) or not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction={self.holdout_fraction!r} is not valid: expected 0 <= f < 1")
        if self.holdout is not None:
            object.__setattr__(self, "holdout", _as_tuple(self.holdout, "holdout"))
            unseen = self._parse_holdout(self.holdout)
        else:
            unseen = choose_holdout(colors, shapes, self.holdout_fraction, self.seed)
        object.__setattr__(self, "_unseen", frozenset(unseen))
        self._check_coverage()

    def _parse_holdout(self, names: tuple[str, ...]) -> list[Composition]:
        pairs = []
        for name in names:
            parts = name.split()
            if len(parts) != 2 or parts[0] not in self.colors or parts[1] not in self.shapes:
                raise ValueError(
                    f"holdout pair {name!r} is not valid: expected '<colour> <shape>' with colour in "
                    f"{list(self.colors)} and shape in {list(self.shapes)}"
                )
            pairs.append((parts[0], parts[1]))
        return pairs

    def _check_coverage(self) -> None:
        seen = self.seen
        for kind, names, index in (("colour", self.colors, 0), ("shape", self.shapes, 1)):
            lost = [n for n in names if not any(c[index] == n for c in seen)]
            if lost:
                raise ValueError(
                    f"the held-out pairs {self.unseen_names} leave no training pair for {kind}(s) {lost}: "
                    "hold out fewer pairs (lower holdout_fraction or shorter holdout list)"
                )

    @cached_property
    def compositions(self) -> tuple[Composition, ...]:
        """Every colour-shape pair, sorted by name."""
        return tuple(sorted((c, s) for c in self.colors for s in self.shapes))

    @property
    def unseen(self) -> frozenset[Composition]:
        """The held-out colour-shape pairs: never in a training image or caption."""
        return self._unseen

    @cached_property
    def seen(self) -> tuple[Composition, ...]:
        """The training colour-shape pairs, sorted by name."""
        return tuple(c for c in self.compositions if c not in self._unseen)

    @property
    def unseen_names(self) -> list[str]:
        """Names of the held-out pairs, sorted."""
        return sorted(composition_name(c) for c in self._unseen)

    def size_px(self, size: str) -> float:
        """Extent in pixels of an object of the named size."""
        return SIZES[size] * self.image_size

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (what the manifest stores)."""
        return {
            "colors": list(self.colors),
            "shapes": list(self.shapes),
            "image_size": self.image_size,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "holdout_fraction": self.holdout_fraction,
            "holdout": None if self.holdout is None else list(self.holdout),
            "seed": self.seed,
            "relational_share": self.relational_share,
            "size_share": self.size_share,
        }


def choose_holdout(
    colors: tuple[str, ...], shapes: tuple[str, ...], fraction: float, seed: int
) -> list[Composition]:
    """Pick ``round(fraction * #pairs)`` pairs, spread evenly over colours and shapes.

    Pairs are visited in a seeded random order; each step takes the first pair whose colour and shape
    have been held out least so far, so no colour or shape loses more pairs than needed.
    """
    rng = random.Random(f"{seed}/holdout")
    remaining = [(c, s) for c in colors for s in shapes]
    rng.shuffle(remaining)
    by_color: Counter[str] = Counter()
    by_shape: Counter[str] = Counter()
    chosen: list[Composition] = []
    for _ in range(round(fraction * len(remaining))):
        best = min(
            remaining, key=lambda p: (max(by_color[p[0]], by_shape[p[1]]), by_color[p[0]] + by_shape[p[1]])
        )
        remaining.remove(best)
        chosen.append(best)
        by_color[best[0]] += 1
        by_shape[best[1]] += 1
    return sorted(chosen)


@dataclass(frozen=True)
class Obj:
    """One object of a scene; ``x``, ``y`` is its centre in pixels (y grows downwards)."""

    color: str
    shape: str
    size: str
    x: float
    y: float

    @property
    def composition(self) -> Composition:
        return (self.color, self.shape)

    def to_dict(self) -> dict:
        return {"color": self.color, "shape": self.shape, "size": self.size, "x": self.x, "y": self.y}


def relation(a: Obj, b: Obj) -> str | None:
    """Where ``a`` is relative to ``b`` ("left", "right", "above", "below"), or None when unclear."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= RELATION_RATIO * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= RELATION_RATIO * abs(dx):
        return "above" if dy < 0 else "below"
    return None


@dataclass(frozen=True)
class Scene:
    """The objects of one image, in drawing order."""

    objects: tuple[Obj, ...]

    @property
    def colors(self) -> set[str]:
        return {o.color for o in self.objects}

    @property
    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects]}


def _pick_compositions(rng: random.Random, world: WorldCfg, n: int, mode: str) -> list[Composition]:
    """``n`` pairs with distinct colours and shapes; mode seen: all seen, unseen: one or more held out."""
    for _ in range(10_000):
        if mode == "unseen":
            first = rng.choice(sorted(world.unseen))
            colors = rng.sample([c for c in world.colors if c != first[0]], n - 1)
            shapes = rng.sample([s for s in world.shapes if s != first[1]], n - 1)
            comps = [first, *zip(colors, shapes, strict=True)]
            rng.shuffle(comps)
            return comps
        comps = list(zip(rng.sample(world.colors, n), rng.sample(world.shapes, n), strict=True))
        if mode == "any" or not any(c in world.unseen for c in comps):
            return comps
    raise RuntimeError(f"could not draw {n} {mode} compositions from {world}")


def _place(rng: random.Random, world: WorldCfg, extents: list[float]) -> list[tuple[float, float]]:
    """Centres for objects of the given extents: inside the image, apart, every pair clearly related."""
    side = world.image_size
    gap = max(1.0, 0.03 * side)
    for _ in range(1000):
        centres: list[tuple[float, float]] = []
        for extent in extents:
            low, high = extent / 2 + 1, side - extent / 2 - 1
            for _ in range(100):
                x, y = round(rng.uniform(low, high), 2), round(rng.uniform(low, high), 2)
                if all(
                    _compatible((x, y), extent, c, e, gap) for c, e in zip(centres, extents, strict=False)
                ):
                    centres.append((x, y))
                    break
            else:
                break
        if len(centres) == len(extents):
            return centres
    raise RuntimeError(f"could not place objects of extents {extents} in a {side}px image")


def fits(world: WorldCfg, objects: list[Obj] | tuple[Obj, ...]) -> bool:
    """Whether objects at their places lie inside the image, apart, and with every pair clearly related."""
    side, gap = world.image_size, max(1.0, 0.03 * world.image_size)
    for k, o in enumerate(objects):
        half = world.size_px(o.size) / 2 + 1
        if not (half <= o.x <= side - half and half <= o.y <= side - half):
            return False
        for other in objects[:k]:
            if not _compatible(
                (o.x, o.y), world.size_px(o.size), (other.x, other.y), world.size_px(other.size), gap
            ):
                return False
    return True


def _compatible(p: tuple[float, float], ep: float, q: tuple[float, float], eq: float, gap: float) -> bool:
    dx, dy = abs(p[0] - q[0]), abs(p[1] - q[1])
    apart = max(dx, dy) >= (ep + eq) / 2 + gap
    clear = max(dx, dy) >= RELATION_RATIO * min(dx, dy)
    return apart and clear


def sample_scene(rng: random.Random, world: WorldCfg, num_objects: int, mode: str = "seen") -> Scene:
    """Draw a scene.

    Args:
        rng: the sample's own random generator (seeded by the caller).
        world: the world.
        num_objects: objects in the scene, 1..``world.max_objects``.
        mode: ``"seen"`` (only training pairs), ``"unseen"`` (at least one held-out pair) or ``"any"``.
    """
    if mode not in ("seen", "unseen", "any"):
        raise ValueError(f"mode={mode!r} is not valid: expected 'seen', 'unseen' or 'any'")
    if mode == "unseen" and not world.unseen:
        raise ValueError("mode='unseen' needs held-out pairs, but this world holds none out")
    _check_int("num_objects", num_objects, 1, world.max_objects)
    return scene_of(rng, world, _pick_compositions(rng, world, num_objects, mode))


def scene_of(rng: random.Random, world: WorldCfg, comps: list[Composition]) -> Scene:
    """A scene of the given colour-shape pairs (distinct colours and shapes), with seeded sizes and places."""
    if len({c for c, _ in comps}) != len(comps) or len({s for _, s in comps}) != len(comps):
        raise ValueError(f"the objects of a scene need distinct colours and distinct shapes, got {comps}")
    sizes = [rng.choice(sorted(SIZES)) for _ in comps]
    centres = _place(rng, world, [world.size_px(s) for s in sizes])
    objects = tuple(
        Obj(color, shape, size, x, y)
        for (color, shape), size, (x, y) in zip(comps, sizes, centres, strict=True)
    )
    return Scene(objects)
