import logging

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
