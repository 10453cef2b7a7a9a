"""Training entry point: ``torchrun ... -m sparo_clip.train [open_clip_train flags] [our flags]``.

Every ``open_clip_train`` flag is accepted and its own ``main`` runs the loop (this process imports
``sparo_clip``, so the SPARO configs are registered in every worker). Our flags:

- ``--override-model-config JSON`` (or ``@file.json``): deep-merged into the model config; recorded in
  ``params.txt`` and written with the resolved config to ``<logs>/<name>/model_config.json``.
- ``--max-params N``: abort before training (exit code 2) when the model has more parameters.
- ``--init-from CHECKPOINT``: start from every matching tensor of a checkpoint (:mod:`sparo_clip.checkpoints.transfer`);
  ``--resume`` still wins when it finds a checkpoint of this run.
- ``--logs-dir DIR``: the same as open_clip_train's ``--logs DIR``, which ``torchrun`` itself cannot take
  (torchrun reads ``--logs`` as an ambiguous prefix of its ``--logs-specs``).
- ``--no-memory-check``: train even when the weights, gradients and AdamW state alone exceed this machine's
  memory (refused by default, with the numbers).

Before anything is trained the model is built on the meta device (no memory) and the numbers (finite), the
parameter budget and memory, data, logs folder, precision and ``--resume`` file (or, for ``--resume latest``,
the run's newest good checkpoint and recorded model) are checked (:mod:`sparo_clip.training.checks`), so a bad
command fails at once with one clear line (exit code 2) and leaves nothing behind. The run itself is
open_clip_train's loop, adapted for its duration only through :func:`sparo_clip.integration.open_clip_train_run`
(:mod:`sparo_clip.training.run` says what changes); a failure during the run (unusable data, a non-finite loss,
no readable checkpoint to resume, a checkpoint that cannot be written) ends it with one clear line and exit
code 1, and a run that fails before its first step takes back what it wrote (:class:`.train_run.RunFolder`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from sparo_clip import integration
from sparo_clip.errors import (
    ConfigError,
    SparoClipError,
    one_line,
)
from sparo_clip.inputs import parse_override
from sparo_clip.models.builder import (
    check_schema_pretrained,
    create_model_and_transforms,
    get_tokenizer,
    refuse_jit,
    resolve_model_config,
)
from sparo_clip.models.param_count import check_training_memory, count_parameters, meta_model
from sparo_clip.training import checks as train_checks
from sparo_clip.training import run as train_run
from sparo_clip.training.run import ImageNetV2Folder

__all__ = [
    "check_data",
    "count_params",
    "main",
    "parse_override",
    "prepare",
]
_logger = logging.getLogger("sparo_clip.train")


def _our_parser() -> argparse.ArgumentParser:
    """Our flags (everything else is open_clip_train's); new flags of this project go here."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--override-model-config", default=None, help="JSON (or @file.json) deep-merged into the model config"
    )
    p.add_argument(
        "--max-params", type=int, default=None, help="abort before training if the model is larger"
    )
    p.add_argument("--logs-dir", default=None, help="where to store logs (open_clip_train's --logs)")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from the matching tensors of this checkpoint (e.g. a plain OpenCLIP model's); see sparo_clip.checkpoints.transfer",
    )
    p.add_argument(
        "--no-memory-check",
        action="store_true",
        help="train even when weights, gradients and optimiser state alone exceed this machine's memory",
    )
    p.add_argument(
        "--no-fused-adamw",
        action="store_true",
        help="AdamW as open_clip_train builds it (a loop over the parameters) instead of torch's fused kernel",
    )
    return p


def count_params(model_name: str, override: dict[str, Any] | None, **model_kwargs: Any) -> int:
    """Build the model on the meta device (validating its config) and count its parameters."""
    return count_parameters(meta_model(model_name, override, **model_kwargs))


def _world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_data(args: argparse.Namespace) -> None:
    """Fail fast on missing, unreadable or too little local data (:func:`.train_checks.check_data`)."""
    train_checks.check_data(args, world_size=_world_size())


