"""SPARO on every tower family that exposes tokens: OpenCLIP ViT / causal text, timm ViT and CNN vision
towers, OpenCLIP non-causal text (SigLIP-style) and Hugging Face text towers (tiny, built offline)."""

import json

import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.models import parity
from sparo_clip.models.registry import CONFIG_DIR
from sparo_clip.models.towers import TextMaskRule, block_list, text_hidden_states, text_key_mask, text_tokens
from sparo_clip.training.entry import main as train_main

from .hf_helpers import save_tiny_bert
from .train_helpers import base_args, make_shards

TIMM_CONFIGS = ["test-noncausal-SPARO", "test-convnext-SPARO"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny BERT config on disk: the Hugging Face text tower is built from it offline."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _hf_override(hf_dir):
    return {"text_cfg": {"hf_model_name": str(hf_dir), "hf_model_pretrained": False}}


def _model(name, hf_dir=None):
    if name == "hf":
        return sparo_clip.create_model("test-SPARO", override_config=_hf_override(hf_dir)).eval()
    return sparo_clip.create_model(name).eval()


FAMILIES = ["test-SPARO", *TIMM_CONFIGS, "hf"]


# ----------------------------------------------------------------------------------- B: OpenCLIP pin
def _shipped_text_cfgs():
    """One text tower config per distinct structure shipped in model_configs/, the narrowest of each.

    Sizes (width, heads, context, vocabulary) and tokenizer ids do not change what a block computes; depth is
    cut to 1 block and the vocabulary to OpenAI's 49,408 ids to stay cheap.
    """
    sizes = ("width", "heads", "context_length", "vocab_size", "pad_id", "eos_id")
    seen: dict[str, tuple[str, dict]] = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        cfg = json.loads(path.read_text())["text_cfg"]
        cfg = {**cfg, "layers": 1, "vocab_size": min(cfg.get("vocab_size", 49408), 49408)}
        cfg.pop("hf_tokenizer_name", None)
        cfg.pop("tokenizer_kwargs", None)
        key = json.dumps({k: v for k, v in cfg.items() if k not in sizes}, sort_keys=True)
        if key not in seen or cfg.get("width", 512) < seen[key][1].get("width", 512):
            seen[key] = (path.stem, cfg)
    return sorted(seen.values(), key=lambda item: item[0])


@pytest.mark.parametrize("name, text_cfg", _shipped_text_cfgs(), ids=[n for n, _ in _shipped_text_cfgs()])
def test_text_hidden_states_equal_open_clips_own_text_transformer(name, text_cfg):
    """Our re-implementation of TextTransformer's forward equals OpenCLIP's own token output."""
    vision = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16}
    model = open_clip.CustomTextCLIP(embed_dim=8, vision_cfg=vision, text_cfg=text_cfg).eval()
    tower = model.text
    torch.manual_seed(1)
    n = text_cfg["context_length"]
    text = torch.randint(1, 1000, (2, n))  # no padding: a non-causal OpenCLIP tower attends every position
    with torch.no_grad():
        theirs = tower.forward_intermediates(text, indices=1, output_fmt="NLC")["text_intermediates"][-1]
        ours = text_hidden_states(tower, text, key_mask=None, trim=False)
        full_mask = torch.ones_like(text, dtype=torch.bool)
        masked = text_hidden_states(tower, text, key_mask=full_mask, trim=True)
        final = text_tokens(tower, text, key_mask=full_mask)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, tower.ln_final(theirs), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- key masks
