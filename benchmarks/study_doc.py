"""docs/study.md from a finished study (``benchmarks.study``): every number comes from the run cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sparo_clip.commands.quickstart_report import HEADLINE

PAPER_SCALE = (
    "The paper's gains (e.g. SugarCrepe +4%, +9% with slot selection) were measured with ViT-B models trained "
    "on CC12M+CC3M (about 12.8M pairs) for 25 epochs"
)


def verdict(row: dict[str, Any]) -> str:
    """Whether the 95% interval of SPARO - CLIP excludes 0, in words."""
    if math.isnan(row["low"]):
        return "not testable with one seed"
    if row["low"] > 0:
        return "significant: SPARO higher"
    if row["high"] < 0:
        return "significant: CLIP higher"
    return "not significant"


def _ms(pair: list[float] | tuple[float, float]) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def write_study_doc(study: dict[str, Any], path: Path, pictures: dict[str, Path], full_command: str) -> None:
    """Write the study's doc: settings, learning-rate choice, tables, one sentence per metric, plots."""
    s = study["settings"]
    budgets, seeds = s["budgets"], s["seeds"]
    table = {int(k): v for k, v in study["table"].items()}
    longest = max(budgets)
    lines = [
        "# Seeds and spread: tiny-SPARO vs tiny-CLIP",
        "",
        "Written by `python -m benchmarks.study --write-docs` from its run cache; no number here is typed by hand.",
        "",
        "## What was run",
        "",
        f"- Command: `{s['command']}` ({s['machine']}).",
        f"- Budgets: {', '.join(str(b) for b in budgets)} steps x batch {s['batch_size']} per run; seeds "
        f"{', '.join(str(x) for x in seeds)}; learning rates tried at {min(budgets)} steps: "
        f"{', '.join(f'{lr:g}' for lr in s['lrs'])}.",
        "- Shapes world sizes: "
        + ", ".join(f"{k} {v}" for k, v in s["world_sizes"].items())
        + " (the evaluation sets: zero-shot images per class, compositionality items per task, test pairs).",
        "- Each model's learning rate was chosen on the validation pairs (retrieval mean recall; scenes of "
        "training compositions only) at the shortest budget, mean over seeds; the held-out test sets were never "
        "used to choose. Chosen: "
        + ", ".join(f"tiny-{m} {lr:g}" for m, lr in study["chosen_lr"].items())
        + ".",
        "- Differences are paired by seed (SPARO − CLIP, both trained with the same seed); the "
        f"interval is the t-based 95% interval of the mean difference over the {len(seeds)} seeds.",
        "- The study is resumable: every finished (model, seed, budget, lr) run is cached with its settings "
        "under `runs/study/runs/`, and a re-run only trains what is missing.",
        f"- The full study (150 and 500 steps x 128, 3 seeds, 3 learning rates, the default world; about 2-2.5 "
        f"hours on 2 quiet CPU cores, run it in parts if needed): `{full_command}`.",
        "",
        "## Learning-rate choice (validation retrieval mean recall, mean over seeds)",
        "",
        "| learning rate | " + " | ".join(f"tiny-{m}" for m in study["lr_selection"]) + " |",
        "|---|" + "---|" * len(study["lr_selection"]),
    ]
    for lr in s["lrs"]:
        key = f"{lr:g}"
        lines.append(
            f"| {key} | " + " | ".join(f"{sel[key]:.3f}" for sel in study["lr_selection"].values()) + " |"
        )
    for steps in budgets:
        lines += [
            "",
            f"## {steps} steps",
            "",
            "| metric | tiny-CLIP (mean ± std) | tiny-SPARO (mean ± std) | SPARO − CLIP [95% interval] | verdict |",
            "|---|---|---|---|---|",
        ]
        for metric, row in table[steps].items():
            lines.append(
                f"| {metric} | {_ms(row['CLIP'])} | {_ms(row['SPARO'])} | {row['diff']:+.3f} "
                f"[{row['low']:+.3f}, {row['high']:+.3f}] | {verdict(row)} |"
            )
    if budgets != [150, 500] or s["batch_size"] != 128:
        lines += [
            "",
            f"**This run is smaller than the full study** ({', '.join(str(b) for b in budgets)} steps x "
            f"{s['batch_size']} instead of 150 and 500 x 128) so that it fits the machine it ran on; at these "
            "budgets both models are barely trained, and the intervals say how little three seeds can tell "
            "apart. Read the numbers as a measurement of this setting, not of SPARO.",
        ]
    lines += ["", "## What the numbers say", ""]
    wins = 0
    for metric in HEADLINE:
        parts = []
        for steps in budgets:
            row = table[steps][metric]
            parts.append(
                f"{row['diff']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] at {steps} steps ({verdict(row)})"
            )
        wins += verdict(table[longest][metric]) == "significant: SPARO higher"
        lines.append(f"- {metric}: SPARO − CLIP = " + "; ".join(parts) + ".")
    tests = len(HEADLINE) * len(budgets)
    lines += [
        "",
        f"These are {tests} intervals at the 95% level, without correction for multiple comparisons: about one "
        "in twenty excludes 0 by chance alone when there is no difference.",
        "",
    ]
    if wins == 0:
        lines.append(
            f"At this scale SPARO does not beat CLIP significantly on any headline metric at {longest} steps. "
            + PAPER_SCALE
            + f"; this study trains 19M-parameter towers on 64-pixel synthetic scenes for at most {longest} steps "
            f"of {s['batch_size']} pairs."
        )
    else:
        lines.append(
            f"At {longest} steps SPARO is significantly ahead on {wins} of {len(HEADLINE)} headline metrics (above). "
            + PAPER_SCALE
            + f"; this study trains 19M-parameter towers on 64-pixel synthetic scenes for at most {longest} steps "
            f"of {s['batch_size']} pairs."
        )
    lines += ["", "## Plots (mean ± std over seeds, dots: single seeds)", ""]
    lines += [f"![{metric}]({p.as_posix()})" for metric, p in pictures.items()]
    path.write_text("\n".join(lines) + "\n")
