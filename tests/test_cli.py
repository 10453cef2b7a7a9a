import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from sparo_clip import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_clear_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_a_main(name):
    module = importlib.import_module(cli.COMMANDS[name][0])
    assert callable(module.main)


def test_console_script_dispatches():
    exe = Path(sys.executable).with_name("sparo-clip")  # installed by the package
    r = subprocess.run([exe, "make-data", "--colors", "red"], capture_output=True, text=True)
    assert r.returncode == 2 and "colors=['red'] is not valid" in r.stderr
