"""docs/study.md and the curve block of docs/quickstart.md, from a finished study (``benchmarks.study``); every
number comes from its run cache."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparo_clip.checkpoints.files import atomic_write_text, replace_block
from sparo_clip.commands.quickstart_report import mean_sd
from sparo_clip.experiment.metrics import BY_LABEL, CONTROL_RANGE, METRICS, PRIMARY, SECONDARY
from sparo_clip.experiment.stats import PLATEAU_TOLERANCE, PLATEAU_WINDOW, plateau

CURVE_BEGIN, CURVE_END = "<!-- plateau-curve:begin -->", "<!-- plateau-curve:end -->"
PAPER_SCALE = (
    "The paper's gains (ImageNet zero-shot +14%, SugarCrepe +4% / +9% with slot selection) were measured with "
    "ViT-B models trained on CC12M + CC3M (about 12.8M pairs) for 25 epochs; nothing at this scale confirms or "
    "refutes them"
)


COLOURS = {"CLIP": "#1f77b4", "SPARO": "#d62728"}


@contextlib.contextmanager
def _curve_figure(path: Path) -> Iterator[Any]:
    """Axes for validation curves; on leaving, labelled and saved to ``path`` as PNG (closed either way)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.4, 3.6), dpi=110)
    try:
        yield ax
        ax.set_xlabel("training step")
        ax.set_ylabel("validation R@1 (mean of both ways)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def _plot_curves(evidence: dict[str, Any], path: Path) -> Path:
    with _curve_figure(path) as ax:
        for name, run in evidence.items():
            if not isinstance(run, dict) or "curve" not in run:
                continue
            label, epochs = name.rsplit("-e", 1)
            style = "-" if name == min((n for n in evidence if n.startswith(label + "-e")), key=len) else "--"
            ax.plot([p["step"] for p in run["curve"]], [p["val_r1"] for p in run["curve"]], style, marker="o",
                    ms=3, color=COLOURS[label], label=f"tiny-{label}, {epochs} epochs")  # fmt: skip
        if evidence.get("val_ceiling") is not None:
            ax.axhline(evidence["val_ceiling"], color="grey", ls=":", lw=1, label="content ceiling")
    return path


def _plot_seed_curves(
    curves: dict[str, dict[str, list[dict[str, float]]]], ceilings: dict[str, float] | None, path: Path
) -> Path:
    """Every comparison seed's validation curve, one thin line per seed and model, with the seeds' content
    ceilings (a band from the lowest to the highest)."""
    with _curve_figure(path) as ax:
        labelled: set[str] = set()
        for seed in sorted(curves, key=int):
            for label, curve in sorted(curves[seed].items()):
                ax.plot([p["step"] for p in curve], [p["val_r1"] for p in curve], "-", lw=1, alpha=0.8,
                        color=COLOURS[label], label=None if label in labelled else f"tiny-{label}")  # fmt: skip
                labelled.add(label)
        if ceilings:
            low, high = min(ceilings.values()), max(ceilings.values())
            ax.axhspan(low, max(high, low + 1e-3), color="grey", alpha=0.25, label="content ceilings")
        ax.set_title(f"{len(curves)} seeds, each its own world", fontsize=9)
    return path


def write_quickstart_curve(evidence: dict[str, Any], args: Any, doc: Path) -> None:
    """The plateau evidence for the main job's budget: the curves (PNG) and the rule's verdicts."""
    picture = _plot_curves(evidence, doc.parent / "img" / "quickstart" / "plateau.png")
    lines = [
        f"Measured by `python -m benchmarks.study --stage plateau --write-recipe` on the tuning world (seed "
        f"{args.tune_seed}, not one the comparison uses): each model with its chosen learning rate, trained "
        f"{args.epochs} epochs (the default) and {2 * args.epochs} epochs ({evidence['steps_per_epoch']} steps per "
        f"epoch). The plateau rule: {RULE}."
        + (
            f" The content ceiling ({evidence['val_ceiling']:.3f}) is the validation R@1 of a model that reads "
            "exactly which coloured shapes each caption and image hold and nothing else (captions naming the same "
            "objects tie; `sparo_clip.experiment.runs.validation_ceiling`)."
            if evidence.get("val_ceiling") is not None
            else ""
        ),
        "",
        f"![validation curves]({picture.relative_to(doc.parent).as_posix()})",
        "",
        "| run | final validation R@1 | gain over the last third | plateau rule |",
        "|---|---|---|---|",
    ]
    for name, run in evidence.items():
        if isinstance(run, dict) and "curve" in run:
            label, epochs = name.rsplit("-e", 1)
            lines.append(
                f"| tiny-{label}, {epochs} epochs | {run['final']:.3f} | {run['gain']:+.3f} | "
                f"{_verdict_word(run)} |"
            )
    runs = {name: run for name, run in evidence.items() if isinstance(run, dict) and "curve" in run}
    for epochs in (args.epochs, 2 * args.epochs):
        at = [run for name, run in runs.items() if name.endswith(f"-e{epochs}")]
        lines.append("")
        lines.append(
            f"At {epochs} epochs {sum(r['flat'] for r in at)} of {len(at)} runs meet the plateau rule"
            + (" (the default budget)." if epochs == args.epochs else ".")
        )
    replace_block(doc, CURVE_BEGIN, CURVE_END, "\n".join(lines))


RULE = (
    f"flat when the best validation R@1 of the last {PLATEAU_WINDOW:.0%} of the epochs exceeds the best before "
    f"them by less than {PLATEAU_TOLERANCE}, or when the best lies within {PLATEAU_TOLERANCE} of the content "
    f"ceiling (no further training can gain {PLATEAU_TOLERANCE}; this clause was added after the 32-epoch "
    "tuning-world runs, docs/quickstart.md)"
)


def _judged(run: dict[str, Any], ceiling: float | None) -> dict[str, Any]:
    """The plateau rule's verdict on a run's curve, computed now (a cache written by earlier code may hold a
    verdict from an earlier rule)."""
    verdict = plateau([p["val_r1"] for p in run["curve"]], ceiling=ceiling)
    return {"final": run["curve"][-1]["val_r1"], "flat": verdict.flat, "gain": verdict.gain,
            "at_ceiling": verdict.at_ceiling, "headroom": verdict.headroom}  # fmt: skip


def _verdict_word(run: dict[str, Any]) -> str:
    if run.get("at_ceiling"):
        where = "at" if run["headroom"] < 0.0005 else f"within {run['headroom']:.3f} of"
        return f"flat ({where} the content ceiling)"
    return "flat" if run["flat"] else "still rising"


def _f(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _interval(d: dict[str, Any]) -> str:
    if d["mean"] is None or math.isnan(d["mean"]):
        return "n/a"
    return f"{d['mean']:+.3f} [{_f(d['low'])}, {_f(d['high'])}]"


def verdict(d: dict[str, Any]) -> str:
    """Which model is ahead, in words; "no difference" when the interval includes 0."""
    if d["low"] is None or math.isnan(d["low"]):
        return "not testable"
    if d["low"] > 0:
        return "SPARO ahead"
    if d["high"] < 0:
        return "CLIP ahead"
    return "no difference detected"


def _flat_counts(
    curves: dict[str, dict[str, list[dict[str, float]]]], ceilings: dict[str, float] | None = None
) -> dict[str, tuple[int, int]]:
    """Per model: how many seeds' validation curves meet the plateau rule (with each seed's content ceiling when
    known), of how many judged."""
    out: dict[str, list[int]] = {}
    for seed, per_model in curves.items():
        for label, curve in per_model.items():
            values = [p["val_r1"] for p in curve]
            if len(values) >= 3:
                out.setdefault(label, [0, 0])
                out[label][0] += int(plateau(values, ceiling=(ceilings or {}).get(seed)).flat)
                out[label][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _plateau_section(state: dict[str, Any], doc: Path) -> list[str]:
    """The tuning world's curves at the study's budget and twice it (``--stage plateau``), with the rule's
    verdicts: where each model stops improving, before the comparison is read."""
    evidence = state.get("plateau")
    runs = {k: v for k, v in (evidence or {}).items() if isinstance(v, dict) and "curve" in v}
    if not runs:
        return []
    picture = _plot_curves(evidence, doc.parent / "img" / "study" / "plateau.png")
    lines = [
        "## Where the models stop improving (the tuning world)",
        "",
        "Each model with its chosen learning rate on the tuning world, at the tuned budget and twice it "
        f"(`--stage plateau`). The plateau rule: {RULE}."
        + (
            f" Content ceiling {evidence['val_ceiling']:.3f} (captions naming the same objects tie)."
            if evidence.get("val_ceiling") is not None
            else ""
        ),
        "",
        f"![validation curves on the tuning world]({picture.relative_to(doc.parent).as_posix()})",
        "",
        "| run | final validation R@1 | gain over the last third | plateau rule |",
        "|---|---|---|---|",
    ]
    for name, run in runs.items():
        label, epochs = name.rsplit("-e", 1)
        run = _judged(run, evidence.get("val_ceiling"))
        lines.append(
            f"| tiny-{label}, {epochs} epochs | {run['final']:.3f} | {run['gain']:+.3f} | "
            f"{_verdict_word(run)} |"
        )
    return [*lines, ""]


def _converged_line(state: dict[str, Any], final: str, flat: dict[str, tuple[int, int]]) -> str:
    """When every run at the longest budget met the plateau rule: say so, and, when the comparison trained the
    main job's own recipe (learning rates and slot shape), the command that trains the main job to it."""
    if not flat or any(k < n for k, n in flat.values()):
        return ""
    line = f"Every run at {final} epochs met the plateau rule: at this scale these are the converged numbers."
    trained = state.get("compare_recipe", {})
    if trained.get("lr") == state["recipe"].get("lr") and not trained.get("sparo_override"):
        line += (
            f" The comparison trained the main job's recipe (learning rates and slot shape), only longer: "
            f"`./scripts/quickstart.sh --epochs {final}` runs the main job at this budget."
        )
    return line


def _speed_line(compare: dict[str, Any], short: str, final: str) -> str:
    """When the longest budget converged and shows no difference on a primary metric where the main job's
    shorter, unconverged budget showed one: that difference is one of learning speed. Empty otherwise."""
    if short not in compare or short == final:
        return ""
    flat_final = _flat_counts(compare[final].get("curves", {}), compare[final].get("ceilings"))
    flat_short = _flat_counts(compare[short].get("curves", {}), compare[short].get("ceilings"))
    if not flat_final or any(k < n for k, n in flat_final.values()):
        return ""
    if flat_short and all(k == n for k, n in flat_short.values()):
        return ""  # the short budget converged too: its differences are not about speed
    faded = [(m, verdict(compare[short]["comparison"][m]["diff"])) for m in PRIMARY
             if verdict(compare[short]["comparison"][m]["diff"]).endswith("ahead")
             and verdict(compare[final]["comparison"][m]["diff"]) == "no difference detected"]  # fmt: skip
    if not faded:
        return ""
    met = sum(k for k, _ in flat_short.values())
    of = sum(n for _, n in flat_short.values())
    return (
        f"At {short} epochs, where {met} of {of} runs had met the plateau rule, "
        + ("a primary metric differed (" if len(faded) == 1 else "primary metrics differed (")
        + "; ".join(f"{m}: {reading}" for m, reading in faded)
        + f"); at {final} epochs, where every run had, "
        + ("that difference is" if len(faded) == 1 else "these differences are")
        + " not detected. At this scale "
        + ("it is a difference" if len(faded) == 1 else "they are differences")
        + " in how fast the two models learn, not in where they end."
    )


def _span(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    return _f(vals[0]) if min(vals) == max(vals) else f"{_f(min(vals))}–{_f(max(vals))}"


def controls_section(state: dict[str, Any]) -> list[str]:
    """Both models at initialisation (mean ± sd over seeds), and the controls of every matching set: the
    text-only reader and each model's preference with a blank image, at every budget, as min–max over seeds;
    a set with a control outside CONTROL_RANGE is flagged."""
    controls, compare = state.get("controls"), state["compare"]
    if not controls:
        return []
    budgets = sorted(compare, key=int)
    untrained = controls["untrained"]
    lines = [
        "## The untrained models and the controls",
        "",
        f"Both models at their seeded initialisation, evaluated like the trained ones ({len(untrained)} seeds, "
        "mean ± sd): what a score means when nothing was learned.",
        "",
        "| metric | tiny-CLIP, untrained | tiny-SPARO, untrained |",
        "|---|---|---|",
    ]
    for m in METRICS:
        cells = [
            mean_sd([untrained[seed][label][m.label] for seed in untrained]) for label in ("CLIP", "SPARO")
        ]
        lines.append(f"| {m.label} | {cells[0]} | {cells[1]} |")
    low, high = CONTROL_RANGE
    head = "| set | task | group | text-only reader |"
    head += "".join(f" tiny-{m}, blank image, {b} epochs |" for b in budgets for m in ("CLIP", "SPARO"))
    lines += [
        "",
        "Controls of every matching set, min–max over seeds: the text-only reader (a bigram model fit on each "
        "world's training captions, scoring the two captions without the image) and each trained model's "
        f"preference with a blank image. Near 0.5 means the set cannot be solved without the image; a set with a "
        f"control outside [{low}, {high}] is flagged. The sets are built in mirrored pairs (each item has a twin on "
        "another image with the two captions swapped, docs/data.md), so any reader that ignores the image scores "
        "exactly 0.500; the rows check that construction on the sets this study used.",
        "",
        head + " items per seed |",
        "|---|---|---|---|" + "---|" * (2 * len(budgets)) + "---|",
    ]
    flagged = []
    text_only = controls["text_only"]
    first = next(iter(text_only.values()))
    for name, tasks in first.items():
        for task, groups in tasks.items():
            for group in groups:
                cells = [[text_only[seed][name][task][group]["accuracy"] for seed in text_only]]
                for b in budgets:
                    blank = compare[b].get("blank", {})
                    for m in ("CLIP", "SPARO"):
                        cells.append([blank[seed][m][name].get(group, {}).get(task) for seed in blank])
                values = [v for c in cells for v in c if v is not None]
                bad = any(not low <= v <= high for v in values)
                if bad:
                    flagged.append(f"{name}/{task} {group}")
                items = _span([float(text_only[seed][name][task][group]["items"]) for seed in text_only])
                lines.append(
                    f"| {name} | {task} | {group} | "
                    + " | ".join(_span(c) for c in cells)
                    + f" | {items.replace('.000', '')}{' **flagged**' if bad else ''} |"
                )
    lines += [
        "",
        f"Flagged: {', '.join(flagged)}." if flagged else f"No control falls outside [{low}, {high}].",
        "",
    ]
    return lines


def write_study_doc(state: dict[str, Any], path: Path) -> None:
    """docs/study.md: what was run, the tuning, the plateau, the comparison per budget, a plain conclusion."""
    s, tuning, compare = state["settings"], state["tuning"], state["compare"]
    budgets = sorted(compare, key=int)
    final = budgets[-1]  # the longest budget: the one closest to where both models stop improving
    default = str(state["recipe"]["epochs"])
    tuned_at = tuning.get("epochs", state["recipe"]["epochs"])
    lines = [
        "# The study: tiny-SPARO vs tiny-CLIP over seeds, held-out splits and budgets",
        "",
        "Written by `python -m benchmarks.study --write-docs` from its run cache; no number here is typed by hand.",
        "",
        "## What was run",
        "",
        f"- Command: `{s['command']}` ({s['machine']}).",
        f"- {s['seeds']} seeds; every seed is its own world with its own held-out colour-shape pairs; both models "
        "train on the same world with the same seed, so differences are paired by seed.",
        "- Budgets: "
        + ", ".join(f"{b} epochs ({compare[b]['steps']} steps)" for b in budgets)
        + f"; the main job's default is {default} epochs (its curves: docs/quickstart.md). Each budget's section "
        "says how many runs met the plateau rule; a budget where they did not measures how fast each model "
        "learns as much as what it learns.",
        f"- Tuning on a world of its own (seed {tuning['tune_seed']}), at {tuned_at} epochs, on the validation "
        "pairs only (final validation R@1): learning rates "
        + "; ".join(
            f"tiny-{m}"
            + (" (at the chosen slot shape)" if " " in m else "")
            + ": "
            + ", ".join(f"{lr} → {_f(v)}" for lr, v in tuning["lr_scores"][m].items())
            for m in tuning["lr_scores"]
        )  # fmt: skip
        + f" (chosen: {', '.join(f'tiny-{m} {lr:g}' for m, lr in tuning['lr'].items())}; a grid is extended by 2x "
        "past a winning edge, so the choice is bracketed); SPARO slot shapes "
        + ", ".join(f"{k} → {_f(v)}" for k, v in tuning["slot_scores"].items())
        + f" (chosen: {tuning['slot_shape']})."
        + (
            f" The comparison trains and evaluates tiny-SPARO at {tuning['slot_shape']} (a model-config override; "
            "the main job's tiny-SPARO.json keeps the shape its own tuning chose)."
            if state.get("compare_recipe", {}).get("sparo_override")
            else ""
        )
        + (
            f" Budgets other than {tuned_at} epochs reuse these choices without tuning again."
            if any(int(b) != int(tuned_at) for b in budgets)
            else ""
        ),
        "- Primary metrics, named before any run (docs/evaluation.md): "
        + " and ".join(f"**{m}**" for m in PRIMARY)
        + f". The {len(SECONDARY)} secondary metrics get Holm's correction; best HM is an oracle.",
        "- Intervals: paired t over seeds (95%), from the per-seed differences SPARO − CLIP.",
        "",
    ]
    lines += _plateau_section(state, path)
    for b in budgets:
        comp = compare[b]["comparison"]
        lines += [
            f"## {b} epochs ({compare[b]['steps']} steps)",
            "",
            "| metric | tiny-CLIP (mean ± sd) | tiny-SPARO (mean ± sd) | SPARO − CLIP [95%] | p | p, Holm | reading |",
            "|---|---|---|---|---|---|---|",
        ]
        flat = _flat_counts(compare[b].get("curves", {}), compare[b].get("ceilings"))
        plateau_line = (
            "Plateau rule on the validation curves: "
            + ", ".join(f"tiny-{m} flat in {k} of {n} seeds" for m, (k, n) in sorted(flat.items()))
            + "."
            if flat
            else "Plateau rule: too few epochs to judge (it needs 3 evaluations)."
        )
        lines[-2:-2] = [plateau_line, ""]
        if compare[b].get("curves"):
            picture = _plot_seed_curves(
                compare[b]["curves"],
                compare[b].get("ceilings"),
                path.parent / "img" / "study" / f"curves-e{b}.png",
            )
            alt = f"validation curves at {b} epochs, every seed"
            lines[-2:-2] = [f"![{alt}]({picture.relative_to(path.parent).as_posix()})", ""]
        for label in (*PRIMARY, *SECONDARY):
            c = comp[label]
            name = (
                ("**" + label + "**")
                if label in PRIMARY
                else label + (" *(oracle)*" if BY_LABEL[label].oracle else "")
            )
            holm = "primary" if c["p_holm"] is None else _f(c["p_holm"])
            reading = verdict(c["diff"])
            if c["p_holm"] is not None and not c["p_holm"] < 0.05 and reading.endswith("ahead"):
                reading = "no difference after Holm"  # a secondary metric reads by its corrected p
            lines.append(
                f"| {name} | {mean_sd(c['a'])} | {mean_sd(c['b'])} | {_interval(c['diff'])} | {_f(c['p'])} | {holm} | "
                f"{reading} |"
            )
        lines.append("")
    lines += controls_section(state)
    comp = compare[final]["comparison"]
    final_flat = _flat_counts(compare[final].get("curves", {}), compare[final].get("ceilings"))
    readings = [f"{m}: {verdict(comp[m]['diff'])} ({_interval(comp[m]['diff'])})" for m in PRIMARY]
    ahead = [m for m in SECONDARY if comp[m]["p_holm"] is not None and comp[m]["p_holm"] < 0.05]
    lines += [
        "## What the numbers say",
        "",
        f"At the longest budget ({final} epochs, {s['seeds']} seeds), on the primary metrics: "
        + "; ".join(readings)
        + ". "
        + (
            "Among the secondary metrics, after Holm's correction, a difference holds for: "
            + ", ".join(f"{m} ({verdict(comp[m]['diff'])})" for m in ahead)
            + "."
            if ahead
            else "No secondary metric differs after Holm's correction."
        ),
        "",
        *(
            [
                f"At the main job's budget ({default} epochs): "
                + "; ".join(
                    f"{m}: {verdict(compare[default]['comparison'][m]['diff'])} "
                    f"({_interval(compare[default]['comparison'][m]['diff'])})"
                    for m in PRIMARY
                )
                + ".",
                "",
            ]
            if default in compare and default != final
            else []
        ),
        *(
            [
                f"Not every run at {final} epochs met the plateau rule ("
                + ", ".join(f"tiny-{m} {k} of {n}" for m, (k, n) in sorted(final_flat.items()))
                + "): "
                + " and ".join(rising := [f"tiny-{m}" for m, (k, n) in sorted(final_flat.items()) if k < n])
                + (" was" if len(rising) == 1 else " were")
                + " still improving where it did not, and these differences may change with longer training.",
                "",
            ]
            if any(k < n for k, n in final_flat.values())
            else []
        ),
        *(
            line
            for text in (_converged_line(state, final, final_flat), _speed_line(compare, default, final))
            if text
            for line in (text, "")
        ),  # fmt: skip
        f"{PAPER_SCALE}: this study trains tiny towers on {state['recipe']['world']['image_size']}-pixel synthetic "
        "scenes for minutes on CPU cores.",
        "",
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
