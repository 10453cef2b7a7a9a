"""sparo-clip clip-benchmark (sparo_clip.commands.clip_benchmark_bridge): CLIP_benchmark's CLI with the SPARO configs registered."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparo_clip.commands import clip_benchmark_bridge as benchmark

from .eval_helpers import MODEL, Reference, png_bytes, save_checkpoint, write_lines, write_tar

needs_clip_benchmark = pytest.mark.skipif(
    importlib.util.find_spec("clip_benchmark") is None,
    reason="clip_benchmark is not installed (pip install 'sparo-clip[bench]')",
)
NAMES = ["apple", "banana", "cherry", "plum", "kiwi", "lime"]
TEMPLATES = ["a photo of a {c}.", "{c}"]


@needs_clip_benchmark
def test_accuracy_helper_check_follows_numpy_version():
    broken = tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4)
    assert benchmark.accuracy_helper_works() is not broken  # the documented numpy 2.4 failure


def _toy_dataset(tmp_path):
    """CLIP_benchmark's local webdataset layout: classnames, templates, test/nshards.txt, test/0.tar."""
    root = tmp_path / "toy"
    (root / "test").mkdir(parents=True)
    write_lines(root / "classnames.txt", NAMES)
    write_lines(root / "zeroshot_classification_templates.txt", TEMPLATES)
    (root / "test" / "nshards.txt").write_text("1\n")
    samples = [
        (f"s{i:03d}", {"png": png_bytes(300 + i), "cls": str(i % len(NAMES)).encode()}) for i in range(18)
    ]
    write_tar(root / "test" / "0.tar", samples)
    return root


@needs_clip_benchmark
def test_sparo_clip_benchmark_console_command(tmp_path, capsys):
    """``sparo-clip clip-benchmark eval ...`` runs CLIP_benchmark on a SPARO checkpoint (same result as the module,
    and as the old name ``benchmark``, kept as an alias for one release)."""
    from sparo_clip.commands import cli

    root, ckpt = _toy_dataset(tmp_path), save_checkpoint(tmp_path / "sparo.pt")
    argv = ["eval", "--model", MODEL, "--pretrained", str(ckpt), "--dataset", "wds/toy", "--dataset_root",
            str(root), "--num_workers", "0", "--batch_size", "8", "--no_amp"]  # fmt: skip
    assert cli.main(["clip-benchmark", *argv, "--output", str(tmp_path / "a.json")]) == 0
    assert benchmark.main([*argv, "--output", str(tmp_path / "b.json")]) == 0
    assert cli.main(["benchmark", *argv, "--output", str(tmp_path / "c.json")]) == 0
    assert "'benchmark' is now 'clip-benchmark'" in capsys.readouterr().err
    a, b, c = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "abc")
    assert a["model"] == MODEL and a["metrics"] == b["metrics"] == c["metrics"]


@needs_clip_benchmark
def test_benchmark_command_refuses_bad_checkpoints_in_one_line(tmp_path, capsys):
    from sparo_clip.commands import cli

    root = _toy_dataset(tmp_path)
    (tmp_path / "zero.pt").write_bytes(b"")
    argv = [
        "eval",
        "--model",
        MODEL,
        "--dataset",
        "wds/toy",
        "--dataset_root",
        str(root),
        "--num_workers",
        "0",
    ]
    assert cli.main(["clip-benchmark", *argv, "--pretrained", str(tmp_path / "zero.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"sparo-clip clip-benchmark: error: checkpoint {tmp_path / 'zero.pt'} is empty (0 bytes): an interrupted write?"
    ]
    assert benchmark.pretrained_files(["--pretrained", "a.pt", "b.pt", "--x", "1", "--pretrained=c.pt"]) == [
        "a.pt",
        "b.pt",
        "c.pt",
    ]


@pytest.mark.slow  # an end-to-end run in its own process(es)
@needs_clip_benchmark
def test_benchmark_command_registers_models_without_site_hooks(tmp_path):
    """CLIP_benchmark alone (a fresh process) does not know the SPARO models: no .pth or import-time trick
    makes them appear site-wide; the sub-command registers them in its own process only."""
    code = (
        "import clip_benchmark.cli, open_clip, sys\n"
        "print('test-SPARO' in open_clip.list_models())\n"
        "from sparo_clip.commands import cli\n"
        "sys.exit(cli.main(['clip-benchmark', '--help']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("False") and "usage: sparo-clip clip-benchmark" in run.stdout
    site = [Path(p) for p in sys.path if p.endswith("site-packages")]
    pth_imports = [
        ln for d in site for f in d.glob("*.pth") for ln in f.read_text(errors="replace").splitlines()
    ]
    assert not [ln for ln in pth_imports if ln.startswith("import") and "sparo" in ln]


@needs_clip_benchmark
def test_clip_benchmark_cli_evaluates_a_sparo_checkpoint(tmp_path):
    """CLIP_benchmark's local webdataset layout: classnames, templates, test/nshards.txt, test/0.tar."""
    root = tmp_path / "toy"
    (root / "test").mkdir(parents=True)
    write_lines(root / "classnames.txt", NAMES)
    write_lines(root / "zeroshot_classification_templates.txt", TEMPLATES)
    (root / "test" / "nshards.txt").write_text("1\n")
    labels = [i % len(NAMES) for i in range(18)]
    samples = [
        (f"s{i:03d}", {"png": png_bytes(300 + i), "cls": str(y).encode()}) for i, y in enumerate(labels)
    ]
    write_tar(root / "test" / "0.tar", samples)
    ckpt = save_checkpoint(tmp_path / "sparo.pt")
    out = tmp_path / "result.json"
    argv = [
        "eval",
        "--model",
        MODEL,
        "--pretrained",
        str(ckpt),
        "--dataset",
        "wds/toy",
        "--dataset_root",
        str(root),
    ]
    rc = benchmark.main([*argv, "--output", str(out), "--num_workers", "0", "--batch_size", "8", "--no_amp"])
    assert rc == 0
    result = json.loads(out.read_text())
    ref = Reference(ckpt)
    for i in range(18):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(300 + i))
    logits = ref.images([tmp_path / f"{i}.png" for i in range(18)]) @ ref.classifier(NAMES, TEMPLATES).T
    pred, y = logits.argmax(1), np.array(labels)
    assert result["model"] == MODEL and result["task"] == "zeroshot_classification"
    assert result["metrics"]["acc1"] == pytest.approx(np.mean(pred == y))
    assert result["metrics"]["acc5"] == pytest.approx(
        np.mean((np.argsort(-logits, 1)[:, :5] == y[:, None]).any(1))
    )
    recall = np.mean([np.mean(pred[y == c] == c) for c in range(len(NAMES))])
    assert result["metrics"]["mean_per_class_recall"] == pytest.approx(recall)


def test_missing_clip_benchmark_is_reported(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_clip_benchmark(name, *args, **kwargs):
        if name.startswith("clip_benchmark"):
            raise ImportError("No module named 'clip_benchmark'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_clip_benchmark)
    assert benchmark.main(["eval"]) == 2
    assert "pip install 'sparo-clip[bench]'" in capsys.readouterr().err