@pytest.mark.parametrize(
    "rule, row, valid",
    [
        (TextMaskRule("argmax"), [49406, 5, 7, 49407, 0, 0], 4),  # OpenAI tokenizer
        (TextMaskRule("eos", eos_id=1, pad_id=1), [5, 7, 9, 1, 1, 1], 4),  # SigLIP: pad = eos = 1
        (TextMaskRule("eos", eos_id=1, pad_id=0), [5, 7, 9, 1, 0, 0], 4),  # SigLIP2: pad 0, eos 1
        (TextMaskRule("eos", eos_id=2, pad_id=0), [5, 7, 9, 0, 0, 0], 3),  # CLIPA: separator stripped
        (TextMaskRule("eos", eos_id=1, pad_id=1), [5, 7, 9, 8, 6, 4], 6),  # truncated: no eos, no pad
        (TextMaskRule("pad", pad_id=0), [101, 5, 7, 102, 0, 0], 4),  # Hugging Face
        (TextMaskRule("eos", eos_id=1, pad_id=1), [1, 1, 1, 1, 1, 1], 1),  # empty: position 0 stays
    ],
)
def test_key_mask_rules(rule, row, valid):
    mask = text_key_mask(torch.tensor([row]), rule)
    assert mask.tolist() == [[True] * valid + [False] * (len(row) - valid)]


def test_mask_rule_comes_from_the_config_not_the_name():
    model = sparo_clip.create_model("test-noncausal-SPARO")
    assert model.mask_rule == TextMaskRule("eos", eos_id=49407, pad_id=0)
    other = sparo_clip.create_model("test-noncausal-SPARO", override_config={"text_cfg": {"eos_id": 7}})
    assert other.mask_rule.eos_id == 7


def test_non_causal_text_without_pad_and_eos_ids_is_a_clear_error():
    cfg = open_clip.get_model_config("test-noncausal-SPARO")
    del cfg["text_cfg"]["pad_id"]
    with pytest.raises(ValueError, match=r"needs text_cfg.pad_id set in the config"):
        sparo_clip.SparoCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})


# ----------------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("trim", [True, False])
def test_padding_never_changes_text_features(family, trim, hf_dir, tokenizer):
    model = _model(family, hf_dir)
    model.sparo_cfg.trim_text = trim
    text = tokenizer(["a red circle", "", "a small blue square left of a green one"])
    longest = int(model.text_key_mask(text).sum(1).max())
    with torch.no_grad():
        full = model.encode_text(text)
        cut = model.encode_text(text[:, :longest])  # the context cut right after the longest caption
        other_pad = text.clone()
        other_pad[~model.text_key_mask(text)] = 123  # any token where padding was
        repadded = model.encode_text(other_pad)
    torch.testing.assert_close(cut, full, atol=1e-6, rtol=1e-5)
    if family != "hf":  # a Hugging Face tower reads every non-pad token as text (its mask rule)
        torch.testing.assert_close(repadded, full, atol=1e-6, rtol=1e-5)


def test_pad_equal_to_end_of_text_as_siglip_tokenizes(tokenizer):
    """SigLIP pads with its end-of-text id: the first one ends the caption, the rest never count."""
    model = sparo_clip.create_model(
        "test-noncausal-SPARO", override_config={"text_cfg": {"pad_id": 49407, "eos_id": 49407}}
    ).eval()
    text = tokenizer(["a red circle", "two blue squares and a green one"])
    text[text == 0] = 49407  # pad = eos, as SigLIP's tokenizer writes it
    longest = int(model.text_key_mask(text).sum(1).max())
    assert model.text_key_mask(text)[0].tolist() == [True] * 5 + [False] * 11  # sot, 3 words, eot
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(text[:, :longest]), model.encode_text(text))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_gives_finite_unit_features(family, hf_dir, tokenizer):
    model = _model(family, hf_dir)
    text = tokenizer(["", "word " * 40])  # empty, and truncated at the context length
    size = 32 if family in ("test-SPARO", "hf") else 160
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        img, txt = model(torch.randn(2, 3, size, size), text)[:2]
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    torch.testing.assert_close(txt.float().norm(dim=-1), torch.ones(2), atol=1e-2, rtol=0)


def test_non_causal_text_tokens_do_see_the_whole_caption(tokenizer):
    """The in-tower mask hides padding only: changing an early word changes every position's token."""
    model = _model("test-noncausal-SPARO")
    text = tokenizer(["a red circle and a square"])
    changed = text.clone()
    changed[0, 5] = 123  # a later word
    with torch.no_grad():
        a = text_tokens(model.text, text, model.text_key_mask(text))
        b = text_tokens(model.text, changed, model.text_key_mask(changed))
    assert not torch.allclose(a[0, 1], b[0, 1])  # position 1 sees position 5 (non-causal)


