"""``sparo-clip select-slots``: find the SPARO slots that maximise a metric on a validation split.

Images and texts are encoded once into slot tensors (N, L, V); every candidate subset is scored on these
cached tensors with the unselected slots masked out and the rest renormalised (as ``encode_*(slots=...)``
does). The result JSON holds the selected slots (read by every eval command's ``--slots FILE``), the search
trace, and the metric with all slots vs the selected slots on validation and on the held-out test split.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from sparo_clip import inputs
from sparo_clip.errors import ConfigError
from sparo_clip.eval.cli import setup_logging
from sparo_clip.eval.common import (
    EvalContext,
    ModelSpec,
    common_parser,
    data_info,
    load_context,
    run_command,
    run_info,
    skipped_report,
    write_results,
)
from sparo_clip.eval.search import METHODS, search
from sparo_clip.eval.tasks import DEFAULT_METRIC, HELP, TASKS
from sparo_clip.inputs import slot_mask

logger = logging.getLogger(__name__)
SEARCH_OPTIONS = ("metric", "method", "val_fraction", "seed", "test_split")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparo-clip select-slots",
        description="Search the SPARO slot subset that maximises a metric on validation data; report it on test data.",
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="{" + ",".join(TASKS) + "}")
    parent = common_parser(with_slots=False)
    for name, module in TASKS.items():
        p = sub.add_parser(name, parents=[parent], help=HELP[name], description=HELP[name])
        module.add_data_args(p)
        g = p.add_argument_group("slot search")
        g.add_argument(
            "--metric",
            default=DEFAULT_METRIC[name],
            choices=module.METRICS,
            help=f"metric to maximise (default: {DEFAULT_METRIC[name]})",
        )
        g.add_argument(
            "--method",
            default="both",
            choices=METHODS,
            help="greedy forward selection, backward elimination, or both (default)",
        )
        g.add_argument(
            "--val-fraction",
            type=float,
            default=0.5,
            help="share of the data used for validation (default 0.5)",
        )
        g.add_argument("--seed", type=int, default=0, help="seed of the validation/test split")
        g.add_argument(
            "--test-split",
            metavar="PATH",
            default=None,
            help="held-out test data in the same format as the main data path (then the main data is all validation)",
        )
    return parser


def _split(args: argparse.Namespace) -> tuple[EvalContext, tuple[Any, Any], dict[str, Any], ModelSpec]:
    """Check the data, load the model, encode, and return the validation and test caches."""
    module = TASKS[args.task]
    inputs.check_finite_numbers(args)
    if args.test_split is None and not 0.0 < args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {args.val_fraction}: must lie strictly between 0 and 1")
    spec = ModelSpec.from_args(args).resolved()  # options and --output before the data is scanned
    inputs.check_output_file(args.output)
    if args.task == "zeroshot" and len(module.data_specs(args)) != 1:
        raise ConfigError(
            "select-slots zeroshot takes exactly one dataset (--data or one --imagenet-* folder)"
        )
    data = module.prepare(args)
    test_data = module.prepare(module.set_data_path(args, args.test_split)) if args.test_split else None
    ctx = load_context(spec)
    if not ctx.is_sparo:
        raise ConfigError(f"select-slots needs a SPARO model; {args.model!r} has no slots")
    (cache,) = module.encode(ctx, data).values()
    if test_data is not None:
        (test,) = module.encode(ctx, test_data).values()
        return ctx, (cache, test), {"test_split": args.test_split}, spec
    val, test = cache.split(args.val_fraction, args.seed)
    return ctx, (val, test), {"val_fraction": args.val_fraction, "seed": args.seed}, spec


def select(args: argparse.Namespace) -> dict[str, Any]:
    ctx, (val, test), split, spec = _split(args)
    metric, num_slots = args.metric, ctx.num_slots
    if metric not in val.metrics(None):
        raise ConfigError(
            f"--metric {metric}: not measured on this data; available: {sorted(val.metrics(None))}"
        )
    fast = val.prepare_search(ctx.device)
    found = search(lambda mask: fast.metrics(mask)[metric], num_slots, args.method)
    chosen, chosen_by = found["best"]["slots"], found["best_method"]
    all_val, sel_val = val.metrics(None), val.metrics(slot_mask(chosen, num_slots))
    if sel_val[metric] < all_val[metric]:  # rounding between the search's and the direct path
        logger.info("selected slots score below all slots on direct recomputation: keeping all slots")
        chosen, chosen_by, sel_val = list(range(num_slots)), "all", all_val
    all_test, sel_test = test.metrics(None), test.metrics(slot_mask(chosen, num_slots))
    info = run_info(spec, ctx, None)
    info.pop("slots")
    return (
        {"task": args.task, "metric": metric, "method": args.method}
        | info
        | {
            "selected_slots": chosen,
            "selected_by": chosen_by,
            "data": data_info(args, exclude=SEARCH_OPTIONS),
            "split": split,
            "val": {"all_slots": all_val[metric], "selected": sel_val[metric]},
            "test": {"all_slots": all_test.get(metric), "selected": sel_test.get(metric)},
            "val_metrics": {"all_slots": all_val, "selected": sel_val},
            "test_metrics": {"all_slots": all_test, "selected": sel_test},
            "trace": found["traces"],
            "skipped_images": skipped_report(
                list(dict.fromkeys(getattr(val, "skipped", []) + getattr(test, "skipped", [])))
            ),
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    return run_command(
        f"sparo-clip select-slots {args.task}",
        lambda: select(args),
        lambda result: write_results(result, args.output, omit_from_stdout=("trace",)),
    )


if __name__ == "__main__":
    sys.exit(main())
