"""Read-out baselines: sparsemax, FDT codebook pooling, text attentional pooling, bottleneck, GAP.

Numerics are checked against float64 numpy references written here from the equations; every baseline
trains through ``sparo_clip.training.entry`` on generated shards and loads back from its checkpoint.
"""

import json

import numpy as np
import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss

import sparo_clip
import sparo_clip.models.baselines  # noqa: F401  (registers the baseline builders)
from sparo_clip.models.baselines import BaselineCLIP, CodebookPool, sparsemax
from sparo_clip.training.entry import main as train_main

from .test_scripts import recipe_command
from .train_helpers import base_args, make_shards

GAP = {"vision_cfg": {"pool_type": "avg", "final_ln_after_pool": True}}  # ln_post after the mean
TEXT_POOL = {"text_pool_cfg": {}}


# ----------------------------------------------------------------------------------- references
def sparsemax_reference(z):
    """Euclidean projection onto the simplex, float64: bisection on tau in sum(max(z - tau, 0)) = 1."""
    z = np.asarray(z, dtype=np.float64)
    lo, hi = z.min() - 1.0, z.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if np.maximum(z - tau, 0).sum() > 1 else (lo, tau)
    return np.maximum(z - (lo + hi) / 2, 0)


def _layer_norm(x, ln):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * _np(ln.weight) + _np(ln.bias)


def _np(t):
    return t.detach().double().numpy()


def _gelu(x):
    from math import erf

    return x * 0.5 * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def codebook_reference(pool, tokens, codes, key_mask):
    """FDT codebook pooling, float64, token by token: (features (B, C), weights (B, K))."""
    ln1, lin1, _, ln2, lin2 = pool.query_map
    x, c = _np(tokens), _np(codes)
    B, N, _ = x.shape
    feats, weights = [], []
    for b in range(B):
        pooled = np.full(c.shape[0], -np.inf)
        for n in range(N):
            if not key_mask[b, n]:
                continue
            h = _gelu(_layer_norm(x[b, n], ln1) @ _np(lin1.weight).T + _np(lin1.bias))
            q = _layer_norm(h, ln2) @ _np(lin2.weight).T + _np(lin2.bias)
            scores = (c @ q) / np.sqrt(c.shape[1]) / pool.temperature  # scaled, then divided by T
            pooled = np.maximum(pooled, scores)  # max over the valid tokens
        w = sparsemax_reference(pooled)
        weights.append(w)
        feats.append(w @ c)
    return np.stack(feats), np.stack(weights)


def vision_tokens(visual, images):
    """A ViT tower's tokens after its last block, before ln_post, computed from its parts: (B, 1 + P, W)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, P, W)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    for block in visual.transformer.resblocks:
        x = block(x)
    return x


def text_tokens(text_tower, text):
    """A causal text tower's tokens over the whole context, before ln_final: (B, N, W)."""
    x = text_tower.token_embedding(text) + text_tower.positional_embedding
    n = text.shape[1]
    causal = torch.full((n, n), float("-inf"), dtype=x.dtype).triu(1)
    for block in text_tower.transformer.resblocks:
        x = block(x, attn_mask=causal)
    return x


@pytest.fixture
def text(tokenizer):
    return tokenizer(["a red square", "", "a small blue square to the left of a large green triangle"])


# ----------------------------------------------------------------------------------- sparsemax
@pytest.mark.parametrize("shape, scale", [((4, 7), 1.0), ((3, 50), 0.05), ((2, 16384), 3.0), ((5, 2), 10.0)])
def test_sparsemax_matches_float64_projection_onto_simplex(shape, scale):
    z = torch.randn(shape, dtype=torch.float64) * scale
    p = sparsemax(z)
    ref = np.stack([sparsemax_reference(row) for row in z.numpy()])
    np.testing.assert_allclose(p.numpy(), ref, atol=1e-10)
    p32 = sparsemax(z.float())
    assert p32.dtype == torch.float32
    np.testing.assert_allclose(p32.numpy(), ref, atol=2e-6)


def test_sparsemax_properties():
    z = torch.randn(6, 40) * 2
    p = sparsemax(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(6))
    assert (p >= 0).all()
    assert (p == 0).any(dim=-1).all()  # spread scores: exact zeros, unlike softmax
    # optimality (KKT): p = z - tau on the support, z <= tau off it, with one tau per row
    for zi, pi in zip(z, p, strict=True):
        tau = (zi[pi > 0] - pi[pi > 0]).mean()
        torch.testing.assert_close(zi[pi > 0] - pi[pi > 0], tau.expand(int((pi > 0).sum())))
        assert (zi[pi == 0] <= tau + 1e-6).all()
    torch.testing.assert_close(sparsemax(z + 123.0), p)  # translation invariant
    torch.testing.assert_close(sparsemax(torch.zeros(2, 8)), torch.full((2, 8), 1 / 8))  # ties: uniform
    big = torch.tensor([[0.0, 5.0, 1.0]])
    torch.testing.assert_close(sparsemax(big), torch.tensor([[0.0, 1.0, 0.0]]))  # far ahead: one-hot
    torch.testing.assert_close(sparsemax(z.T, dim=0), p.T)


