"""Bad input at every entry point: one clear line, the right exit code, no traceback, nothing left behind.

Each row is (entry point, an input made on the fly, expected exit code, a phrase the one-line error must hold).
Rows run in a few worker processes (``tests/bad_input_driver.py``), one row after another, each as its entry
point runs (the installed console scripts' entry functions, ``python -m`` through runpy) with its stdout,
stderr and exit code captured; a few rows run as their own process through the real ``sparo-clip`` /
``sparo-dino`` scripts and ``python -m``. Every process has a hard timeout (a row that hangs fails). Each row is
then its own test: no traceback, the exit code, the phrase in the last line of stderr, no run or output folder
left behind, and rows on an existing run leave it unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from .eval_helpers import class_folder, save_checkpoint, sugarcrepe_root, write_csv, write_tar
from .train_helpers import make_shards

pytestmark = pytest.mark.slow  # ~50 rows; the processes start torch and open_clip (~5 s each)

ROOT = Path(__file__).resolve().parent.parent
ROW_TIMEOUT = 60  # seconds a row may take (a worker process gets this per row)
PARALLEL = 2
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@dataclass
class Row:
    """One bad input: its entry point and arguments, the exit code and phrase expected, and what must not be
    left behind. ``alone``: run in its own process through the real script or ``python -m``."""

    name: str
    entry: tuple[str, str, list[str]]  # (kind: console | module, script or module name, arguments)
    code: int
    phrase: str
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
    unchanged: list[Path] = field(default_factory=list)  # files whose bytes must be the same afterwards
    alone: bool = False

    @property
    def group(self) -> str:
        return self.name.split("-")[0] if self.name.split("-")[0] in ("train", "dino") else "other"

    def command(self) -> list[str]:
        kind, target, args = self.entry
        if kind == "module":
            return [sys.executable, "-m", target, *args]
        script = BIN / target
        module_of = {"sparo-clip": "sparo_clip.commands.cli", "sparo-dino": "sparo_clip.dino.cli"}
        return [str(script), *args] if script.exists() else [sys.executable, "-m", module_of[target], *args]


def sparo_clip(*args: str) -> tuple[str, str, list[str]]:
    return "console", "sparo-clip", list(args)


def sparo_dino(*args: str) -> tuple[str, str, list[str]]:
    return "console", "sparo-dino", list(args)


def module(name: str, *args: str) -> tuple[str, str, list[str]]:
    return "module", name, list(args)


# ------------------------------------------------------------------------------------------------ inputs


def _nan_state(model: str = "test-SPARO") -> dict[str, torch.Tensor]:
    import open_clip

    state = open_clip.create_model(model).state_dict()
    state["image_readout.query"] = torch.full_like(state["image_readout.query"], float("nan"))
    state["logit_scale"] = torch.tensor(float("inf"))
    return state


def _sparo_run(logs: Path, name: str) -> Path:
    """A test-SPARO run folder as a finished run leaves it (out.log, params.txt, model_config.json, epoch_1)."""
    import open_clip

    from sparo_clip.models.builder import resolve_model_config

    run = logs / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "out.log").write_text("an earlier run\n")
    (run / "params.txt").write_text("model: test-SPARO\n")
    cfg = {
        "model": "test-SPARO",
        "override_model_config": None,
        "model_cfg": resolve_model_config("test-SPARO"),
    }
    (run / "model_config.json").write_text(json.dumps(cfg))
    state = open_clip.create_model("test-SPARO").state_dict()
    torch.save({"epoch": 1, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}},
               run / "checkpoints" / "epoch_1.pt")  # fmt: skip
    return run


def _dino_run(out: Path, model: str) -> Path:
    """A DINO run folder of ``model`` with one checkpoint and its config.json."""
    from sparo_clip.dino import DinoNet, load_config

    cfg = load_config(model)
    net = DinoNet(cfg)
    (out / "checkpoints").mkdir(parents=True)
    ckpt = {"dino_cfg": cfg.to_dict(), "args": {}, "step": 1, "student": net.state_dict(),
            "teacher": net.state_dict(), "optimizer": {"state": {}, "param_groups": []},
            "center": torch.zeros(1, cfg.head.output_dim)}  # fmt: skip
    torch.save(ckpt, out / "checkpoints" / "step_00000001.pt")
    (out / "config.json").write_text(json.dumps({"dino_cfg": cfg.to_dict(), "args": {}}))
    return out


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, Row]:
    t = tmp_path_factory.mktemp("bad")
    logs, out = t / "logs", t / "out"  # every row's run / output folder lies under these
    afile = t / "afile"
    afile.write_text("a file, not a folder\n")
    folder = class_folder(t / "folder", {"a": 3, "b": 3})
    zero = class_folder(t / "zero", {"a": 3, "b": 3}, seed=1)
    (zero / "a" / "0.png").write_bytes(b"")  # a zero-byte image
    ckpt = save_checkpoint(t / "good.pt")
    nan_ckpt = t / "nan.pt"
    torch.save(_nan_state(), nan_ckpt)
    nan_train = t / "nan_train.pt"
    torch.save(
        {"epoch": 1, "state_dict": _nan_state(), "optimizer": {"state": {}, "param_groups": []}}, nan_train
    )
    shards = make_shards(t / "shards", num_shards=2, per_shard=4)
    no_images = t / "captions-{0..1}.tar"
    for i in range(2):
        write_tar(t / f"captions-{i}.tar", [(f"k{i}", {"txt": b"a caption only", "json": b"{}"})])
    csv_missing = write_csv(
        t / "missing.csv", [(str(folder / "a" / "0.png"), "a"), (str(t / "gone.png"), "b")]
    )
    sparo_run = _sparo_run(logs, "sparo-run")
    dino_other = _dino_run(t / "dino-other", "tiny_dino")
    dino_sparo = _dino_run(t / "dino-sparo", "tiny_sparo_dino")
    sc_root = sugarcrepe_root(t / "sugarcrepe", {"swap_att": 2})

    clip = ["--model", "test-SPARO", "--train-data", shards, "--dataset-type", "webdataset",
            "--train-num-samples", "8", "--batch-size", "4", "--workers", "0", "--epochs", "1",
            "--precision", "fp32", "--report-to", "none", "--logs-dir", str(logs)]  # fmt: skip
    dino = ["--model", "tiny_sparo_dino", "--train-data", str(folder), "--batch-size", "2", "--epochs", "1",
            "--workers", "0", "--local-crops", "2"]  # fmt: skip
    probe = ["--model", "test-SPARO", "--train", str(folder), "--val", str(folder), "--workers", "0",
             "--cache-dir", ""]  # fmt: skip
    huge = json.dumps({"embed_dim": 16_000_000_000, "sparo_cfg": {"num_slots": 1_000_000_000}})
    unchanged_run = [sparo_run / "params.txt", sparo_run / "model_config.json", sparo_run / "out.log"]
    r = [
        # sparo-clip train / python -m sparo_clip.train
        Row("train-lr-nan", sparo_clip("train", *clip, "--name", "a", "--lr", "nan"), 2,
            "--lr nan: must be a finite number", [logs / "a"]),
        Row("train-wd-inf", module("sparo_clip.train", *clip, "--name", "a", "--wd", "inf"), 2,
            "--wd inf: must be a finite number", [logs / "a"]),
        Row("train-override-nan", sparo_clip("train", *clip, "--name", "a", "--override-model-config",
            '{"sparo_cfg": {"temperature": NaN}}'), 2, "NaN is not allowed", [logs / "a"]),
        Row("train-absurd-size", sparo_clip("train", *clip, "--name", "a", "--override-model-config", huge), 2,
            "parameters; training it needs at least", [logs / "a"]),
        Row("train-other-model-resume", sparo_clip("train", *clip, "--name", "sparo-run", "--model", "test-CLIP",
            "--resume", "latest"), 2, "was trained as --model test-SPARO", unchanged=unchanged_run),
        Row("train-resume-nan", module("sparo_clip.train", *clip, "--name", "a", "--resume", str(nan_train)), 2,
            "non-finite values (NaN or inf) in 2 of its", [logs / "a"]),
        Row("train-init-from-nan", sparo_clip("train", *clip, "--name", "a", "--init-from", str(nan_ckpt)), 2,
            f"--init-from: checkpoint {nan_ckpt} has non-finite values", [logs / "a"]),
        Row("train-resume-folder", sparo_clip("train", *clip, "--name", "a", "--resume", str(folder)), 2,
            "is a folder", [logs / "a"]),
        Row("train-csv-missing-image", sparo_clip("train", *clip, "--name", "a", "--train-data", str(csv_missing),
            "--dataset-type", "csv", "--batch-size", "1"), 2, "1 of the 2 image paths", [logs / "a"]),
        Row("train-shards-without-images", sparo_clip("train", *clip, "--name", "a", "--train-data",
            str(no_images)), 2, "has no images (.png, .jpg, .jpeg, .webp); members found: .json, .txt", [logs / "a"]),
        Row("train-batch-zero", module("sparo_clip.train", *clip, "--name", "a", "--batch-size", "0"), 2,
            "--batch-size 0: must be at least 1", [logs / "a"], alone=True),
        # sparo-clip eval (every task)
        Row("zeroshot-nan-weights", sparo_clip("eval", "zeroshot", "--model", "test-SPARO", "--pretrained",
            str(nan_ckpt), "--data", str(folder), "--classnames", str(_names(t))), 2,
            "non-finite values (NaN or inf)"),
        Row("zeroshot-no-data", sparo_clip("eval", "zeroshot", "--model", "test-SPARO", "--data", str(t / "nope"),
            "--classnames", str(_names(t))), 2, "no such directory"),
        Row("retrieval-missing-csv", sparo_clip("eval", "retrieval", "--model", "test-SPARO", "--csv",
            str(t / "nope.csv")), 2, "nope.csv"),
        Row("sugarcrepe-nan-weights", sparo_clip("eval", "sugarcrepe", "--model", "test-SPARO", "--pretrained",
            str(nan_ckpt), "--root", str(sc_root)), 2, "non-finite values"),
        Row("compositional-missing", sparo_clip("eval", "compositional", "--model", "test-SPARO", "--data",
            str(t / "nope"), "--classes", str(_names(t))), 2, "nope"),
        Row("knn-nan-weights", sparo_clip("eval", "knn", *probe, "--pretrained", str(nan_ckpt)), 2,
            "non-finite values (NaN or inf) in 2 of its"),
        Row("knn-temperature-nan", sparo_clip("eval", "knn", *probe, "--temperature", "nan"), 2,
            "--temperature nan: must be a finite number"),
        Row("knn-zero-byte-strict", sparo_clip("eval", "knn", *probe, "--train", str(zero), "--strict"), 2,
            "0.png cannot be read"),
        Row("linear-wd-nan", sparo_clip("eval", "linear", *probe, "--wd", "nan"), 2, "positive finite numbers"),
        Row("linear-zero-byte-strict", sparo_clip("eval", "linear", *probe, "--val", str(zero), "--strict"), 2,
            "0.png cannot be read"),
        Row("knn-dino-other-file", sparo_clip("eval", "knn", *probe, "--model", f"dino:{ckpt}"), 2,
            "is not a DINO checkpoint"),
        # sparo-clip select-slots, viz, clip-benchmark, make-data, parity, convert, list, dino; unknown command
        Row("select-val-fraction-nan", sparo_clip("select-slots", "sugarcrepe", "--model", "test-SPARO", "--root",
            str(sc_root), "--val-fraction", "nan"), 2, "--val-fraction nan: must be a finite number"),
        Row("select-nan-weights", sparo_clip("select-slots", "sugarcrepe", "--model", "test-SPARO", "--root",
            str(sc_root), "--pretrained", str(nan_ckpt)), 2, "non-finite values"),
        Row("viz-nan-weights", sparo_clip("viz", "--model", "test-SPARO", "--pretrained", str(nan_ckpt), "--images",
            str(folder / "a"), "--captions", str(_captions(t)), "--out", str(out / "viz")), 2,
            "non-finite values", [out / "viz"]),
        Row("viz-sharpen-inf", sparo_clip("viz", "--model", "test-SPARO", "--images", str(folder / "a"),
            "--captions", str(_captions(t)), "--out", str(out / "viz"), "--sharpen", "inf"), 2,
            "--sharpen inf: must be a finite number", [out / "viz"]),
        Row("clip-benchmark-nan-weights", sparo_clip("clip-benchmark", "eval", "--model", "test-SPARO",
            "--pretrained", str(nan_ckpt), "--dataset", "cifar10"), 2, "non-finite values"),
        Row("clip-benchmark-missing-file", sparo_clip("clip-benchmark", "eval", "--model", "test-SPARO",
            "--pretrained", str(t / "nope.pt"), "--dataset", "cifar10"), 2, "does not exist"),
        Row("make-data-out-under-file", sparo_clip("make-data", "--small", "--out", str(afile / "data")), 2,
            "afile"),
        Row("make-data-holdout-nan", sparo_clip("make-data", "--small", "--out", str(out / "md"),
            "--holdout-fraction", "nan"), 2, "--holdout-fraction nan: must be a finite number", [out / "md"]),
        Row("parity-unknown-base", sparo_clip("parity", "no-such-base"), 2, "no-such-base"),
        Row("convert-folder", sparo_clip("convert", str(folder), str(out / "c.pt"), "--model", "test-SPARO"), 2,
            "is a folder", [out / "c.pt"]),
        Row("list-bad-flag", sparo_clip("list", "--bogus"), 2, "unrecognized arguments: --bogus"),
        Row("unknown-command", sparo_clip("no-such-command"), 2, "unknown command 'no-such-command'", alone=True),
        Row("dino-train-heads", sparo_clip("dino", "train", *dino, "--output", str(out / "d"), "--model-overrides",
            '{"backbone_kwargs": {"num_heads": 5}}'), 2, "cannot be built: dim should be divisible by num_heads",
            [out / "d"]),
        Row("dino-parity-unknown", sparo_clip("dino", "parity", "no_such_config"), 2, "no_such_config"),
        # sparo-dino / python -m sparo_clip.dino.train
        Row("dino-lr-nan", sparo_dino("train", *dino, "--output", str(out / "d"), "--lr", "nan"), 2,
            "--lr nan: must be a finite number", [out / "d"], alone=True),
        Row("dino-teacher-temp-inf", module("sparo_clip.dino.train", *dino, "--output", str(out / "d"),
            "--teacher-temp", "inf"), 2, "--teacher-temp inf: must be a finite number", [out / "d"]),
        Row("dino-overrides-nan", sparo_dino("train", *dino, "--output", str(out / "d"), "--model-overrides",
            '{"global_crop_size": Infinity}'), 2, "Infinity is not allowed", [out / "d"]),
        Row("dino-absurd-size", sparo_dino("train", *dino, "--output", str(out / "d"), "--model-overrides",
            '{"sparo_cfg": {"num_slots": 1000000000}}'), 2, "training it needs at least", [out / "d"]),
        Row("dino-output-other-config", sparo_dino("train", *dino, "--output", str(dino_other)), 2,
            "holds a run of another model config", unchanged=[dino_other / "config.json"]),
        Row("dino-resume-other-model", sparo_dino("train", *dino, "--output", str(out / "d"), "--resume",
            str(dino_other / "checkpoints" / "step_00000001.pt")), 2, "trained with another model config",
            [out / "d"]),
        Row("dino-resume-clip-file", sparo_dino("train", *dino, "--output", str(out / "d"), "--resume", str(ckpt)),
            2, "is not a DINO training checkpoint", [out / "d"]),
        Row("dino-resume-unreadable", module("sparo_clip.dino.train", *dino, "--output", str(out / "d"),
            "--resume", str(afile)), 2, "is not a readable PyTorch checkpoint", [out / "d"]),
        Row("dino-resume-none-over-run", sparo_dino("train", *dino, "--output", str(dino_sparo), "--resume",
            "none"), 2, "--resume none would overwrite them",
            unchanged=[dino_sparo / "config.json", dino_sparo / "checkpoints" / "step_00000001.pt"]),
        Row("dino-resume-older-step", sparo_dino("train", *dino, "--output", str(dino_sparo), "--resume",
            str(_older(dino_sparo, t))), 2, "resuming would overwrite the newer checkpoints",
            unchanged=[dino_sparo / "config.json", dino_sparo / "checkpoints" / "step_00000001.pt"]),
        Row("dino-output-under-file", sparo_dino("train", *dino, "--output", str(afile / "run")), 2,
            "cannot be created"),
        Row("dino-shards-no-images", sparo_dino("train", *dino, "--output", str(out / "d"), "--train-data",
            str(no_images), "--train-num-samples", "8"), 2, "members found: .json, .txt", [out / "d"]),
        # quickstarts
        Row("quickstart-seeds-zero", module("sparo_clip.quickstart", "--seeds", "0", "--out", str(out / "q")), 2,
            "--seeds 0 is not valid", [out / "q"]),
        Row("quickstart-epochs-zero", module("sparo_clip.quickstart", "--epochs", "0", "--out", str(out / "q")),
            2, "--epochs 0 is not valid", [out / "q"]),
        Row("quickstart-out-under-file", module("sparo_clip.quickstart", "--out", str(afile / "q")), 2,
            "cannot be created"),
        Row("dino-quickstart-out-under-file", module("sparo_clip.dino.quickstart", "--out", str(afile / "q")), 2,
            "cannot be created"),
        Row("dino-quickstart-seeds", sparo_dino("quickstart", "--seeds", "0", "--out", str(out / "q")), 2,
            "--seeds 0 is not valid: expected a positive integer", [out / "q"]),
    ]  # fmt: skip
    assert len({row.name for row in r}) == len(r)
    return {row.name: row for row in r}


def _older(run: Path, t: Path) -> Path:
    """A copy of a DINO run's checkpoint that records step 0 (an older state of the same run)."""
    ckpt = torch.load(run / "checkpoints" / "step_00000001.pt", weights_only=True)
    path = t / "step-0.pt"
    torch.save({**ckpt, "step": 0}, path)
    return path


