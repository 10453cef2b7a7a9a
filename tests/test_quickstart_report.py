"""The quickstart report's resampled metrics equal the eval metrics on the resampled items."""

import torch

from sparo_clip.commands.quickstart_report import _compositional, paired_bootstrap
from sparo_clip.eval.gczsl import gczsl_metrics


def _items(seed: int, signal: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(12).repeat_interleave(6)
    logits = signal * torch.nn.functional.one_hot(labels, 12).float() + torch.randn(72, 12, generator=gen)
    unseen = torch.tensor([k % 4 == 1 for k in range(12)])
    ids = torch.arange(12)
    return {"logits": logits, "labels": labels, "unseen": unseen, "attributes": ids // 3, "objects": ids % 3}


def test_weighted_compositional_metrics_equal_gczsl_on_the_resampled_matrix():
    items = _items(0, 1.0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        idx = torch.randint(0, 72, (72,), generator=gen)
        fast = _compositional(items, idx)
        m = gczsl_metrics(
            items["logits"][idx], items["labels"][idx], items["unseen"], items["attributes"], items["objects"]
        )
        assert abs(fast["compositional zero-shot AUC"] - m["auc"]) < 1e-12
        assert abs(fast["compositional zero-shot best HM"] - m["best_hm"]) < 1e-12
        assert abs(fast["held-out compositions, accuracy over all classes"] - m["unseen"]) < 1e-12


def test_paired_bootstrap_tells_a_better_model_apart():
    weak, strong = _items(2, 0.2), _items(2, 3.0)
    sugar = {"correct": torch.ones(4, dtype=torch.bool), "task": torch.tensor([0, 0, 1, 1]), "tasks": ["swap_att", "x"],
             "group": torch.tensor([0, 1, 0, 1]), "groups": ["novel", "seen"]}  # fmt: skip
    ret = {"i2t_rank": torch.zeros(4, dtype=torch.long), "t2i_rank": torch.zeros(4, dtype=torch.long),
           "text_image": torch.arange(4), "image_group": torch.tensor([0, 1, 0, 1]), "groups": ["novel", "seen"]}  # fmt: skip
    out = paired_bootstrap(
        {"compositional": weak, "sugarcrepe": sugar, "retrieval": ret},
        {"compositional": strong, "sugarcrepe": sugar, "retrieval": ret},
        reps=200,
    )
    auc = out["compositional zero-shot AUC"]
    assert auc["low"] > 0 and auc["diff"] > 0.3  # the strong classifier is ahead on every resample
    same = out["compositionality mean, novel scenes"]
    assert same["diff"] == same["low"] == same["high"] == 0.0  # identical models: no difference


def test_curve_plot(tmp_path):
    from PIL import Image

    from sparo_clip.commands.quickstart_report import plot_curves

    results = {}
    for name, signal in (("CLIP", 0.5), ("SPARO", 2.0)):
        it = _items(3, signal)
        m = gczsl_metrics(
            it["logits"], it["labels"], it["unseen"], it["attributes"], it["objects"], with_curve=True
        )
        results[name] = {"compositional": m}
    path = plot_curves(results, ["CLIP", "SPARO"], tmp_path / "curves.png")
    with Image.open(path) as im:
        assert im.size[0] > 300 and len(im.getcolors(1 << 16)) > 10
