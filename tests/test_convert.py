"""Reference checkpoints (OpenCLIP 2.20 fork layout) convert exactly: same encode outputs in float64."""

from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.checkpoints.convert import convert_reference_state_dict
from sparo_clip.commands.cli import main as cli_main

from .reference import readout_reference

L, V = 4, 16  # test-SPARO


def _reference_checkpoint(heads=None, share_kv=True, share_queries=False):
    """A checkpoint in the reference layout, built from its documented key names and shapes.

    Towers: OpenCLIP's CLIP (top-level text keys) with test-SPARO's reduced depth, without projections.
    Read-outs: ``visual.sparo.*`` / ``text_sparo.*`` with 5-D queries (1, H, L/H, 1, d).
    """
    torch.manual_seed(3)
    clip = open_clip.create_model(
        "test-CLIP", vision_cfg={**open_clip.get_model_config("test-CLIP")["vision_cfg"], "layers": 1}
    )
    clip.transformer.resblocks = clip.transformer.resblocks[:1]  # text depth 2 - reduce_depth 1
    state = {k: v for k, v in clip.state_dict().items() if k not in ("visual.proj", "text_projection")}
    H = L if heads is None else heads
    for prefix, width, d in (("visual.sparo.", 64, 32), ("text_sparo.", 64, 32)):
        if not (share_queries and prefix == "text_sparo."):
            state[prefix + "query"] = torch.randn(1, H, L // H, 1, d)
        state[prefix + "key.weight"] = torch.randn(H * d, width) * width**-0.5
        state[prefix + "key.bias"] = torch.randn(H * d) * 0.1
        if not share_kv:
            state[prefix + "value.weight"] = torch.randn(H * d, width) * width**-0.5
            state[prefix + "value.bias"] = torch.randn(H * d) * 0.1
        state[prefix + "out.weight"] = torch.randn(V, d) * d**-0.5
        state[prefix + "out.bias"] = torch.randn(V) * 0.1
    return clip, state


def _readout_params(state, prefix, heads, share_kv, query_prefix=None):
    """The reference read-out's parameters, as readout_reference reads them (float64)."""
    q = state[(query_prefix or prefix) + "query"].double()
    H = L if heads is None else heads
    return SimpleNamespace(
        num_slots=L,
        heads=H,
        attn_dim=q.shape[-1],
        value_dim=q.shape[-1],
        slot_norm="cont:const",
        query=q.reshape(H, L // H, q.shape[-1]),
        key=SimpleNamespace(
            weight=state[prefix + "key.weight"].double(), bias=state[prefix + "key.bias"].double()
        ),
        value=None
        if share_kv
        else SimpleNamespace(
            weight=state[prefix + "value.weight"].double(), bias=state[prefix + "value.bias"].double()
        ),
        out=SimpleNamespace(
            weight=state[prefix + "out.weight"].double(), bias=state[prefix + "out.bias"].double()
        ),
    )


@pytest.mark.parametrize(
    "heads, share_kv, share_queries", [(None, True, False), (2, False, False), (None, True, True)]
)
def test_converted_reference_checkpoint_encodes_identically_in_float64(
    heads, share_kv, share_queries, tokenizer
):
    clip, state = _reference_checkpoint(heads, share_kv, share_queries)
    override = {"sparo_cfg": {"heads": heads, "share_kv": share_kv, "share_queries": share_queries}}
    model = sparo_clip.create_model("test-SPARO", override_config=override)
    model.load_state_dict(convert_reference_state_dict(state, model), strict=True)
    model, clip = model.double().eval(), clip.double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    text = tokenizer(["a red circle", "a small blue square left of a green one"])
    with torch.no_grad():
        # the reference's tokens, from OpenCLIP's own towers: ln_post of all tokens, ln_final of all positions
        image_tokens = clip.visual.ln_post(clip.visual.transformer(clip.visual._embeds(images)))
        text_out = clip.forward_intermediates(text=text, text_indices=1, text_output_fmt="NLC")
        text_tokens = clip.ln_final(text_out["text_intermediates"][-1])
        mask = torch.arange(text.shape[1])[None] <= text.argmax(-1)[:, None]
        q_text = "visual.sparo." if share_queries else None
        ref_img, _ = readout_reference(_readout_params(state, "visual.sparo.", heads, share_kv), image_tokens)
        ref_txt, _ = readout_reference(
            _readout_params(state, "text_sparo.", heads, share_kv, q_text), text_tokens, mask
        )
        ours_img = model.encode_image(images, return_sparo=True)
        ours_txt = model.encode_text(text, return_sparo=True)
    np.testing.assert_allclose(ours_img.numpy(), ref_img, atol=1e-10)
    np.testing.assert_allclose(ours_txt.numpy(), ref_txt, atol=1e-10)


def test_mismatched_checkpoints_are_refused_with_the_keys():
    _, state = _reference_checkpoint()
    model = sparo_clip.create_model("test-SPARO")
    bad = {**state, "visual.sparo.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unknown keys: \['visual.sparo.extra'\]"):
        convert_reference_state_dict(bad, model)
    missing = {k: v for k, v in state.items() if k != "text_sparo.out.bias"}
    with pytest.raises(ValueError, match=r"missing: \['text_readout.out.bias'\]"):
        convert_reference_state_dict(missing, model)
    wrong = {**state, "visual.sparo.query": torch.zeros(1, 2, 2, 1, 32)}
    with pytest.raises(
        ValueError, match=r"shapes: \['visual.sparo.query \(1, 2, 2, 1, 32\) -> image_readout.query"
    ):
        convert_reference_state_dict(wrong, model)


def test_cli_converts_a_file_that_loads_with_open_clip(tmp_path, capsys):
    _, state = _reference_checkpoint()
    src, dst = tmp_path / "ref.pt", tmp_path / "ours.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, src)
    assert cli_main(["convert", str(src), str(dst), "--model", "test-SPARO"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = open_clip.create_model("test-SPARO", pretrained=str(dst))
    torch.testing.assert_close(model.image_readout.key.weight, state["visual.sparo.key.weight"])
    torch.testing.assert_close(model.text.token_embedding.weight, state["token_embedding.weight"])
    assert cli_main(["convert", str(src), str(dst), "--model", "tiny-SPARO"]) == 2
    assert "does not match the model's config" in capsys.readouterr().err


@pytest.mark.parametrize("name, content", [("bad.pt", b"x"), ("empty.pt", b""), ("bad.safetensors", b"")])
def test_cli_unreadable_file_is_one_line(tmp_path, capsys, name, content):
    src = tmp_path / name
    src.write_bytes(content)
    assert cli_main(["convert", "--model", "test-SPARO", str(src), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparo-clip convert: error: checkpoint") and len(err.splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()