def _write_model_config(args: argparse.Namespace, override: dict[str, Any] | None) -> None:
    """The resolved model config next to the run's params.txt (load the checkpoints with it)."""
    if not args.logs or args.logs.lower() == "none":
        return
    run_dir = Path(args.logs) / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolve_model_config(args.model, override)
    payload = {"model": args.model, "override_model_config": override, "model_cfg": resolved}
    (run_dir / "model_config.json").write_text(json.dumps(payload, indent=2) + "\n")


class _Run:
    """One run: our flags carried into open_clip_train through the adapters of :mod:`.train_run`."""

    def __init__(self, override: dict[str, Any] | None, extra: dict[str, Any]) -> None:
        self.override, self.extra, self.state = override, extra, train_run.RunState()

    def parse_args(self, original: Any, argv: list[str]) -> argparse.Namespace:
        args = original(argv)
        vars(args).update(self.extra)  # recorded in params.txt
        self.state.args, self.state.resume_latest = args, args.resume == "latest"
        return args

    def create_model_and_transforms(self, model_name: str, *args: Any, **kwargs: Any) -> Any:
        """The model factory open_clip_train.main calls: where the run's model is created."""
        run_args = self.state.args
        if run_args is None or model_name != run_args.model:  # e.g. a distillation teacher
            return create_model_and_transforms(model_name, *args, **kwargs)
        train_run.resume_latest(self.state)  # open_clip_train has chosen by name; it loads after this call
        if run_args.rank == 0:  # the run folder exists by now
            train_run.clean_run_start(self.state)
            _write_model_config(run_args, self.override)
        out = create_model_and_transforms(model_name, *args, override_config=self.override, **kwargs)
        if getattr(run_args, "init_from", None):  # before --resume, which open_clip_train applies later
            from sparo_clip.checkpoints.transfer import init_from_checkpoint

            report = init_from_checkpoint(out[0], run_args.init_from)
            _logger.info("--init-from %s:\n%s", run_args.init_from, report.summary())
        return out

    def get_tokenizer(self, model_name: str, context_length: int | None = None, **kwargs: Any) -> Any:
        """The tokenizer factory open_clip_train calls: the run's model gets the tokenizer of its text tower."""
        run_args = self.state.args
        own = run_args is not None and model_name == run_args.model
        override = self.override if own else None
        return get_tokenizer(model_name, override, context_length=context_length, **kwargs)

    def adapters(self) -> integration.RunAdapters:
        import open_clip_train.main as oc_main

        pt_load, latest = train_run.make_checkpoint_readers(self.state, oc_main.get_latest_checkpoint)
        return integration.RunAdapters(
            parse_args=self.parse_args,
            create_model_and_transforms=self.create_model_and_transforms,
            get_tokenizer=self.get_tokenizer,
            create_loss=train_run.make_loss(self.state),
            pt_load=pt_load,
            get_latest_checkpoint=latest,
            save=train_run.save,
            tarfile_to_samples=train_run.make_tarfile_to_samples(self.state),
            shuffle=train_run.make_shuffle(self.state),
            imagenet_v2_dataset=ImageNetV2Folder,
            csv_dataset=train_run.make_csv_dataset(self.state),
            cpu_safe_ddp=None if torch.cuda.is_available() else train_run.CpuSafeDDP,
            adamw=train_run.fused_adamw if self.extra.get("fused_adamw") else None,
        )


