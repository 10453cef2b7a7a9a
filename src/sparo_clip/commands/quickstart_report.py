"""``report.md`` of the main job: a plain opening paragraph, the primary and secondary metrics over seeds, the
controls, validation curves with the plateau rule, per-seed tables and pictures. Every number is read from the
job's summary (the eval commands' outputs and the statistics of :mod:`sparo_clip.experiment`)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from sparo_clip.checkpoints.files import replace_block
from sparo_clip.experiment.metrics import BY_LABEL, CONTROL_RANGE, METRICS, PRIMARY, SECONDARY
from sparo_clip.experiment.stats import PLATEAU_TOLERANCE, PLATEAU_WINDOW, plateau

DOCS = Path(__file__).resolve().parents[3] / "docs" / "quickstart.md"
BEGIN, END = "<!-- quickstart-time:begin -->", "<!-- quickstart-time:end -->"
MODELS_BEGIN, MODELS_END = "<!-- quickstart-models:begin -->", "<!-- quickstart-models:end -->"
A, B = "CLIP", "SPARO"
PLATEAU_RULE = (
    f"a run has reached its plateau when the best validation R@1 (mean of both directions, on the validation "
    f"pairs, which show only training compositions) over the last {PLATEAU_WINDOW:.0%} of its epochs exceeds the "
    f"best before them by less than {PLATEAU_TOLERANCE}, or when its best lies within {PLATEAU_TOLERANCE} of the "
    f"content ceiling (below), so that no further training can gain {PLATEAU_TOLERANCE}"
)


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def mean_sd(values: list[float]) -> str:
    """Mean ± sample sd of the finite values (the mean alone for one value; n/a for none)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return f"{mean:.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.3f} ± {sd:.3f}"


def _diff(c: dict[str, Any]) -> str:
    d = c["diff"]
    if d["mean"] is None or math.isnan(d["mean"]):
        return "n/a"
    if math.isnan(d["low"]):
        return f"{d['mean']:+.3f} (one seed)"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _reading(c: dict[str, Any]) -> str:
    d = c["diff"]
    if math.isnan(d["low"]):
        return f"{B} − {A} = {d['mean']:+.3f} from a single seed, which cannot say whether this holds"
    if d["low"] > 0 or d["high"] < 0:
        ahead = B if d["mean"] > 0 else A
        return f"{ahead} ahead by {abs(d['mean']):.3f}, 95% interval [{d['low']:+.3f}, {d['high']:+.3f}] over {d['n']} seeds"
    return (
        f"no difference detected: {B} − {A} = {d['mean']:+.3f}, 95% interval [{d['low']:+.3f}, {d['high']:+.3f}] over "
        f"{d['n']} seeds, which includes 0"
    )


def plateau_verdicts(summary: dict[str, Any]) -> dict[str, Any]:
    """Per run (seed, model): the plateau rule on its validation curve (None when too few epochs)."""
    out = {}
    for seed, r in summary["seeds"].items():
        for label, run in r["runs"].items():
            curve = [p["val_r1"] for p in run["curve"]]
            ceiling = r.get("val_ceiling")
            out[f"{label} seed {seed}"] = plateau(curve, ceiling=ceiling) if len(curve) >= 3 else None
    return out


