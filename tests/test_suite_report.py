"""The default test command reports where the time goes: per test file, and the slowest tests."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # an end-to-end run in its own process(es)
def test_default_command_prints_time_per_file_and_slowest_tests():
    target = "tests/test_eval_inputs.py::test_encoders_accept_good_slot_selections"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:]
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "time per test file" in line)
    assert lines[header + 1].split()[1:] == ["tests/test_eval_inputs.py"]
    assert lines[header + 1].split()[0].endswith("s") and lines[header + 2].split()[1] == "total"
    assert any("slowest 15 durations" in line for line in lines)
