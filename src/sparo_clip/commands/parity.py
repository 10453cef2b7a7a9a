"""``sparo-clip parity``: a parameter-matched SPARO config from an OpenCLIP ViT config (:mod:`sparo_clip.models.parity`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sparo_clip.models.parity import config_text, parity_search, write_registry


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparo-clip parity",
        description="Build a SPARO config from an OpenCLIP ViT config with no more parameters than it.",
    )
    p.add_argument("base", nargs="?", help="registered base model, e.g. ViT-B-16")
    p.add_argument("--L", type=int, default=64, help="number of slots (default 64)")
    p.add_argument("--V", type=int, default=64, help="slot width (default 64); embed_dim = L * V")
    p.add_argument("--heads", type=int, default=None, help="key/value projections (default L)")
    p.add_argument("--attn-dim", type=int, default=None, help="key width (default tower width / heads)")
    p.add_argument("--value-dim", type=int, default=None, help="value width (needs --no-share-kv)")
    p.add_argument("--no-share-kv", dest="share_kv", action="store_false", help="separate value projection")
    p.add_argument("--share-queries", action="store_true", help="text read-out reuses the vision queries")
    p.add_argument("--slot-norm", default="cont:const", help="'<rep>:<weight>' (default cont:const)")
    p.add_argument(
        "--override",
        default=None,
        help='JSON deep-merged into the base config, e.g. \'{"text_cfg": {"pad_id": 1}}\'',
    )
    p.add_argument("--output", default=None, help="write the config JSON here instead of stdout")
    p.add_argument(
        "--write-registry", action="store_true", help="regenerate model_configs/<base>-SPARO.json files"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``sparo-clip parity BASE [options]``: print (or write) the config, and both parameter counts."""
    args = _parser().parse_args(argv)
    if args.write_registry:
        for name, r in write_registry().items():
            depth = r.config["sparo_cfg"]["reduce_depth"]
            print(f"{name}: reduce_depth {depth}, {r.params:,} <= {r.base_params:,} parameters")
        return 0
    if not args.base:
        _parser().error("BASE is required (or --write-registry)")
    kwargs = {"heads": args.heads, "attn_dim": args.attn_dim, "value_dim": args.value_dim}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if not args.share_kv:
        kwargs["share_kv"] = False
    if args.share_queries:
        kwargs["share_queries"] = True
    try:
        override = json.loads(args.override) if args.override else None
        if override is not None and not isinstance(override, dict):
            raise ValueError(f"--override must be a JSON object, got {args.override!r}")
        r = parity_search(args.base, args.L, args.V, override, slot_norm=args.slot_norm, **kwargs)
    except (ValueError, NotImplementedError, json.JSONDecodeError) as e:
        print(f"sparo-clip parity: error: {e}", file=sys.stderr)
        return 2
    text = config_text(r.config)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    depth = r.config["sparo_cfg"]["reduce_depth"]
    print(
        f"{args.base}: {r.base_params:,} parameters; SPARO L={args.L} V={args.V} with reduce_depth {depth}: "
        f"{r.params:,} parameters",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