# ----------------------------------------------------------------------------------- vision towers
@pytest.mark.parametrize("name, tokens", [("test-noncausal-SPARO", 101), ("test-convnext-SPARO", 25)])
def test_timm_vision_tokens_and_reduce_depth(name, tokens):
    model = _model(name)
    assert model.visual.trunk.num_classes == 0 and len(model.visual.head) == 0  # no pool, no projection
    base = sparo_clip.create_model(name, override_config={"sparo_cfg": {"reduce_depth": 0}})
    assert len(block_list(model.visual)) == len(block_list(base.visual)) - 1
    feats, attn = model.encode_image(torch.randn(2, 3, 160, 160), return_attn=True)
    assert feats.shape == (2, 64) and attn.shape == (2, 4, tokens)  # ViT: CLS + 10x10; ConvNeXt: 5x5
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))


def test_timm_reduce_depth_too_large_names_the_limit():
    with pytest.raises(
        ValueError, match=r"reduce_depth=2 must be smaller than the 2 final blocks of the vision"
    ):
        override = {"sparo_cfg": {"reduce_depth": 2}, "text_cfg": {"layers": 4}}
        sparo_clip.create_model("test-convnext-SPARO", override_config=override)


def test_modified_resnet_keeps_a_clear_error():
    with pytest.raises(
        NotImplementedError, match="attention pool that is its read-out and exposes no tokens"
    ):
        sparo_clip.create_model(
            "RN50", override_config={"embed_dim": 64, "sparo_cfg": {"num_slots": 4, "slot_dim": 16}}
        )


# ----------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("family", ["noncausal", "convnext", "hf"])
def test_parity_config_for_other_tower_families(family, hf_dir):
    """parity_config picks the smallest reduce_depth within the base's parameters for each family."""
    if family == "hf":  # registered so that OpenCLIP's factory sees an HF text tower in the config
        cfg = json.loads((CONFIG_DIR / "test-CLIP.json").read_text())
        cfg["text_cfg"].update(_hf_override(hf_dir)["text_cfg"])
        (hf_dir / "test-hf-CLIP.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(hf_dir / "test-hf-CLIP.json")
        base, override = "test-hf-CLIP", {}
    else:
        cfg = open_clip.get_model_config(f"test-{family}-SPARO")
        override = {k: v for k, v in cfg.items() if k not in ("sparo_cfg", "custom_text", "init_logit_bias")}
        base = "test-CLIP"
    r = parity.parity_search(base, L=4, V=16, override=override)
    depth = r.config["sparo_cfg"]["reduce_depth"]
    assert r.params <= r.base_params
    built = sparo_clip.create_model(
        base,
        pretrained_text=False,
        override_config={**override, "embed_dim": 64, "sparo_cfg": r.config["sparo_cfg"]},
    )
    assert sum(p.numel() for p in built.parameters()) == r.params
    if depth > 0:  # one block fewer would not fit
        less = {**r.config["sparo_cfg"], "reduce_depth": depth - 1}
        bigger = sparo_clip.create_model(
            base, pretrained_text=False, override_config={**override, "embed_dim": 64, "sparo_cfg": less}
        )
        assert sum(p.numel() for p in bigger.parameters()) > r.base_params


def test_shipped_timm_configs_stay_within_their_bases():
    for name, (base, override) in {
        "ViT-B-16-SigLIP-SPARO": ("ViT-B-16-SigLIP", None),  # a CLIP builds without the SPARO mask ids
        "convnext_base-SPARO": ("convnext_base", None),
    }.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in sparo_clip.create_model(name, device="meta").parameters())
            b = sum(
                p.numel()
                for p in sparo_clip.create_model(base, device="meta", override_config=override).parameters()
            )
        assert n <= b, name


