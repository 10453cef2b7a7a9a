"""Captions of scenes in several phrasings, and the wrong captions of the SugarCrepe-style tasks.

A caption is built from a :class:`Spec`: a phrasing with object fields (``{A}``, ``{B}``, ``{C}``), the
object behind each field, whether its size is said, and the relation words of relational phrasings. A wrong
caption edits the spec (swap two objects' colours, swap the two sides of a relation, replace a colour or a
shape by one absent from the image, add an absent object) and renders it with the same phrasing, so the
positive and the negative differ only in what the task changes.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from sparo_clip.data.world import INVERSE, RELATIONS, SIZES, Obj, Scene, WorldCfg, relation

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


def make_spec(scene: Scene, rng: random.Random, relational: bool | None = None) -> Spec:
    """A random phrasing of the scene (relational or not, when ``relational`` is None)."""
    objects = list(scene.objects)
    rng.shuffle(objects)
    sizes = tuple(rng.random() < SIZE_SHARE for _ in objects)
    if relational is None:
        relational = len(objects) > 1 and rng.random() < RELATIONAL_SHARE
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


def caption(scene: Scene, rng: random.Random) -> str:
    """A training caption of the scene in a random phrasing."""
    return make_spec(scene, rng).text()


def _focus(spec: Spec, unseen: frozenset) -> list[int]:
    """Fields a task should edit: those showing a held-out pair if there are any, else all."""
    hits = [i for i, o in enumerate(spec.objects) if o.composition in unseen]
    return hits or list(range(len(spec.objects)))


def negative(task: str, spec: Spec, scene: Scene, world: WorldCfg, rng: random.Random) -> Spec:
    """The spec of a caption that is wrong for the scene, made as the task says.

    Args:
        task: one of ``TASKS``.
        spec: the spec of the true caption (relational for ``swap_obj``, a listing for ``add_obj``).
        scene: the scene the caption describes.
        world: the world (for absent colours and shapes).
        rng: the sample's random generator.

    Returns:
        The spec of the wrong caption; its text differs from the true one.
    """
    focus = _focus(spec, world.unseen)
    n = len(spec.objects)
    if task == "swap_att":  # the colours of two objects trade places
        if n < 2:
            raise ValueError("swap_att needs a caption with at least 2 objects")
        i = rng.choice(focus)
        j = rng.choice([k for k in range(n) if k != i])
        a, b = spec.objects[i], spec.objects[j]
        out = spec.replace_object(i, dataclasses.replace(a, color=b.color))
        return out.replace_object(j, dataclasses.replace(b, color=a.color))
    if task == "swap_obj":  # the two sides of the first relation trade places
        if not spec.relational:
            raise ValueError("swap_obj needs a relational caption")
        objects, sizes = list(spec.objects), list(spec.sizes)
        objects[0], objects[1] = objects[1], objects[0]
        sizes[0], sizes[1] = sizes[1], sizes[0]
        return dataclasses.replace(spec, objects=tuple(objects), sizes=tuple(sizes))
    if task == "replace_att":  # one object's colour becomes a colour absent from the image
        i = rng.choice(focus)
        color = rng.choice([c for c in world.colors if c not in scene.colors])
        return spec.replace_object(i, dataclasses.replace(spec.objects[i], color=color))
    if task == "replace_obj":  # one object's shape becomes a shape absent from the image
        i = rng.choice(focus)
        shape = rng.choice([s for s in world.shapes if s not in scene.shapes])
        return spec.replace_object(i, dataclasses.replace(spec.objects[i], shape=shape))
    if task == "add_obj":  # an object whose colour and shape are both absent joins the list
        if spec.relational:
            raise ValueError("add_obj needs a listing caption")
        color = rng.choice([c for c in world.colors if c not in scene.colors])
        shape = rng.choice([s for s in world.shapes if s not in scene.shapes])
        new = Obj(color, shape, rng.choice(sorted(SIZES)), -1.0, -1.0)
        at = rng.randrange(n + 1)
        objects = (*spec.objects[:at], new, *spec.objects[at:])
        sizes = (*spec.sizes[:at], rng.random() < SIZE_SHARE, *spec.sizes[at:])
        return Spec(spec.template, objects, sizes)
    raise ValueError(f"task={task!r} is not valid: expected one of {list(TASKS)}")


def task_pair(task: str, scene: Scene, world: WorldCfg, rng: random.Random) -> tuple[str, str]:
    """(true caption, wrong caption) of the scene for a SugarCrepe-style task."""
    relational = {"swap_obj": True, "add_obj": False}.get(task)
    spec = make_spec(scene, rng, relational=relational)
    return spec.text(), negative(task, spec, scene, world, rng).text()


__all__ = [
    "INVERSE",
    "TASKS",
    "ZEROSHOT_TEMPLATES",
    "Spec",
    "caption",
    "make_spec",
    "negative",
    "phrase",
    "task_pair",
]
