"""Turn a benchmark result into targets, a printed table and the Markdown block of docs/performance.md."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sparo_clip.checkpoints.files import replace_block

from .readout_bench import ReadoutShape

BEGIN = "<!-- benchmark-results:begin -->"
END = "<!-- benchmark-results:end -->"


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run measured: value, limit and whether it was met."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, limit: float, at_most: bool = True) -> None:
        met = value <= limit if at_most else value >= limit
        rows.append({"target": name, "value": value, "limit": limit, "at_most": at_most, "met": met})

    for r in result.get("train", []):
        if r["pair"] == "ViT-B-32":
            add(f"train step SPARO/CLIP, ViT-B-32, batch {r['batch']}", r["ratio"], 1.00)
    for r in result.get("inference", []):
        if r["pair"] == "ViT-B-32":
            add(f"encode_{r['encoder']} SPARO/CLIP, ViT-B-32, batch {r['batch']}", r["ratio"], 1.05)
    for r in result.get("dino", []):
        add(f"DINO train step SPARO/CLS, {r['pair']}, batch {r['batch']}", r["time_ratio"], 1.00)
    ro = result.get("readout")
    if ro and ro["shape"] == asdict(ReadoutShape()):  # the targets hold at the shape
        add("read-out / its key projection alone (fwd+bwd)", ro["readout_over_projection"], 1.10)
        add(
            "attention part (after the projection): naive / project-then-attend",
            ro["naive_attention_ms"] / max(ro["projected_attention_ms"], 1e-9),
            2.0,
            at_most=False,
        )
        add("naive / read-out, whole (fwd+bwd)", ro["naive_over_readout"], 2.0, at_most=False)
        add("read-out peak memory / naive peak memory", ro["readout_memory_over_naive"], 1.0)
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: machine, tables per section, targets."""
    m = result["machine"]
    peak = result["matmul_peak"]
    where = f"{m['cpu']}, {m['threads']} torch threads ({m['cpu_count']} logical CPUs)"
    if "gpu" in m:
        where = f"{m['gpu']}; host {where}"
    parts = [
        f"Measured {m['date']} by `{result['command']}` on {where}; device `{m['device']}`, "
        f"{m['precision']}; torch {m['torch']}, open_clip {m['open_clip']}, Python {m['python']}. "
        f"Matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"(fastest {peak['dtype']} {peak['size']}x{peak['size']} GEMM, at the start or the end of the run). "
        f"Total run time {result['seconds']:.0f} s.",
    ]
    if result.get("train"):
        rows = []
        for r in result["train"]:
            tok = r["caption_tokens"]
            rows.append(
                [
                    r["pair"],
                    str(r["batch"]),
                    f"{tok['mean']:.1f} / {tok['max']} of {tok['context']}",
                    f"{r['sparo_ms']:.1f}",
                    f"{r['baseline_ms']:.1f}",
                    f"**{r['ratio']:.3f}**",
                    f"{r['sparo_gflop']:.1f} / {r['baseline_gflop']:.1f}",
                    f"{r['sparo_flop_fraction']:.1%} / {r['baseline_flop_fraction']:.1%}",
                    str(r["reps"]),
                ]
            )
        parts += [
            "### Training step (forward, ClipLoss, backward, AdamW)",
            _table(
                [
                    "pair",
                    "batch",
                    "caption tokens mean / max",
                    "SPARO ms",
                    "CLIP ms",
                    "SPARO/CLIP",
                    "GFLOP per step SPARO / CLIP",
                    "of matmul peak SPARO / CLIP",
                    "reps",
                ],
                rows,
            ),
        ]
    if result.get("inference"):
        rows = [
            [
                r["pair"],
                f"encode_{r['encoder']}",
                str(r["batch"]),
                f"{r['sparo_per_s']:.1f}",
                f"{r['baseline_per_s']:.1f}",
                f"**{r['ratio']:.3f}**",
                str(r["reps"]),
            ]
            for r in result["inference"]
        ]
        parts += [
            "### Inference throughput",
            _table(["pair", "encoder", "batch", "SPARO /s", "CLIP /s", "SPARO/CLIP time", "reps"], rows),
        ]
    ro = result.get("readout")
    if ro:
        s = ro["shape"]
        rows = [
            [name, f"{v['ms']:.2f}", f"{v['peak_mib']:.2f}"]
            for name, v in ro["forms"].items()  # readout, projected, naive, projection
        ]
        parts += [
            f"### Read-out alone (B={s['batch']}, N={s['tokens']}, D={s['width']}, "
            f"L={s['slots']}, d={s['attn_dim']}; forward + backward, {ro['reps']} reps)",
            _table(["form", "ms", "peak tensor MiB"], rows),
            f"Read-out / projection alone: **{ro['readout_over_projection']:.3f}**; "
            f"naive / read-out: **{ro['naive_over_readout']:.2f}x**; attention part (after the projection) "
            f"of the project-then-attend form {ro['projected_attention_ms']:.2f} ms, of the naive form "
            f"{ro['naive_attention_ms']:.2f} ms.",
        ]
    rows = [
        [
            t["target"],
            f"{t['value']:.3f}",
            ("<= " if t["at_most"] else ">= ") + f"{t['limit']:.2f}",
            "yes" if t["met"] else "**no**",
        ]
        for t in result.get("targets", [])
    ]
    if rows:
        parts += [
            "### Targets (from the issue; on a 2-core CPU; reported, not asserted)",
            _table(["target", "measured", "limit", "met"], rows),
        ]
    return "\n\n".join(parts)


def text_table(result: dict[str, Any]) -> str:
    """What the runner prints: the same content as the Markdown block."""
    return markdown(result).replace("**", "")


def write_docs(result: dict[str, Any], path: Path) -> None:
    """Replace the block between the result markers of ``path`` with this result."""
    replace_block(path, BEGIN, END, markdown(result))