def _names(t: Path) -> Path:
    path = t / "classnames.txt"
    path.write_text("apple\nbanana\n")
    return path


def _captions(t: Path) -> Path:
    path = t / "captions.txt"
    path.write_text("a\nb\nc\n")
    return path


@pytest.fixture(scope="module")
def results(rows, tmp_path_factory) -> dict[str, tuple[Row, dict, dict[Path, bytes]]]:
    """Every row's exit code and output: grouped rows in worker processes, ``alone`` rows in their own."""
    before = {p: p.read_bytes() for row in rows.values() for p in row.unchanged}
    work = tmp_path_factory.mktemp("driver")
    groups: dict[str, list[Row]] = {}
    for row in rows.values():
        groups.setdefault("alone:" + row.name if row.alone else row.group, []).append(row)

    def run(key: str) -> list[dict]:
        members = groups[key]
        if key.startswith("alone:"):
            try:
                r = subprocess.run(members[0].command(), capture_output=True, text=True, env=ENV,
                                   timeout=ROW_TIMEOUT)  # fmt: skip
            except subprocess.TimeoutExpired:
                return [{"name": members[0].name, "hung": True}]
            return [{"name": members[0].name, "code": r.returncode, "stdout": r.stdout, "stderr": r.stderr}]
        spec, out = work / f"{key}.json", work / f"{key}.jsonl"
        spec.write_text(json.dumps([{"name": m.name, "kind": m.entry[0], "target": m.entry[1],
                                     "args": m.entry[2]} for m in members]))  # fmt: skip
        try:
            subprocess.run([sys.executable, "-m", "tests.bad_input_driver", str(spec), str(out)], cwd=ROOT,
                           capture_output=True, text=True, env=ENV, timeout=ROW_TIMEOUT * len(members))  # fmt: skip
        except subprocess.TimeoutExpired:
            pass
        done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        names = {d["name"] for d in done}
        return done + [{"name": m.name, "hung": True} for m in members if m.name not in names]

    with ThreadPoolExecutor(PARALLEL) as pool:
        found = {
            d["name"]: d for ds in pool.map(run, sorted(groups, key=lambda k: -len(groups[k]))) for d in ds
        }
    return {name: (rows[name], found[name], before) for name in rows}


