"""The image-text matching sets cannot be solved from the captions: equal held-out counts and lengths, mirrored
pairs, text-only controls at chance, and the clean binding test's groups."""

import json
import random
import re
from collections import Counter

import pytest

from sparo_clip.data.captions import TASKS, make_spec, negative
from sparo_clip.data.generate import generate
from sparo_clip.data.sets import SizeCfg, binding_pairs, mirrored_pair
from sparo_clip.data.world import PALETTE, SHAPES, SIZES, WorldCfg, sample_scene
from sparo_clip.eval.text_prior import BigramScorer, text_only_accuracy, words
from sparo_clip.experiment.controls import text_only_controls

WORLD = WorldCfg(image_size=32, colors=tuple(PALETTE)[:6], shapes=SHAPES, holdout_fraction=0.3, seed=3)
SIZES_ = SizeCfg(train=600, val=16, shards=2, zeroshot_per_class=1, sugarcrepe_per_task=40, test=4,
                 sugarcrepe_val_per_task=4, binding_per_group=40)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("matching"), WORLD, SIZES_)


def pairs_named(text: str) -> list[tuple[str, str]]:
    colors, shapes = "|".join(WORLD.colors), "|".join(WORLD.shapes)
    return [(c, s) for c, s in re.findall(rf"\b({colors}) ({shapes})\b", text)]


def _items(root: str) -> dict[str, list[dict]]:
    from pathlib import Path

    return {f.stem: list(json.loads(f.read_text()).values()) for f in sorted(Path(root).glob("*.json"))}


def test_every_wrong_caption_names_as_many_held_out_pairs_in_as_many_words(world):
    for name in ("sugarcrepe", "binding"):
        for task, items in _items(world[name]["root"]).items():
            assert items, (name, task)
            for it in items:
                pos, neg = it["caption"], it["negative_caption"]
                assert len(pos.split()) == len(neg.split()), (task, pos, neg)
                held = [sum(p in WORLD.unseen for p in pairs_named(t)) for t in (pos, neg)]
                assert held[0] == held[1], (task, pos, neg)
                assert (held[0] > 0) == (it["group"] == "novel"), (task, it)


