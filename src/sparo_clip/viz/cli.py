"""``sparo-clip viz``: slot attention pictures for image-caption pairs.

Example:
    sparo-clip viz --model tiny-SPARO --pretrained run/checkpoints/epoch_5.pt \\
        --images data/val/images --captions data/val/captions.txt --out viz/

writes ``viz/pairs/NNN_<image>.png`` (per pair, its top-k slots), ``viz/slots/slot_SS.png`` (per slot,
the pairs that agree most on it) and ``viz/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sparo_clip.checkpoints.loading import load_model
from sparo_clip.errors import UnreadableImage
from sparo_clip.inputs import (
    check_device,
    check_finite_numbers,
    check_output_folder,
    parse_override,
    parse_slots,
    read_image,
)
from sparo_clip.viz.figures import render_pair, render_slot_gallery
from sparo_clip.viz.samples import SlotReadout, compute_readout

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_files(paths: Sequence[str]) -> list[Path]:
    """The image files given: one folder (its images sorted by name) or a list of files (kept in order)."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        files = sorted(p for p in Path(paths[0]).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"--images {paths[0]}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"--images: not files (give one folder or a list of image files): {missing}")
    return files


def read_captions(path: str | Path, count: int) -> list[str]:
    """One caption per line, as many as there are images."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--captions {path}: no such file (expected one caption per line)")
    captions = path.read_text(encoding="utf-8").splitlines()
    if len(captions) != count:
        raise ValueError(
            f"--captions {path} has {len(captions)} lines but there are {count} images: give one caption "
            "per line, in the order of the images (sorted by name when --images is a folder)"
        )
    return captions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparo-clip viz", description="Slot attention pictures for image-caption pairs."
    )
    p.add_argument("--model", required=True, help="model name (e.g. ViT-B-32-SPARO) or local-dir:DIR")
    p.add_argument("--pretrained", default=None, help="checkpoint file (default: untrained weights)")
    p.add_argument(
        "--override-model-config",
        dest="override",
        default=None,
        help="JSON (or @file.json) deep-merged into the model config, as the model was trained with",
    )
    p.add_argument("--images", nargs="+", required=True, help="one folder (sorted by name) or image files")
    p.add_argument("--captions", required=True, help="text file, one caption per image line by line")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slots", default=None, help="slot ids to show: '0,5,17' or a select-slots JSON file")
    p.add_argument("--top-k", type=int, default=3, help="slots per pair picture (default 3)")
    p.add_argument(
        "--gallery-slots", type=int, default=8, help="slot galleries to draw, best first (default 8)"
    )
    p.add_argument("--gallery-size", type=int, default=6, help="pairs per slot gallery (default 6)")
    p.add_argument("--max-pairs", type=int, default=None, help="draw only the first N pair pictures")
    p.add_argument("--min-agreement", type=float, default=0.75,
                   help="drop slots whose image-text agreement is lower (default 0.75; falls back to "
                        "unfiltered slots, with a warning, when none pass)")  # fmt: skip
    p.add_argument("--keep-special", action="store_true",
                   help="keep slots whose text attention peaks on start- or end-of-text (dropped by default)")  # fmt: skip
    p.add_argument("--sharpen", type=float, default=2.0, help="exponent for the heat maps (default 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop with an error at the first unreadable image instead of skipping it (and its caption)",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load weights holding NaN or inf (refused by default), for debugging",
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    check_finite_numbers(args)
    for name in ("top_k", "gallery_size", "batch_size", "dpi"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.gallery_slots < 0:
        raise ValueError(f"--gallery-slots must be >= 0, got {args.gallery_slots}")
    if args.max_pairs is not None and args.max_pairs < 0:
        raise ValueError(f"--max-pairs must be >= 0, got {args.max_pairs}")
    if args.sharpen <= 0:
        raise ValueError(f"--sharpen must be > 0, got {args.sharpen}")
    check_device(args.device)


def read_images(
    files: Sequence[Path], captions: Sequence[str], preprocess: Any, strict: bool = False
) -> tuple[list[torch.Tensor], list[Path], list[str], list[str]]:
    """Preprocessed images with their files and captions; unreadable images are skipped (with their caption)
    and a warning naming them, or, with ``strict``, raise ValueError naming the file.

    Returns:
        (images, files, captions, skipped reasons).
    """
    images, kept, kept_captions, skipped = [], [], [], []
    for f, caption in zip(
        tqdm(files, desc="images", unit="img", disable=len(files) < 50), captions, strict=True
    ):
        try:
            images.append(preprocess(read_image(f)))
        except UnreadableImage as e:
            if strict:
                raise ValueError(f"{e} (--strict; without it unreadable images are skipped)") from e
            logger.warning("skipping unreadable image and its caption: %s", e)
            skipped.append(str(e))
            continue
        kept.append(f)
        kept_captions.append(caption)
    if not images:
        raise ValueError(f"--images: none of the {len(files)} images can be read (first: {skipped[0]})")
    return images, kept, kept_captions, skipped


def load_readout(args: argparse.Namespace) -> SlotReadout:
    """Load the model, images and captions named by ``args`` and compute the read-out.

    Unreadable images skipped on the way are listed in ``args.skipped_images``.
    """
    slots = parse_slots(args.slots)
    files = image_files(args.images)
    captions = read_captions(args.captions, len(files))
    check_output_folder(args.out)
    model, preprocess, tokenizer = load_model(
        args.model,
        args.pretrained,
        override_config=parse_override(args.override),
        allow_nonfinite=args.allow_nonfinite,
    )
    sparo_cfg = getattr(model, "sparo_cfg", None)
    if slots is not None and sparo_cfg is not None:
        slots = parse_slots(args.slots, sparo_cfg.num_slots)  # now also checked against the model's slots
    if args.pretrained is None and not args.model.startswith(("local-dir:", "hf-hub:")):
        logger.warning("no --pretrained checkpoint: showing an untrained %s", args.model)
    images, files, captions, args.skipped_images = read_images(files, captions, preprocess, args.strict)
    return compute_readout(
        model, torch.stack(images), captions, tokenizer, names=[f.name for f in files], slots=slots,
        min_agreement=args.min_agreement, drop_special=not args.keep_special,
        batch_size=args.batch_size, device=args.device,
    )  # fmt: skip


def write_pictures(readout: SlotReadout, args: argparse.Namespace) -> dict[str, list[str]]:
    """Draw the pair pictures and slot galleries into ``args.out``; return the files written."""
    out = Path(args.out)
    n_pairs = readout.num_pairs if args.max_pairs is None else min(args.max_pairs, readout.num_pairs)
    unfiltered = [i for i in range(readout.num_pairs) if not readout.pair_slots(i, args.top_k)[1]]
    if unfiltered:
        logger.warning(
            "no slot passed the filters (min agreement %s, drop start/end-of-text peaks %s) on %d of %d "
            "pairs: their pictures show unfiltered slots. Lower --min-agreement or pass --keep-special.",
            args.min_agreement, not args.keep_special, len(unfiltered), readout.num_pairs,
        )  # fmt: skip
    written: dict[str, list[str]] = {"pairs": [], "slots": []}
    for i in tqdm(range(n_pairs), desc="pair pictures", unit="png"):
        stem = Path(readout.names[i]).stem
        path = render_pair(
            readout, i, out / "pairs" / f"{i:03d}_{stem}.png", args.top_k, args.sharpen, args.dpi
        )
        written["pairs"].append(str(path))
    ranking, mean, filtered = readout.slot_ranking()
    if not filtered:
        logger.warning("no slot passed the filters on any pair: galleries rank slots by plain mean agreement")
    for rank, slot in enumerate(tqdm(ranking[: args.gallery_slots], desc="slot galleries", unit="png")):
        pairs = readout.slot_pairs(slot, args.gallery_size, filtered=filtered)
        title = (
            f"slot {slot} (rank {rank + 1} of {len(ranking)}{'' if filtered else ', unfiltered'}): "
            f"mean agreement {float(mean[slot]):.2f}; the {len(pairs)} pairs that agree most on it"
        )
        path = render_slot_gallery(
            readout, slot, out / "slots" / f"slot_{slot:02d}.png", pairs=pairs, sharpen=args.sharpen,
            dpi=args.dpi, title=title,
        )  # fmt: skip
        written["slots"].append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sparo-clip viz``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_args(args)
        readout = load_readout(args)
    except ValueError as e:
        parser.print_usage(sys.stderr)
        print(f"sparo-clip viz: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)  # checked before; created only now that there is work
        written = write_pictures(readout, args)
        skipped = args.skipped_images
        summary = readout.summary(args.top_k) | {
            "files": written,
            "skipped_images": {"count": len(skipped), "files": skipped[:20]},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as e:  # checked before the work; a disk can still fill up since
        print(f"sparo-clip viz: error: cannot write into {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    logger.info("wrote %d pair pictures and %d slot galleries to %s", len(written["pairs"]),
                len(written["slots"]), out)  # fmt: skip
    return 0
