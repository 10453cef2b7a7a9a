"""torch.compile gives the eager results in one graph: the read-out, the encoders and the whole forward."""

import shutil

import open_clip
import pytest
import torch

import sparo_clip
from sparo_clip.models.readout import SparoReadout

needs_compiler = pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++") or shutil.which("gcc")),
    reason="torch.compile's inductor backend on CPU needs a C++ compiler",
)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _forward_backward(fn, m, x, mask):
    m.zero_grad(set_to_none=True)
    x.grad = None
    out = fn(x, key_mask=mask)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {"x": x.grad.clone(), **{n: p.grad.clone() for n, p in m.named_parameters()}}


def _check_compiled_readout(m):
    x = torch.randn(3, 7, 32, requires_grad=True)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] * 5 + [False] * 2])
    compiled = torch.compile(m, fullgraph=True)  # fullgraph: any graph break is an error
    out, grads = _forward_backward(compiled, m, x, mask)
    ref_out, ref_grads = _forward_backward(m, m, x, mask)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@needs_compiler
def test_compiled_readout_fused_path_matches_eager_in_one_graph():
    m = SparoReadout(32, num_slots=4, slot_dim=8, attn_dim=16)
    assert m._pools_first(7, 32)  # the fused path as the models use it
    _check_compiled_readout(m)


@needs_compiler
@pytest.mark.slow
def test_compiled_readout_projected_form_matches_eager_in_one_graph():
    m = SparoReadout(32, num_slots=4, slot_dim=8, attn_dim=16, heads=2, share_kv=False, value_dim=8)
    m.pool_first = False
    _check_compiled_readout(m)


@needs_compiler
@pytest.mark.slow
def test_compiled_encoders_match_eager(test_model, tokenizer):
    m = test_model.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        image = torch.compile(m.encode_image, fullgraph=True)  # fullgraph: any graph break is an error
        torch.testing.assert_close(image(images), m.encode_image(images), atol=1e-5, rtol=1e-5)
        # while compiling, the text tower runs over the whole context (no data-dependent length): one graph,
        # the trimmed eager result, also when the next batch's longest caption has another length
        text = torch.compile(m.encode_text, fullgraph=True)
        for captions in (["a red circle", "", "a blue square"], ["a small green triangle left of a circle"]):
            tokens = tokenizer(captions)
            torch.testing.assert_close(text(tokens), m.encode_text(tokens), atol=1e-5, rtol=1e-5)


class GraphCounter:
    """A torch.compile backend that counts the graphs Dynamo hands it and runs each as traced (no inductor)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.mark.parametrize("name, size", [("test-SPARO", 32), ("test-noncausal-SPARO", 160)])
def test_compiled_forward_has_no_graph_break_and_is_exact(name, size, tokenizer):
    """A compiled SPARO forward (and backward) is one graph, as OpenCLIP's CLIP is, for any caption lengths.

    Trimming the text tower to the longest caption used to read that length as a Python int: 6 graph breaks
    per forward (7 graphs) and a recompilation for every new length.
    """
    counts = {}
    for model_name, image_size in (("test-CLIP", 32), (name, size)):
        torch._dynamo.reset()
        model = open_clip.create_model(model_name, output_dict=True)
        counter = GraphCounter()
        compiled = torch.compile(model, backend=counter)
        images = torch.randn(2, 3, image_size, image_size)
        batches = (["a red circle", "a blue square left of a green one"], ["two small yellow triangles", "x"])
        for captions in batches:  # two longest-caption lengths: no recompilation either
            text = tokenizer(captions)
            out = compiled(images, text)
            if model_name == name:  # exact against the eager, trimmed and the whole-context computation
                eager = model(images, text)
                full = sparo_clip.create_model(name, override_config={"sparo_cfg": {"trim_text": False}})
                full.load_state_dict(model.state_dict())
                whole = full.encode_text(text)
                torch.testing.assert_close(out["text_features"], eager["text_features"], atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(out["text_features"], whole, atol=1e-6, rtol=1e-5)
                torch.testing.assert_close(out["image_features"], eager["image_features"])
            (out["image_features"] @ out["text_features"].T).sum().backward()
        counts[model_name] = counter.graphs
    assert counts == {"test-CLIP": 1, name: 1}
