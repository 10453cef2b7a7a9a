"""The SPARO-DINO main job (--small) and the DINO benchmark (--quick): what they write, not their numbers."""

from __future__ import annotations

import json

from benchmarks import dino_bench
from sparo_clip.dino import quickstart


def test_quickstart_small_reports_both_twins_seen_and_held_out(tmp_path):
    assert quickstart.main(["--small", "--out", str(tmp_path / "qs")]) == 0
    report = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert set(report["results"]) == {"CLS-DINO", "SPARO-DINO"}
    assert report["probe"]["held_out"] and report["probe"]["seen"]
    for by_weights in report["results"].values():
        assert set(by_weights) == {"init", "2 steps"}
        for r in by_weights.values():
            for task in ("knn", "linear"):
                assert all(0.0 <= r[task][g] <= 1.0 for g in ("all", "seen", "held_out"))
    png = tmp_path / "qs" / "slot_attention.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = tmp_path / "dino.md"
    doc.write_text(f"intro\n{quickstart.BEGIN}\nold\n{quickstart.END}\ntail\n")
    quickstart.write_docs("new table", doc)
    assert doc.read_text() == f"intro\n{quickstart.BEGIN}\nnew table\n{quickstart.END}\ntail\n"


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
