"""Parameter-matched SPARO configs: ``parity_config`` and ``sparo-clip parity``.

``parity_config(base)`` turns a registered OpenCLIP ViT config into a SPARO config (L slots of width V,
``embed_dim = L * V``) whose ``reduce_depth`` is the smallest that keeps the parameter count at or below
the base model's. Models are built on the meta device (no memory, no initialisation cost). Dropping one
block from each tower removes exactly one vision and one text block's parameters, so one SPARO build gives
the count at every depth.

A base whose text tower SPARO masks by ``pad_id`` / ``eos_id`` (OpenCLIP's non-causal SigLIP, SigLIP 2 and CLIPA
towers, the ``eos``-pooled MetaCLIP 2 "worldwide" ones) gets the ids its tokenizer uses when its config leaves them
unset (:mod:`sparo_clip.models.tokenizer_ids`), so ``parity_config("ViT-B-16-SigLIP")`` works by name.

``sparo-clip parity --write-registry`` writes ``model_configs/<base>-SPARO.json`` for every OpenCLIP
ViT-*-32/16/14 config with an OpenAI-style text tower that has no hand-made SPARO config, for every OpenCLIP
config whose text tower needs those ids (:func:`tokenizer_id_bases`) and for the bases in ``EXTRA_BASES``, and
lists the files it wrote in ``model_configs/GENERATED.txt`` (a test checks the files equal its output).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip

from sparo_clip.models.builder import deep_merge, resolve_model_config
from sparo_clip.models.config import SparoCfg
from sparo_clip.models.param_count import count_model_parameters as model_params  # noqa: F401 (re-exported)
from sparo_clip.models.param_count import count_parameters as _numel
from sparo_clip.models.param_count import meta_model
from sparo_clip.models.registry import CONFIG_DIR
from sparo_clip.models.tokenizer_ids import known_text_ids, missing_text_ids, needs_text_ids
from sparo_clip.models.towers import block_list

MANIFEST = "GENERATED.txt"
_MANIFEST_HEADER = "# written by `sparo-clip parity --write-registry`; do not edit\n"
_BASE_NAME = re.compile(r"^ViT-[^-]+-(32|16|14)(-.+)?$")
_OPENCLIP_CONFIG_DIR = Path(open_clip.__file__).parent / "model_configs"


@dataclass
class ParityResult:
    """A parameter-matched SPARO config with its parameter count and the base model's."""

    base_name: str
    config: dict[str, Any]
    params: int
    base_params: int


def parity_search(
    base_name: str, L: int = 64, V: int = 64, override: dict[str, Any] | None = None, **sparo_kwargs: Any
) -> ParityResult:
    """Like :func:`parity_config`, also returning both parameter counts."""
    fixed = {"reduce_depth": "it is what parity_config chooses", "num_slots": "use L=", "slot_dim": "use V="}
    for key, why in fixed.items():
        if key in sparo_kwargs:
            raise ValueError(f"parity_config does not take sparo_cfg.{key}: {why}")
    sparo = {"num_slots": L, "slot_dim": V, "reduce_depth": 0, "share_kv": True, "share_queries": False}
    sparo["slot_norm"] = "cont:const"
    sparo.update(sparo_kwargs)
    SparoCfg.from_dict(sparo)  # names bad or unknown fields before any model is built
    base_cfg = resolve_model_config(base_name, override)
    ids = missing_text_ids(base_cfg.get("text_cfg") or {})  # the tokenizer's pad / end-of-text ids, if known
    if ids:
        override = deep_merge(override or {}, {"text_cfg": ids})
        base_cfg = resolve_model_config(base_name, override)
    if "sparo_cfg" in base_cfg:
        raise ValueError(f"{base_name} is already a SPARO config: pass the model it was made from")
    base_params = _numel(meta_model(base_name, override))
    model = meta_model(base_name, deep_merge(override or {}, {"embed_dim": L * V, "sparo_cfg": sparo}))
    full = _numel(model)
    v_blocks, t_blocks = block_list(model.visual), block_list(model.text)
    per_depth = _numel(v_blocks[-1]) + _numel(t_blocks[-1])
    depth = max(0, math.ceil((full - base_params) / per_depth))
    max_depth = min(len(v_blocks), len(t_blocks)) - 1
    if depth > max_depth:
        raise ValueError(
            f"no reduce_depth in 0..{max_depth} keeps SPARO (L={L}, V={V}) on {base_name} within its "
            f"{base_params:,} parameters (reduce_depth={max_depth} gives {full - max_depth * per_depth:,}): "
            "use fewer or smaller slots"
        )
    if depth and any(
        _numel(b) != _numel(blocks[-1]) for blocks in (v_blocks, t_blocks) for b in blocks[-depth:]
    ):
        raise ValueError(
            f"{base_name}: the last {depth} blocks of a tower differ in size, so reduce_depth={depth} is not "
            "an exact parameter match; pick reduce_depth by hand"
        )
    sparo["reduce_depth"] = depth
    config = deep_merge(base_cfg, {"embed_dim": L * V})
    config["sparo_cfg"] = sparo
    return ParityResult(base_name, config, full - depth * per_depth, base_params)


