"""Training entry point: ``torchrun ... -m sparo_clip.train [open_clip_train flags] [our flags]``.

Every ``open_clip_train`` flag is accepted and its own ``main`` runs the loop (this process imports
``sparo_clip``, so the SPARO configs are registered in every worker). Our flags:

- ``--override-model-config JSON`` (or ``@file.json``): deep-merged into the model config; recorded in
  ``params.txt`` and written with the resolved config to ``<logs>/<name>/model_config.json``.
- ``--max-params N``: abort before training (exit code 2) when the model has more parameters.
- ``--init-from CHECKPOINT``: start from every matching tensor of a checkpoint (:mod:`sparo_clip.transfer`);
  ``--resume`` still wins when it finds a checkpoint of this run.
- ``--logs-dir DIR``: the same as open_clip_train's ``--logs DIR``, which ``torchrun`` itself cannot take
  (torchrun reads ``--logs`` as an ambiguous prefix of its ``--logs-specs``).

Before anything is trained the model config is built (on the meta device, no memory), the parameter budget
checked and local data paths verified, so a bad config or a missing path fails at once with a clear message.
Adaptations to ``open_clip_train`` 3.3.0, all scoped to this process: the model factory it calls gets the
override, its parsed args carry our flags (so ``params.txt`` records them), on CPU its
DistributedDataParallel wrapper is given no ``device_ids`` (DDP rejects them for CPU modules), and
``--imagenet-v2`` is read by :class:`ImageNetV2Folder` when ``imagenetv2_pytorch`` (not on PyPI) is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
import tarfile
from pathlib import Path
from typing import Any

import torch

import sparo_clip

_logger = logging.getLogger("sparo_clip.train")


class ConfigError(ValueError):
    """A training configuration error found before training starts."""


def _our_parser() -> argparse.ArgumentParser:
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
        help="start from the matching tensors of this checkpoint (e.g. a plain OpenCLIP model's); see sparo_clip.transfer",
    )
    return p


def parse_override(value: str | None) -> dict[str, Any] | None:
    """Parse ``--override-model-config``: a JSON object, or ``@path`` to a JSON file."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ConfigError(f"--override-model-config: file {path} does not exist")
        text = path.read_text()
    try:
        override = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"--override-model-config is not valid JSON ({e.msg} at char {e.pos}): {text!r}"
        ) from e
    if not isinstance(override, dict):
        raise ConfigError(
            f"--override-model-config must be a JSON object, got {type(override).__name__}: {text!r}"
        )
    return override


def count_params(model_name: str, override: dict[str, Any] | None, **model_kwargs: Any) -> int:
    """Build the model on the meta device (validating its config) and count its parameters."""
    # OpenCLIP logs through the root logger; a placeholder handler keeps that from calling basicConfig()
    # (open_clip_train installs its own handlers later, and would print every line twice).
    placeholder = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(placeholder)
    try:
        with torch.device("meta"):
            # no tower weights on the meta device (Hugging Face refuses from_pretrained there)
            model = sparo_clip.create_model(
                model_name, override_config=override, device="meta", pretrained_text=False, **model_kwargs
            )
    finally:
        root.removeHandler(placeholder)
    return sum(p.numel() for p in model.parameters())


def _local_paths(spec: str) -> list[str]:
    from braceexpand import braceexpand

    paths = []
    for part in spec.split("::"):
        part = part.strip()
        if not part or "://" in part or part.startswith("pipe:"):
            continue  # remote or piped sources are checked by the loader
        paths.extend(braceexpand(part))
    return paths


