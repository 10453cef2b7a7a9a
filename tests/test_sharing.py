"""Every way OpenCLIP users load and share a model works for SPARO: local-dir:, hf-hub: (offline cache made here),
Hugging Face text towers through an override, with the tower's own tokenizer in every command."""

import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.commands.cli import main as cli_main
from sparo_clip.errors import ConfigError
from sparo_clip.models import parity
from sparo_clip.training.entry import main as train_main
from sparo_clip.viz import cli as viz_cli

from .eval_helpers import class_folder, save_checkpoint
from .hf_helpers import save_tiny_bert_with_tokenizer
from .hub_helpers import go_offline, put_in_hub_cache
from .test_convert import _reference_checkpoint
from .train_helpers import base_args, make_shards

CAPTIONS = ["a red circle", "two blue squares left of a big green triangle"]


def _hf_override(bert_dir):
    return {"text_cfg": {"hf_model_name": str(bert_dir)}}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT tower with its own 36-word vocabulary: OpenCLIP's ids (up to 49,407) do not fit it."""
    return save_tiny_bert_with_tokenizer(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A seeded test-SPARO model and its save_pretrained folder."""
    torch.manual_seed(0)
    model = sparo_clip.create_model("test-SPARO").eval()
    return model, sparo_clip.save_pretrained(model, tmp_path_factory.mktemp("saved") / "test-sparo")


@pytest.fixture
def hub(tmp_path, monkeypatch, saved):
    """An offline hub cache holding the saved folder as ``me/test-sparo``."""
    cache = tmp_path / "hub"
    put_in_hub_cache(cache, "me/test-sparo", saved[1])
    go_offline(monkeypatch, cache)
    return cache


def _same_encodings(a, b, tokenizer=None, size=32):
    tokenizer = tokenizer or open_clip.get_tokenizer("test-SPARO")
    images, text = torch.randn(2, 3, size, size), tokenizer(CAPTIONS)
    with torch.no_grad():
        return torch.equal(a.encode_image(images), b.encode_image(images)) and torch.equal(
            a.encode_text(text), b.encode_text(text)
        )


# ----------------------------------------------------------------------------------- 1: names with a schema
def test_create_model_takes_local_dir_and_hf_hub_names_with_an_override(saved, hub):
    model, folder = saved
    for name in (f"local-dir:{folder}", "hf-hub:me/test-sparo"):
        again = sparo_clip.create_model(name).eval()
        assert _same_encodings(model, again), name
        assert sparo_clip.resolve_model_config(name) == model.model_cfg
        full = sparo_clip.create_model(name, override_config={"sparo_cfg": {"trim_text": False}}).eval()
        assert full.sparo_cfg.trim_text is False  # the override holds, and the folder's weights are loaded
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in full.state_dict().items()), name


def test_schema_names_fail_in_one_line_and_refuse_a_checkpoint_beside_them(tmp_path, hub, saved):
    with pytest.raises(
        ConfigError, match=r"'hf-hub:me/none': cannot read its open_clip_config.json from the hub"
    ):
        sparo_clip.create_model("hf-hub:me/none")
    with pytest.raises(ConfigError, match=r"cannot read its open_clip_config.json from the folder"):
        sparo_clip.create_model(f"local-dir:{tmp_path / 'none'}")
    ckpt = save_checkpoint(tmp_path / "m.pt")
    with pytest.raises(ConfigError, match=r"cannot be combined with 'local-dir:.*OpenCLIP would ignore"):
        sparo_clip.create_model(f"local-dir:{saved[1]}", pretrained=str(ckpt))


def test_train_takes_local_dir_and_offline_hf_hub_names(tmp_path, hub, saved, capsys):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    for run, name in (("local", f"local-dir:{saved[1]}"), ("hub", "hf-hub:me/test-sparo")):
        args = base_args(pattern, tmp_path / "logs", run, model=name, num_samples=8, lr=0)
        assert train_main(args) == 0, capsys.readouterr().err
        state = torch.load(tmp_path / "logs" / run / "checkpoints" / "epoch_1.pt", weights_only=True)[
            "state_dict"
        ]
        start = saved[0].state_dict()
        moved = [k for k, v in state.items() if not torch.equal(v, start[k.removeprefix("module.")])]
        assert moved == ["module.logit_scale"] or not moved  # --lr 0: it started from the folder's weights
    ckpt = save_checkpoint(tmp_path / "m.pt")
    args = base_args(pattern, tmp_path / "logs", "both", model=f"local-dir:{saved[1]}", pretrained=ckpt)
    assert train_main(args) == 2
    assert "--pretrained=" in capsys.readouterr().err and not (tmp_path / "logs" / "both").exists()


@pytest.mark.slow  # an end-to-end run in its own process
def test_python_m_sparo_clip_train_takes_an_offline_hf_hub_name(tmp_path, hub):
    """The command as a user types it; go_offline's environment (HF_HUB_OFFLINE, HF_HUB_CACHE) reaches it."""
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "hub", model="hf-hub:me/test-sparo", num_samples=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "sparo_clip.train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "logs" / "hub" / "checkpoints" / "epoch_1.pt").is_file()


def test_eval_select_slots_viz_convert_and_parity_take_schema_names(tmp_path, hub, saved, capsys):
    model, folder = saved
    data = class_folder(tmp_path / "data", {"red circle": 2, "blue square": 2})
    names = tmp_path / "classnames.txt"
    names.write_text("blue square\nred circle\n")
    results = []
    for name in (f"local-dir:{folder}", "hf-hub:me/test-sparo"):
        argv = ["--model", name, "--workers", "0", "--data", str(data), "--classnames", str(names)]
        assert cli_main(["eval", "zeroshot", *argv]) == 0
        results.append(json.loads(capsys.readouterr().out)["metrics"])
    assert results[0] == results[1]
    ckpt = save_checkpoint(tmp_path / "m.pt")
    argv = ["--model", f"local-dir:{folder}", "--pretrained", str(ckpt), "--data", str(data)]
    assert cli_main(["eval", "zeroshot", *argv, "--classnames", str(names)]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    images = tmp_path / "data" / "red circle"
    (tmp_path / "captions.txt").write_text("a red circle\na red circle\n")
    viz = ["viz", "--model", "hf-hub:me/test-sparo", "--images", str(images), "--captions"]
    assert cli_main([*viz, str(tmp_path / "captions.txt"), "--out", str(tmp_path / "viz")]) == 0
    assert json.loads((tmp_path / "viz" / "summary.json").read_text())["pairs"]
    # convert: a reference checkpoint converts for the folder's model as for the registered name
    torch.save(_reference_checkpoint()[1], tmp_path / "ref.pt")
    for out, name in (("a.pt", f"local-dir:{folder}"), ("b.pt", "test-SPARO")):
        assert cli_main(["convert", str(tmp_path / "ref.pt"), str(tmp_path / out), "--model", name]) == 0
    a, b = (torch.load(tmp_path / f, weights_only=True)["state_dict"] for f in ("a.pt", "b.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # parity from a plain CLIP saved in a folder
    clip = tmp_path / "clip"
    sparo_clip.save_pretrained(
        open_clip.create_model("test-CLIP"), clip, open_clip.get_model_config("test-CLIP")
    )
    assert parity.parity_config(f"local-dir:{clip}", L=4, V=16) == parity.parity_config(
        "test-CLIP", L=4, V=16
    )


# ----------------------------------------------------------------------------------- 2: Hugging Face text towers
def test_hf_text_tower_through_an_override_is_built_without_its_weights(bert, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    model = sparo_clip.create_model("test-SPARO", override_config=_hf_override(bert), pretrained_text=False)
    assert type(model.text).__name__ == "HFTextEncoder"
    from sparo_clip.models.param_count import meta_model  # training's pre-check, on the meta device

    assert next(meta_model("test-SPARO", _hf_override(bert)).parameters()).is_meta


def test_a_changed_text_tower_gets_its_own_tokenizer(bert, tmp_path):
    plain = sparo_clip.get_tokenizer("test-SPARO")
    assert type(plain) is type(open_clip.get_tokenizer("test-SPARO"))  # OpenCLIP's own, unchanged
    tokenizer = sparo_clip.get_tokenizer("test-SPARO", _hf_override(bert))
    ids = tokenizer(CAPTIONS)
    assert ids.shape == (2, 16) and int(ids.max()) < 36 and ids[0, 0] == 2  # [CLS], then the caption's words
    model = sparo_clip.create_model("test-SPARO", override_config=_hf_override(bert), pretrained_text=False)
    folder = sparo_clip.save_pretrained(model.eval(), tmp_path / "hf")  # tokenizer files saved with it
    assert (folder / "tokenizer_config.json").is_file()
    assert torch.equal(open_clip.get_tokenizer(f"local-dir:{folder}")(CAPTIONS), ids)
    assert _same_encodings(model, open_clip.create_model(f"local-dir:{folder}").eval(), tokenizer)


def test_train_eval_and_viz_pair_an_hf_tower_with_its_tokenizer(bert, tmp_path, capsys):
    """The registered name's tokenizer (OpenCLIP's, ids up to 49,407) used to crash the BERT embedding."""
    override = json.dumps(_hf_override(bert))
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    args = base_args(pattern, tmp_path / "logs", "hf", num_samples=8) + ["--override-model-config", override]
    assert train_main(args) == 0, capsys.readouterr().err
    ckpt = tmp_path / "logs" / "hf" / "checkpoints" / "epoch_1.pt"
    data = class_folder(tmp_path / "images", {"red circle": 2, "blue square": 2})
    names = tmp_path / "classnames.txt"
    names.write_text("blue square\nred circle\n")
    argv = ["--model", "test-SPARO", "--pretrained", str(ckpt), "--override-model-config", override]
    assert (
        cli_main(
            ["eval", "zeroshot", *argv, "--workers", "0", "--data", str(data), "--classnames", str(names)]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["override_model_config"] == _hf_override(bert) and result["metrics"]
    (tmp_path / "captions.txt").write_text("a red circle\nred circle\n")
    viz = ["viz", *argv, "--images", str(data / "red circle"), "--captions", str(tmp_path / "captions.txt")]
    assert cli_main([*viz, "--out", str(tmp_path / "viz")]) == 0
    readout = viz_cli.load_readout(
        viz_cli.build_parser().parse_args([*viz[1:], "--out", str(tmp_path / "v2")])
    )
    assert readout.tokens[0][:4] == ["[CLS]", "a", "red", "circle"]  # BERT's ids, decoded by BERT's tokenizer


# ----------------------------------------------------------------------------------- 6: sharing
def test_saved_folder_says_to_install_and_import_sparo_clip_first(saved):
    folder = saved[1]
    card = (folder / "README.md").read_text()
    assert (
        "pip install sparo-clip" in card and "import sparo_clip" in card and "library_name: open_clip" in card
    )
    assert "unexpected keyword argument 'sparo_cfg'" in card
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert "import sparo_clip" in config["sparo_clip"]["note"] and config["model_cfg"] == saved[0].model_cfg


@pytest.mark.slow  # a fresh interpreter importing open_clip
def test_plain_open_clip_without_the_import_fails_as_the_card_says(saved):
    code = f"import open_clip; open_clip.create_model('local-dir:{saved[1]}')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "TypeError: CLIP.__init__() got an unexpected keyword argument 'sparo_cfg'" in r.stderr


def test_push_to_hf_hub_uploads_a_repository_that_loads_by_hf_hub(bert, tmp_path, monkeypatch):
    """The upload is caught here and laid out as the offline cache; the HF tower and tokenizer come with it."""
    import huggingface_hub

    cache, calls = tmp_path / "hub", []

    def create_repo(repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs["private"]))

    def upload_folder(repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs["commit_message"]))
        put_in_hub_cache(cache, repo_id, folder_path)
        return "commit-info"

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    model = sparo_clip.create_model(
        "test-SPARO", override_config=_hf_override(bert), pretrained_text=False
    ).eval()
    assert sparo_clip.push_to_hf_hub(model, "me/tiny-hf", commit_message="first") == "commit-info"
    assert calls == [("create_repo", "me/tiny-hf", False), ("upload_folder", "me/tiny-hf", "first")]

    go_offline(monkeypatch, cache)
    text_cfg = sparo_clip.resolve_model_config("hf-hub:me/tiny-hf")["text_cfg"]
    assert text_cfg["hf_model_name"] == text_cfg["hf_tokenizer_name"] == "me/tiny-hf"  # no local path left
    tokenizer = open_clip.get_tokenizer("hf-hub:me/tiny-hf")
    assert torch.equal(
        tokenizer(CAPTIONS), sparo_clip.get_tokenizer("test-SPARO", _hf_override(bert))(CAPTIONS)
    )
    again = open_clip.create_model("hf-hub:me/tiny-hf").eval()
    assert _same_encodings(model, again, tokenizer)
    card = (cache / "models--me--tiny-hf" / "snapshots").glob("*/README.md")
    assert "create_model_and_transforms('hf-hub:me/tiny-hf')" in next(card).read_text()
