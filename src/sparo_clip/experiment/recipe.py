"""The main job's recipe: the world and its sizes (design choices, here), and what was measured to choose the
rest: the training budget (its curves and the plateau rule's verdict: docs/quickstart.md), each model's
learning rate and the SPARO slot shape (chosen on validation). The measured part lives in ``recipe.json``
beside this module, written only by ``python -m benchmarks.study --write-recipe`` from its runs (docs/study.md
shows them), never by hand; the chosen slot shape is also written into ``tiny-SPARO.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparo_clip.checkpoints.files import atomic_write_text
from sparo_clip.data.sets import SizeCfg
from sparo_clip.data.world import PALETTE, SHAPES
from sparo_clip.errors import ConfigError

RECIPE_FILE = Path(__file__).with_name("recipe.json")

# The world of the main job: 6 colours x 6 shapes on 48-pixel images (a shape spans one or two 8-pixel patches);
# 30% of the 36 pairs held out (11), chosen per seed, so that held-out pairs come in numbers (a class-level
# interval needs several) and the clean binding test has held-out configurations for every seed
# (sparo_clip.data.sets.binding_pairs). Captions list the objects, without relations or sizes: 16 tokens hold
# every caption, and the towers learn colour-shape binding within the job's minutes (docs/quickstart.md).
WORLD: dict[str, Any] = {
    "image_size": 48,
    "colors": tuple(PALETTE)[:6],
    "shapes": SHAPES,
    "holdout_fraction": 0.3,
    "min_objects": 1,
    "max_objects": 3,
    "relational_share": 0.0,
    "size_share": 0.0,
}
SIZES = SizeCfg(
    train=12000, val=500, shards=4, zeroshot_per_class=20, sugarcrepe_per_task=200, test=400,
    sugarcrepe_val_per_task=100, binding_per_group=200,
)  # fmt: skip
SMALL_SIZES = SizeCfg(
    train=256, val=32, shards=2, zeroshot_per_class=2, sugarcrepe_per_task=8, test=16, sugarcrepe_val_per_task=8,
    binding_per_group=8,
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """What the main job trains with (see the module docstring for where each value comes from)."""

    epochs: int
    lr: dict[str, float]
    batch_size: int = 128
    wd: float = 0.1
    warmup: float = 0.05
    world: dict[str, Any] = field(default_factory=lambda: dict(WORLD))
    measured_by: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def sizes(self, small: bool = False) -> SizeCfg:
        return SMALL_SIZES if small else SIZES

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["world"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.world.items()}
        return out


def load(path: Path | None = None) -> Recipe:
    """The recipe the study measured (one clear error when it has not been written yet)."""
    path = RECIPE_FILE if path is None else path
    if not path.is_file():
        raise ConfigError(f"{path} is missing: run `python -m benchmarks.study --write-recipe` to measure it")
    data = json.loads(path.read_text())
    return Recipe(
        epochs=int(data["epochs"]), lr={k: float(v) for k, v in data["lr"].items()},
        batch_size=int(data["batch_size"]), wd=float(data["wd"]), warmup=float(data["warmup"]),
        measured_by=data.get("measured_by", ""), evidence=data.get("evidence", {}),
    )  # fmt: skip


def write(recipe: Recipe, path: Path | None = None) -> Path:
    """Write the measured part of a recipe (the study's ``--write-recipe``)."""
    path = RECIPE_FILE if path is None else path
    keep = ("epochs", "lr", "batch_size", "wd", "warmup", "measured_by", "evidence")
    data = {k: v for k, v in recipe.to_dict().items() if k in keep}
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n")
