"""``sparo-clip make-data``: write the synthetic shapes world (:func:`sparo_clip.data.generate.generate`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sparo_clip.data.generate import SMALL_SIZES, generate
from sparo_clip.data.sets import SizeCfg
from sparo_clip.data.world import PALETTE, SHAPES, WorldCfg
from sparo_clip.inputs import check_finite_numbers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparo-clip make-data", description="Generate the synthetic shapes world."
    )
    p.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    p.add_argument("--colors", default=",".join(WorldCfg.colors), help=f"comma list from {list(PALETTE)}")
    p.add_argument("--shapes", default=",".join(WorldCfg.shapes), help=f"comma list from {list(SHAPES)}")
    p.add_argument("--image-size", type=int, default=WorldCfg.image_size)
    p.add_argument("--min-objects", type=int, default=WorldCfg.min_objects)
    p.add_argument("--max-objects", type=int, default=WorldCfg.max_objects)
    p.add_argument("--holdout-fraction", type=float, default=WorldCfg.holdout_fraction)
    p.add_argument("--holdout", default=None, help="explicit held-out pairs, e.g. 'red circle,blue star'")
    p.add_argument("--seed", type=int, default=WorldCfg.seed)
    p.add_argument("--train-size", type=int, default=SizeCfg.train)
    p.add_argument("--val-size", type=int, default=SizeCfg.val)
    p.add_argument("--shards", type=int, default=SizeCfg.shards)
    p.add_argument("--zeroshot-per-class", type=int, default=SizeCfg.zeroshot_per_class)
    p.add_argument("--sugarcrepe-per-task", type=int, default=SizeCfg.sugarcrepe_per_task)
    p.add_argument("--test-size", type=int, default=SizeCfg.test, help="test pairs (half novel scenes)")
    p.add_argument("--sugarcrepe-val-per-task", type=int, default=SizeCfg.sugarcrepe_val_per_task)
    p.add_argument(
        "--binding-per-group", type=int, default=SizeCfg.binding_per_group, help="clean binding items"
    )
    p.add_argument("--small", action="store_true", help="a tiny world for smoke tests (overrides the sizes)")
    p.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    return p


def _check_writable(out: Path) -> None:
    """Raise ValueError naming ``out`` unless the folder can be created and written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"--out {out} cannot be written ({e.strerror or e}): choose a writable folder"
        ) from e


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_finite_numbers(args)
        holdout = (
            None if args.holdout is None else tuple(h.strip() for h in args.holdout.split(",") if h.strip())
        )
        world = WorldCfg(
            colors=args.colors,
            shapes=args.shapes,
            image_size=args.image_size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            holdout_fraction=args.holdout_fraction,
            holdout=holdout,
            seed=args.seed,
        )
        sizes = (
            SMALL_SIZES
            if args.small
            else SizeCfg(
                train=args.train_size,
                val=args.val_size,
                shards=args.shards,
                zeroshot_per_class=args.zeroshot_per_class,
                sugarcrepe_per_task=args.sugarcrepe_per_task,
                test=args.test_size,
                sugarcrepe_val_per_task=args.sugarcrepe_val_per_task,
                binding_per_group=args.binding_per_group,
            )
        )
        _check_writable(Path(args.out))  # before any image is drawn
        manifest = generate(args.out, world, sizes, force=args.force)
    except ValueError as e:
        print(f"sparo-clip make-data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while writing
        print(f"sparo-clip make-data: error: cannot write under --out {args.out}: {e}", file=sys.stderr)
        return 2
    print(
        json.dumps({"out": args.out, "train": manifest["train"], "held_out": manifest["held_out"]}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
