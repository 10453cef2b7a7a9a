"""The ``sparo-clip`` command: each sub-command does its job (one cheap real call each) and fails in one line."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparo_clip.commands import cli

from .eval_helpers import MODEL, class_folder, save_checkpoint


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_prints_its_own_usage(name, capsys):
    if name == "clip-benchmark" and importlib.util.find_spec("clip_benchmark") is None:
        pytest.skip("clip_benchmark is not installed")
    try:
        rc = cli.main([name, "--help"])
    except SystemExit as done:  # argparse's --help exits
        rc = done.code
    assert rc == 0
    out = capsys.readouterr().out
    assert out.lower().startswith("usage:") and (name in out or name == "train"), out[:200]


def test_list_prints_parameter_counts(capsys):
    assert cli.main(["list", "--names", "test-*SPARO"]) == 0
    out = capsys.readouterr().out
    assert "test-SPARO" in out and "test-noncausal-SPARO" in out and "ViT-B-32-SPARO" not in out


def test_parity_prints_a_config_within_the_budget(capsys):
    assert cli.main(["parity", "test-CLIP", "--L", "4", "--V", "16"]) == 0
    captured = capsys.readouterr()
    config = json.loads(captured.out)
    assert config["embed_dim"] == 64 and config["sparo_cfg"]["num_slots"] == 4
    assert "test-CLIP:" in captured.err


def test_make_data_writes_a_small_world(tmp_path, capsys):
    assert cli.main(["make-data", "--small", "--out", str(tmp_path / "w")]) == 0
    manifest = json.loads((tmp_path / "w" / "dataset.json").read_text())
    assert manifest["held_out"] and Path(manifest["train"]["csv"]).is_file()


def test_eval_scores_a_checkpoint_and_refuses_a_missing_folder(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt")
    data = class_folder(tmp_path / "data", {"red circle": 2, "blue square": 2})
    names = tmp_path / "classnames.txt"
    names.write_text("blue square\nred circle\n")
    argv = ["--model", MODEL, "--pretrained", str(ckpt), "--workers", "0"]
    assert cli.main(["eval", "zeroshot", *argv, "--data", str(data), "--classnames", str(names)]) == 0
    (metrics,) = json.loads(capsys.readouterr().out)["metrics"].values()
    assert 0 <= metrics["top1"] <= 1
    assert (
        cli.main(["eval", "zeroshot", *argv, "--data", str(tmp_path / "none"), "--classnames", str(names)])
        == 2
    )
    assert "no such directory" in capsys.readouterr().err


def test_select_slots_and_viz_refuse_missing_inputs_in_one_line(tmp_path, capsys):
    argv = ["--model", MODEL, "--workers", "0"]
    assert cli.main(["select-slots", "sugarcrepe", *argv, "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such directory" in err[0]
    assert cli.main(["viz", *argv[:2], "--images", str(tmp_path / "x.png"), "--captions", "c.txt",
                     "--out", str(tmp_path / "v")]) == 2  # fmt: skip
    assert "sparo-clip viz: error:" in capsys.readouterr().err


def test_train_refuses_an_unknown_model_before_any_work(tmp_path, capsys):
    assert cli.main(["train", "--model", "no-such-model", "--logs-dir", str(tmp_path)]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_convert_and_dino_parity(tmp_path, capsys):
    assert cli.main(["convert", str(tmp_path / "none.pt"), str(tmp_path / "out.pt"), "--model", MODEL]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["dino", "parity", "tiny_sparo_dino"]) == 0
    assert json.loads(capsys.readouterr().out)["at_parity"] is True


def test_old_benchmark_name_is_an_alias_with_a_notice(capsys):
    if importlib.util.find_spec("clip_benchmark") is None:
        pytest.skip("clip_benchmark is not installed")
    assert cli.main(["benchmark", "--help"]) == 0
    captured = capsys.readouterr()
    assert "'benchmark' is now 'clip-benchmark'" in captured.err and "usage:" in captured.out


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_console_script_dispatches():
    exe = Path(sys.executable).with_name("sparo-clip")  # installed by the package
    r = subprocess.run([exe, "make-data", "--colors", "red"], capture_output=True, text=True)
    assert r.returncode == 2 and "colors=['red'] is not valid" in r.stderr
