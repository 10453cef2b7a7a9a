"""The DINO recipe's pieces: tensor multi-crop, the SPARO head input, student drop-path, and a short tiny run
whose targets carry information (H(t|x) below H(mean t))."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparo_clip.dino.config import load_config
from sparo_clip.dino.model import DinoNet
from sparo_clip.dino.tensor_crops import MEAN, STD, CropCfg, crop_views, decode_images, multi_crop
from sparo_clip.errors import DataError

from .eval_helpers import class_folder

ROOT = Path(__file__).resolve().parents[1]


def test_a_full_box_is_the_image_and_a_quadrant_is_its_corner():
    img = torch.rand(2, 3, 8, 8)
    full = crop_views(img, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), torch.tensor([False, False]), 8)
    assert torch.allclose(full, img, atol=1e-6)
    flipped = crop_views(img, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), torch.tensor([True, False]), 8)
    assert torch.allclose(flipped[0], img[0].flip(-1), atol=1e-6) and torch.allclose(
        flipped[1], img[1], atol=1e-6
    )
    corner = crop_views(img, torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2), torch.tensor([False, False]), 4)
    expected = F.interpolate(
        img[:, :, :4, :4], size=4
    )  # the same pixels: a half-size box sampled at half size
    assert torch.allclose(corner, expected, atol=1e-6)


def test_multi_crop_gives_seeded_normalised_views_of_the_right_sizes():
    images = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
    cfg = CropCfg(global_size=16, local_size=8, local_crops=3)
    a = multi_crop(images, cfg, torch.Generator().manual_seed(0))
    b = multi_crop(images, cfg, torch.Generator().manual_seed(0))
    c = multi_crop(images, cfg, torch.Generator().manual_seed(1))
    assert [v.shape[-1] for v in a] == [16, 16, 8, 8, 8] and all(v.shape[:2] == (4, 3) for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    raw = a[0] * STD + MEAN  # back to [0, 1]: crops only resample, so no value leaves the range
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    gray = (
        multi_crop(images, CropCfg(16, 8, 1, grayscale=1.0), torch.Generator().manual_seed(0))[0] * STD + MEAN
    )
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-5) and torch.allclose(
        gray[:, 1], gray[:, 2], atol=1e-5
    )


def test_decoding_skips_an_unreadable_image_and_strict_stops(tmp_path):
    folder = class_folder(tmp_path / "imgs", {"a": 3})
    paths = sorted(folder.rglob("*.png"))
    paths[1].write_bytes(b"")
    images, skipped = decode_images(paths, 16)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    assert len(skipped) == 1 and paths[1].name in skipped[0]
    with pytest.raises(DataError, match="--strict"):
        decode_images(paths, 16, strict=True)


def test_sparo_head_input_scales_or_normalises_only_what_the_head_reads():
    x = [torch.randn(2, 3, 32, 32)]
    torch.manual_seed(0)
    unit = DinoNet(load_config("tiny_sparo_dino"))
    torch.manual_seed(0)
    scaled = DinoNet(load_config("tiny_sparo_dino", {"head_input": "sqrt_dim"}))
    torch.manual_seed(0)
    normed = DinoNet(load_config("tiny_sparo_dino", {"head_input": "layernorm"}))
    feats = unit.encoder(x[0])
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)  # the slots: unit norm
    dim = unit.encoder.feature_dim
    assert torch.allclose(scaled.head_input(feats).norm(dim=-1), torch.full((2,), dim**0.5), atol=1e-3)
    assert normed.head_norm is not None and abs(float(normed.head_input(feats).std(-1).mean()) - 1) < 0.05
    assert torch.equal(scaled.encoder.slots(x[0]), unit.encoder.slots(x[0]))  # evaluation features unchanged
    with pytest.raises(ValueError, match="needs readout='sparo'"):
        load_config("tiny_dino", {"head_input": "sqrt_dim"})


def test_vit_s_students_use_drop_path_and_teachers_do_not():
    for name in ("vit_small_patch16_dino", "vit_small_patch16_sparo_dino"):
        assert load_config(name).backbone_kwargs["drop_path_rate"] == 0.1  # DINO's ViT-S/16 recipe
    net = DinoNet(load_config("tiny_sparo_dino", {"backbone_kwargs": {**load_config("tiny_sparo_dino").backbone_kwargs,
                                                                      "drop_path_rate": 0.5}}))  # fmt: skip
    x = [torch.randn(4, 3, 32, 32)]
    torch.manual_seed(1)
    train_a = net.train()(x)[0]
    torch.manual_seed(2)
    train_b = net(x)[0]
    assert not torch.allclose(train_a, train_b)  # the student drops paths at random
    net.eval()  # the teacher always runs in eval mode: no drop path
    assert torch.equal(net(x)[0], net(x)[0])


@pytest.mark.slow  # about a minute: a real tiny run
def test_tiny_recipe_gives_targets_that_tell_images_apart(tmp_path):
    """A short seeded run of the searched recipe (recipe.json) on fewer images: H(t|x) ends below H(mean t), the
    targets tell images apart (no uniform collapse), and the batch still spreads over prototypes (no
    one-prototype collapse). 100 steps of its slow teacher (momentum 0.996) open a gap of a few tenths of a nat;
    the main job's 1280 steps, about 1 nat (docs/dino.md)."""
    from dataclasses import replace

    from sparo_clip.data.generate import generate
    from sparo_clip.data.sets import SizeCfg
    from sparo_clip.data.world import WorldCfg
    from sparo_clip.dino.quickstart import _training_folder, load_budget, train_args

    sizes = SizeCfg(train=320, val=8, shards=2, zeroshot_per_class=2, sugarcrepe_per_task=4, test=2,
                    sugarcrepe_val_per_task=4, binding_per_group=2)  # fmt: skip
    generate(tmp_path / "world", WorldCfg(image_size=32), sizes)
    folder = _training_folder(tmp_path / "world", tmp_path / "images")
    budget = replace(load_budget()[0], train_images=320, epochs=10, batch=32)
    args = train_args(budget, "tiny_sparo_dino", folder, tmp_path / "run", seed=0)
    args[args.index("--log-every") + 1] = "4"
    run = subprocess.run([sys.executable, "-m", "sparo_clip.dino.train", *args], capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["h_target"] < last["h_mean"] - 0.1, last
    assert last["h_mean"] > 0.5 * last["log_k"], last
    assert not any("collapse_warning" in r for r in rows)
    assert math.isfinite(last["loss"])


def test_hue_shift_matches_torchvision_and_moves_primaries_around_the_circle():
    from torchvision.transforms import functional as TF

    from sparo_clip.dino.tensor_crops import shift_hue

    x = torch.rand(6, 3, 5, 5, dtype=torch.float64)
    x[0] = 0.3  # a grey image has no hue: unchanged
    shifts = torch.tensor([0.1, -0.1, 0.05, 0.5, -0.37, 0.0], dtype=torch.float64)
    ours = shift_hue(x, shifts)
    for i in range(6):
        assert torch.allclose(ours[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-6), i
    assert torch.allclose(ours[0], x[0])
    red = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    green = shift_hue(red, torch.tensor([1 / 3], dtype=torch.float64))
    assert torch.allclose(green.flatten(), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-9)


def test_colour_jitter_is_torchvisions_ops_in_each_views_order_with_dinos_strengths():
    from torchvision.transforms import functional as TF

    from sparo_clip.dino.tensor_crops import JITTER, jitter

    assert JITTER == (0.4, 0.4, 0.2, 0.1)  # DINO's ColorJitter(0.4, 0.4, 0.2, 0.1)
    x = torch.rand(4, 3, 6, 6)
    factors = torch.tensor(
        [[1.3, 0.7, 1.2, 0.08], [0.6, 1.4, 0.8, -0.1], [1.0, 1.0, 1.0, 0.0], [1.4, 0.6, 0.8, 0.05]]
    )
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1], [1, 3, 0, 2]])
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    out = jitter(x, factors, order)
    for i in range(4):
        ref = x[i]
        for op in order[i].tolist():
            ref = ops[op](ref, float(factors[i, op]))
        assert torch.allclose(out[i], ref, atol=1e-5), i
    assert torch.allclose(out[2], x[2], atol=1e-6)  # factors 1 and a zero shift leave the view as it was


