"""The single seam between sparo_clip and the internals of OpenCLIP, open_clip_train, webdataset and torch.

Everything else in sparo_clip uses public APIs only. Each touch below says why it exists and the version
it was checked against (open_clip_torch / open_clip_train 3.3.0, torch 2.14.1, webdataset as pinned).

Two kinds of touch:

- :func:`install_factory_hook` (installed on ``import sparo_clip``, for the life of the process): the
  ``CLIP`` / ``CustomTextCLIP`` names inside ``open_clip.factory`` become dispatching classes, so
  ``open_clip.create_model`` builds our models from their config keys. They still answer ``isinstance`` and
  ``issubclass`` as the original classes do.
- :func:`open_clip_train_run` (one training run): a context manager that adapts ``open_clip_train`` for
  that run and restores every replaced object on exit, even on error (see :data:`RUN_PATCH_POINTS`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import open_clip
import open_clip.factory as oc_factory
import torch

OPEN_CLIP_VERSION = "3.3.0"  # open_clip_torch and open_clip_train versions every touch was checked against
TORCH_VERSION = "2.14.1"
_HOOK_ATTR = "_sparo_clip_hook"
_logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- factory hook


class _DispatchMeta(type):
    """Metaclass of the dispatching stand-ins: calling one builds a model, ``isinstance`` sees the original.

    A stand-in is a real subclass of the original class, so attribute lookup (``open_clip.factory.CLIP.encode_text``)
    and subclassing work; a user's subclass of a stand-in is an ordinary class (no dispatch).
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if _HOOK_ATTR not in cls.__dict__:  # a subclass someone derived from the stand-in
            return super().__call__(*args, **kwargs)
        builder = cls._select_builder(kwargs)
        return (builder or cls._sparo_original)(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        if _HOOK_ATTR not in cls.__dict__:
            return super().__instancecheck__(obj)
        return isinstance(obj, cls._sparo_original)

    def __subclasscheck__(cls, sub: type) -> bool:
        if _HOOK_ATTR not in cls.__dict__:
            return super().__subclasscheck__(sub)
        return issubclass(sub, cls._sparo_original)


def _dispatching_class(original: type, select_builder: Callable[[dict[str, Any]], Any]) -> type:
    namespace = {
        "__doc__": f"{original.__name__}, or the sparo_clip builder named by a config key (sparo_clip hook).",
        "__module__": original.__module__,
        "__qualname__": original.__qualname__,
        "_sparo_original": original,
        "_select_builder": staticmethod(select_builder),
        _HOOK_ATTR: original,
    }
    return _DispatchMeta(original.__name__, (original,), namespace)


def install_factory_hook(select_builder: Callable[[dict[str, Any]], Any]) -> None:
    """Let ``open_clip.create_model`` build sparo_clip models (idempotent; lasts for the process).

    OpenCLIP 3.3.0's ``create_model`` picks ``CLIP`` or ``CustomTextCLIP`` from ``open_clip.factory``'s
    namespace and calls it with the whole model config; no public extension point exists. Both names become
    classes whose call asks ``select_builder(config)`` for a builder (None: the original class builds it).
    """
    if open_clip.__version__ != OPEN_CLIP_VERSION:
        _logger.warning(
            "sparo_clip's factory hook was checked against open_clip_torch %s, found %s",
            OPEN_CLIP_VERSION,
            open_clip.__version__,
        )
    for name in ("CLIP", "CustomTextCLIP"):
        current = getattr(oc_factory, name)
        if _HOOK_ATTR not in current.__dict__:
            setattr(oc_factory, name, _dispatching_class(current, select_builder))


def install_checkpoint_hook(checked_load: Callable[..., Any]) -> None:
    """Let sparo_clip check the checkpoint files ``open_clip.create_model(pretrained=FILE)`` loads (idempotent).

    OpenCLIP 3.3.0's ``create_model`` loads a checkpoint file through ``open_clip.factory.load_checkpoint``
    (looked up in that module's namespace at call time), and a zero-byte, text or other-model file ends there
    in an EOFError, an unpickler message or a long key list. That name becomes a function calling
    ``checked_load(original, model, checkpoint_path, *args, **kwargs)``, which passes models that are not
    ours to ``original`` untouched. ``open_clip.load_checkpoint`` (the package-level name) stays the original.
    """
    current = oc_factory.load_checkpoint
    if hasattr(current, _HOOK_ATTR):
        return

    @functools.wraps(current)
    def load_checkpoint(model: Any, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        return checked_load(current, model, checkpoint_path, *args, **kwargs)

    setattr(load_checkpoint, _HOOK_ATTR, current)
    oc_factory.load_checkpoint = load_checkpoint


def hook_installed() -> bool:
    """Whether :func:`install_factory_hook` and :func:`install_checkpoint_hook` are in place."""
    names = ("CLIP", "CustomTextCLIP", "load_checkpoint")
    return all(_HOOK_ATTR in vars(getattr(oc_factory, n)) for n in names)


_CHECKED_BUILD: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sparo_clip_checked_build", default=None
)


@contextlib.contextmanager
def checked_build(model_name: str) -> Iterator[None]:
    """Inside this scope (one ``sparo_clip.create_model(model_name, ...)`` call), the checkpoint hook checks every
    model's file and names the model as the caller did.

    Outside it, only sparo_clip's own models are checked: a third party's plain OpenCLIP model loads exactly as
    without ``import sparo_clip``.
    """
    token = _CHECKED_BUILD.set(model_name)
    try:
        yield
    finally:
        _CHECKED_BUILD.reset(token)


def checked_build_name() -> str | None:
    """The model name of the :func:`checked_build` scope this code runs in (None outside one)."""
    return _CHECKED_BUILD.get()


def model_config_path_registered(path: Any) -> bool:
    """Whether ``open_clip.add_model_config(path)`` was called (3.3.0 has no public way to ask; re-adding rescans)."""
    return path in oc_factory._MODEL_CONFIG_PATHS


@contextlib.contextmanager
def command_line(prog: str, argv: list[str]) -> Iterator[None]:
    """``sys.argv`` as ``[prog, *argv]`` for the scope: to run another tool's CLI whose parser reads sys.argv
    (CLIP_benchmark 1.6.2's ``clip_benchmark.cli.main`` takes no arguments)."""
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        yield
    finally:
        sys.argv = saved


# ------------------------------------------------------------------------------------ per-run adaptations


class ModuleView(types.ModuleType):
    """A module as one caller sees it: ``overrides`` first, everything else from ``module``.

    Used so that a replacement reaches only open_clip_train's code and never the process-wide module
    (e.g. its ``torch.save`` becomes atomic, while every other caller's ``torch.save`` is untouched).
    """

    def __init__(self, module: types.ModuleType, overrides: dict[str, Any]) -> None:
        super().__init__(module.__name__, module.__doc__)
        self.__dict__.update(overrides)
        self._sparo_module = module

    def __getattr__(self, name: str) -> Any:  # only called for names not in overrides
        return getattr(self._sparo_module, name)


@dataclass
class RunAdapters:
    """What one open_clip_train run is given in place of its own functions (built by sparo_clip.training.entry).

    Attributes:
        parse_args: replaces ``open_clip_train.main.parse_args`` (gets the original as first argument).
        create_model_and_transforms: replaces the model factory ``open_clip_train.main`` calls.
        get_tokenizer: replaces the tokenizer factory ``open_clip_train.main`` and ``open_clip_train.zero_shot``
            call (``get_tokenizer(args.model, ...)``, which knows neither the override nor a Hugging Face text
            tower's own tokenizer).
        create_loss: replaces ``open_clip_train.main.create_loss`` (gets the original as first argument).
        pt_load: replaces ``open_clip_train.main.pt_load`` (its only checkpoint reader: ``--resume``).
        get_latest_checkpoint: replaces ``open_clip_train.main.get_latest_checkpoint`` (``--resume latest``).
        save: what ``torch.save`` means inside ``open_clip_train.main`` (every checkpoint it writes).
        tarfile_to_samples: replaces ``open_clip_train.data.tarfile_to_samples_nothrow`` (training shards).
        shuffle: what ``wds.shuffle`` means inside ``open_clip_train.data`` (the training sample shuffle).
        imagenet_v2_dataset: stands in for ``imagenetv2_pytorch.ImageNetV2Dataset`` when it is not installed.
        csv_dataset: given ``open_clip_train.data.CsvDataset``, the class used in its place (CSV data).
        cpu_safe_ddp: what ``torch.nn.parallel.DistributedDataParallel`` means inside ``open_clip_train.main``
            when no GPU is present.
        adamw: what ``optim.AdamW`` means inside ``open_clip_train.main`` (None: torch's, unchanged).
    """

    parse_args: Callable[..., Any]
    create_model_and_transforms: Callable[..., Any]
    get_tokenizer: Callable[..., Any]
    create_loss: Callable[..., Any]
    pt_load: Callable[..., Any]
    get_latest_checkpoint: Callable[..., Any]
    save: Callable[..., Any]
    tarfile_to_samples: Callable[..., Any]
    shuffle: Callable[..., Any]
    imagenet_v2_dataset: type
    csv_dataset: Callable[[type], type]
    cpu_safe_ddp: type | None = None
    adamw: Callable[..., Any] | None = None


# (module, attribute) pairs open_clip_train_run replaces; every one is restored when the run ends. Why each:
RUN_PATCH_POINTS: tuple[tuple[str, str], ...] = (
    # our flags recorded in the parsed args (params.txt) and the args captured for the other adapters
    ("open_clip_train.main", "parse_args"),
    # the model factory: the --override-model-config dict reaches the SPARO builder
    ("open_clip_train.main", "create_model_and_transforms"),
    # the tokenizer of the model as built (an override's or a Hugging Face tower's), for training and zero-shot
    ("open_clip_train.main", "get_tokenizer"),
    ("open_clip_train.zero_shot", "get_tokenizer"),
    # the loss: stop with a clear error on a non-finite loss (3.3.0's loop never checks)
    ("open_clip_train.main", "create_loss"),
    # checkpoint reads: weights_only=True always; unreadable --resume latest files skipped
    ("open_clip_train.main", "pt_load"),
    ("open_clip_train.main", "get_latest_checkpoint"),
    # torch as open_clip_train.main sees it: atomic torch.save; CPU-safe DDP (3.3.0 passes device_ids=[cpu],
    # which torch 2.14.1's DDP rejects for CPU modules)
    ("open_clip_train.main", "torch"),
    # training shard reader: per-shard accounting (corrupt tails, blank captions, batch-less passes)
    ("open_clip_train.data", "tarfile_to_samples_nothrow"),
    # webdataset as open_clip_train.data sees it: a sample shuffle seeded from --seed (3.3.0 seeds from pid+time)
    ("open_clip_train.data", "wds"),
    # CSV data: 3.3.0's CsvDataset opens each image in __getitem__ and one unreadable file ends the run with a
    # DataLoader traceback; its stand-in (a subclass) skips such images with a warning naming them
    ("open_clip_train.data", "CsvDataset"),
    # torch.optim as open_clip_train.main sees it: AdamW with the fused kernel where every parameter allows it
    # (3.3.0 builds the default, a loop over the parameters: on CPU about a fifth of a tiny model's step)
    ("open_clip_train.main", "optim"),
)


def _original_pairs() -> list[tuple[types.ModuleType, str, Any]]:
    import importlib

    pairs = []
    for module_name, attr in RUN_PATCH_POINTS:
        module = importlib.import_module(module_name)
        pairs.append((module, attr, getattr(module, attr)))
    return pairs


@contextlib.contextmanager
def _restored_logging() -> Iterator[None]:
    """open_clip_train's setup_logging adds root handlers and sets every logger's level: undo both."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {
        name: lg.level
        for name, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        for name, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))


@contextlib.contextmanager
def _stand_in_module(name: str, **attrs: Any) -> Iterator[None]:
    """A stand-in module in ``sys.modules`` for the scope, unless the real one is importable (or one is there).

    open_clip_train 3.3.0 imports ``imagenetv2_pytorch`` (not on PyPI) for ``--imagenet-v2``.
    """
    import importlib.util

    module = None
    if name not in sys.modules and importlib.util.find_spec(name) is None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    try:
        yield
    finally:
        if module is not None and sys.modules.get(name) is module:
            del sys.modules[name]


@contextlib.contextmanager
def open_clip_train_run(adapters: RunAdapters) -> Iterator[None]:
    """Adapt open_clip_train (3.3.0) for one run; every replaced object is the original again on exit.

    Args:
        adapters: the replacements (see :class:`RunAdapters` and :data:`RUN_PATCH_POINTS`).
    """
    import open_clip_train.data as oc_data
    import open_clip_train.main as oc_main
    import open_clip_train.zero_shot as oc_zero_shot
    import webdataset

    originals = _original_pairs()
    original_parse, original_loss = oc_main.parse_args, oc_main.create_loss
    torch_overrides: dict[str, Any] = {"save": adapters.save}
    if adapters.cpu_safe_ddp is not None:
        parallel = ModuleView(torch.nn.parallel, {"DistributedDataParallel": adapters.cpu_safe_ddp})
        torch_overrides["nn"] = ModuleView(torch.nn, {"parallel": parallel})
    replacements = {
        (oc_main, "parse_args"): lambda argv: adapters.parse_args(original_parse, argv),
        (oc_main, "create_model_and_transforms"): adapters.create_model_and_transforms,
        (oc_main, "get_tokenizer"): adapters.get_tokenizer,
        (oc_zero_shot, "get_tokenizer"): adapters.get_tokenizer,
        (oc_main, "create_loss"): lambda args: adapters.create_loss(original_loss, args),
        (oc_main, "pt_load"): adapters.pt_load,
        (oc_main, "get_latest_checkpoint"): adapters.get_latest_checkpoint,
        (oc_main, "torch"): ModuleView(torch, torch_overrides),
        (oc_data, "tarfile_to_samples_nothrow"): adapters.tarfile_to_samples,
        (oc_data, "wds"): ModuleView(webdataset, {"shuffle": adapters.shuffle}),
        (oc_data, "CsvDataset"): adapters.csv_dataset(oc_data.CsvDataset),
        (oc_main, "optim"): ModuleView(torch.optim, {"AdamW": adapters.adamw} if adapters.adamw else {}),
    }
    assert {(m.__name__, a) for m, a in replacements} == set(RUN_PATCH_POINTS)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_restored_logging())
        stack.enter_context(
            _stand_in_module("imagenetv2_pytorch", ImageNetV2Dataset=adapters.imagenet_v2_dataset)
        )
        try:
            for (module, attr), value in replacements.items():
                setattr(module, attr, value)
            yield
        finally:
            for module, attr, value in originals:
                setattr(module, attr, value)


def run_patch_targets() -> dict[tuple[str, str], Any]:
    """The objects at every :data:`RUN_PATCH_POINTS` entry now (a test compares them before and after a run)."""
    return {(m.__name__, a): v for m, a, v in _original_pairs()}
