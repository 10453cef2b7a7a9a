"""The ``sparo-clip`` command: one sub-command per capability, each a module with ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

# sub-command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sparo_clip.training.entry", "train with open_clip_train's loop (accepts all its flags)"),
    "eval": (
        "sparo_clip.eval.cli",
        "evaluate: zeroshot | retrieval | sugarcrepe | compositional | knn | linear",
    ),
    "select-slots": ("sparo_clip.eval.select", "search a subset of slots that maximises a metric"),
    "clip-benchmark": (
        "sparo_clip.commands.clip_benchmark_bridge",
        "run CLIP_benchmark's evaluations with the SPARO models (accepts all its options)",
    ),
    "viz": ("sparo_clip.viz.cli", "slot attention pictures"),
    "make-data": ("sparo_clip.commands.make_data", "generate the synthetic shapes world"),
    "dino": ("sparo_clip.dino.cli", "SPARO-DINO: train | quickstart | parity (see docs/dino.md)"),
    "parity": (
        "sparo_clip.commands.parity",
        "build a parameter-matched SPARO config from an OpenCLIP ViT config",
    ),
    "convert": (
        "sparo_clip.commands.convert",
        "convert a reference-implementation checkpoint to this package's layout",
    ),
    "list": (
        "sparo_clip.commands.list_models",
        "list the SPARO configs with their parameter counts and their twins'",
    ),
}
# old name -> current name; an alias runs the command after a one-line notice (kept for one release)
ALIASES: dict[str, str] = {"benchmark": "clip-benchmark"}


def _usage() -> str:
    lines = ["usage: sparo-clip <command> [options]", "", "commands:"]
    lines += [f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'sparo-clip <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name in ALIASES:
        print(
            f"sparo-clip: '{name}' is now '{ALIASES[name]}'; the old name goes in the next release",
            file=sys.stderr,
        )
        name = ALIASES[name]
    if name not in COMMANDS:
        print(
            f"{_usage()}\n\nsparo-clip: error: unknown command {name!r}; one of: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
