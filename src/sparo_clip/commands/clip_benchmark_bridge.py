"""``sparo-clip clip-benchmark ...``: CLIP_benchmark's own CLI with the SPARO models registered.

CLIP_benchmark's ``clip_benchmark`` console script never imports sparo_clip, so OpenCLIP's model registry
there lacks the SPARO configs. This bridge imports sparo_clip first (in this process only: no ``.pth`` file
or other site-wide import hook), then hands every argument to ``clip_benchmark.cli.main`` unchanged::

    sparo-clip clip-benchmark eval --model ViT-B-32-SPARO --pretrained epoch_25.pt \\
        --dataset wds/imagenet1k --dataset_root /data/wds_imagenet1k --output result.json

(``python -m sparo_clip.commands.clip_benchmark_bridge eval ...`` is the same command.)

Needs the ``bench`` extra (``pip install 'sparo-clip[bench]'``): clip_benchmark 1.6.2, the ``requests`` it
imports without declaring it, and ``numpy<2.4``: CLIP_benchmark 1.6.2's top-k accuracy helper converts a
one-element array with ``float()``, which numpy 2.4 rejects (zero-shot classification and linear probes
fail; a warning says so before the run when such a numpy is installed anyway).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

from sparo_clip import integration

logger = logging.getLogger(__name__)


def accuracy_helper_works() -> bool:
    """Whether CLIP_benchmark's top-k accuracy helper runs on the installed numpy."""
    from clip_benchmark.metrics import zeroshot_classification

    try:
        zeroshot_classification.accuracy(torch.eye(2), torch.arange(2), topk=(1,))
    except TypeError:
        return False
    return True


def pretrained_files(argv: list[str]) -> list[str]:
    """The values of ``--pretrained`` (one or more) in a CLIP_benchmark command line."""
    values, taking = [], False
    for arg in argv:
        if arg.startswith("-"):
            taking = arg == "--pretrained"
            if arg.startswith("--pretrained="):
                values.append(arg.split("=", 1)[1])
        elif taking:
            values.append(arg)
    return values


def check_checkpoints(argv: list[str], allow_nonfinite: bool = False) -> None:
    """Read every checkpoint file given as ``--pretrained`` weights-only before CLIP_benchmark starts.

    Raises:
        CheckpointError: one line naming a missing, empty, unreadable or unsafe file, or one whose weights
            hold NaN or inf (unless ``allow_nonfinite``: CLIP_benchmark would report chance accuracy).
    """
    from sparo_clip.checkpoints.loading import check_checkpoint_finite, checkpoint_tensor_shapes

    for value in pretrained_files(argv):
        looks_like_file = os.sep in value or Path(value).suffix in (
            ".pt",
            ".pth",
            ".bin",
            ".ckpt",
            ".safetensors",
        )
        if os.path.exists(value) or looks_like_file:  # anything else is a pretrained tag
            checkpoint_tensor_shapes(value)
            check_checkpoint_finite(
                value,
                allow_nonfinite,
                hint=" (sparo-clip clip-benchmark --allow-nonfinite ... loads it anyway)",
            )


def main(argv: list[str] | None = None) -> int:
    """Run ``clip_benchmark`` with ``argv`` (default: ``sys.argv[1:]``) after registering the SPARO configs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    allow_nonfinite = "--allow-nonfinite" in argv  # ours: not passed on to CLIP_benchmark
    argv = [a for a in argv if a != "--allow-nonfinite"]
    try:
        import clip_benchmark.cli as clip_benchmark_cli
    except ImportError as e:
        print(
            f"sparo-clip clip-benchmark: CLIP_benchmark is not importable ({e}); install it with: pip install 'sparo-clip[bench]'",
            file=sys.stderr,
        )
        return 2
    from sparo_clip.errors import CheckpointError

    try:
        check_checkpoints(argv, allow_nonfinite)
    except CheckpointError as e:
        print(f"sparo-clip clip-benchmark: error: {e}", file=sys.stderr)
        return 2

    if not accuracy_helper_works():
        import numpy

        logger.warning(
            "CLIP_benchmark's accuracy helper fails on numpy %s: zero-shot classification and linear probes "
            "will raise TypeError; install the bench extra's pin: pip install 'numpy<2.4'",
            numpy.__version__,
        )
    try:
        with integration.command_line("sparo-clip clip-benchmark", argv):  # its parser reads sys.argv
            clip_benchmark_cli.main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(main())
