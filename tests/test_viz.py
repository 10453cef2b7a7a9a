"""Slot pictures: constructed attention lands where it should, tokens line up, PNGs are drawn, CLI works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import sparo_clip
from sparo_clip import viz
from sparo_clip.viz.samples import EOT_LABEL, SOT_LABEL

# (grid, patch size in pixels): ViT-B/32 and ViT-B/16 at 224 px, and a non-square 32x48 image with 8 px patches
GRIDS = [((7, 7), 32), ((14, 14), 16), ((4, 6), 8)]


def peaked_attention(batch: int, slots: int, grid: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """Attention (B, L, 1 + gh * gw): 0.2 on CLS, 0.5 on one patch per (pair, slot), the rest spread evenly."""
    gh, gw = grid
    attn = torch.full((batch, slots, 1 + gh * gw), 0.3 / (gh * gw))
    attn[..., 0] = 0.2
    peaks = {}
    for b in range(batch):
        for s in range(slots):
            r, c = (2 * b + s) % gh, (3 * s + b + 1) % gw
            attn[b, s, 1 + r * gw + c] += 0.5
            peaks[b, s] = (r, c)
    return attn, peaks


def constructed_readout(grid: tuple[int, int], patch: int, batch: int = 3, slots: int = 4) -> viz.SlotReadout:
    """A SlotReadout from known tensors (no model), images of grid * patch pixels."""
    attn, _ = peaked_attention(batch, slots, grid)
    cls_weight, patch_maps = viz.attention_maps(attn, grid)
    tokens = [[SOT_LABEL, "a ", "red ", "cir", "cle ", EOT_LABEL]] * batch
    token_weights = [torch.softmax(torch.randn(slots, 6), dim=-1) for _ in range(batch)]
    agreement = torch.linspace(-0.5, 0.9, batch * slots).reshape(batch, slots)
    images = np.random.default_rng(0).random((batch, grid[0] * patch, grid[1] * patch, 3))
    return viz.SlotReadout(
        agreement=agreement,
        cls_weight=cls_weight,
        patch_maps=patch_maps,
        tokens=tokens,
        token_weights=token_weights,
        images=images,
        captions=["a red circle"] * batch,
        names=[f"img{i}.png" for i in range(batch)],
        valid=torch.ones(batch, slots, dtype=torch.bool),
    )


def assert_png(path, size: tuple[int, int]) -> None:
    """The PNG exists, has ``size`` = (width, height), is not blank and shows the red overlay."""
    assert path.is_file()
    with Image.open(path) as im:
        assert im.size == size
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.std() > 20  # not a blank canvas
    red = (rgb[..., 0] > 170) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    assert red.sum() > 50  # the heat overlay / shaded tokens are drawn


# ----------------------------------------------------------------------------------- constructed attention
@pytest.mark.parametrize(("grid", "patch"), GRIDS)
def test_heat_map_peaks_where_constructed_attention_puts_it(grid, patch):
    attn, peaks = peaked_attention(2, 3, grid)
    cls_weight, maps = viz.attention_maps(attn, grid)
    assert maps.shape == (2, 3, *grid)
    torch.testing.assert_close(cls_weight, torch.full((2, 3), 0.2))
    image_hw = (grid[0] * patch + 5, grid[1] * patch + 3)  # a remainder the patch embedding drops
    grey = np.full((*image_hw, 3), 0.5)
    for (b, s), (r, c) in peaks.items():
        flat = int(maps[b, s].argmax())
        assert divmod(flat, grid[1]) == (r, c)
        heat = viz.map_to_pixels(viz.display_map(maps[b, s]), image_hw, (patch, patch))
        redness = (lambda x: x[..., 0] - x[..., 1])(viz.overlay(grey, heat))
        ys, xs = np.nonzero(redness == redness.max())
        assert ys.min() == r * patch and ys.max() == (r + 1) * patch - 1
        assert xs.min() == c * patch and xs.max() == (c + 1) * patch - 1
        assert heat[grid[0] * patch :].max() == 0 and heat[:, grid[1] * patch :].max() == 0


def test_attention_maps_rejects_wrong_token_count():
    with pytest.raises(ValueError, match=r"1 \+ grid_h \* grid_w\) = \(B, L, 50\)"):
        viz.attention_maps(torch.rand(1, 2, 49), (7, 7))
    with pytest.raises(ValueError, match="grid_size"):
        viz.attention_maps(torch.rand(1, 2, 50), (0, 7))
    with pytest.raises(ValueError, match="does not fit an image of 200x224"):
        viz.map_to_pixels(np.ones((7, 7)), (200, 224), (32, 32))


def test_display_map_scales_to_max_and_sharpens():
    m = torch.tensor([[0.1, 0.2], [0.4, 0.0]])
    np.testing.assert_allclose(viz.display_map(m, sharpen=1.0), [[0.25, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(viz.display_map(m, sharpen=2.0), [[0.0625, 0.25], [1.0, 0.0]])
    assert viz.display_map(torch.zeros(2, 2)).max() == 0
    with pytest.raises(ValueError, match="sharpen"):
        viz.display_map(m, sharpen=0)


def test_denormalize_undoes_preprocessing():
    x = torch.rand(2, 3, 8, 12)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = viz.denormalize(normed, mean, std)
    assert out.shape == (2, 8, 12, 3)
    np.testing.assert_allclose(out, x.permute(0, 2, 3, 1).numpy(), atol=1e-6)


# ----------------------------------------------------------------------------------- tokens
def test_decoded_tokens_line_up_with_positions(tokenizer):
    ids = tokenizer(["a red circle"])[0]
    assert viz.decode_tokens(tokenizer, ids[:5].tolist()) == [SOT_LABEL, "a ", "red ", "circle ", EOT_LABEL]
    pieces = viz.decode_tokens(tokenizer, tokenizer.encode("sparoclip"))
    assert len(pieces) > 1 and "".join(pieces) == "sparoclip "  # sub-words decode one by one


def test_token_weights_follow_constructed_text_attention(tokenizer):
    ids = tokenizer(["a small blue square"])[0]  # <SOT> a small blue square <EOT> 0 ...
    attn = torch.zeros(3, ids.shape[0])
    for slot, pos in enumerate((2, 3, 5)):
        attn[slot, pos] = 1.0
    tokens, weights = viz.caption_tokens(tokenizer, ids, attn, length=6)
    assert weights.shape == (3, 6)
    assert [tokens[int(w.argmax())] for w in weights] == ["small ", "blue ", EOT_LABEL]
    with pytest.raises(ValueError, match="length 17"):
        viz.caption_tokens(tokenizer, ids, attn, length=17)


def test_compute_readout_lines_up_tokens_and_patches(test_model, tokenizer, batch):
    images, _ = batch
    long = " ".join(["red circle"] * 12)  # truncated to the 16-token context
    captions = ["a red circle", "", long]
    with torch.no_grad():  # zero queries: uniform attention over every valid key
        test_model.text_readout.query.zero_()
        test_model.image_readout.query.zero_()
    out = viz.compute_readout(test_model, images, captions, tokenizer, min_agreement=None, batch_size=2)
    assert [len(t) for t in out.tokens] == [5, 2, 16]
    for tokens, weights in zip(out.tokens, out.token_weights, strict=True):
        assert tokens[0] == SOT_LABEL and tokens[-1] == EOT_LABEL
        torch.testing.assert_close(weights, torch.full((4, len(tokens)), 1 / len(tokens)))
    assert out.tokens[0][1:4] == ["a ", "red ", "circle "]
    assert out.grid_size == (4, 4) and out.patch_maps.shape == (3, 4, 4, 4)
    torch.testing.assert_close(out.cls_weight, torch.full((3, 4), 1 / 17))
    torch.testing.assert_close(out.patch_maps, torch.full((3, 4, 4, 4), 1 / 17))
    assert out.agreement.shape == (3, 4) and out.agreement.abs().max() <= 1 + 1e-5
    assert out.images.shape == (3, 32, 32, 3) and 0 <= out.images.min() and out.images.max() <= 1
    restricted = viz.compute_readout(test_model, images, captions, tokenizer, slots=[1, 3])
    assert restricted.allowed.tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match=r"0\.\.3"):
        viz.compute_readout(test_model, images, captions, tokenizer, slots=[4])


@pytest.mark.parametrize(
    ("vision", "grid"),
    [
        ({"image_size": 224, "patch_size": 32}, (7, 7)),
        ({"image_size": 224, "patch_size": 16}, (14, 14)),
        ({"image_size": [32, 48]}, (4, 6)),
    ],
)
def test_compute_readout_on_vit_b_grids_and_non_square_images(vision, grid, tokenizer):
    model = sparo_clip.create_model("test-SPARO", override_config={"vision_cfg": vision})
    size = vision["image_size"]
    hw = tuple(size) if isinstance(size, list) else (size, size)
    out = viz.compute_readout(model, torch.randn(2, 3, *hw), ["a cat", "a dog"], tokenizer)
    assert out.grid_size == grid and out.images.shape[1:3] == hw
    torch.testing.assert_close(out.cls_weight + out.patch_maps.sum((-2, -1)), torch.ones(2, 4))


def test_compute_readout_rejects_non_sparo_models(tokenizer):
    import open_clip

    with pytest.raises(ValueError, match="SparoCLIP"):
        viz.compute_readout(open_clip.create_model("test-CLIP"), torch.randn(1, 3, 32, 32), ["x"], tokenizer)


def test_compute_readout_names_towers_without_a_patch_grid(tokenizer):
    import open_clip

    model = open_clip.create_model("test-convnext-SPARO")
    with pytest.raises(ValueError, match="no.*patch grid|has none"):
        viz.compute_readout(model, torch.randn(1, 3, 64, 64), ["x"], tokenizer)


# ----------------------------------------------------------------------------------- filters and ranking
def test_valid_slots_applies_the_reference_filters():
    agreement = torch.tensor([[0.9, 0.9, 0.9, 0.5]])
    text_attn = torch.zeros(1, 4, 6)
    for slot, pos in enumerate((0, 3, 2, 1)):  # caption of 4 positions: end-of-text at 3
        text_attn[0, slot, pos] = 1.0
    lengths = torch.tensor([4])
    assert viz.valid_slots(agreement, text_attn, lengths).tolist() == [[False, False, True, False]]
    assert viz.valid_slots(agreement, text_attn, lengths, min_agreement=None).tolist() == [
        [False, False, True, True]
    ]
    assert viz.valid_slots(agreement, text_attn, lengths, drop_special=False).tolist() == [
        [True, True, True, False]
    ]


def test_slot_ranking_filters_and_falls_back():
    out = constructed_readout((4, 6), 8, batch=3, slots=4)
    out.agreement = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.8, 0.7, 0.1], [0.0, 0.2, 0.6, 0.4]])
    out.valid = torch.tensor(
        [[True, True, False, True], [False, True, True, False], [False, False, False, False]]
    )
    assert out.pair_slots(0, top_k=2) == ([1, 3], True)
    assert out.pair_slots(2, top_k=2) == ([2, 3], False)  # nothing valid: unfiltered ranking
    ranking, mean, filtered = out.slot_ranking()
    assert filtered and ranking == [1, 2, 3, 0]  # means over valid pairs: 0.85, 0.7, 0.3, 0.1
    assert mean[1].item() == pytest.approx(0.85)
    assert out.slot_pairs(2, n=3) == [1]  # the only pair where slot 2 passes
    assert out.slot_pairs(2, n=2, filtered=False) == [1, 2]
    out.allowed = torch.tensor([True, False, True, False])
    assert out.pair_slots(0, top_k=3) == ([0], True)
    out.valid[:] = False
    ranking, _, filtered = out.slot_ranking()
    assert not filtered and ranking == [2, 0]
    summary = out.summary(top_k=1)
    assert summary["grid_size"] == [4, 6] and summary["pairs"][1]["slots"][0]["slot"] == 2


# ----------------------------------------------------------------------------------- pictures
@pytest.mark.parametrize(("grid", "patch"), [GRIDS[0], GRIDS[2]])
def test_pair_and_gallery_pngs_have_expected_size_and_content(tmp_path, grid, patch):
    out = constructed_readout(grid, patch)
    hw = (grid[0] * patch, grid[1] * patch)
    path = viz.render_pair(out, 1, tmp_path / "pair.png", top_k=3)
    layout = viz.pair_figure_layout(3, hw)
    assert_png(path, (layout.width_px, layout.height_px))
    path = viz.render_slot_gallery(out, 2, tmp_path / "slots" / "slot.png", num_pairs=2)
    layout = viz.gallery_figure_layout(2, hw)
    assert_png(path, (layout.width_px, layout.height_px))


def test_figure_sizes_grow_with_content():
    one, three = viz.pair_figure_layout(1, (224, 224)), viz.pair_figure_layout(3, (224, 224))
    assert three.height_px > one.height_px and three.width_px == one.width_px
    assert viz.pair_figure_layout(1, (224, 448)).width_px > one.width_px  # wide images, wide figures
    assert viz.gallery_figure_layout(6, (64, 64)).width_px > viz.gallery_figure_layout(3, (64, 64)).width_px


def test_draw_tokens_needs_one_weight_per_token():
    layout = viz.pair_figure_layout(1, (32, 32))
    ax = layout.figure().add_axes((0, 0, 1, 1))
    with pytest.raises(ValueError, match="one weight per token: 2 tokens"):
        viz.draw_tokens(ax, ["a ", "b "], np.ones(3))


# ----------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def shapes_pairs(tmp_path_factory):
    """A non-square SPARO model saved as local-dir, 4 images (sorted names differ from creation order)."""
    root = tmp_path_factory.mktemp("viz")
    torch.manual_seed(0)
    model = sparo_clip.create_model("test-SPARO", override_config={"vision_cfg": {"image_size": [32, 48]}})
    sparo_clip.save_pretrained(model, root / "model")
    images = root / "images"
    images.mkdir()
    colours = {"d": "red", "b": "blue", "c": "green", "a": "yellow"}
    for name, colour in colours.items():
        im = Image.new("RGB", (90, 50), "white")
        ImageDraw.Draw(im).ellipse((10, 5, 50, 45), fill=colour)
        im.save(images / f"{name}.png")
    (root / "captions.txt").write_text("".join(f"a {colours[n]} circle\n" for n in sorted(colours)))
    return root


def test_cli_writes_pair_pictures_galleries_and_summary(shapes_pairs, tmp_path):
    root, out = shapes_pairs, tmp_path / "out"
    argv = ["--model", f"local-dir:{root / 'model'}", "--images", str(root / "images"),
            "--captions", str(root / "captions.txt"), "--out", str(out), "--slots", "0,2", "--top-k", "2",
            "--gallery-slots", "5", "--gallery-size", "3", "--max-pairs", "3"]  # fmt: skip
    assert viz.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grid_size"] == [4, 6]
    assert [p["name"] for p in summary["pairs"]] == ["a.png", "b.png", "c.png", "d.png"]
    assert summary["pairs"][0]["caption"] == "a yellow circle"
    assert {s["slot"] for p in summary["pairs"] for s in p["slots"]} <= {0, 2}
    pairs = sorted((out / "pairs").iterdir())
    assert [p.name for p in pairs] == ["000_a.png", "001_b.png", "002_c.png"]
    layout = viz.pair_figure_layout(2, (32, 48))
    for path in pairs:
        assert_png(path, (layout.width_px, layout.height_px))
    galleries = sorted((out / "slots").iterdir())
    assert [g.name for g in galleries] == ["slot_00.png", "slot_02.png"]
    layout = viz.gallery_figure_layout(3, (32, 48))
    assert_png(galleries[0], (layout.width_px, layout.height_px))


def test_cli_reports_bad_input(shapes_pairs, tmp_path, capsys):
    root = shapes_pairs
    base = ["--model", f"local-dir:{root / 'model'}", "--out", str(tmp_path)]
    files = [str(root / "images" / "a.png"), str(root / "images" / "b.png")]
    captions = str(root / "captions.txt")
    assert viz.main(base + ["--images", *files, "--captions", captions]) == 2
    assert "4 lines but there are 2 images" in capsys.readouterr().err
    folder = str(root / "images")
    assert viz.main(base + ["--images", folder, "--captions", captions, "--slots", "0,x"]) == 2
    assert "must be integers" in capsys.readouterr().err
    assert viz.main(base + ["--images", files[0], "missing.png", "--captions", captions]) == 2
    assert "missing.png" in capsys.readouterr().err
    argv = ["--model", "no-such-model", "--images", folder, "--captions", captions]
    assert viz.main(argv + ["--out", str(tmp_path)]) == 2
    assert "not a registered model" in capsys.readouterr().err
    assert viz.main(base + ["--images", folder, "--captions", captions, "--top-k", "0"]) == 2
    assert "--top-k must be >= 1" in capsys.readouterr().err


def test_slots_option_reads_comma_lists_and_select_slots_json(tmp_path):
    from sparo_clip.viz.cli import parse_slots

    assert parse_slots("3, 1,7") == [1, 3, 7]
    (tmp_path / "sel.json").write_text(json.dumps({"slots": [5, 2], "metric": 0.7}))
    assert parse_slots(str(tmp_path / "sel.json")) == [2, 5]
    (tmp_path / "select.json").write_text(json.dumps({"selected_slots": [0, 3], "slots": None}))
    assert parse_slots(str(tmp_path / "select.json")) == [0, 3]
    (tmp_path / "bad.json").write_text(json.dumps({"chosen": [1]}))
    with pytest.raises(ValueError, match="list of slot ids under"):
        parse_slots(str(tmp_path / "bad.json"))


def test_render_doc_pictures_writes_the_documented_files(shapes_pairs, tmp_path):
    from sparo_clip.viz.docs import DOC_FILES, render_doc_pictures

    root = shapes_pairs
    written = render_doc_pictures(
        f"local-dir:{root / 'model'}", None, [str(root / "images")], str(root / "captions.txt"),
        tmp_path / "docs", extra_args=["--min-agreement", "-1", "--keep-special"],
    )  # fmt: skip
    assert [p.name for p in written] == list(DOC_FILES)
    assert all(p.stat().st_size > 1000 for p in written)
