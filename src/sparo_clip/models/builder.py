"""The one way a model is built: ``sparo_clip.create_model`` and OpenCLIP's factory take the same path.

::

    sparo_clip.create_model(name, pretrained=FILE, override_config=...)      open_clip.create_model(name, ...)
        | resolves the config (registered, local-dir:, hf-hub:) + override            |  (third-party callers)
        +--------------------------> open_clip.create_model <------------------------+
                                       | picks CLIP / CustomTextCLIP, calls it with the config
                                       v
                      open_clip.factory.CLIP / CustomTextCLIP  (stand-ins, sparo_clip.integration)
                                       | build_model(config): the class named by the config's keys
                                       v                      (sparo_cfg -> SparoCLIP, baselines' keys)
                      SparoCLIP / BaselineCLIP / OpenCLIP's own class
                                       | pretrained FILE
                                       v
                      open_clip.factory.load_checkpoint  (stand-in: sparo_clip.checkpoints.loading)
                                       one weights-only read; a failure is examined and named in one line

So OpenCLIP's handling of precision, devices, ``force_*`` options, pretrained tags and transforms stays
OpenCLIP's, and a SPARO config gives the same model whoever asks for it. :func:`create_model` adds
``override_config`` (deep-merged into the config) and loads every model's checkpoint through the checked
loader (:func:`sparo_clip.checkpoints.sharing.save_pretrained` writes OpenCLIP's ``local-dir:`` layout).
:func:`get_tokenizer` gives a model the tokenizer of the text tower it is built with.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import open_clip
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

from sparo_clip import integration
from sparo_clip.errors import CheckpointError, ConfigError
from sparo_clip.models.base import TORCHSCRIPT_UNSUPPORTED
from sparo_clip.models.registry import MODEL_BUILDERS

SCHEMAS = ("local-dir:", "hf-hub:")  # names whose config lives in a folder or a hub repository
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def registered_name(model_name: str) -> str:
    """The name OpenCLIP's registry knows a model by (``org/name`` -> ``org-name``; schema names unchanged)."""
    return model_name if model_name.startswith(SCHEMAS) else model_name.replace("/", "-")


def check_schema_pretrained(model_name: str, pretrained: str | None, what: str = "pretrained") -> None:
    """A ``local-dir:`` / ``hf-hub:`` model brings its own weights: refuse a checkpoint given beside it.

    OpenCLIP ignores ``pretrained`` for such names (with a log line), so the folder's weights would be used while
    the caller believes the checkpoint's are.

    Raises:
        ConfigError: naming both and what to do instead.
    """
    if pretrained and model_name.startswith(SCHEMAS):
        raise ConfigError(
            f"{what}={pretrained!r} cannot be combined with {model_name!r}: a {model_name.split(':')[0]}: model "
            "loads the weights saved with it (OpenCLIP would ignore the checkpoint); give the registered name "
            "the checkpoint was trained as instead"
        )


