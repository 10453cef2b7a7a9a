"""``sparo-clip list``: the registered SPARO configs with their parameter counts next to their twins'.

A SPARO config's twin is the registered OpenCLIP config it was made from (``<twin>-SPARO``), when there is
one. Models are built on the meta device (no memory, no weights); each takes about a second.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

import open_clip
from tqdm import tqdm

from sparo_clip.models.parity import model_params
from sparo_clip.models.registry import sparo_model_names


def twin_name(name: str) -> str | None:
    """The registered config a ``<twin>-SPARO`` config was made from, or None."""
    twin = name.removesuffix("-SPARO")
    if twin == name or open_clip.get_model_config(twin) is None:
        return None
    return twin


def zoo_rows(pattern: str = "*") -> list[tuple[str, int, str | None, int | None]]:
    """(name, parameters, twin, twin's parameters) for every SPARO config whose name matches ``pattern``."""
    names = [n for n in sorted(sparo_model_names()) if fnmatch.fnmatch(n, pattern)]
    rows = []
    for name in tqdm(names, desc="counting parameters", file=sys.stderr, disable=len(names) < 4):
        twin = twin_name(name)
        rows.append((name, model_params(name), twin, model_params(twin) if twin else None))
    return rows


def format_rows(rows: list[tuple[str, int, str | None, int | None]], markdown: bool = False) -> str:
    """A plain-text (or Markdown) table of :func:`zoo_rows`."""
    header = ("model", "parameters", "twin", "twin parameters", "ratio")
    lines = []
    for name, n, twin, n_twin in rows:
        ratio = f"{n / n_twin:.3f}" if n_twin else "-"
        lines.append((name, f"{n:,}", twin or "-", f"{n_twin:,}" if n_twin else "-", ratio))
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 2) else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [header, *lines])


def main(argv: list[str] | None = None) -> int:
    """``sparo-clip list [--names PATTERN] [--markdown]``."""
    p = argparse.ArgumentParser(prog="sparo-clip list", description=__doc__.splitlines()[0])
    p.add_argument("--names", default="*", help="shell-style pattern of model names (default: all)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    rows = zoo_rows(args.names)
    if not rows:
        print(f"sparo-clip list: error: no SPARO config matches {args.names!r}", file=sys.stderr)
        return 2
    print(format_rows(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
