"""torch.compile (inductor, CPU) gives the eager results: the read-out whole, the encoders with one break."""

import shutil

import pytest
import torch

from sparo_clip.models.readout import SparoReadout

pytestmark = pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++") or shutil.which("gcc")),
    reason="torch.compile on CPU needs a C++ compiler",
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


def test_compiled_readout_fused_path_matches_eager_in_one_graph():
    m = SparoReadout(32, num_slots=4, slot_dim=8, attn_dim=16)
    assert m._pools_first(7, 32)  # the fused path as the models use it
    _check_compiled_readout(m)


@pytest.mark.slow
def test_compiled_readout_projected_form_matches_eager_in_one_graph():
    m = SparoReadout(32, num_slots=4, slot_dim=8, attn_dim=16, heads=2, share_kv=False, value_dim=8)
    m.pool_first = False
    _check_compiled_readout(m)


@pytest.mark.slow
def test_compiled_encoders_match_eager(test_model, tokenizer):
    m = test_model.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        image = torch.compile(m.encode_image, fullgraph=True)  # the vision side is one graph
        torch.testing.assert_close(image(images), m.encode_image(images), atol=1e-5, rtol=1e-5)
        # trimming the text tower reads the longest caption's length as a Python int: compile breaks
        # the graph there and stays exact, also when the next batch trims to another length
        text = torch.compile(m.encode_text)
        for captions in (["a red circle", "", "a blue square"], ["a small green triangle left of a circle"]):
            tokens = tokenizer(captions)
            torch.testing.assert_close(text(tokens), m.encode_text(tokens), atol=1e-5, rtol=1e-5)
