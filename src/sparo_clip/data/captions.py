"""Captions of scenes in several phrasings, and the wrong captions of the SugarCrepe-style tasks.

A caption is built from a :class:`Spec`: a phrasing with object fields (``{A}``, ``{B}``, ``{C}``), the
object behind each field, whether its size is said, and the relation words of relational phrasings. A wrong
caption edits the spec (swap two objects' colours, swap the two sides of a relation, replace a colour or a
shape by one absent from the image, name an absent object in place of a present one) and renders it with the
same phrasing, so the positive and the negative differ only in what the task changes. As SugarCrepe requires,
the captions alone must not tell them apart: a wrong caption names as many held-out pairs as the true one and
has as many words (:func:`negative`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from sparo_clip.data.world import INVERSE, RELATIONS, Obj, Scene, WorldCfg, relation

# Listing phrasings: prefix + "a X", "a X and a Y" or "a X, a Y and a Z".
LIST_PREFIXES: tuple[str, ...] = ("", "there is ", "a picture of ", "an image with ")
# Relational phrasings; {r1} is where A is relative to B, {r2} where C is relative to B.
RELATIONAL_2: tuple[str, ...] = (
    "a {A} {r1} a {B}",
    "a {A} is {r1} a {B}",
    "there is a {A} {r1} a {B}",
    "a picture of a {A} {r1} a {B}",
    "{r1} a {B} there is a {A}",
)
RELATIONAL_3: tuple[str, ...] = (
    "a {A} {r1} a {B}, and a {C} {r2} the {B}",
    "a {A} is {r1} a {B} and a {C} is {r2} the {B}",
    "there is a {A} {r1} a {B} and a {C} {r2} the {B}",
)
# Zero-shot classification templates ({c} = "red circle"), in the captions' own language.
ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a {c}",
    "there is a {c}",
    "a picture of a {c}",
    "an image with a {c}",
    "a small {c}",
    "a large {c}",
)
TASKS: tuple[str, ...] = ("swap_att", "swap_obj", "replace_att", "replace_obj", "add_obj")
RELATIONAL_SHARE = 0.7  # share of 2-3 object captions that state relations (the rest list the objects)
SIZE_SHARE = 0.5  # chance that a mention says the object's size


def phrase(obj: Obj, with_size: bool) -> str:
    """``"small red circle"`` or ``"red circle"`` (no article)."""
    return f"{obj.size} {obj.color} {obj.shape}" if with_size else f"{obj.color} {obj.shape}"


@dataclass(frozen=True)
class Spec:
    """A caption before rendering.

    Attributes:
        template: for relational phrasings, a format string with object fields and ``{r1}``/``{r2}``;
            for listings, the prefix put before the list.
        objects: the object of each field, in field order A, B, C.
        sizes: whether each field says its object's size.
        relations: relation names of ``r1`` (A to B) and ``r2`` (C to B); empty for listings.
    """

    template: str
    objects: tuple[Obj, ...]
    sizes: tuple[bool, ...]
    relations: tuple[str, ...] = ()

    @property
    def relational(self) -> bool:
        return bool(self.relations)

    def text(self) -> str:
        """The caption."""
        words = [phrase(o, s) for o, s in zip(self.objects, self.sizes, strict=True)]
        if not self.relational:
            items = [f"a {w}" for w in words]
            listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
            return self.template + listed
        fields = dict(zip("ABC", words, strict=False))
        rels = {f"r{k + 1}": RELATIONS[r] for k, r in enumerate(self.relations)}
        return self.template.format(**fields, **rels)

    def replace_object(self, index: int, obj: Obj) -> Spec:
        objects = list(self.objects)
        objects[index] = obj
        return dataclasses.replace(self, objects=tuple(objects))


def make_spec(
    scene: Scene, rng: random.Random, relational: bool | None = None, world: WorldCfg | None = None
) -> Spec:
    """A random phrasing of the scene (relational or not, when ``relational`` is None, by the world's share;
    each object's size said by the world's size share)."""
    relational_share = RELATIONAL_SHARE if world is None else world.relational_share
    size_share = SIZE_SHARE if world is None else world.size_share
    objects = list(scene.objects)
    rng.shuffle(objects)
    sizes = tuple(rng.random() < size_share for _ in objects)
    if relational is None:
        relational = len(objects) > 1 and rng.random() < relational_share
    if not relational:
        return Spec(rng.choice(LIST_PREFIXES), tuple(objects), sizes)
    if len(objects) < 2:
        raise ValueError("a relational caption needs a scene with at least 2 objects")
    rels = [relation(objects[0], objects[1])] + (
        [relation(objects[2], objects[1])] if len(objects) > 2 else []
    )
    if None in rels:
        raise ValueError(f"scene {scene} has an unclear relation: it was not drawn by sample_scene")
    template = rng.choice(RELATIONAL_2 if len(objects) == 2 else RELATIONAL_3)
    return Spec(template, tuple(objects), sizes, tuple(r for r in rels if r is not None))


def caption(scene: Scene, rng: random.Random, world: WorldCfg | None = None) -> str:
    """A training caption of the scene in a random phrasing (the world's shares of relations and sizes)."""
    return make_spec(scene, rng, world=world).text()


def world_tasks(world: WorldCfg) -> tuple[str, ...]:
    """The tasks a world's captions allow (``swap_obj`` needs relational captions)."""
    return tuple(t for t in TASKS if t != "swap_obj" or world.relational_share > 0)


def held_out_named(spec: Spec, unseen: frozenset) -> int:
    """How many times a caption names a held-out colour-shape pair (an object named twice counts twice)."""
    counts = [
        spec.template.count("{" + f + "}") if spec.relational else 1 for f in "ABC"[: len(spec.objects)]
    ]
    return sum(n for o, n in zip(spec.objects, counts, strict=True) if o.composition in unseen)


def words(text: str) -> int:
    """A caption's length in words (what a length prior would read)."""
    return len(text.split())


def _candidates(task: str, spec: Spec, scene: Scene, world: WorldCfg) -> list[tuple[Spec, frozenset[int]]]:
    """Every wrong caption the task can make from ``spec``, with the fields each edit touches."""
    n = len(spec.objects)
    absent_colors = [c for c in world.colors if c not in scene.colors]
    absent_shapes = [s for s in world.shapes if s not in scene.shapes]
    out: list[tuple[Spec, frozenset[int]]] = []
    if task == "swap_att":  # the colours of two objects trade places
        if n < 2:
            raise ValueError("swap_att needs a caption with at least 2 objects")
        for i in range(n):
            for j in range(i + 1, n):
                a, b = spec.objects[i], spec.objects[j]
                edited = spec.replace_object(i, dataclasses.replace(a, color=b.color))
                out.append(
                    (edited.replace_object(j, dataclasses.replace(b, color=a.color)), frozenset((i, j)))
                )
    elif task == "swap_obj":  # the two sides of the first relation trade places
        if not spec.relational:
            raise ValueError("swap_obj needs a relational caption")
        objects, sizes = list(spec.objects), list(spec.sizes)
        objects[0], objects[1] = objects[1], objects[0]
        sizes[0], sizes[1] = sizes[1], sizes[0]
        out.append((dataclasses.replace(spec, objects=tuple(objects), sizes=tuple(sizes)), frozenset((0, 1))))
    elif task == "replace_att":  # one object's colour becomes a colour absent from the image
        for i in range(n):
            for c in absent_colors:
                out.append(
                    (spec.replace_object(i, dataclasses.replace(spec.objects[i], color=c)), frozenset((i,)))
                )
    elif task == "replace_obj":  # one object's shape becomes a shape absent from the image
        for i in range(n):
            for s in absent_shapes:
                out.append(
                    (spec.replace_object(i, dataclasses.replace(spec.objects[i], shape=s)), frozenset((i,)))
                )
    elif task == "add_obj":  # an absent object (colour and shape both absent) named in place of a present one
        if spec.relational:
            raise ValueError("add_obj needs a listing caption")
        for i in range(n):
            for c in absent_colors:
                for s in absent_shapes:
                    absent = Obj(c, s, spec.objects[i].size, -1.0, -1.0)
                    out.append((spec.replace_object(i, absent), frozenset((i,))))
    else:
        raise ValueError(f"task={task!r} is not valid: expected one of {list(TASKS)}")
    return out


def negative(task: str, spec: Spec, scene: Scene, world: WorldCfg, rng: random.Random) -> Spec | None:
    """A wrong caption for the scene, made as the task says, that the caption alone cannot give away.

    Among the task's edits, only those that name as many held-out pairs as the true caption and have as many
    words are allowed (an edit never creates or removes a held-out pair, and no length cue is left); among
    those, one touching a held-out object is preferred (the novel composition is what is tested).

    Args:
        task: one of ``TASKS``.
        spec: the spec of the true caption (relational for ``swap_obj``, a listing for ``add_obj``).
        scene: the scene the caption describes.
        world: the world (held-out pairs; absent colours and shapes).
        rng: the sample's random generator.

    Returns:
        The spec of the wrong caption, or None when no allowed edit exists (the item is then dropped).
    """
    want_held_out, want_words = held_out_named(spec, world.unseen), words(spec.text())
    allowed = [
        (edited, touched)
        for edited, touched in _candidates(task, spec, scene, world)
        if held_out_named(edited, world.unseen) == want_held_out
        and words(edited.text()) == want_words
        and edited.text() != spec.text()
    ]
    held = {i for i, o in enumerate(spec.objects) if o.composition in world.unseen}
    focused = [(e, t) for e, t in allowed if t & held]
    pool = focused or allowed
    return rng.choice(pool)[0] if pool else None


__all__ = [
    "INVERSE",
    "TASKS",
    "world_tasks",
    "held_out_named",
    "ZEROSHOT_TEMPLATES",
    "Spec",
    "caption",
    "make_spec",
    "negative",
    "phrase",
]
