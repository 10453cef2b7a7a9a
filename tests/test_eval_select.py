"""sparo-clip select-slots: the searches, the fast scoring path, splits, and the JSON it writes."""

import json

import numpy as np
import pytest
import torch

from sparo_clip.eval import cli, select
from sparo_clip.eval.common import features
from sparo_clip.eval.search import backward_elimination, best_entry, forward_selection, search
from sparo_clip.eval.similarity import SlotScores, split_groups

from .eval_helpers import (
    MODEL,
    class_folder,
    noise_image,
    save_checkpoint,
    sugarcrepe_root,
    write_csv,
    write_lines,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "test-SPARO.pt")


def _counting(score):
    calls = []

    def wrapped(mask):
        calls.append(mask.clone())
        return score(mask)

    return wrapped, calls


def test_searches_find_a_known_optimum():
    target = {1, 4, 6}

    def score(mask):  # +1 per target slot, -0.5 per other slot: the optimum is exactly the target
        chosen = set(torch.nonzero(mask).flatten().tolist())
        return len(chosen & target) - 0.5 * len(chosen - target)

    fwd_score, calls = _counting(score)
    fwd = forward_selection(fwd_score, 8, progress=False)
    assert len(calls) == 8 * 9 // 2 and len(fwd) == 8
    assert [e["slot"] for e in fwd[:3]] == [1, 4, 6]  # best first, ties to the lowest index
    assert set(best_entry(fwd)["slots"]) == target and best_entry(fwd)["score"] == 3
    assert fwd[-1]["slots"] == list(range(8))
    bwd = backward_elimination(score, 8, progress=False)
    assert bwd[0]["slots"] == list(range(8)) and bwd[0]["score"] == 3 - 2.5
    assert set(best_entry(bwd)["slots"]) == target and len(bwd[-1]["slots"]) == 1
    both = search(score, 8, "both", progress=False)
    assert set(both["best"]["slots"]) == target and both["best_method"] == "forward"
    with pytest.raises(ValueError, match="allowed"):
        search(score, 8, "sideways")


@pytest.mark.parametrize("paired", [False, True])
def test_fast_slot_scores_equal_masked_features(paired):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, 3, generator=gen), torch.randn(7 if paired else 9, 5, 3, generator=gen)
    direct, fast = SlotScores(a, b, paired), SlotScores(a, b, paired)
    assert fast.precompute() and not SlotScores(a, b, paired).precompute(max_elements=10)
    for mask in ([True] * 5, [True, False, False, True, False], [False, False, False, False, True]):
        mask = torch.tensor(mask)
        fa, fb = features(a, mask).numpy(), features(b, mask).numpy()
        want = (fa * fb).sum(1) if paired else fa @ fb.T
        np.testing.assert_allclose(fast(mask).numpy(), want, atol=1e-6)
        np.testing.assert_allclose(direct(mask).numpy(), want, atol=1e-6)


def test_split_is_seeded_and_stratified():
    groups = torch.tensor([0] * 10 + [1] * 4 + [2] * 6)
    val, test = split_groups(groups, 0.5, seed=3, what="x")
    assert sorted(torch.cat([val, test]).tolist()) == list(range(20))
    assert [int((groups[val] == g).sum()) for g in range(3)] == [5, 2, 3]
    assert torch.equal(val, split_groups(groups, 0.5, seed=3, what="x")[0])
    assert not torch.equal(val, split_groups(groups, 0.5, seed=4, what="x")[0])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_groups(groups, 1.0, 0, "x")


def _data(tmp, task):
    if task == "zeroshot":
        class_folder(tmp / "data", {f"c{i}": 4 for i in range(6)})
        write_lines(tmp / "names.txt", ["ant", "bee", "cow", "doe", "elk", "fly"])
        return ["--data", str(tmp / "data"), "--classnames", str(tmp / "names.txt")]
    if task == "sugarcrepe":
        return ["--root", str(sugarcrepe_root(tmp / "sc", {"add_att": 8, "swap_obj": 8, "replace_obj": 6}))]
    rows = []
    for i in range(12):
        noise_image(tmp / "img" / f"{i}.png", 40 + i)
        rows += [(f"img/{i}.png", f"picture {i} of a thing"), (f"img/{i}.png", f"thing number {i}")]
    return ["--csv", str(write_csv(tmp / "pairs.csv", rows))]


