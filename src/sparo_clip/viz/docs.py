"""Render the pictures of ``docs/visualization.md`` from a checkpoint.

    python -m sparo_clip.viz.docs --model tiny-SPARO --pretrained CKPT --images DIR --captions FILE

runs ``sparo-clip viz`` into a scratch folder and copies two pair pictures and the two best slot
galleries to ``docs/img/visualization/{pair_1,pair_2,slot_rank_1,slot_rank_2}.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from sparo_clip.inputs import check_output_folder
from sparo_clip.viz.cli import main as viz_main

DOC_FILES = ("pair_1.png", "pair_2.png", "slot_rank_1.png", "slot_rank_2.png")


def render_doc_pictures(
    model: str,
    pretrained: str | None,
    images: list[str],
    captions: str,
    out_dir: str | Path = "docs/img/visualization",
    extra_args: list[str] | None = None,
) -> list[Path]:
    """Render the documentation pictures; returns the files written into ``out_dir``.

    Args:
        model: model name, e.g. ``tiny-SPARO`` for the quickstart model.
        pretrained: its checkpoint.
        images: one folder of images or the image files.
        captions: the captions file (one per line).
        out_dir: where the documentation expects the pictures.
        extra_args: more ``sparo-clip viz`` options (e.g. ``["--min-agreement", "0.5"]``).
    """
    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--model", model, "--images", *images, "--captions", captions, "--out", tmp,
                "--top-k", "3", "--max-pairs", "2", "--gallery-slots", "2", "--gallery-size", "4"]  # fmt: skip
        if pretrained:
            argv += ["--pretrained", pretrained]
        if viz_main(argv + list(extra_args or [])) != 0:
            raise ValueError(f"sparo-clip viz failed for {argv}")
        files = json.loads((Path(tmp) / "summary.json").read_text())["files"]
        sources = files["pairs"][:2] + files["slots"][:2]
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for src, name in zip(sources, DOC_FILES, strict=False):
            shutil.copyfile(src, out / name)
            written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparo_clip.viz.docs", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-SPARO")
    p.add_argument("--pretrained", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--captions", required=True)
    p.add_argument("--out", default="docs/img/visualization")
    args, extra = p.parse_known_args(argv)
    try:
        check_output_folder(args.out)
        written = render_doc_pictures(
            args.model, args.pretrained, args.images, args.captions, args.out, extra
        )
    except ValueError as e:  # sparo-clip viz has printed its own one-line error already
        if not str(e).startswith("sparo-clip viz failed"):
            print(f"python -m sparo_clip.viz.docs: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