def plot_curves(summary: dict[str, Any], path: Path) -> Path:
    """Validation R@1 against training steps, every run (colour: model; one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    colours = {A: "#1f77b4", B: "#d62728"}
    for seed, r in summary["seeds"].items():
        for label, run in r["runs"].items():
            steps = [p["step"] for p in run["curve"]]
            ax.plot(steps, [p["val_r1"] for p in run["curve"]], marker="o", ms=3, color=colours.get(label, "k"),
                    alpha=0.8, label=label if str(seed) == "0" else None)  # fmt: skip
    ceilings = [r["val_ceiling"] for r in summary["seeds"].values() if r.get("val_ceiling") is not None]
    if ceilings:
        ax.axhline(sum(ceilings) / len(ceilings), color="grey", ls="--", lw=1,
                   label="content ceiling (mean over seeds)")  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("validation R@1 (mean of both ways)")
    ax.set_title("validation curves, every seed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def controls_table(summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Rows of the controls table (text-only reader, each model with a blank image) and the flagged sets."""
    low, high = CONTROL_RANGE
    rows, flagged = [], []
    lines = [
        "| set | task | group | text-only reader | CLIP, blank image | SPARO, blank image | items |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, r in summary["seeds"].items():
        for name, tasks in r["text_only"].items():
            blank = {m: r["results"][m].get(f"{name}_blank", {}) for m in (A, B)}
            for task, groups in tasks.items():
                for group, c in groups.items():
                    values = [c["accuracy"]] + [
                        blank[m].get("groups", {}).get(group, {}).get(task) for m in (A, B)
                    ]
                    bad = [v for v in values if v is not None and not low <= v <= high]
                    mark = " **flagged**" if bad else ""
                    if bad:
                        flagged.append(f"seed {seed} {name}/{task} {group}")
                    rows.append(values)
                    lines.append(
                        f"| seed {seed} {name} | {task} | {group} | {_f(values[0])} | {_f(values[1])} | "
                        f"{_f(values[2])}{mark} | {c['items']} |"
                    )
    return lines, flagged


def _control_span(summary: dict[str, Any]) -> tuple[float, float, float, float]:
    text, blank = [], []
    for r in summary["seeds"].values():
        for name, tasks in r["text_only"].items():
            for task, groups in tasks.items():
                for group, c in groups.items():
                    text.append(c["accuracy"])
                    for m in (A, B):
                        v = (
                            r["results"][m]
                            .get(f"{name}_blank", {})
                            .get("groups", {})
                            .get(group, {})
                            .get(task)
                        )
                        if v is not None:
                            blank.append(v)
    return min(text), max(text), min(blank, default=math.nan), max(blank, default=math.nan)


def opening(summary: dict[str, Any], verdicts: dict[str, Any], flagged: list[str]) -> str:
    """The plain paragraph a newcomer can act on."""
    comp, seeds = summary["comparison"], summary["seeds"]
    first = next(iter(seeds.values()))
    n_seeds, held = len(seeds), len(first["held_out"])
    run = first["runs"][B]
    flat = sum(1 for v in verdicts.values() if v is not None and v.flat)
    unjudged = sum(1 for v in verdicts.values() if v is None)
    t_lo, t_hi, b_lo, b_hi = _control_span(summary)
    world = summary["recipe"]["world"]
    params = summary["parameters"]
    lines = [
        f"tiny-{A} and tiny-{B} ({params[A]:,} and {params[B]:,} parameters) were each trained "
        f"{summary['epochs']} epochs ({run['steps']} steps of {summary['recipe']['batch_size']} captioned images) on "
        f"{n_seeds} seed(s), every seed its own synthetic world of {len(world['colors'])} colours x "
        f"{len(world['shapes'])} shapes on {world['image_size']}-pixel images with its own {held} held-out "
        f"colour-shape pairs that no training image or caption shows. {flat} of {len(verdicts)} runs met the "
        "plateau rule (below)"
        + (f"; {unjudged} had too few epochs to judge." if unjudged else ".")
        + (
            " Runs that did not were still improving when training stopped, so the differences below measure "
            "partly how fast each model learns, not only what it learns (docs/study.md compares the models at "
            "longer budgets)."
            if flat + unjudged < len(verdicts)
            else ""
        ),
        f"On the clean binding test (two objects, the wrong caption swaps their colours, both captions name only "
        f"training pairs): {_reading(comp[PRIMARY[0]])}.",
        f"On generalised compositional zero-shot (AUC of the seen/unseen curve over all classes): "
        f"{_reading(comp[PRIMARY[1]])}.",
        f"Controls: a text-only reader scored {t_lo:.3f}-{t_hi:.3f} and each model with a blank image "
        f"{_f(b_lo)}-{_f(b_hi)} on the matching sets (chance 0.5): "
        + ("no set is flagged." if not flagged else f"{len(flagged)} set(s) flagged (see Controls)."),
        f"What this scale cannot say: these are tiny models on {world['image_size']}-pixel synthetic scenes trained "
        "for minutes on CPU cores; the paper's claims (ImageNet zero-shot +14%, SugarCrepe +4% / +9% with slot selection, DINO "
        "+3%) are about ViT-B models trained on millions of web images, and nothing here confirms or refutes them.",
    ]
    return " ".join(lines)


def _comparison_table(comp: dict[str, Any], labels: tuple[str, ...], holm: bool) -> list[str]:
    head = f"| metric | {A} (mean ± sd) | {B} (mean ± sd) | {B} − {A} (paired t, 95%) | p |"
    lines = [head + (" p, Holm |" if holm else ""), "|---|---|---|---|---|" + ("---|" if holm else "")]
    for label in labels:
        c = comp[label]
        name = label + (" *(oracle)*" if BY_LABEL[label].oracle else "")
        row = f"| {name} | {mean_sd(c['a'])} | {mean_sd(c['b'])} | {_diff(c)} | {_f(c['p'])} |"
        lines.append(row + (f" {_f(c['p_holm'])} |" if holm else ""))
    return lines


def write_report(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``report.md``; returns what the report concluded (stored in results.json)."""
    comp = summary["comparison"]
    verdicts = plateau_verdicts(summary)
    control_lines, flagged = controls_table(summary)
    curves = plot_curves(summary, out / "validation_curves.png")
    lines = ["# sparo-clip quickstart report", "", opening(summary, verdicts, flagged), ""]
    lines += [
        "## Primary metrics",
        "",
        "Named in docs/evaluation.md before any run. Each seed is its own world with its own held-out pairs; "
        f"the interval is a paired t interval of the per-seed differences ({B} − {A}, same world).",
        "",
        *_comparison_table(comp, PRIMARY, holm=False),
        "",
        "## Secondary metrics",
        "",
        f"Holm's correction across these {len(SECONDARY)} tests. Best HM is an oracle: its calibration bias is "
        "chosen on the test images.",
        "",
        *_comparison_table(comp, SECONDARY, holm=True),
        "",
        "## Controls",
        "",
        "Every image-text matching set is built in mirrored pairs (the scene of each wrong caption is another "
        "item, with the captions exchanged), so a reader of the captions alone scores 0.5; these rows check it. A "
        f"value outside [{CONTROL_RANGE[0]}, {CONTROL_RANGE[1]}] flags its set.",
        "",
        *control_lines,
        "",
        "## Training: validation curves and the plateau rule",
        "",
        f"The rule: {PLATEAU_RULE} (the ceiling clause was added after the runs of docs/study.md, see "
        "docs/quickstart.md).",
        "",
        "The content ceiling is the validation R@1 of a model that reads exactly which coloured shapes each "
        "caption and image hold and nothing else: validation captions naming the same objects tie, and a tie of "
        "n is won 1 time in n (``sparo_clip.experiment.runs.validation_ceiling``). A curve at its ceiling has "
        "learned what the captions say.",
        "",
        f"![validation curves]({curves.relative_to(out)})",
        "",
        "| run | learning rate | final validation R@1 | content ceiling | plateau rule | training time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for seed, r in summary["seeds"].items():
        for label, run in r["runs"].items():
            v = verdicts[f"{label} seed {seed}"]
            final = run["curve"][-1]["val_r1"] if run["curve"] else math.nan
            lr = run["settings"]["lr"]
            verdict = v.describe() if v is not None else "too few epochs to judge"
            ceiling = _f(r["val_ceiling"]) if r.get("val_ceiling") is not None else "–"
            lines.append(
                f"| {label} seed {seed} | {lr:g} | {_f(final)} | {ceiling} | {verdict} | {run['seconds']:.0f} |"
            )
    lines += [
        "",
        "## Per seed",
        "",
        "95% intervals from resampling the evaluation's classes or clusters (one run).",
    ]
    for seed, r in summary["seeds"].items():
        lines += ["", f"### Seed {seed}: held out {', '.join(r['held_out'])}", ""]
        lines += [f"| metric | {A} | {B} |", "|---|---|---|"]
        for m in METRICS:
            cells = []
            for label in (A, B):
                iv = r["intervals"][label][m.label]
                cells.append(f"{_f(iv['mean'])} [{_f(iv['low'])}, {_f(iv['high'])}]")
            lines.append(f"| {m.label} | {cells[0]} | {cells[1]} |")
    if "untrained" in summary:
        lines += [
            "",
            "## Untrained reference (seed 0)",
            "",
            "| metric | tiny-SPARO at initialisation |",
            "|---|---|",
        ]
        lines += [f"| {label} | {_f(value)} |" for label, value in summary["untrained"].items()]
    sel = summary.get("slot_selection")
    if sel:
        lines += [
            "",
            "## Slot selection (seed 0)",
            "",
            f"Greedy search ({sel['selected_by']}) on the validation compositionality set chose slots "
            f"{sel['selected_slots']} of {sel['num_slots']}; compositionality mean on validation "
            f"{sel['val']['all_slots']:.3f} -> {sel['val']['selected']:.3f}, on the test set "
            f"{_f(sel['test']['all_slots'])} -> {_f(sel['test']['selected'])}. The test sets are never searched.",
            "",
            f"| metric | {B}, all slots | {B}, selected slots |",
            "|---|---|---|",
        ]
        all_slots = summary["seeds"][next(iter(summary["seeds"]))]["metrics"][B]
        lines += [f"| {k} | {_f(all_slots[k])} | {_f(v)} |" for k, v in summary["selected"].items()]
    if summary.get("pictures"):
        lines += ["", "## SPARO slot attention (seed 0, validation pairs)", ""]
        lines += [f"![{Path(p).stem}]({Path(p).relative_to(out)})" for p in summary["pictures"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {
        "opening": lines[2],
        "flagged_controls": flagged,
        "plateau": {k: (None if v is None else v.flat) for k, v in verdicts.items()},
    }


SETUP_ENV = "SPARO_CLIP_SETUP_SECONDS"  # set by scripts/quickstart.sh: how long its ./scripts/setup.sh took


def _setup_seconds() -> float | None:
    try:
        value = float(os.environ[SETUP_ENV])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def write_docs(summary: dict[str, Any], seconds: float, path: Path = DOCS) -> None:
    """Fill the measured time of a default run into docs/quickstart.md between its markers."""
    runs = [run for r in summary["seeds"].values() for run in r["runs"].values()]
    text = (
        f"Measured by `python -m sparo_clip.quickstart --write-docs` ({platform.machine()}, "
        f"{summary['torch_threads']} threads, torch {torch.__version__}): {len(summary['seeds'])} seeds x 2 models, "
        f"{summary['epochs']} epochs ({runs[0]['steps']} steps) each; training "
        f"{min(r['seconds'] for r in runs):.0f}-{max(r['seconds'] for r in runs):.0f} s per run (two at a time); the "
        f"whole job (worlds, training, evaluation, controls, slot selection, report) {seconds:.0f} s "
        f"({seconds / 60:.1f} min) once `.venv` exists"
    )
    setup = _setup_seconds()
    if setup is not None:  # ./scripts/quickstart.sh timed its set-up step and passed it on
        total = setup + seconds
        text += (
            f"; `./scripts/setup.sh` before it took {setup:.0f} s, so `./scripts/quickstart.sh` took {total:.0f} s "
            f"({total / 60:.1f} min) in all"
        )
    text += ".\n"
    replace_block(path, BEGIN, END, text.rstrip("\n"))
    replace_block(path, MODELS_BEGIN, MODELS_END, models_table(summary).rstrip("\n"))


def models_table(summary: dict[str, Any]) -> str:
    """The two tiny configs, as registered, with their parameter counts."""
    from sparo_clip.experiment.runs import MODELS
    from sparo_clip.models.builder import resolve_model_config

    rows = ["| | " + " | ".join(f"tiny-{k}" for k in MODELS) + " |", "|---|" + "---|" * len(MODELS)]
    cfgs = {k: resolve_model_config(m) for k, m in MODELS.items()}

    def vision(c: dict[str, Any]) -> str:
        v = c["vision_cfg"]
        blocks = v["layers"] - c.get("sparo_cfg", {}).get("reduce_depth", 0)
        return f"{v['image_size']} px, patch {v['patch_size']}, width {v['width']}, {blocks} blocks"

    def text(c: dict[str, Any]) -> str:
        t = c["text_cfg"]
        blocks = t["layers"] - c.get("sparo_cfg", {}).get("reduce_depth", 0)
        return f"context {t['context_length']}, width {t['width']}, {t['heads']} heads, {blocks} blocks"

    def readout(c: dict[str, Any]) -> str:
        s = c.get("sparo_cfg")
        if not s:
            return f"class / end-of-text token, projection to {c['embed_dim']}"
        return f"L = {s['num_slots']} slots x V = {s['slot_dim']}, one head each, `{s.get('slot_norm', 'cont:const')}`"

    for name, fn in (("vision", vision), ("text", text), ("read-out", readout)):
        rows.append(f"| {name} | " + " | ".join(fn(c) for c in cfgs.values()) + " |")
    rows.append("| parameters | " + " | ".join(f"{summary['parameters'][k]:,}" for k in MODELS) + " |")
    return "\n".join(rows)