def prepare(argv: list[str]) -> tuple[list[str], dict[str, Any] | None, argparse.Namespace]:
    """Split our flags from open_clip_train's, validate everything before training.

    Returns:
        (argv for open_clip_train, the override dict, open_clip_train's parsed args).
    """
    from open_clip_train.params import parse_args as oc_parse_args

    ours, rest = _our_parser().parse_known_args(argv)
    if ours.logs_dir is not None:
        rest = [*rest, "--logs", ours.logs_dir]
    override = parse_override(ours.override_model_config)
    args = oc_parse_args(rest)  # a usage error exits here (code 2), as argparse does
    train_checks.check_numbers(args)
    train_checks.check_precision(args)
    train_checks.check_reporting(args)
    model_kwargs: dict[str, Any] = {}
    if args.force_image_size is not None:
        size = args.force_image_size
        model_kwargs["force_image_size"] = (
            size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
        )
    if args.force_context_length is not None:
        model_kwargs["force_context_length"] = args.force_context_length
    check_schema_pretrained(args.model, args.pretrained, "--pretrained")
    where = "--override-model-config" if override else "--model"
    try:
        train_checks.check_tower_dims(resolve_model_config(args.model, override), where)
        model = meta_model(args.model, override, **model_kwargs)
    except (ValueError, TypeError, NotImplementedError, RuntimeError, AssertionError, KeyError) as e:
        if isinstance(e, ConfigError) and str(e).startswith(where):
            raise
        raise ConfigError(f"{where}: model {args.model!r} cannot be built: {e}") from e
    n_params = count_parameters(model)
    if ours.max_params is not None and n_params > ours.max_params:
        raise ConfigError(
            f"--max-params: {args.model} has {n_params:,} parameters, more than the budget of {ours.max_params:,}"
        )
    if not ours.no_memory_check:
        on_gpu = torch.cuda.is_available() and str(getattr(args, "device", "cuda")).startswith("cuda")
        check_training_memory(model, args.device if on_gpu else "cpu", where)
    if args.torchscript:
        try:
            refuse_jit(args.model, override, True)
        except NotImplementedError as e:
            raise ConfigError(f"--torchscript: {e}") from e
    if ours.init_from is not None and (not os.path.isfile(ours.init_from) or args.pretrained):
        why = (
            "is not a file" if not os.path.isfile(ours.init_from) else "cannot be combined with --pretrained"
        )
        raise ConfigError(f"--init-from {ours.init_from} {why}")
    if ours.init_from is not None:
        from sparo_clip.checkpoints.transfer import check_init_from

        try:
            check_init_from(args.model, override, ours.init_from)
        except (ValueError, RuntimeError, pickle.UnpicklingError) as e:  # a file torch.load refuses
            raise ConfigError(f"--init-from: {e}") from e
    train_checks.check_logs(args)
    check_data(args)
    train_checks.check_resume(args, model)
    train_checks.check_resume_latest(args, model, override)
    _logger.info("model %s: %s parameters", args.model, f"{n_params:,}")
    return rest, override, args


def main(argv: list[str] | None = None) -> int:
    """Run open_clip_train's main with SPARO models registered and our extra flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    import open_clip_train.main as oc_main

    if any(a in ("-h", "--help") for a in argv):
        _our_parser().print_help()
        print("\nAll other flags are open_clip_train's:\n")
        oc_main.parse_args(["--help"])  # prints and exits
    try:
        ours = _our_parser().parse_known_args(argv)[0]
        rest, override, parsed = prepare(argv)
    except SparoClipError as e:
        print(f"sparo-clip train: error: {one_line(e)}", file=sys.stderr)
        return 2
    extra = {
        "override_model_config": json.dumps(override) if override else None,
        "max_params": ours.max_params,
        "init_from": ours.init_from,
        "no_memory_check": ours.no_memory_check,
        "fused_adamw": not ours.no_fused_adamw,
    }
    run = _Run(override, extra)
    first_rank = os.environ.get("RANK", "0") == "0"
    folder = train_run.RunFolder(parsed.logs, parsed.name) if first_rank else None
    rc = 1
    try:
        with integration.open_clip_train_run(run.adapters()):
            rc = int(oc_main.main(rest) or 0)
        return rc
    except SparoClipError as e:
        print(f"sparo-clip train: error: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if rc != 0 and run.state.steps == 0 and folder is not None:  # failed before its first step
            folder.take_back(run.state.arg("name"))


if __name__ == "__main__":
    sys.exit(main())
