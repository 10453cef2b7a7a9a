"""``sparo-clip eval zeroshot | retrieval | sugarcrepe | knn | linear``: evaluate any OpenCLIP model, JSON results."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from sparo_clip import inputs
from sparo_clip.eval.common import (
    ModelSpec,
    common_parser,
    data_info,
    load_context,
    run_command,
    run_info,
    skipped_report,
    write_results,
)
from sparo_clip.eval.probe import HELP as PROBE_HELP
from sparo_clip.eval.probe import add_probe_commands, run_probe
from sparo_clip.eval.tasks import HELP, ITEM_TASKS, TASKS
from sparo_clip.inputs import parse_slots, slot_mask


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparo-clip eval", description="Evaluate a SPARO or any OpenCLIP model; results as JSON."
    )
    sub = parser.add_subparsers(
        dest="task", required=True, metavar="{" + ",".join([*TASKS, *PROBE_HELP]) + "}"
    )
    parent = common_parser(with_slots=True)
    for name, module in TASKS.items():
        task_parser = sub.add_parser(name, parents=[parent], help=HELP[name], description=HELP[name])
        module.add_data_args(task_parser)
        if name in ITEM_TASKS:
            task_parser.add_argument(
                "--save-items", metavar="FILE", default=None, help="also save per-item scores (torch.save)"
            )
    add_probe_commands(sub, parent)
    return parser


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Check the data, load the model, encode, and score with the selected slots."""
    inputs.check_finite_numbers(args)
    if args.task in PROBE_HELP:
        return run_probe(args)
    module = TASKS[args.task]
    spec = ModelSpec.from_args(args).resolved()  # options and --output before the data is scanned
    inputs.check_output_file(args.output)
    data = module.prepare(args)  # layout errors before the model is loaded
    ctx = load_context(spec)
    slots = parse_slots(args.slots, ctx.num_slots, ctx.is_sparo)
    caches = module.encode(ctx, data)
    mask = slot_mask(slots, ctx.num_slots)
    metrics = {name: cache.to(ctx.device).metrics(mask) for name, cache in caches.items()}
    if getattr(args, "save_items", None):  # what the metrics are computed from, for resampling
        Path(args.save_items).parent.mkdir(parents=True, exist_ok=True)
        torch.save({name: cache.items(mask) for name, cache in caches.items()}, args.save_items)
    if args.task != "zeroshot":  # one dataset: no per-dataset level
        (metrics,) = metrics.values()
    skipped = [reason for cache in caches.values() for reason in getattr(cache, "skipped", [])]
    info = {"data": data_info(args, exclude=("save_items",)), "metrics": metrics}
    return (
        {"task": args.task} | run_info(spec, ctx, slots) | info | {"skipped_images": skipped_report(skipped)}
    )


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    return run_command(
        f"sparo-clip eval {args.task}",
        lambda: evaluate(args),
        lambda result: write_results(result, args.output),
    )


if __name__ == "__main__":
    sys.exit(main())
