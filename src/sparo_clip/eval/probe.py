"""``sparo-clip eval knn | linear``: kNN and linear probes on frozen image features, JSON results."""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import torch

from sparo_clip import inputs
from sparo_clip.errors import ConfigError
from sparo_clip.eval.common import ModelSpec, features, skipped_report
from sparo_clip.eval.encoders import load_image_encoder
from sparo_clip.eval.image_features import add_probe_args, encode_paths, folder_pair
from sparo_clip.eval.knn import DEFAULT_KS, DEFAULT_T, accuracy, knn_scores, per_class_accuracy
from sparo_clip.eval.linear import DEFAULT_WDS, linear_probe
from sparo_clip.eval.zeroshot import TOP5_MIN_CLASSES
from sparo_clip.inputs import parse_slots, slot_mask

HELP = {
    "knn": "weighted kNN on frozen image features (DINO's protocol) over an ImageFolder train/val pair",
    "linear": "linear probe (logistic regression) on frozen image features over an ImageFolder train/val pair",
}
logger = logging.getLogger(__name__)
MODEL_HELP = (
    " --model also takes PREFIX:FILE for the image encoders other packages register (dino:CKPT: the teacher"
    " encoder of a DINO / SPARO-DINO checkpoint)."
)


def _floats(value: str, what: str, cast: type = float) -> tuple:
    try:
        items = tuple(cast(v) for v in value.split(",") if v.strip())
    except ValueError as e:
        raise ConfigError(f"{what} {value!r}: expected a comma-separated list of numbers") from e
    if not items or any(not v > 0 or not math.isfinite(v) for v in items):
        raise ConfigError(f"{what} {value!r}: expected positive finite numbers")
    return items


def add_probe_commands(sub: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Register ``knn`` and ``linear`` under the eval command."""
    knn = sub.add_parser(
        "knn", parents=[parent], help=HELP["knn"], description=HELP["knn"] + "." + MODEL_HELP
    )
    add_probe_args(knn)
    knn.add_argument(
        "--k", default=",".join(map(str, DEFAULT_KS)), help="neighbour counts (default 10,20,100,200)"
    )
    knn.add_argument("--temperature", type=float, default=DEFAULT_T, help="vote weight exp(sim / T) (0.07)")
    lin = sub.add_parser(
        "linear", parents=[parent], help=HELP["linear"], description=HELP["linear"] + "." + MODEL_HELP
    )
    add_probe_args(lin)
    lin.add_argument("--wd", default=",".join(f"{w:g}" for w in DEFAULT_WDS), help="weight decay grid")
    lin.add_argument("--max-iter", type=int, default=100, help="L-BFGS iterations per fit")
    lin.add_argument("--seed", type=int, default=0, help="seed of the weight-decay selection split")


def _metrics(scores: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict[str, Any]:
    out = {"top1": accuracy(scores, labels, 1)}
    if scores.shape[1] >= TOP5_MIN_CLASSES:  # top-5 among few classes says little
        out["top5"] = accuracy(scores, labels, 5)
    return out | {"per_class_top1": per_class_accuracy(scores, labels, classnames)}


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Check the options and folders, encode (or read cached) features, and score."""
    if args.task == "knn":
        ks = _floats(args.k, "--k", int)
        if args.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    else:
        wds = _floats(args.wd, "--wd")
        if args.max_iter < 1:
            raise ConfigError(f"--max-iter must be >= 1, got {args.max_iter}")
    inputs.check_output_file(args.output)
    pair = folder_pair(args.train, args.val)  # layout errors before the model is loaded
    if args.task == "knn" and any(k > len(pair.train_paths) for k in ks):
        logger.warning(
            "--k %s: more neighbours than the %d training images in --train; those votes count all of them "
            "(k is clipped to the training set)",
            ",".join(str(k) for k in ks if k > len(pair.train_paths)), len(pair.train_paths),
        )  # fmt: skip
    spec = ModelSpec.from_args(args)
    encoder = load_image_encoder(spec)
    slots = parse_slots(args.slots, encoder.num_slots, encoder.is_sparo)
    mask = slot_mask(slots, encoder.num_slots)
    run = {"batch_size": spec.batch_size, "workers": spec.workers, "cache_dir": args.cache_dir}
    run["strict"] = spec.strict
    enc_train = encode_paths(encoder, pair.train_paths, "train", **run)
    enc_val = encode_paths(encoder, pair.val_paths, "val", **run)
    train, val = features(enc_train.slots, mask), features(enc_val.slots, mask)
    y_train = torch.tensor([pair.train_labels[i] for i in enc_train.kept])
    y_val = torch.tensor([pair.val_labels[i] for i in enc_val.kept])
    num_classes = len(pair.classnames)
    header = {
        "task": args.task,
        "model": args.model,
        "pretrained": args.pretrained,
        "precision": encoder.identity[-1] if encoder.identity else spec.precision,
        "num_slots": encoder.num_slots if encoder.is_sparo else None,
        "slots": slots,
        "data": {"train": args.train, "val": args.val, "num_train": len(y_train), "num_val": len(y_val)},
        "skipped_images": skipped_report(enc_train.skipped + enc_val.skipped),
    }
    if args.task == "knn":
        metrics = {
            f"k={k}": _metrics(
                knn_scores(train, y_train, val, k, args.temperature, num_classes), y_val, pair.classnames
            )
            for k in ks
        }
        return header | {"temperature": args.temperature, "metrics": metrics}
    device = encoder.device
    scores, info = linear_probe(
        train.to(device), y_train.to(device), val.to(device), num_classes, wds, args.seed, args.max_iter
    )
    return header | {"probe": info, "metrics": _metrics(scores.cpu(), y_val, pair.classnames)}