# ----------------------------------------------------------------------------------- train and reload
@pytest.mark.parametrize("family", ["test-noncausal-SPARO", "test-convnext-SPARO", "hf"])
def test_train_step_through_open_clip_train_and_reload(family, tmp_path, hf_dir, tokenizer):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    logs = tmp_path / "logs"
    flags = {"num_samples": 8}
    model_name, override = family, None
    if family == "hf":
        model_name, override = "test-SPARO", _hf_override(hf_dir)
        flags["override_model_config"] = json.dumps(override)
    if family == "test-noncausal-SPARO":
        flags["siglip"] = True
    assert train_main(base_args(pattern, logs, "run", model=model_name, **flags)) == 0
    params = (logs / "run" / "params.txt").read_text()
    assert f"siglip: {family == 'test-noncausal-SPARO'}" in params
    ckpt = str(logs / "run" / "checkpoints" / "epoch_1.pt")
    model = sparo_clip.create_model(model_name, pretrained=ckpt, override_config=override).eval()
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    trained = {k.removeprefix("module."): v for k, v in sd.items()}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], msg=key)
    out = sparo_clip.save_pretrained(model, tmp_path / "saved")
    again = open_clip.create_model("local-dir:" + str(out)).eval()
    text = tokenizer(["a red square"])
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(text), model.encode_text(text))


# ----------------------------------------------------------------------------------- locking
@pytest.mark.parametrize("family", FAMILIES)
def test_lock_means_the_same_on_both_towers(family, hf_dir):
    """n = 0 freezes tower and read-out, n = 1 trains the read-out only, n = 2 also the last block."""
    for n in (0, 1, 2):
        model = _model(family, hf_dir)
        model.lock_image_tower(n)
        model.lock_text_tower(n)
        for tower, readout in ((model.visual, model.image_readout), (model.text, model.text_readout)):
            assert all(p.requires_grad == (n > 0) for p in readout.parameters())
            last = block_list(tower)[-1]
            assert all(p.requires_grad == (n > 1) for p in last.parameters()), (family, n)
            earlier = block_list(tower)[0] if len(block_list(tower)) > 1 else None
            if earlier is not None:
                assert not any(p.requires_grad for p in earlier.parameters())


def test_training_checks_a_registered_hf_config_on_the_meta_device(hf_dir):
    """OpenCLIP asks for the HF tower's pretrained weights by default; the pre-training check must not."""
    from sparo_clip.training.entry import count_params

    cfg = json.loads((CONFIG_DIR / "test-SPARO.json").read_text())
    cfg["text_cfg"]["hf_model_name"] = str(hf_dir)  # no hf_model_pretrained: OpenCLIP's default applies
    (hf_dir / "test-hf-SPARO.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(hf_dir / "test-hf-SPARO.json")
    built = sparo_clip.create_model("test-SPARO", override_config=_hf_override(hf_dir))
    assert count_params("test-hf-SPARO", None) == sum(p.numel() for p in built.parameters())


@pytest.mark.parametrize("trim", [True, False])
def test_non_causal_argmax_tower_ignores_tokens_after_end_of_text(trim, tokenizer):
    """A no_causal_mask tower with OpenAI-style argmax pooling: junk after end-of-text changes nothing."""
    override = {"text_cfg": {"no_causal_mask": True}, "sparo_cfg": {"trim_text": trim}}
    model = sparo_clip.create_model("test-SPARO", override_config=override).eval()
    text = tokenizer(["a red circle", "two blue squares"])
    junk = text.clone()
    junk[~model.text_key_mask(text)] = 77
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(junk), model.encode_text(text), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_intermediates_on_every_family(family, hf_dir, tokenizer):
    model = _model(family, hf_dir)
    size = 32 if family in ("test-SPARO", "hf") else 160
    image, text = torch.randn(2, 3, size, size), tokenizer(["a red circle", "two blue squares"])
    with torch.no_grad():
        out = model.forward_intermediates(image, text, output_logits=True)
        torch.testing.assert_close(out["image_features"], model.encode_image(image))
        torch.testing.assert_close(out["text_features"], model.encode_text(text))
    assert out["image_intermediates"] and out["image_logits"].shape == (2, 2)
    assert ("text_intermediates" in out) == (family != "hf")  # HF towers expose no intermediates
