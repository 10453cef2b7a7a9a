"""``sparo-clip convert``: a reference-implementation checkpoint in this package's layout (:mod:`sparo_clip.checkpoints.convert`)."""

from __future__ import annotations

import argparse
import sys

from sparo_clip.checkpoints.convert import convert_file
from sparo_clip.errors import SparoClipError, one_line
from sparo_clip.inputs import load_json


def main(argv: list[str] | None = None) -> int:
    """``sparo-clip convert REF OUT --model NAME [--override JSON]``."""
    p = argparse.ArgumentParser(prog="sparo-clip convert", description=__doc__.splitlines()[0])
    p.add_argument("src", help="reference checkpoint (.pt)")
    p.add_argument("dst", help="output checkpoint (.pt, or .safetensors)")
    p.add_argument("--model", required=True, help="registered SPARO config the checkpoint was trained as")
    p.add_argument("--override", default=None, help="JSON deep-merged into the model config")
    args = p.parse_args(argv)
    try:
        override = load_json(args.override, "--override") if args.override else None
        if override is not None and not isinstance(override, dict):
            raise ValueError(f"--override must be a JSON object, got {args.override!r}")
        convert_file(args.src, args.dst, args.model, override)
    except (SparoClipError, ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"sparo-clip convert: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: loads with create_model({args.model!r}, pretrained={str(args.dst)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