def test_items_come_in_mirrored_pairs(world):
    """Each item's mirror shows the scene of its wrong caption, with the two captions exchanged."""
    for name in ("sugarcrepe", "binding"):
        for items in _items(world[name]["root"]).values():
            by_key = {(it["filename"].rsplit("_", 1)[0], it["filename"][-5]): it for it in items}
            assert Counter(k[1] for k in by_key) == {"a": len(items) // 2, "b": len(items) // 2}
            for (unit, side), it in by_key.items():
                if side == "a":
                    mirror = by_key[(unit, "b")]
                    assert (mirror["caption"], mirror["negative_caption"]) == (
                        it["negative_caption"],
                        it["caption"],
                    )
                    assert mirror["cluster"] == it["cluster"] and mirror["group"] == it["group"]


def test_text_only_controls_of_the_generated_sets_score_chance(world):
    """A bigram reader fit on the world's training captions, and two cruder readers, are at chance everywhere."""
    controls = text_only_controls(world)
    for name, tasks in controls.items():
        for task, groups in tasks.items():
            for group, c in groups.items():
                assert abs(c["accuracy"] - 0.5) <= 0.02, (name, task, group, c)
    shorter = lambda p, n: (
        1.0 if len(words(p)) < len(words(n)) else 0.0 if len(words(p)) > len(words(n)) else 0.5
    )
    avoids_held_out = lambda p, n: 0.5 + 0.5 * (sum(x in WORLD.unseen for x in pairs_named(n))
                                                - sum(x in WORLD.unseen for x in pairs_named(p)))  # fmt: skip
    for reader in (shorter, avoids_held_out):
        for items in _items(world["sugarcrepe"]["root"]).values():
            assert sum(reader(it["caption"], it["negative_caption"]) for it in items) / len(items) == 0.5


def test_bigram_reader_finds_a_caption_prior_where_there_is_one():
    """The control can fail: on pairs whose wrong captions always name a held-out pair it is far above chance."""
    rng = random.Random(0)
    train, pos, neg = [], [], []
    seen, unseen = list(WORLD.seen), sorted(WORLD.unseen)
    for _ in range(500):
        c, s = rng.choice(seen)
        train.append(f"a {c} {s}")
    for _ in range(100):
        (c, s), (c2, s2) = rng.choice(seen), rng.choice(unseen)
        pos.append(f"a {c} {s}")
        neg.append(f"a {c2} {s2}")
    acc = text_only_accuracy(BigramScorer(train), pos, neg)
    assert sum(acc) / len(acc) > 0.9


def test_clean_binding_groups(world):
    """seen: both captions name only training pairs; novel: both name exactly one held-out pair; the wrong
    caption is the true one with the two colours swapped."""
    (items,) = _items(world["binding"]["root"]).values()
    groups = Counter(it["group"] for it in items)
    assert groups == {"seen": SIZES_.binding_per_group, "novel": SIZES_.binding_per_group}
    for it in items:
        pos, neg = pairs_named(it["caption"]), pairs_named(it["negative_caption"])
        assert len(pos) == len(neg) == 2
        assert {c for c, _ in pos} == {c for c, _ in neg} and [s for _, s in pos] == [s for _, s in neg]
        assert [c for c, _ in neg] == [c for c, _ in pos][::-1]
        held = [sum(p in WORLD.unseen for p in x) for x in (pos, neg)]
        assert held == ([0, 0] if it["group"] == "seen" else [1, 1]), it


def test_binding_configurations_follow_the_held_out_pairs():
    options = binding_pairs(WORLD)
    assert options["seen"] and options["novel"]
    for a, b in options["novel"]:
        assert (a in WORLD.unseen) + (b in WORLD.unseen) == 1
        assert ((b[0], a[1]) in WORLD.unseen) + ((a[0], b[1]) in WORLD.unseen) == 1
    tight = WorldCfg(holdout=("red circle",))  # one held-out pair: no balanced swap can name it twice
    assert binding_pairs(tight)["novel"] == []


@pytest.mark.parametrize("task", TASKS)
def test_the_mirror_scene_is_what_the_wrong_caption_describes(task):
    size_words = "|".join(SIZES)
    for i in range(40):
        rng = random.Random(f"mirror/{task}/{i}")
        scene = sample_scene(rng, WORLD, rng.randint(2, 3), "unseen" if i % 2 else "seen")
        made = mirrored_pair(task, scene, WORLD, rng)
        if made is None:
            continue
        (pos, neg), mirror = made
        for text, objects in ((pos, scene.objects), (neg, mirror.objects)):
            for size, c, s in re.findall(
                rf"\b(?:({size_words}) )?({'|'.join(WORLD.colors)}) ({'|'.join(WORLD.shapes)})\b", text
            ):
                assert any(o.color == c and o.shape == s and size in ("", o.size) for o in objects), (
                    task,
                    text,
                )
        assert (
            sorted(o.composition for o in mirror.objects) != sorted(o.composition for o in scene.objects)
            or task == "swap_obj"
        )


def test_negative_prefers_an_edit_of_the_held_out_object():
    hits = 0
    for i in range(60):
        rng = random.Random(f"focus/{i}")
        scene = sample_scene(rng, WORLD, 3, "unseen")
        spec = make_spec(scene, rng, relational=False)
        wrong = negative("replace_obj", spec, scene, WORLD, rng)
        if wrong is None:
            continue
        changed = [k for k, (a, b) in enumerate(zip(spec.objects, wrong.objects, strict=True)) if a != b]
        held = [k for k, o in enumerate(spec.objects) if o.composition in WORLD.unseen]
        hits += bool(set(changed) & set(held))
    assert hits > 0
