"""Sharing a model: a folder OpenCLIP loads with ``local-dir:``, or a Hugging Face Hub repository (``hf-hub:``).

- :func:`save_pretrained`: ``open_clip_config.json`` (model and preprocess config), ``open_clip_model.safetensors``,
  a ``README.md`` model card, and the tokenizer's files when the text tower reads a Hugging Face tokenizer.
- :func:`push_to_hf_hub`: the same folder, laid out for one repository, uploaded with ``huggingface_hub``.

The layout is OpenCLIP's own (``open_clip.push_to_hf_hub`` / ``save_for_hf`` write it for CLIP models), so
``open_clip.create_model_and_transforms("local-dir:DIR")`` / ``("hf-hub:org/name")`` and ``open_clip.get_tokenizer``
load what is saved here. Two things differ, both because OpenCLIP's writer does not fit a SPARO model: its
safetensors writer refuses tensors that share storage (``share_queries``), and its push replaces any tokenizer
without ``save_pretrained`` (OpenCLIP's own ``SimpleTokenizer``) by one it downloads. OpenCLIP's
``generate_readme`` writes the model card's front matter.

A SPARO model loads only where ``sparo_clip`` is imported (it registers the model class with OpenCLIP). Without
it, OpenCLIP stops with ``TypeError: CLIP.__init__() got an unexpected keyword argument 'sparo_cfg'``: the model
card and a top-level ``sparo_clip`` entry in ``open_clip_config.json`` (OpenCLIP reads only ``model_cfg`` and
``preprocess_cfg``) say so first (:func:`needs_import_note`).
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import torch

from sparo_clip.errors import ConfigError
from sparo_clip.models.builder import hf_tokenizer
from sparo_clip.models.registry import MODEL_BUILDERS

WEIGHTS_NAME = "open_clip_model.safetensors"  # OpenCLIP 3.3's HF_SAFE_WEIGHTS_NAME
CONFIG_NAME = "open_clip_config.json"  # OpenCLIP 3.3's HF_CONFIG_NAME
CARD_NAME = "README.md"
PACKAGE = "sparo-clip"


def needs_import_note(model_cfg: dict[str, Any]) -> str | None:
    """What a user must do before OpenCLIP loads a model built by sparo_clip (None for OpenCLIP's own models)."""
    key = next((k for k in MODEL_BUILDERS if k in model_cfg), None)
    if key is None:
        return None
    return (
        f"This is a sparo-clip model: `pip install {PACKAGE}` and `import sparo_clip` before loading it with "
        "OpenCLIP. Without the import, OpenCLIP stops with `TypeError: CLIP.__init__() got an unexpected keyword "
        f"argument '{key}'`."
    )


def _model_cfg(model: torch.nn.Module, model_cfg: dict[str, Any] | None) -> dict[str, Any]:
    if model_cfg is None:
        model_cfg = getattr(model, "model_cfg", None)
        if not isinstance(model_cfg, dict):
            raise ConfigError(
                "save_pretrained needs model_cfg= for models that do not carry their config (sparo_clip models do)"
            )
    return copy.deepcopy(model_cfg)


def _tokenizer_files(
    model_cfg: dict[str, Any], tokenizer: Any, out: Path, repo_id: str | None
) -> dict[str, Any]:
    """Save a Hugging Face tokenizer into ``out`` and return the text config that finds it again.

    OpenCLIP's ``get_tokenizer`` reads the tokenizer from the folder itself for ``local-dir:`` names whenever
    ``text_cfg.hf_tokenizer_name`` is set, and from ``hf_tokenizer_name`` for ``hf-hub:`` names; so it is set
    (to the repository when pushing). OpenCLIP's own tokenizer (no files) needs nothing.
    """
    text = dict(model_cfg.get("text_cfg") or {})
    if tokenizer is None and (text.get("hf_tokenizer_name") or text.get("hf_model_name")):
        tokenizer = hf_tokenizer(text)
    if tokenizer is None or not callable(getattr(tokenizer, "save_pretrained", None)):
        return text
    tokenizer.save_pretrained(str(out))
    text["hf_tokenizer_name"] = repo_id or text.get("hf_tokenizer_name") or text.get("hf_model_name")
    return text


def _tower_config(text: dict[str, Any], out: Path, repo_id: str | None) -> dict[str, Any]:
    """A Hugging Face text tower built from a local folder: when pushing, its ``config.json`` goes into the
    repository, which then names the tower (``AutoConfig`` reads it from there; the weights are in the model's)."""
    local = text.get("hf_model_name")
    if not (repo_id and local and (Path(local) / "config.json").is_file()):
        return text
    (out / "config.json").write_text((Path(local) / "config.json").read_text())
    return {**text, "hf_model_name": repo_id}


def model_card(
    model_cfg: dict[str, Any], name: str, card: dict[str, Any] | None = None, repo_id: str | None = None
) -> str:
    """The README.md of a saved model: OpenCLIP's card (``generate_readme``) that says to import sparo_clip first.

    Args:
        model_cfg: the model config (its read-out settings are listed).
        name: the model's name on the card (the folder's, when there is no repository).
        card: OpenCLIP's model-card fields (``description``, ``details``, ``citation``, ``license``, ``tags``).
        repo_id: the Hugging Face Hub repository the model is pushed to (the usage loads ``hf-hub:REPO``).
    """
    from open_clip.push_to_hf_hub import generate_readme

    card = copy.deepcopy(card or {})
    note = needs_import_note(model_cfg)
    if note:
        card["tags"] = list(dict.fromkeys([*card.get("tags", ("clip",)), "sparo", "sparo-clip"]))
        card["description"] = note + ("\n\n" + card["description"] if card.get("description") else "")
    sparo = model_cfg.get("sparo_cfg")
    if sparo is not None:
        details = card.setdefault("details", {})
        details.setdefault("Read-out", "SPARO (separate-head attention read-out; Vani et al., ECCV 2024)")
        details.setdefault("SPARO settings", dict(sparo))
    where = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    install = f"```bash\npip install {PACKAGE}\n```\n\n" if note else ""
    imports = (
        "import sparo_clip  # registers its model classes with OpenCLIP: import it first\n" if note else ""
    )
    card["usage"] = (
        f"{install}```python\nimport open_clip\n{imports}\n"
        f"model, _, preprocess = open_clip.create_model_and_transforms({where!r})\n"
        f"tokenizer = open_clip.get_tokenizer({where!r})\n"
        "```\n" + (f"\n{card['usage']}\n" if card.get("usage") else "")
    )
    return generate_readme(card, (repo_id or name).split("/")[-1])


def save_pretrained(
    model: torch.nn.Module,
    out_dir: str | Path,
    model_cfg: dict[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    repo_id: str | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write a model into a folder that ``open_clip`` loads with ``local-dir:`` (after ``import sparo_clip``).

    Writes ``open_clip_config.json`` (model + preprocess config, and a ``sparo_clip`` note), the weights
    (``open_clip_model.safetensors``), a ``README.md`` model card saying to ``pip install sparo-clip`` and
    ``import sparo_clip`` first, and, for a text tower with a Hugging Face tokenizer, that tokenizer's files.

    Args:
        model: a sparo_clip model, or any OpenCLIP model when ``model_cfg`` is given.
        out_dir: folder to write (created if needed).
        model_cfg: the model config; defaults to ``model.model_cfg`` of a sparo_clip model.
        tokenizer: the model's tokenizer; default: the Hugging Face tokenizer the config's text tower reads
            (:func:`sparo_clip.models.builder.hf_tokenizer`), if any (OpenCLIP's own needs no files).
        repo_id: lay the folder out for this Hugging Face Hub repository (what :func:`push_to_hf_hub` uploads).
        card: OpenCLIP model-card fields for the README (``description``, ``details``, ``citation``, ...).
    """
    from safetensors.torch import save_file

    cfg = _model_cfg(model, model_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = _tokenizer_files(cfg, tokenizer, out, repo_id)
    cfg["text_cfg"] = _tower_config(text, out, repo_id)
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": open_clip.get_model_preprocess_cfg(model),
    }
    note = needs_import_note(cfg)
    if note:  # OpenCLIP reads model_cfg and preprocess_cfg only; a person reading the file sees this
        config["sparo_clip"] = {"version": _version(), "note": note}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    # safetensors refuses tensors that share storage (shared queries): store independent copies
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    (out / CARD_NAME).write_text(model_card(cfg, out.resolve().name, card, repo_id))
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # a source checkout that is not installed
        return "unknown"


def push_to_hf_hub(
    model: torch.nn.Module,
    repo_id: str,
    model_cfg: dict[str, Any] | None = None,
    *,
    tokenizer: Any = None,
    card: dict[str, Any] | None = None,
    commit_message: str = "Add model",
    token: str | None = None,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
) -> Any:
    """Upload a model to a Hugging Face Hub repository that loads with ``hf-hub:REPO`` (after ``import sparo_clip``).

    The folder is :func:`save_pretrained`'s with ``repo_id`` (a Hugging Face tokenizer is named by the repository,
    a text tower built from a local folder gets its ``config.json`` stored there); it is uploaded with
    ``huggingface_hub.create_repo`` and ``upload_folder``, as OpenCLIP's ``push_to_hf_hub`` does.

    Returns:
        ``upload_folder``'s commit info.
    """
    from huggingface_hub import create_repo, upload_folder

    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, model_cfg, tokenizer=tokenizer, repo_id=repo_id, card=card)
        create_repo(repo_id, token=token, private=private, exist_ok=True)
        return upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            token=token,
        )
