"""The benchmark runner's behaviour (not its timings) and the formulations it compares."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import run as bench_run
from benchmarks.common import TensorMemory, captions, count_flops
from benchmarks.readout_bench import naive_readout
from benchmarks.report import BEGIN, END
from sparo_clip.models.readout import SparoReadout, normalize_slots

from .reference import readout_reference

READOUT_CONFIGS = [
    dict(),  # one key projection per slot (the default)
    dict(heads=2),  # three slots share each key projection
    dict(heads=3, share_kv=False, value_dim=4, slot_norm="sem:norm"),
    dict(heads=1, share_kv=False, value_dim=12, slot_norm="cont:softmax"),
]


def _readout(**kw):
    cfg = dict(in_dim=24, num_slots=6, slot_dim=5, attn_dim=8)
    cfg.update(kw)
    m = SparoReadout(**cfg)
    with torch.no_grad():  # non-zero biases so that the forms must handle them
        for p in m.parameters():
            if p.ndim == 1:
                p.normal_()
    return m


@pytest.mark.parametrize("kw", READOUT_CONFIGS)
@pytest.mark.parametrize("masked", [False, True])
def test_every_form_matches_float64_reference(kw, masked):
    m = _readout(**kw)
    x = torch.randn(3, 7, 24)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] + [False] * 6]) if masked else None
    ref, _ = readout_reference(m, x, mask)
    forms = {"naive": normalize_slots(naive_readout(m, x, mask), m.slot_norm)}
    for pool_first in (True, False):
        m.pool_first = pool_first
        forms[f"pool_first={pool_first}"] = m(x, key_mask=mask)
    for name, out in forms.items():
        np.testing.assert_allclose(out.detach().double().numpy(), ref, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("kw", READOUT_CONFIGS)
def test_pooled_and_projected_forms_give_the_same_gradients(kw):
    m = _readout(**kw)
    x = torch.randn(3, 7, 24, requires_grad=True)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] * 5 + [False] * 2])
    g = torch.randn(3, 6, 5)
    grads = []
    for pool_first in (True, False):
        m.pool_first = pool_first
        m.zero_grad(set_to_none=True)
        x.grad = None
        (m(x, key_mask=mask) * g).sum().backward()
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in m.named_parameters()}})
    pooled, projected = grads
    assert pooled.keys() == projected.keys()  # every parameter gets a gradient in both forms
    for name in pooled:
        torch.testing.assert_close(pooled[name], projected[name], atol=2e-5, rtol=1e-4, msg=name)


def test_pooled_form_is_chosen_when_cheaper():
    m = SparoReadout(768, num_slots=64, slot_dim=64, attn_dim=64)
    assert m._pools_first(50, 768)  # ViT-B-32-SPARO: 20x fewer multiply-adds
    one_head = SparoReadout(768, num_slots=64, slot_dim=64, attn_dim=64, heads=1)
    assert not one_head._pools_first(50, 768)  # a single shared projection is cheaper to apply


def test_tensor_memory_counts_saved_tensors_and_ignores_views():
    x = torch.randn(256, 64, requires_grad=True)
    w = torch.randn(64, 128, requires_grad=True)
    with TensorMemory() as mem:
        y = x @ w  # 128 KiB, saved for nothing but returned
        y.view(-1).view(256, 128)  # views add nothing
    assert mem.peak == 256 * 128 * 4
    with TensorMemory() as mem:
        loss = torch.tanh(x @ w).sum()  # tanh's output stays alive, saved for backward
    assert mem.current == 256 * 128 * 4 + 4  # the saved output and the loss
    assert mem.peak == 2 * 256 * 128 * 4  # while tanh ran, its input was alive too
    loss.backward()


def test_flop_count_includes_cpu_attention():
    q = torch.randn(2, 3, 5, 8)
    k = torch.randn(2, 3, 7, 8)
    v = torch.randn(2, 3, 7, 4)
    flops = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * 2 * 3 * 5 * 7 * (8 + 4)


def test_captions_are_web_length_and_reproducible():
    caps = captions(50)
    assert caps == captions(50)
    assert all(8 <= len(c.split()) <= 20 for c in caps)


def test_quick_run_writes_every_section_and_fills_the_docs(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Title\n\nbefore\n\n{BEGIN}\nplaceholder\n{END}\n\nafter\n")
    out = tmp_path / "bench.json"
    bench_run.main(["--quick", "--device", "cpu", "--json", str(out), "--write-docs", str(doc)])
    r = json.loads(out.read_text())

    assert {"torch", "cpu", "threads", "device", "precision", "date"} <= r["machine"].keys()
    peak = r["matmul_peak"]["flops_per_s"]
    assert peak > 0

    assert [(t["pair"], t["batch"]) for t in r["train"]] == [("tiny", 4)]
    for t in r["train"]:
        assert t["sparo_ms"] > 0 and t["baseline_ms"] > 0
        assert math.isclose(t["ratio"], t["sparo_ms"] / t["baseline_ms"])
        for k in ("sparo", "baseline"):
            assert t[f"{k}_gflop"] > 0
            assert 0 < t[f"{k}_flop_fraction"] <= 1
        assert t["sparo_params"] < t["baseline_params"]  # the dropped blocks
        assert 8 < t["caption_tokens"]["max"] <= t["caption_tokens"]["context"]

    assert {(i["encoder"], i["batch"]) for i in r["inference"]} == {("image", 4), ("text", 4)}
    for i in r["inference"]:
        assert i["sparo_per_s"] > 0 and i["baseline_per_s"] > 0 and i["ratio"] > 0

    ro = r["readout"]
    assert set(ro["forms"]) == {"readout", "projected", "naive", "projection"}
    for form in ro["forms"].values():
        assert form["ms"] > 0 and form["peak_mib"] > 0
    assert ro["readout_over_projection"] > 0 and ro["naive_over_readout"] > 0

    assert isinstance(r["targets"], list)  # the targets apply to the full run only
    text = doc.read_text()
    assert text.startswith("# Title\n\nbefore\n\n" + BEGIN) and text.endswith(END + "\n\nafter\n")
    assert "placeholder" not in text and "Training step" in text and "Read-out alone" in text


def test_bad_arguments_name_the_allowed_values(capsys):
    with pytest.raises(SystemExit):
        bench_run.main(["--pairs", "vitb99"])
    assert "vitb32" in capsys.readouterr().err


def test_the_docs_have_a_block_to_fill():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "performance.md").read_text()
    assert doc.count(BEGIN) == 1 and doc.count(END) == 1


@pytest.mark.slow  # five variants, each traced by Dynamo for a forward and a training step
def test_compile_benchmark_quick_writes_every_variant_and_fills_its_block(tmp_path):
    from benchmarks import compile_bench

    doc = tmp_path / "performance.md"
    doc.write_text(f"# perf\n{compile_bench.BEGIN}\nPLACEHOLDER\n{compile_bench.END}\n")
    out = tmp_path / "compile.json"
    r = compile_bench.main(["--quick", "--device", "cpu", "--json", str(out), "--write-docs", str(doc)])
    assert json.loads(out.read_text())["compile"] == r["compile"]
    (row,) = r["compile"]
    for section in ("encode_text", "train_step"):
        ms = row[section]["ms"]
        assert set(ms) == set(compile_bench.VARIANTS) and all(v > 0 for v in ms.values())
        assert math.isclose(
            row[section]["ratio_vs_trimmed"]["sparo_compiled"], ms["sparo_compiled"] / ms["sparo_trimmed"]
        )
    assert row["max_abs_diff_vs_trimmed"]["sparo_compiled"] < 1e-5  # compiled = whole context = trimmed
    text = doc.read_text()
    assert "PLACEHOLDER" not in text and "SPARO compiled (whole context)" in text
    assert "First call (compilation; in this process)" in text  # --quick: no fresh processes


def test_the_docs_have_a_compile_block_to_fill():
    from pathlib import Path

    from benchmarks import compile_bench

    doc = (Path(__file__).parent.parent / "docs" / "performance.md").read_text()
    assert doc.count(compile_bench.BEGIN) == 1 and doc.count(compile_bench.END) == 1