def resolve_model_config(model_name: str, override_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of ``model_name`` (registered, ``local-dir:DIR`` or ``hf-hub:org/name``) with the override merged.

    Raises:
        ConfigError: an unknown name, a folder or hub repository without a usable config, or an override that is
            not a dict.
    """
    try:
        cfg = open_clip.get_model_config(registered_name(model_name))
    except Exception as e:  # noqa: BLE001 (a folder without open_clip_config.json, bad JSON, no hub or no cache)
        where = {"local-dir:": "the folder", "hf-hub:": "the hub (or its local cache, offline)"}
        source = next((v for k, v in where.items() if model_name.startswith(k)), "OpenCLIP's registry")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model {model_name!r}: cannot read its open_clip_config.json from {source} ({first})"
        ) from e
    if cfg is None:
        models = open_clip.list_models()
        close = difflib.get_close_matches(model_name, models, n=5, cutoff=0.6)
        hint = (
            f"close names: {close}"
            if close
            else "list them with `sparo-clip list` or open_clip.list_models()"
        )
        raise ConfigError(
            f"unknown model {model_name!r} (not among OpenCLIP's {len(models)} registered models); {hint}"
        )
    if override_config:
        if not isinstance(override_config, dict):
            raise ConfigError(f"override_config must be a dict, got {type(override_config).__name__}")
        cfg = deep_merge(cfg, override_config)
    return cfg


def builds_readout_model(model_cfg: dict[str, Any]) -> bool:
    """Whether a config is built by one of sparo_clip's classes (its keys name a registered builder)."""
    return any(key in model_cfg for key in MODEL_BUILDERS)


def refuse_jit(model_name: str, override_config: dict[str, Any] | None, jit: bool) -> None:
    """OpenCLIP falls back silently to an unscripted model when scripting fails: refuse up front instead."""
    if jit and builds_readout_model(resolve_model_config(model_name, override_config)):
        raise NotImplementedError(f"{model_name}: {TORCHSCRIPT_UNSUPPORTED}")


def _override_kwargs(
    model_name: str, override: dict[str, Any] | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Top-level model kwargs that carry a deep-merged override through OpenCLIP's ``create_model``.

    OpenCLIP applies these after it has set the tower configs' ``hf_model_pretrained`` / ``timm_model_pretrained``
    (load the towers' own weights only when no CLIP checkpoint follows): an overridden tower config gets the same
    rule here, unless the override sets the flag itself.
    """
    if not override:
        return {}
    merged = resolve_model_config(model_name, override)
    out = {key: merged[key] for key in override}
    # a CLIP checkpoint follows: a file or tag, or the weights a local-dir: / hf-hub: model is saved with
    weights = bool(kwargs.get("pretrained")) or model_name.startswith(SCHEMAS)
    checkpoint = weights and kwargs.get("load_weights", True)
    rules = (
        ("text_cfg", "hf_model_name", "hf_model_pretrained", "pretrained_text", True),
        ("vision_cfg", "timm_model_name", "timm_model_pretrained", "pretrained_image", False),
    )
    for tower, name_key, flag, option, default in rules:
        given = override.get(tower)
        if isinstance(given, dict) and name_key in out[tower] and flag not in given:
            own_path = kwargs.get(f"{option}_path") is not None
            out[tower][flag] = bool(kwargs.get(option, default)) and not own_path and not checkpoint
    return out


def _prepared(model_name: str, kwargs: dict[str, Any], override: dict | None) -> dict[str, Any]:
    resolve_model_config(model_name, override)  # an unknown name or unreadable folder / hub config: one line
    refuse_jit(model_name, override, kwargs.get("jit", False))
    kwargs = dict(kwargs)
    pretrained = kwargs.get("pretrained")
    check_schema_pretrained(model_name, pretrained)
    if pretrained is not None and not model_name.startswith(SCHEMAS) and not os.path.exists(pretrained):
        looks_like_file = os.sep in str(pretrained) or Path(str(pretrained)).suffix in CHECKPOINT_SUFFIXES
        if looks_like_file:  # anything else may be a pretrained tag, which OpenCLIP resolves
            raise CheckpointError(f"checkpoint {pretrained} does not exist")
    kwargs.setdefault("weights_only", True)
    if kwargs["weights_only"] is not True:
        raise ValueError("weights_only=False is not supported: checkpoints load weights-only (no code runs)")
    return dict(kwargs, **_override_kwargs(model_name, override, kwargs))


def create_model(
    model_name: str,
    pretrained: str | None = None,
    *,
    override_config: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """``open_clip.create_model`` with ``override_config`` deep-merged into the model config.

    Every name OpenCLIP takes works (registered, ``local-dir:DIR``, ``hf-hub:org/name``). A checkpoint file in
    ``pretrained`` is read once, weights-only, and a bad one is named in one line
    (:mod:`sparo_clip.checkpoints.loading`), for any model.
    """
    kwargs = _prepared(model_name, dict(kwargs, pretrained=pretrained), override_config)
    with integration.checked_build(model_name):
        return open_clip.create_model(model_name, **kwargs)


def create_model_and_transforms(
    model_name: str,
    pretrained: str | None = None,
    *,
    override_config: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """``open_clip.create_model_and_transforms`` with ``override_config``; see :func:`create_model`.

    Example:
        >>> model, _, preprocess = create_model_and_transforms(
        ...     "ViT-B-32-SPARO", override_config={"sparo_cfg": {"slot_norm": "sqrtsem:norm"}})
    """
    kwargs = _prepared(model_name, dict(kwargs, pretrained=pretrained), override_config)
    with integration.checked_build(model_name):
        return open_clip.create_model_and_transforms(model_name, **kwargs)


def hf_tokenizer(text_cfg: dict[str, Any], **kwargs: Any) -> HFTokenizer:
    """OpenCLIP's ``HFTokenizer`` for a text config: ``hf_tokenizer_name``, else the tower's ``hf_model_name``.

    Context length, ``tokenizer_kwargs`` and ``tokenizer_mode`` come from the config (``kwargs`` win), as in
    OpenCLIP's ``get_tokenizer``.
    """
    source = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
    if not source:
        raise ConfigError("text_cfg names no Hugging Face tokenizer (hf_tokenizer_name or hf_model_name)")
    context_length = kwargs.pop("context_length", None) or text_cfg.get("context_length")
    return HFTokenizer(
        source,
        context_length=context_length or DEFAULT_CONTEXT_LENGTH,
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **{**text_cfg.get("tokenizer_kwargs", {}), **kwargs},
    )


def get_tokenizer(model_name: str, override_config: dict[str, Any] | None = None, **kwargs: Any):
    """The tokenizer of a model as built: ``open_clip.get_tokenizer``, or its Hugging Face text tower's own.

    OpenCLIP picks a tokenizer from the registered config alone, and a Hugging Face one only from
    ``text_cfg.hf_tokenizer_name``. A model whose text tower an override changes, or whose Hugging Face tower
    (``text_cfg.hf_model_name``) names no tokenizer, gets the tokenizer of that tower here, with the merged
    config's context length and tokenizer options; every other model gets OpenCLIP's. Training, evaluation and
    the pictures all tokenize through this function, so the ids always fit the text tower.

    Args:
        model_name: any name OpenCLIP takes (registered, ``local-dir:DIR``, ``hf-hub:org/name``).
        override_config: the override the model was built with (as :func:`create_model`'s).
        **kwargs: ``context_length``, ``cache_dir`` and tokenizer options, as ``open_clip.get_tokenizer``'s.
    """
    text = resolve_model_config(model_name, override_config).get("text_cfg") or {}
    tower_changed = isinstance((override_config or {}).get("text_cfg"), dict)
    own = text.get("hf_tokenizer_name") or text.get("hf_model_name")
    if own and (tower_changed or not text.get("hf_tokenizer_name")):
        return hf_tokenizer(text, **kwargs)
    if tower_changed and kwargs.get("context_length") is None and "context_length" in text:
        kwargs["context_length"] = text["context_length"]
    return open_clip.get_tokenizer(registered_name(model_name), **kwargs)
