"""``sparo-clip dino train | quickstart | parity``: the SPARO-DINO commands, each a module with ``main(argv)``."""

from __future__ import annotations

import importlib
import json
import sys

COMMANDS = {
    "train": ("sparo_clip.dino.train", "self-supervised DINO training (torchrun for several processes)"),
    "quickstart": (
        "sparo_clip.dino.quickstart",
        "tiny CLS-DINO vs SPARO-DINO on the shapes world, kNN + linear",
    ),
    "parity": ("sparo_clip.dino.cli", "parameters of a DINO config's encoder and head against its CLS twin"),
}


def parity_main(argv: list[str]) -> int:
    from sparo_clip.dino.config import list_configs, load_config
    from sparo_clip.dino.model import parity

    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(f"usage: sparo-clip dino parity CONFIG  (a JSON file or one of {list_configs()})")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        print(json.dumps(parity(load_config(argv[0])), indent=2))
    except ValueError as e:
        print(f"sparo-clip dino parity: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: sparo-clip dino <command> [options]", "", "commands:"]
        lines += [f"  {n:<12}{h}" for n, (_, h) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if not argv or argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "parity":
        return parity_main(argv[1:])
    return int(importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