def test_jittered_views_vary_hue_within_dinos_range_and_keep_grey_grey():
    images = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = 200  # every image a flat red (200, 0, 0)
    views = multi_crop(images, CropCfg(8, 4, 0, jitter=1.0), torch.Generator().manual_seed(0))[0] * STD + MEAN
    rgb = views.mean((2, 3))
    # brightness, contrast and saturation keep green equal to blue; only a hue shift tells them apart
    assert (rgb[:, 1] - rgb[:, 2]).abs().max() > 0.02
    # a 0.1-turn shift at most moves red towards yellow or magenta, never to green or blue (1/3 turn away)
    assert (rgb[:, 0] >= rgb[:, 1] - 1e-4).all() and (rgb[:, 0] >= rgb[:, 2] - 1e-4).all()
    grey = torch.full((8, 3, 8, 8), 100, dtype=torch.uint8)
    g = multi_crop(grey, CropCfg(8, 4, 0, jitter=1.0), torch.Generator().manual_seed(1))[0] * STD + MEAN
    assert torch.allclose(g[:, 0], g[:, 1], atol=1e-5) and torch.allclose(g[:, 1], g[:, 2], atol=1e-5)


def test_jitter_draws_dinos_factor_ranges_a_random_order_and_touches_only_the_views_drawn_on(monkeypatch):
    from sparo_clip.dino import tensor_crops

    seen = {}

    def record(x, factors, order):
        seen.update(n=x.shape[0], factors=factors, order=order)
        return torch.zeros_like(x)

    monkeypatch.setattr(tensor_crops, "jitter", record)
    views = torch.full((4000, 3, 2, 2), 0.5)
    out = tensor_crops._colour(views, CropCfg(2, 2, 0, jitter=0.5), torch.Generator().manual_seed(0))
    f, order = seen["factors"], seen["order"]
    jittered = (out == 0).flatten(1).all(1)
    assert jittered.sum() == seen["n"] and 1800 < seen["n"] < 2200  # about half, the rest untouched
    assert ((out[~jittered] == 0.5).all()) and torch.equal(views, torch.full_like(views, 0.5))
    low, high = f.min(0).values, f.max(0).values
    expected = torch.tensor([[0.6, 0.6, 0.8, -0.1], [1.4, 1.4, 1.2, 0.1]])
    assert torch.allclose(low, expected[0], atol=0.01) and torch.allclose(high, expected[1], atol=0.01)
    assert (low >= expected[0] - 1e-6).all() and (high <= expected[1] + 1e-6).all()
    assert torch.equal(order.sort(1).values, torch.arange(4).expand_as(order))  # each row a permutation
    # hue comes first about a quarter of the time
    assert (order[:, 0] == 3).float().mean().item() == pytest.approx(0.25, abs=0.04)