def test_sparsemax_gradient_is_the_simplex_projection_jacobian():
    z = (torch.randn(3, 9, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(sparsemax, (z,))
    p = sparsemax(z)
    g = torch.randn_like(p)
    (grad,) = torch.autograd.grad(p, z, g)
    for b in range(3):
        s = (p[b] > 0).double()
        jac = torch.diag(s) - torch.outer(s, s) / s.sum()  # I - 11^T/k on the support, 0 elsewhere
        torch.testing.assert_close(grad[b], jac @ g[b])


# ----------------------------------------------------------------------------------- codebook
@pytest.mark.parametrize("temperature", [1.0, 1000.0])
def test_codebook_pool_matches_float64_reference(temperature):
    pool = CodebookPool(12, 8, temperature).double()
    for p in pool.parameters():  # non-trivial LayerNorm affine parameters and biases
        torch.nn.init.normal_(p, std=0.5)
    tokens = torch.randn(3, 5, 12, dtype=torch.float64)
    codes = torch.randn(20, 8, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    feats, weights = pool(tokens, codes, key_mask=mask, return_weights=True)
    ref_feats, ref_weights = codebook_reference(pool, tokens, codes, mask.numpy())
    np.testing.assert_allclose(weights.detach().numpy(), ref_weights, atol=1e-9)
    np.testing.assert_allclose(feats.detach().numpy(), ref_feats, atol=1e-9)
    # masked tokens take no part
    changed = tokens.clone()
    changed[1, 2:] = torch.randn(3, 12, dtype=torch.float64) * 10
    torch.testing.assert_close(pool(changed, codes, key_mask=mask), feats)


def test_codebook_temperature_divides_scores():
    """A larger temperature flattens the weights: more codes in the sparsemax support."""
    torch.manual_seed(0)
    pool = CodebookPool(16, 32, 1.0)
    tokens, codes = torch.randn(4, 6, 16), torch.randn(256, 32)
    supports = []
    for t in (0.1, 1.0, 10.0, 1000.0):
        pool.temperature = t
        supports.append(int((pool.code_weights(tokens, codes) > 0).sum()))
    assert supports == sorted(supports) and supports[0] < supports[-1]
    assert supports[-1] == 4 * 256  # T = 1000 at this scale: every code gets weight


def test_codebook_model_reads_patch_tokens_and_text_up_to_eot(text):
    model = open_clip.create_model("test-CLIP-codebook").double().eval()
    assert isinstance(model, BaselineCLIP)
    assert model.visual.proj is None and model.text.text_projection is None
    assert isinstance(model.visual.ln_post, torch.nn.Identity)
    assert isinstance(model.text.ln_final, torch.nn.Identity)
    assert model.codebook.shape == (32, 64)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        patches = vision_tokens(model.visual, images)[:, 1:]  # no CLS, no ln_post
        ref_img, _ = codebook_reference(model.image_codebook, patches, model.codebook, np.ones((3, 16), bool))
        np.testing.assert_allclose(model.encode_image(images).numpy(), ref_img, atol=1e-9)

        hidden = text_tokens(model.text, text)  # whole context, no ln_final
        eot = text.argmax(-1)
        valid = (torch.arange(text.shape[1])[None] <= eot[:, None]).numpy()
        ref_txt, _ = codebook_reference(model.text_codebook, hidden, model.codebook, valid)
        feats = model.encode_text(text)
        np.testing.assert_allclose(feats.numpy(), ref_txt, atol=1e-9)
        garbage = text.clone()  # tokens after end-of-text change nothing
        for b in range(3):
            garbage[b, eot[b] + 1 :] = torch.randint(1, 400, (text.shape[1] - eot[b] - 1,))
        torch.testing.assert_close(model.encode_text(garbage), feats)


# ----------------------------------------------------------------------------------- text pooling
def test_text_attentional_pool_matches_float64_reference(text):
    model = sparo_clip.create_model("test-CLIP", override_config=TEXT_POOL).double().eval()
    assert isinstance(model, BaselineCLIP) and model.text_pool.query.shape == (1, 64)
    pool, tower = model.text_pool, model.text
    with torch.no_grad():
        for p in pool.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # non-trivial LayerNorms and biases
        feats = model.encode_text(text).numpy()
        hidden = _np(text_tokens(tower, text))
    heads, width = pool.attn.num_heads, 64
    d = width // heads
    w_in, b_in = _np(pool.attn.in_proj_weight), _np(pool.attn.in_proj_bias)
    eot = text.argmax(-1).numpy()
    for b in range(3):
        keys = _layer_norm(hidden[b, : eot[b] + 1], pool.ln_k)  # positions up to end-of-text only
        query = _layer_norm(_np(pool.query)[0], pool.ln_q)
        q = query @ w_in[:width].T + b_in[:width]
        k = keys @ w_in[width : 2 * width].T + b_in[width : 2 * width]
        v = keys @ w_in[2 * width :].T + b_in[2 * width :]
        out = np.zeros(width)
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            s = k[:, sl] @ q[sl] / np.sqrt(d)
            a = np.exp(s - s.max())
            out[sl] = (a / a.sum()) @ v[:, sl]
        pooled = out @ _np(pool.attn.out_proj.weight).T + _np(pool.attn.out_proj.bias)
        ref = _layer_norm(pooled, tower.ln_final) @ _np(tower.text_projection)
        np.testing.assert_allclose(feats[b], ref, atol=1e-9)


# ----------------------------------------------------------------------------------- bottleneck, GAP
def test_bottleneck_projects_towers_then_maps_to_embed_dim(batch):
    images, text = batch
    model = open_clip.create_model("test-CLIP-bottleneck").eval()
    assert model.visual.proj.shape == (64, 16) and model.text.text_projection.shape == (64, 16)
    assert model.image_bottleneck.weight.shape == (64, 16) and model.text_bottleneck.bias.shape == (64,)
    with torch.no_grad():
        img, txt = model.visual(images), model.text(text)
        assert img.shape == txt.shape == (3, 16)
        w_img, b_img = model.image_bottleneck.weight, model.image_bottleneck.bias
        w_txt, b_txt = model.text_bottleneck.weight, model.text_bottleneck.bias
        torch.testing.assert_close(model.encode_image(images), img @ w_img.T + b_img)
        torch.testing.assert_close(model.encode_text(text), txt @ w_txt.T + b_txt)
    feats, _, _ = model(images, text)
    assert feats.shape == (3, 64)


@pytest.mark.parametrize("final_ln_after_pool", [True, False])
def test_gap_is_openclip_average_pool_over_patch_tokens(final_ln_after_pool):
    override = {"vision_cfg": {"pool_type": "avg", "final_ln_after_pool": final_ln_after_pool}}
    model = sparo_clip.create_model("test-CLIP", override_config=override).double().eval()
    assert type(model) is open_clip.CLIP  # no code of ours: OpenCLIP's own option
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        patches = vision_tokens(model.visual, images)[:, 1:]
        ln = model.visual.ln_post
        if final_ln_after_pool:  # the reference: ln_post(mean of patch tokens) @ proj
            ref = ln(patches.mean(1)) @ model.visual.proj
        else:  # OpenCLIP 3.3's default order: mean of ln_post(patch tokens) @ proj
            ref = ln(patches).mean(1) @ model.visual.proj
        torch.testing.assert_close(model.encode_image(images), ref)


# ----------------------------------------------------------------------------------- all baselines
BASELINES = [
    ("test-CLIP-bottleneck", None),
    ("test-CLIP-codebook", None),
    ("test-CLIP-textpool", None),
    ("test-CLIP", TEXT_POOL),
    ("test-CLIP", GAP),
]


@pytest.mark.parametrize("name, override", BASELINES)
def test_every_parameter_gets_a_gradient(batch, name, override):
    images, text = batch
    model = sparo_clip.create_model(name, override_config=override, output_dict=True)
    loss = ClipLoss()(**model(images, text))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name, override", BASELINES[:3])
def test_bf16_autocast_gives_finite_features_for_empty_and_overlong_captions(tokenizer, name, override):
    model = sparo_clip.create_model(name, override_config=override)
    text = tokenizer(["", "word " * 100])  # empty, and truncated at the context length
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        img, txt, _ = model(torch.randn(2, 3, 32, 32), text)
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()
    torch.testing.assert_close(txt.float().norm(dim=-1), torch.ones(2), atol=1e-2, rtol=0)


def test_lock_towers_freezes_their_read_out_heads():
    model = open_clip.create_model("test-CLIP-codebook")
    model.lock_image_tower()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {n for n, _ in model.named_parameters() if n.startswith(("visual.", "image_codebook."))} == frozen
    assert model.visual.proj is None  # the placeholder used while locking is gone
    model = open_clip.create_model("test-CLIP-textpool")
    model.lock_text_tower(unlocked_layers=0)
    assert not any(p.requires_grad for p in model.text_pool.parameters())
    model.lock_text_tower(unlocked_layers=1)
    assert all(p.requires_grad for p in model.text_pool.parameters())


@pytest.mark.parametrize(
    "override, error, message",
    [
        ({"bottleneck_cfg": {"bottleneck_dim": 0}}, ValueError, "bottleneck_cfg.bottleneck_dim=0"),
        ({"bottleneck_cfg": {"dim": 8}}, ValueError, "unknown bottleneck_cfg key(s) ['dim']"),
        ({"bottleneck_cfg": [8]}, ValueError, "bottleneck_cfg must be a dict"),
        ({"codebook_cfg": {"temperature": 0}}, ValueError, "codebook_cfg.temperature=0"),
        ({"codebook_cfg": {"num_codes": "many"}}, ValueError, "codebook_cfg.num_codes='many'"),
        ({"codebook_cfg": {}, "text_pool_cfg": {}}, ValueError, "set only one of them"),
        ({"text_pool_cfg": {"heads": 3}}, ValueError, "text_pool_cfg.heads=3 must divide the text width 64"),
        ({"text_pool_cfg": {}, "text_cfg": {"pool_type": "last"}}, ValueError, "allowed: ['argmax', 'eos']"),
        ({"codebook_cfg": {}, "vision_cfg": {"layers": [1, 1, 1, 1]}}, NotImplementedError, "ModifiedResNet"),
    ],
)
def test_bad_baseline_config_is_a_clear_error(override, error, message):
    with pytest.raises(error) as info:
        sparo_clip.create_model("test-CLIP", override_config=override, device="meta")
    assert message in str(info.value)


@pytest.mark.parametrize("name, override", BASELINES)
def test_baseline_trains_through_entry_point_and_loads_back(tmp_path, name, override):
    pattern = make_shards(tmp_path / "data", num_shards=2, per_shard=4)
    logs = tmp_path / "logs"
    flags = {"override_model_config": json.dumps(override)} if override else {}
    args = base_args(pattern, logs, "run", model=name, num_samples=8, batch_size=4, **flags)
    assert train_main(args) == 0
    assert "Train Epoch: 0 [8/8" in (logs / "run" / "out.log").read_text()  # two optimizer steps
    ckpt = logs / "run" / "checkpoints" / "epoch_1.pt"
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    torch.manual_seed(0)
    init = sparo_clip.create_model(name, override_config=override).state_dict()
    model = sparo_clip.create_model(name, pretrained=str(ckpt), override_config=override)
    assert isinstance(model, open_clip.CLIP if override is GAP else BaselineCLIP)
    state = model.state_dict()
    assert state.keys() == init.keys()
    for key, value in saved.items():
        torch.testing.assert_close(state[key.removeprefix("module.")], value)
    assert any(not torch.equal(state[k], init[k]) for k in state if k != "logit_scale")  # it trained


# ----------------------------------------------------------------------------------- configs, scripts
SCRIPTS = {
    "train_bottleneck.sh": "ViT-B-32-bottleneck",
    "train_codebook.sh": "ViT-B-32-codebook",
    "train_text_attnpool.sh": "ViT-B-32-textpool",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_baseline_scripts_run_the_recipe_with_the_registered_baseline(tmp_path, script):
    _, flags = recipe_command(tmp_path, script)
    assert flags["--model"] == "ViT-B-32"
    override = json.loads(flags["--override-model-config"])
    registered = open_clip.get_model_config(SCRIPTS[script])
    assert sparo_clip.resolve_model_config("ViT-B-32", override) == registered


def test_vit_b32_baselines_match_the_reference_sizes():
    with torch.device("meta"):
        models = {n: open_clip.create_model(n, device="meta") for n in sorted(SCRIPTS.values())}
    bottleneck, codebook = models["ViT-B-32-bottleneck"], models["ViT-B-32-codebook"]
    assert bottleneck.visual.proj.shape == (768, 512)
    assert bottleneck.image_bottleneck.weight.shape == bottleneck.text_bottleneck.weight.shape == (4096, 512)
    assert codebook.codebook.shape == (16384, 4096) and codebook.image_codebook.temperature == 1000.0
    assert codebook.image_codebook.query_map[1].weight.shape == (4096, 768)
    assert codebook.text_codebook.query_map[1].weight.shape == (4096, 512)
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    assert counts == {  # as listed in docs/baselines.md
        "ViT-B-32-bottleneck": 155_479_809,
        "ViT-B-32-codebook": 256_560_897,
        "ViT-B-32-textpool": 152_330_497,
    }