def check_data(args: argparse.Namespace) -> None:
    """Fail fast on missing local data paths and on webdataset shards without captions."""
    for flag in ("train_data", "val_data"):
        spec = getattr(args, flag, None)
        if not spec:
            continue
        paths = _local_paths(spec)
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            shown = ", ".join(missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            raise ConfigError(
                f"--{flag.replace('_', '-')}: {len(missing)} of {len(paths)} path(s) do not exist: {shown}"
            )
        if args.dataset_type in ("webdataset", "auto") and paths and paths[0].endswith(".tar"):
            _check_shard_has_captions(paths, flag)
    for flag in ("imagenet_val", "imagenet_v2"):
        path = getattr(args, flag, None)
        if path and not os.path.isdir(path):
            raise ConfigError(f"--{flag.replace('_', '-')}: {path} is not a directory")


def _check_shard_has_captions(paths: list[str], flag: str) -> None:
    """open_clip_train's loader waits forever on shards without ``.txt``: check one readable shard."""
    for path in paths[:4]:
        try:
            with tarfile.open(path) as tar:
                names = [m.name for m in tar.getmembers()[:64]]
        except (tarfile.TarError, OSError):
            continue  # a broken shard is skipped (and logged) by the loader
        if not any(n.endswith(".txt") for n in names):
            raise ConfigError(
                f"--{flag.replace('_', '-')}: shard {path} has no '.txt' captions (found e.g. {names[:4]}); "
                "open_clip_train's webdataset loader needs '<key>.txt' next to each image"
            )
        return


class ImageNetV2Folder(torch.utils.data.Dataset):
    """ImageNetV2 in its release layout (sub-folders ``0``..``999`` named by class index).

    open_clip_train reads ``--imagenet-v2`` with ``imagenetv2_pytorch.ImageNetV2Dataset``, a package that is
    not on PyPI. When it is missing, this reader stands in for it: ``location`` is the folder with the class
    sub-folders, or its parent holding ``ImageNetV2-matched-frequency/`` (the package's convention).
    """

    def __init__(
        self, variant: str = "matched-frequency", transform: Any = None, location: str = "."
    ) -> None:
        from .eval.folders import imagenet_variant

        root = Path(location)
        if (root / f"ImageNetV2-{variant}").is_dir():
            root = root / f"ImageNetV2-{variant}"
        data = imagenet_variant("imagenet-v2", root)
        self.paths, self.targets, self.transform = data.paths, data.labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            img = img.convert("RGB")
        return (self.transform(img) if self.transform else img), self.targets[i]


def _provide_imagenet_v2_reader() -> None:
    """Register :class:`ImageNetV2Folder` as ``imagenetv2_pytorch`` unless the real package is installed."""
    import importlib.util
    import types

    if "imagenetv2_pytorch" in sys.modules or importlib.util.find_spec("imagenetv2_pytorch") is not None:
        return  # installed, or registered by an earlier call in this process
    module = types.ModuleType("imagenetv2_pytorch")
    module.ImageNetV2Dataset = ImageNetV2Folder
    sys.modules["imagenetv2_pytorch"] = module


class _CpuSafeDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that drops ``device_ids`` for CPU modules (open_clip_train passes ``device_ids=[device]``)."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)


def _adapt_open_clip_train(oc_main: Any, override: dict[str, Any] | None, extra: dict[str, Any]) -> None:
    """Scope our flags into ``open_clip_train.main`` for this process (see module docstring)."""
    original_parse = oc_main.parse_args
    state: dict[str, argparse.Namespace] = {}

    def parse_args(argv: list[str]) -> argparse.Namespace:
        args = original_parse(argv)
        vars(args).update(extra)  # recorded in params.txt
        state["args"] = args
        return args

    def create_model_and_transforms(model_name: str, *args: Any, **kwargs: Any) -> Any:
        run_args = state.get("args")
        if run_args is None or model_name != run_args.model:  # e.g. a distillation teacher
            return sparo_clip.create_model_and_transforms(model_name, *args, **kwargs)
        if run_args.rank == 0:  # the run folder exists by now
            _write_model_config(run_args, override)
        out = sparo_clip.create_model_and_transforms(model_name, *args, override_config=override, **kwargs)
        if getattr(run_args, "init_from", None):  # before --resume, which open_clip_train applies later
            from .transfer import init_from_checkpoint

            report = init_from_checkpoint(out[0], run_args.init_from)
            _logger.info("--init-from %s:\n%s", run_args.init_from, report.summary())
        return out

    oc_main.parse_args = parse_args
    oc_main.create_model_and_transforms = create_model_and_transforms
    _provide_imagenet_v2_reader()
    if not torch.cuda.is_available():
        torch.nn.parallel.DistributedDataParallel = _CpuSafeDDP


def _write_model_config(args: argparse.Namespace, override: dict[str, Any] | None) -> None:
    """The resolved model config next to the run's params.txt (load the checkpoints with it)."""
    if not args.logs or args.logs.lower() == "none":
        return
    run_dir = Path(args.logs) / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = sparo_clip.resolve_model_config(args.model, override)
    payload = {"model": args.model, "override_model_config": override, "model_cfg": resolved}
    (run_dir / "model_config.json").write_text(json.dumps(payload, indent=2) + "\n")


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
    args = oc_parse_args(rest)
    model_kwargs: dict[str, Any] = {}
    if args.force_image_size is not None:
        size = args.force_image_size
        model_kwargs["force_image_size"] = (
            size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
        )
    if args.force_context_length is not None:
        model_kwargs["force_context_length"] = args.force_context_length
    try:
        n_params = count_params(args.model, override, **model_kwargs)
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
        where = "--override-model-config" if override else "--model"
        raise ConfigError(f"{where}: model {args.model!r} cannot be built: {e}") from e
    if ours.max_params is not None and n_params > ours.max_params:
        raise ConfigError(
            f"--max-params: {args.model} has {n_params:,} parameters, more than the budget of {ours.max_params:,}"
        )
    if args.torchscript:
        try:
            sparo_clip.factory.refuse_jit(args.model, override, True)
        except NotImplementedError as e:
            raise ConfigError(f"--torchscript: {e}") from e
    if ours.init_from is not None and (not os.path.isfile(ours.init_from) or args.pretrained):
        why = (
            "is not a file" if not os.path.isfile(ours.init_from) else "cannot be combined with --pretrained"
        )
        raise ConfigError(f"--init-from {ours.init_from} {why}")
    if ours.init_from is not None:
        from .transfer import check_init_from

        try:
            check_init_from(args.model, override, ours.init_from)
        except (ValueError, RuntimeError, pickle.UnpicklingError) as e:  # a file torch.load refuses
            raise ConfigError(f"--init-from: {e}") from e
    check_data(args)
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
        rest, override, _ = prepare(argv)
    except ConfigError as e:
        print(f"sparo-clip train: error: {e}", file=sys.stderr)
        return 2
    extra = {
        "override_model_config": json.dumps(override) if override else None,
        "max_params": ours.max_params,
        "init_from": ours.init_from,
    }
    _adapt_open_clip_train(oc_main, override, extra)
    return int(oc_main.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
