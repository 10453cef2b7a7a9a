"""SPARO for DINO: self-supervised ViT training with a SPARO read-out (see docs/dino.md).

    from sparo_clip.dino import load_config, DinoEncoder, load_encoder
    encoder = load_encoder("runs/dino/checkpoints/latest.pt")   # the teacher's encoder
    slots = encoder.slots(images)                                 # (B, L, V) unit norm overall

Training: ``python -m sparo_clip.dino.train`` (torchrun for several processes); main job:
``python -m sparo_clip.dino.quickstart``. lightly (``pip install sparo-clip[dino]``) is needed to train.
"""

from sparo_clip.dino import evaluation  # noqa: F401  (registers --model dino:CKPT for the probes)
from sparo_clip.dino.config import DinoCfg, HeadCfg, list_configs, load_config
from sparo_clip.dino.model import DinoEncoder, DinoNet, load_encoder, parity

__all__ = [
    "DinoCfg",
    "DinoEncoder",
    "DinoNet",
    "HeadCfg",
    "list_configs",
    "load_config",
    "load_encoder",
    "parity",
]
