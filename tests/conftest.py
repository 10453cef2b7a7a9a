import logging
from collections import defaultdict

import open_clip
import pytest
import torch

import sparo_clip  # noqa: F401  (registers the configs)

logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tokenizer():
    return open_clip.get_tokenizer("test-SPARO")


@pytest.fixture
def test_model():
    return open_clip.create_model("test-SPARO")


@pytest.fixture
def batch(tokenizer):
    images = torch.randn(3, 3, 32, 32)
    text = tokenizer(["a red circle", "", "a small blue square to the left of a large green triangle"])
    return images, text


# ------------------------------------------------------------------ time per test file (end of every run)
_SECONDS_PER_FILE: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    """Add each phase's duration (setup, call, teardown) to its test file's total."""
    _SECONDS_PER_FILE[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    """Print the time spent in each test file, slowest first, with the total."""
    if not _SECONDS_PER_FILE:
        return
    terminalreporter.write_sep("=", "time per test file")
    for path, seconds in sorted(_SECONDS_PER_FILE.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f}s  {path}")
    terminalreporter.write_line(f"{sum(_SECONDS_PER_FILE.values()):8.1f}s  total")
