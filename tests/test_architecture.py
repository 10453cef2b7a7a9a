"""The layout docs/architecture.md draws: packages by role, imports downward only, no cycles, one seam."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sparo_clip"

# lowest first; a module may import its own unit and any unit on a lower floor, never one higher up
FLOORS: list[set[str]] = [
    {"errors", "integration"},
    {"inputs", "data"},
    {"models"},
    {"checkpoints"},
    {"eval", "viz"},
    {"training"},
    {"experiment"},
    {"dino"},  # its main job uses experiment's statistics
    {"commands"},
    {"__init__", "train", "quickstart"},  # the public API and the two `python -m` names
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def unit_of(module: str) -> str:
    """``sparo_clip.models.readout`` -> ``models``; ``sparo_clip`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def imports(path: Path) -> set[str]:
    """Every sparo_clip module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sparo_clip"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sparo_clip":
            if node.level:
                raise AssertionError(f"{path}: relative import (the house uses absolute ones)")
            subs = {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in ALL}
            found |= subs
            if node.module != "sparo_clip" or len(subs) < len(node.names):  # names from the package itself
                found.add(node.module)
    return found


ALL = modules()


def test_every_unit_has_a_floor_and_every_package_says_what_lives_there():
    units = {unit_of(m) for m in ALL}
    assert units <= set(FLOOR), sorted(units - set(FLOOR))
    for name, path in ALL.items():
        if path.name == "__init__.py" and name != "sparo_clip":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and doc.strip(), f"{name} has no docstring saying what lives there"


def test_imports_run_downward_only():
    upward = []
    for name, path in ALL.items():
        own = FLOOR[unit_of(name)]
        for target in imports(path):
            if FLOOR[unit_of(target)] > own:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_no_import_cycles_between_modules():
    graph = {name: {t for t in imports(path) if t in ALL and t != name} for name, path in ALL.items()}
    # a package's __init__ importing its own modules is how packages work; cycles through it are not
    for name in ALL:
        graph[name] = {
            t for t in graph[name] if not (name.startswith(t + ".") and ALL[t].name == "__init__.py")
        }
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif state[nxt] == 0:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [name])
    assert not cycles, cycles


@pytest.mark.parametrize("name", ["open_clip.factory", "open_clip_train.main", "open_clip_train.data"])
def test_internals_are_touched_in_the_seam_only(name):
    """Only integration.py assigns attributes of another library's modules."""
    touching = []
    alias = name.split(".")[-1]
    for mod, path in ALL.items():
        if mod == "sparo_clip.integration":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Attribute) and ast.unparse(t.value) in (name, f"oc_{alias}"):
                        touching.append(f"{mod}: {ast.unparse(t)}")
    assert not touching, touching
