"""Seeded weights and inputs for OpenCLIP's regression pattern on our models (tests/test_open_clip_regression.py).

Weights are drawn tensor by tensor from one generator, in state-dict order, so they do not depend on how the
towers initialise themselves; inputs are seeded captions (OpenCLIP's tokenizer) and images.
"""

from __future__ import annotations

import math

import open_clip
import torch

import sparo_clip

MODELS = {"test-SPARO": 32, "test-noncausal-SPARO": 160}  # name -> image size
WORDS = "a the red green blue yellow small large circle square triangle left right of above below two".split()


def seeded_model(name: str, seed: int = 0) -> torch.nn.Module:
    """``name`` with every tensor drawn from ``N(0, 0.02^2)`` (norm weights around 1), logit scale log(1/0.07)."""
    model = sparo_clip.create_model(name).eval()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key == "logit_scale":
            state[key] = torch.full_like(value, math.log(1 / 0.07))
        elif value.dtype.is_floating_point:
            noise = torch.randn(value.shape, generator=gen) * 0.02
            state[key] = (
                noise + 1 if key.endswith(("ln_final.weight", "ln_post.weight", "norm.weight")) else noise
            )
        else:
            state[key] = value
    model.load_state_dict(state)
    return model


def seeded_inputs(name: str, seed: int = 0, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, S, S), tokenised captions (B, context)) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    size = MODELS[name]
    images = torch.randn(batch, 3, size, size, generator=gen)
    lengths = torch.randint(1, 9, (batch,), generator=gen).tolist()
    captions = [
        " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=gen)) for n in lengths
    ]
    return images, open_clip.get_tokenizer(name)(captions)


def outputs(model: torch.nn.Module, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """What OpenCLIP's regression test compares: the normalised text and image features, the forward's outputs."""
    with torch.no_grad():
        image_features, text_features, logit_scale = model(images, text)[:3]
        return {
            "text": model.encode_text(text, normalize=True),
            "image": model.encode_image(images, normalize=True),
            "image_features": image_features,
            "text_features": text_features,
            "logit_scale": logit_scale,
        }