@pytest.mark.parametrize(
    "task,metric,seed",
    [
        ("zeroshot", "top1", 0),
        ("zeroshot", "mean_per_class_recall", 1),
        ("sugarcrepe", "mean", 0),
        ("sugarcrepe", "swap_obj", 2),
        ("retrieval", "text_to_image_R@1", 0),
    ],
)
def test_selection_never_scores_below_all_slots_on_validation(ckpt, tmp_path, task, metric, seed):
    out = tmp_path / "sel.json"
    argv = [task, "--model", MODEL, "--pretrained", str(ckpt), "--workers", "0", *_data(tmp_path, task)]
    argv += ["--metric", metric, "--seed", str(seed), "--output", str(out)]
    if task == "zeroshot":
        argv += ["--templates", str(write_lines(tmp_path / "t.txt", ["a {c}", "the {c} here"]))]
    assert select.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["metric"] == metric and res["num_slots"] == 4
    assert res["val"]["selected"] >= res["val"]["all_slots"]
    assert res["val"]["selected"] == pytest.approx(
        max(e["score"] for t in res["trace"].values() for e in t), abs=1e-9
    )
    assert res["trace"]["forward"][-1]["score"] == pytest.approx(
        res["val"]["all_slots"]
    )  # all slots, search path
    assert res["trace"]["backward"][0]["score"] == pytest.approx(res["val"]["all_slots"])
    assert set(res["selected_slots"]) <= set(range(4)) and res["selected_slots"]
    assert res["split"] == {"val_fraction": 0.5, "seed": seed}
    assert res["val_metrics"]["selected"][metric] == res["val"]["selected"]


def test_selected_slots_file_reproduces_test_scores_with_eval(ckpt, tmp_path):
    """With an explicit test split, eval --slots FILE on it gives exactly select-slots' test numbers."""
    for name, seed in (("val", 1), ("test", 2)):
        class_folder(tmp_path / name, {f"c{i}": 2 for i in range(10)}, seed=seed)
    write_lines(
        tmp_path / "names.txt", ["ant", "bee", "cow", "doe", "elk", "fly", "gnu", "hen", "ibis", "jay"]
    )
    common = [
        "--model",
        MODEL,
        "--pretrained",
        str(ckpt),
        "--workers",
        "0",
        "--classnames",
        str(tmp_path / "names.txt"),
    ]
    sel = tmp_path / "sel.json"
    argv = ["zeroshot", *common, "--data", str(tmp_path / "val"), "--test-split", str(tmp_path / "test")]
    assert select.main([*argv, "--method", "backward", "--metric", "top5", "--output", str(sel)]) == 0
    res = json.loads(sel.read_text())
    assert res["split"] == {"test_split": str(tmp_path / "test")} and list(res["trace"]) == ["backward"]
    for slots, key in ((None, "all_slots"), (str(sel), "selected")):
        out = tmp_path / f"{key}.json"
        extra = [] if slots is None else ["--slots", slots]
        assert (
            cli.main(["zeroshot", *common, "--data", str(tmp_path / "test"), "--output", str(out), *extra])
            == 0
        )
        assert json.loads(out.read_text())["metrics"]["folder"]["top5"] == res["test"][key]
        val_out = tmp_path / f"val_{key}.json"
        assert (
            cli.main(["zeroshot", *common, "--data", str(tmp_path / "val"), "--output", str(val_out), *extra])
            == 0
        )
        assert json.loads(val_out.read_text())["metrics"]["folder"]["top5"] == res["val"][key]


def test_select_slots_refuses_what_it_cannot_do(ckpt, tmp_path, capsys):
    data = _data(tmp_path, "zeroshot")
    clip = save_checkpoint(tmp_path / "clip.pt", "test-CLIP")
    cases = [
        (["--model", "test-CLIP", "--pretrained", str(clip), *data], "needs a SPARO model"),
        (["--model", MODEL, *data, "--imagenet-val", str(tmp_path / "data")], "exactly one dataset"),
        (["--model", MODEL, *data, "--val-fraction", "0.01"], "leaves an empty validation split"),
    ]
    for argv, message in cases:
        assert select.main(["zeroshot", "--workers", "0", *argv]) == 2
        assert message in capsys.readouterr().err, message
    with pytest.raises(SystemExit):
        select.main(["zeroshot", "--model", MODEL, *data, "--metric", "R@1"])
