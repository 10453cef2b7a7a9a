"""``sparo-clip eval compositional`` and the novelty groups of the compositionality and retrieval sets."""

import json

import pytest
import torch

from sparo_clip.data.generate import generate
from sparo_clip.data.sets import SizeCfg
from sparo_clip.eval.cli import main as eval_main
from sparo_clip.eval.gczsl import gczsl_metrics
from sparo_clip.eval.retrieval import ranks, recalls_from_ranks

from .eval_helpers import MODEL, save_checkpoint

SIZES = SizeCfg(
    train=8,
    val=8,
    shards=1,
    zeroshot_per_class=2,
    sugarcrepe_per_task=4,
    test=6,
    sugarcrepe_val_per_task=4,
    binding_per_group=2,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, generate(root / "shapes", sizes=SIZES), save_checkpoint(root / "model.pt")


def _run(argv, out):
    assert eval_main([*argv, "--model", MODEL, "--workers", "0", "--output", str(out)]) == 0
    return json.loads(out.read_text())


def test_compositional_eval_on_the_shapes_layout(world, tmp_path):
    root, manifest, ckpt = world
    spec = manifest["compositional"]
    argv = ["compositional", "--pretrained", str(ckpt), "--data", spec["dir"], "--classes", spec["classes"]]
    argv += ["--templates", spec["templates"], "--save-items", str(tmp_path / "items.pt")]
    result = _run(argv, tmp_path / "out.json")
    m = result["metrics"]
    assert m["num_classes"] == 24 and m["num_unseen_classes"] == len(manifest["held_out"])
    assert m["num_unseen_images"] == 2 * len(manifest["held_out"])
    assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["best_hm"] <= 1.0
    items = torch.load(tmp_path / "items.pt")["compositional"]
    again = gczsl_metrics(
        items["logits"],
        items["labels"],
        items["unseen"],
        items["attributes"],
        items["objects"],
        with_curve=True,
    )
    assert again == m  # the saved per-image scores reproduce the reported metrics
    assert "save_items" not in result["data"]


def test_compositional_errors(world, tmp_path, capsys):
    _, manifest, ckpt = world
    spec = manifest["compositional"]
    bad = tmp_path / "classes.tsv"
    lines = open(spec["classes"]).read().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].rsplit("\t", 1)[0] + "\theld-out", *lines[2:]]) + "\n")
    argv = ["compositional", "--model", MODEL, "--pretrained", str(ckpt), "--data", spec["dir"], "--classes"]
    assert eval_main([*argv, str(bad)]) == 2
    assert "split 'held-out' is not valid" in capsys.readouterr().err
    seen_only = tmp_path / "seen.tsv"
    seen_only.write_text("\n".join(line for line in lines if not line.endswith("\tunseen")) + "\n")
    assert eval_main([*argv, str(seen_only)]) == 2
    assert "no images of unseen compositions" in capsys.readouterr().err


def test_sugarcrepe_and_retrieval_report_seen_and_novel_scenes(world, tmp_path):
    _, manifest, ckpt = world
    sc = _run(
        ["sugarcrepe", "--pretrained", str(ckpt), "--root", manifest["sugarcrepe"]["root"]],
        tmp_path / "s.json",
    )
    m = sc["metrics"]
    assert set(m["groups"]) == {"seen", "novel"}
    for task in manifest["sugarcrepe"]["tasks"]:  # the groups partition the items
        n = {g: m["groups"][g]["num_items"] for g in m["groups"]}
        assert sum(n.values()) == m["num_items"]
        both = sum(m["groups"][g][task] * SIZES.sugarcrepe_per_task / 2 for g in m["groups"])
        assert both == pytest.approx(m[task] * SIZES.sugarcrepe_per_task)
    r = _run(["retrieval", "--pretrained", str(ckpt), "--csv", manifest["test"]["csv"]], tmp_path / "r.json")
    g = r["metrics"]["groups"]
    assert g["seen"]["num_images"] == g["novel"]["num_images"] == SIZES.test // 2
    for key in ("image_to_text_R@1", "text_to_image_R@5"):  # queries split, the gallery is the whole set
        assert (g["seen"][key] + g["novel"][key]) / 2 == pytest.approx(r["metrics"][key])


def test_group_recalls_rank_group_queries_against_the_whole_gallery():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.1], [0.2, 0.3, 0.1]])  # (images, texts)
    text_image = torch.tensor([0, 1, 2])
    i2t, t2i = ranks(sim, text_image)
    assert i2t.tolist() == [0, 1, 2] and t2i.tolist() == [0, 0, 1]
    novel = recalls_from_ranks(i2t[torch.tensor([1, 2])], t2i[torch.tensor([1, 2])])
    assert novel["image_to_text_R@1"] == 0.0 and novel["text_to_image_R@1"] == 0.5
    assert recalls_from_ranks(i2t[:1], t2i[:1])["image_to_text_R@1"] == 1.0


def test_select_slots_on_compositional_data(world, tmp_path):
    from sparo_clip.eval.select import main as select_main

    _, manifest, ckpt = world
    spec = manifest["compositional"]
    argv = ["compositional", "--model", MODEL, "--pretrained", str(ckpt), "--workers", "0"]
    argv += ["--data", spec["dir"], "--classes", spec["classes"], "--output", str(tmp_path / "sel.json")]
    assert select_main(argv) == 0
    sel = json.loads((tmp_path / "sel.json").read_text())
    assert sel["metric"] == "auc" and sel["val"]["selected"] >= sel["val"]["all_slots"]
    assert sel["test_metrics"]["selected"]["num_unseen_images"] == len(manifest["held_out"])  # half of 2 each