def parity_config(
    base_name: str, L: int = 64, V: int = 64, override: dict[str, Any] | None = None, **sparo_kwargs: Any
) -> dict[str, Any]:
    """A SPARO model config from a registered OpenCLIP config, within the base model's parameters.

    Works for every tower family SPARO reads (OpenCLIP ViT, timm ViT / CNN, OpenCLIP causal or
    non-causal text, Hugging Face text): ``reduce_depth`` drops that many final blocks of each tower.

    Args:
        base_name: a registered model name, e.g. ``"ViT-B-16"``.
        L: number of slots (``sparo_cfg.num_slots``).
        V: slot width (``sparo_cfg.slot_dim``); ``embed_dim = L * V``.
        override: deep-merged into the base config first. A text tower masked by ``pad_id`` / ``eos_id``
            whose config leaves them unset gets its tokenizer's ids (:mod:`sparo_clip.models.tokenizer_ids`);
            set them here for a tokenizer not listed there.
        **sparo_kwargs: other :class:`SparoCfg` fields (``heads``, ``attn_dim``, ``slot_norm``, ...).

    Returns:
        The base config with ``embed_dim = L * V`` and a ``sparo_cfg`` whose ``reduce_depth`` is the
        smallest that keeps the parameter count at or below the base model's.

    Raises:
        ValueError: unknown base, bad SPARO fields, or no ``reduce_depth`` that fits.
        NotImplementedError: towers SPARO cannot read (ModifiedResNet, CoCa-style text).

    Example:
        >>> cfg = parity_config("ViT-B-16", L=32, V=128)
        >>> cfg["embed_dim"], cfg["sparo_cfg"]["reduce_depth"]
        (4096, 1)

        Written to ``my-dir/ViT-B-16-SPARO-32x128.json``, it registers with
        ``open_clip.add_model_config("my-dir")`` (or use ``sparo-clip parity ... --output FILE``).
    """
    return parity_search(base_name, L, V, override, **sparo_kwargs).config


# ----------------------------------------------------------------------------------- registry
def openai_style_vit(cfg: dict[str, Any]) -> bool:
    """An OpenCLIP ViT with OpenCLIP's own text tower as OpenAI built it (argmax pooling, causal)."""
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    return (
        not v.get("timm_model_name")
        and isinstance(v.get("layers", 12), int)
        and not v.get("attentional_pool")
        and v.get("pool_type", "tok") == "tok"
        and not t.get("hf_model_name")
        and not t.get("hf_tokenizer_name")
        and t.get("pool_type", "argmax") == "argmax"
        and not t.get("embed_cls")
        and not t.get("no_causal_mask")
        and not cfg.get("custom_text")
        and "multimodal_cfg" not in cfg
    )


def registry_bases() -> list[str]:
    """OpenCLIP's own ViT-*-32/16/14 configs with an OpenAI-style text tower."""
    names = sorted(p.stem for p in _OPENCLIP_CONFIG_DIR.glob("*.json"))
    return [n for n in names if _BASE_NAME.match(n) and openai_style_vit(open_clip.get_model_config(n) or {})]


def tokenizer_id_bases() -> list[str]:
    """OpenCLIP's own configs whose text tower SPARO masks by its tokenizer's pad / end-of-text ids, when
    :mod:`sparo_clip.models.tokenizer_ids` knows them: SigLIP, SigLIP 2, CLIPA, MetaCLIP 2 worldwide."""
    names = sorted(p.stem for p in _OPENCLIP_CONFIG_DIR.glob("*.json"))
    out = []
    for name in names:
        text = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
        if needs_text_ids(text) and known_text_ids(text) is not None and not text.get("embed_cls"):
            out.append(name)
    return out


# Bases beyond those, each with the base-config override its towers need.
EXTRA_BASES: dict[str, dict[str, Any]] = {
    "convnext_base": {},  # timm CNN vision tower
}


def _manifest(config_dir: Path) -> list[str]:
    path = config_dir / MANIFEST
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def generate_registry(config_dir: Path = CONFIG_DIR) -> dict[str, ParityResult]:
    """File name -> parity result for every registry base (and :data:`EXTRA_BASES`) without a hand-made config."""
    generated_before = set(_manifest(config_dir))
    hand_made = {p.name for p in config_dir.glob("*-SPARO.json")} - generated_before
    out = {}
    for base in [*registry_bases(), *tokenizer_id_bases(), *EXTRA_BASES]:
        name = f"{base}-SPARO.json"
        if name not in hand_made:
            out[name] = parity_search(base, override=EXTRA_BASES.get(base))
    return out


def config_text(config: dict[str, Any]) -> str:
    """The JSON text of a model config, as the files in ``model_configs/`` are written."""
    return json.dumps(config, indent=4) + "\n"


def write_registry(config_dir: Path = CONFIG_DIR) -> dict[str, ParityResult]:
    """Write the generated configs and the manifest; remove files generated before and not now."""
    results = generate_registry(config_dir)
    for stale in set(_manifest(config_dir)) - set(results):
        (config_dir / stale).unlink(missing_ok=True)
    for name, result in results.items():
        (config_dir / name).write_text(config_text(result.config))
    (config_dir / MANIFEST).write_text(_MANIFEST_HEADER + "".join(f"{n}\n" for n in sorted(results)))
    return results