NAMES = [
    "train-lr-nan", "train-wd-inf", "train-override-nan", "train-absurd-size", "train-other-model-resume",
    "train-resume-nan", "train-init-from-nan", "train-resume-folder", "train-csv-missing-image", "train-shards-without-images",
    "train-batch-zero",
    "zeroshot-nan-weights", "zeroshot-no-data", "retrieval-missing-csv", "sugarcrepe-nan-weights",
    "compositional-missing", "knn-nan-weights", "knn-temperature-nan", "knn-zero-byte-strict", "linear-wd-nan",
    "linear-zero-byte-strict", "knn-dino-other-file", "select-val-fraction-nan", "select-nan-weights",
    "viz-nan-weights", "viz-sharpen-inf", "clip-benchmark-nan-weights", "clip-benchmark-missing-file",
    "make-data-out-under-file", "make-data-holdout-nan", "parity-unknown-base", "convert-folder",
    "list-bad-flag", "unknown-command", "dino-train-heads", "dino-parity-unknown", "dino-lr-nan",
    "dino-teacher-temp-inf", "dino-overrides-nan", "dino-absurd-size", "dino-output-other-config",
    "dino-resume-other-model", "dino-resume-clip-file", "dino-resume-unreadable", "dino-resume-none-over-run", "dino-resume-older-step",
    "dino-output-under-file", "dino-shards-no-images", "quickstart-seeds-zero", "quickstart-epochs-zero",
    "quickstart-out-under-file", "dino-quickstart-out-under-file", "dino-quickstart-seeds",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_clear_line(results, name):
    row, got, before = results[name]
    assert not got.get("hung"), (
        f"{name}: no exit within {ROW_TIMEOUT} s (or an earlier row of its group hung)"
    )
    err = got["stderr"]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, f"{name}:\n{err[-3000:]}"
    assert got["code"] == row.code, f"{name}: exit code {got['code']}\n{err[-3000:]}"
    assert lines and row.phrase in lines[-1], f"{name}: {row.phrase!r} not in the last line:\n{err[-3000:]}"
    assert "error" in lines[-1], lines[-1]
    for path in row.absent:
        assert not path.exists(), f"{name}: left {path} behind"
    for path in row.unchanged:
        assert path.read_bytes() == before[path], f"{name}: changed {path}"


def _entry(row: Row) -> tuple[str, str]:
    """(program, sub-command or module) of a row."""
    kind, target, args = row.entry
    return ("python -m", target) if kind == "module" else (target, args[0])


def test_every_row_has_a_test_and_every_entry_point_a_row(rows):
    from sparo_clip.commands.cli import COMMANDS
    from sparo_clip.dino.cli import COMMANDS as DINO_COMMANDS

    assert sorted(NAMES) == sorted(rows)
    entries = {_entry(row) for row in rows.values()}
    assert {("sparo-clip", c) for c in COMMANDS} <= entries
    assert {("sparo-dino", c) for c in DINO_COMMANDS if c != "parity"} <= entries  # parity: sparo-clip dino
    modules = {
        "sparo_clip.train",
        "sparo_clip.quickstart",
        "sparo_clip.dino.train",
        "sparo_clip.dino.quickstart",
    }
    assert {("python -m", m) for m in modules} <= entries
    alone = {_entry(row)[0] for row in rows.values() if row.alone}
    assert {"sparo-clip", "sparo-dino", "python -m"} <= alone  # the real scripts, in their own process


def test_no_row_left_a_folder_behind(rows, results):
    """Beyond each row's own checks: the shared logs and output folders hold nothing new (no ``logs/<date>``)."""
    logs = rows["train-lr-nan"].absent[0].parent
    assert sorted(p.name for p in logs.iterdir()) == ["sparo-run"]
    out = rows["dino-lr-nan"].absent[0].parent
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
