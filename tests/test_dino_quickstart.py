"""The SPARO-DINO main job (--small) and the DINO benchmark (--quick): what they write, not their numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import dino_bench
from sparo_clip.dino import quickstart


def test_quickstart_small_reports_both_twins_over_seeds_with_paired_intervals(tmp_path):
    out = tmp_path / "qs"
    assert quickstart.main(["--small", "--seeds", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["seeds"]) == {"0", "1"}
    held = [report["seeds"][s]["held_out"] for s in ("0", "1")]
    assert all(held) and held[0] != held[1]  # every seed its own world, its own held-out pairs
    for seed in report["seeds"].values():
        assert set(seed["twins"]) == set(quickstart.MODELS)
        for twin in seed["twins"].values():
            for weights in ("trained", "init"):
                for task in quickstart.PROBES:
                    row = twin[weights][task]
                    assert (
                        0.0 <= row["all"] <= 1.0 and row["seen"] is not None and row["held_out"] is not None
                    )
            diag = twin["diagnostics"]
            assert diag["h_target"] is not None and 0 <= diag["h_target"] <= diag["log_k"] + 1e-6
            for weights in ("trained", "init"):  # the same probes on colour and on shape labels
                for task in quickstart.PROBES:
                    assert all(0.0 <= twin[weights][task][f] <= 1.0 for f in quickstart.FACTORS)
    for key in ("knn all", "linear held_out"):
        comp = report["comparison"][key]
        pairs = zip(comp["CLS-DINO trained"], comp["SPARO-DINO trained"], strict=True)
        diffs = [b - a for a, b in pairs]
        assert comp["diff"]["n"] == 2 and abs(comp["diff"]["mean"] - sum(diffs) / 2) < 1e-12
        assert comp["diff"]["low"] <= comp["diff"]["mean"] <= comp["diff"]["high"]
    md = (out / "report.md").read_text()
    assert "SPARO − CLS" in md and "H(t\\|x)" in md and "untrained" in md
    assert (
        "| knn colour | knn shape | linear colour | linear shape |" in md and "Gain over the untrained" in md
    )
    assert (out / "slot_attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses the finished trainings (done.json matches the budget) and reports the same numbers
    assert quickstart.main(["--small", "--seeds", "2", "--out", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["comparison"] == report["comparison"]


def test_quickstart_refuses_bad_settings_before_any_work(tmp_path, capsys):
    assert quickstart.main(["--small", "--seeds", "0", "--out", str(tmp_path / "qs")]) == 2
    assert "--seeds 0 is not valid" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()


def test_write_docs_replaces_only_its_block(tmp_path):
    doc = tmp_path / "dino.md"
    doc.write_text(f"intro\n{quickstart.BEGIN}\nold\n{quickstart.END}\ntail\n")
    quickstart.write_docs("new table", doc)
    assert doc.read_text() == f"intro\n{quickstart.BEGIN}\nnew table\n{quickstart.END}\ntail\n"
    doc.write_text("no block\n")
    with pytest.raises(ValueError, match="no <!-- dino-quickstart:begin -->"):
        quickstart.write_docs("x", doc)


def test_dino_benchmark_quick_writes_ratios_into_its_block(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text(f"# perf\n{dino_bench.BEGIN}\nold\n{dino_bench.END}\n")
    result = dino_bench.main(["--quick", "--json", str(tmp_path / "b.json"), "--write-docs", str(doc)])
    (row,) = result["dino"]
    assert row["time_ratio"] == row["sparo_ms"] / row["cls_ms"] > 0
    assert row["memory_ratio"] == row["sparo_peak_mib"] / row["cls_peak_mib"] > 0
    text = doc.read_text()
    assert "old" not in text and f"{row['time_ratio']:.3f}" in text
    assert json.loads((tmp_path / "b.json").read_text())["dino"][0]["pair"] == "tiny"


def test_benchmark_runner_dino_section_and_target(tmp_path):
    from benchmarks import run as bench_run
    from benchmarks.report import BEGIN, END

    doc = tmp_path / "performance.md"
    doc.write_text(f"{BEGIN}\nold\n{END}\n\n{dino_bench.BEGIN}\nold dino\n{dino_bench.END}\n")
    argv = ["--quick", "--device", "cpu", "--no-readout", "--dino", "--json", str(tmp_path / "b.json")]
    result = bench_run.main([*argv, "--write-docs", str(doc)])
    (row,) = result["dino"]
    assert any(t["target"].startswith("DINO train step SPARO/CLS") for t in result["targets"])
    text = doc.read_text()
    assert "old dino" not in text and f"{row['flop_ratio']:.3f}" in text


def test_factor_probe_sets_relabel_every_probe_image_by_its_colour_and_its_shape(tmp_path):
    from sparo_clip.dino.shapes import _factor_sets

    world = {"colors": ["red", "light_blue"], "shapes": ["circle", "star"]}
    for split in ("train", "val"):
        for cls in ("red_circle", "light_blue_star", "red_star"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                (tmp_path / split / cls / f"{i}.png").write_bytes(f"{split}{cls}{i}".encode())
    sets = _factor_sets(tmp_path, world)
    shape_val = sorted(
        str(p.relative_to(sets["shape"]["val"])) for p in Path(sets["shape"]["val"]).rglob("*.png")
    )
    assert shape_val == ["circle/red_circle__0.png", "circle/red_circle__1.png", "star/light_blue_star__0.png",
                         "star/light_blue_star__1.png", "star/red_star__0.png", "star/red_star__1.png"]  # fmt: skip
    colour = Path(sets["colour"]["train"])
    assert sorted(p.name for p in colour.iterdir()) == ["light_blue", "red"]  # a colour with an underscore
    assert (colour / "light_blue" / "light_blue_star__1.png").read_bytes() == b"trainlight_blue_star1"
    (tmp_path / "train" / "blue_square").mkdir()  # a class that is no colour-shape pair of the world
    with pytest.raises(ValueError, match="blue_square: not a colour_shape class of this world"):
        _factor_sets(tmp_path, world)


def test_a_stray_folder_in_a_probe_set_is_one_line_not_a_traceback(tmp_path, capsys):
    out = tmp_path / "qs"
    (out / "probe" / "world-0" / "train" / "notes").mkdir(parents=True)  # not a colour_shape class
    assert quickstart.main(["--small", "--seeds", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1].startswith("sparo-dino quickstart: error: ") and "notes: not a colour_shape class" in err[-1]
    )
    assert "Traceback" not in "\n".join(err)
