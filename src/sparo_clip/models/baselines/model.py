"""BaselineCLIP: OpenCLIP towers with the read-outs SPARO is compared against.

One class serves three config keys, which combine (codebook and text pooling both replace the text pooling,
so they exclude each other):

- ``bottleneck_cfg``: the towers project to ``bottleneck_dim``, then ``Linear(bottleneck_dim, embed_dim)``.
- ``codebook_cfg``: FDT codebook read-out in both towers over one shared codebook
  (vision: patch tokens without CLS and without ``ln_post``; text: the positions up to end-of-text,
  without ``ln_final``).
- ``text_pool_cfg``: the text tower pools with attention over the positions up to end-of-text, then
  ``ln_final`` and its projection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from open_clip.transformer import TextTransformer
from torch import nn

from sparo_clip.models.base import ReadoutCLIP, as_cfg_dict
from sparo_clip.models.baselines.config import BottleneckCfg, CodebookCfg, TextPoolCfg
from sparo_clip.models.baselines.layers import CodebookPool, MaskedAttentionalPooler
from sparo_clip.models.config import parse_cfg
from sparo_clip.models.towers import text_hidden_states, vit_hidden_states

BASELINE_KEYS = ("bottleneck_cfg", "codebook_cfg", "text_pool_cfg")


def _check_token_towers(vision_cfg: dict[str, Any], text_cfg: dict[str, Any], need_vision: bool) -> None:
    """Codebook and text pooling read token sequences of OpenCLIP's ViT / TextTransformer."""
    v = parse_cfg(CLIPVisionCfg, vision_cfg, "vision_cfg")
    t = parse_cfg(CLIPTextCfg, text_cfg, "text_cfg")
    if need_vision and (v.timm_model_name or isinstance(v.layers, (list, tuple)) or v.attentional_pool):
        raise NotImplementedError(
            "codebook_cfg reads the patch tokens of an OpenCLIP VisionTransformer without attentional_pool; "
            "timm and ModifiedResNet towers are not supported"
        )
    if t.hf_model_name or t.embed_cls:
        raise NotImplementedError(
            "codebook_cfg / text_pool_cfg read OpenCLIP's TextTransformer; Hugging Face and CoCa-style "
            "(embed_cls) text towers are not supported"
        )
    if t.pool_type not in ("argmax", "eos"):
        raise ValueError(
            f"text_cfg.pool_type={t.pool_type!r}: codebook_cfg / text_pool_cfg find end-of-text with "
            "'argmax' (OpenAI tokenizer) or 'eos' (text_cfg.eos_id); allowed: ['argmax', 'eos']"
        )


def _project(tower: TextTransformer, pooled: torch.Tensor) -> torch.Tensor:
    proj = tower.text_projection
    if proj is None:
        return pooled
    return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


class BaselineCLIP(ReadoutCLIP):
    """CLIP with a bottleneck, an FDT codebook read-out and/or attentional text pooling (see module doc).

    The towers are built by OpenCLIP's own builders (via ``CustomTextCLIP``); ``forward`` keeps OpenCLIP's
    contract, so its losses, training loop, zero-shot evaluation and checkpoints work unchanged.
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: dict[str, Any] | CLIPVisionCfg,
        text_cfg: dict[str, Any] | CLIPTextCfg,
        bottleneck_cfg: dict[str, Any] | BottleneckCfg | None = None,
        codebook_cfg: dict[str, Any] | CodebookCfg | None = None,
        text_pool_cfg: dict[str, Any] | TextPoolCfg | None = None,
        **clip_options: Any,
    ) -> None:
        """``**clip_options`` are OpenCLIP's model options (``quick_gelu``, ``init_logit_scale``, ...), passed on."""
        bottleneck = parse_cfg(BottleneckCfg, bottleneck_cfg, "bottleneck_cfg")
        codebook = parse_cfg(CodebookCfg, codebook_cfg, "codebook_cfg")
        text_pool = parse_cfg(TextPoolCfg, text_pool_cfg, "text_pool_cfg")
        if codebook is not None and text_pool is not None:
            raise ValueError(
                "codebook_cfg and text_pool_cfg both replace the text pooling: set only one of them"
            )
        vision_dict, text_dict = as_cfg_dict(vision_cfg), as_cfg_dict(text_cfg)
        if codebook is not None or text_pool is not None:
            _check_token_towers(vision_dict, text_dict, need_vision=codebook is not None)
        head_dim = bottleneck.bottleneck_dim if bottleneck is not None else embed_dim
        super().__init__(
            embed_dim=embed_dim,
            tower_dim=head_dim,
            vision_cfg=vision_dict,
            text_cfg=text_dict,
            **clip_options,
        )
        self.bottleneck_cfg, self.codebook_cfg, self.text_pool_cfg = bottleneck, codebook, text_pool

        self.codebook = self.image_codebook = self.text_codebook = None
        if codebook is not None:
            self.codebook = nn.Parameter(torch.randn(codebook.num_codes, head_dim))  # (K, C)
            self.image_codebook = CodebookPool(self.visual.transformer.width, head_dim, codebook.temperature)
            self.text_codebook = CodebookPool(self.text.width, head_dim, codebook.temperature)
            self.visual.ln_post, self.visual.proj = nn.Identity(), None  # tokens are read before ln_post
            self.text.ln_final, self.text.text_projection = nn.Identity(), None
        self.text_pool = None
        if text_pool is not None:
            heads = text_pool.heads if text_pool.heads is not None else self.text.heads
            if self.text.width % heads:
                raise ValueError(
                    f"text_pool_cfg.heads={heads} must divide the text width {self.text.width}: allowed "
                    f"{[h for h in range(1, self.text.width + 1) if self.text.width % h == 0]}"
                )
            self.text_pool = MaskedAttentionalPooler(self.text.width, self.text.width, heads, n_queries=1)
        self.image_bottleneck = self.text_bottleneck = None
        if bottleneck is not None:
            self.image_bottleneck = nn.Linear(head_dim, embed_dim, bias=bottleneck.bias)
            self.text_bottleneck = nn.Linear(head_dim, embed_dim, bias=bottleneck.bias)

    # ----------------------------------------------------------------------------------- encoders
    def _finish(self, features: torch.Tensor, bottleneck: nn.Module | None, normalize: bool) -> torch.Tensor:
        if bottleneck is not None:
            features = bottleneck(features)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features (B, embed_dim)."""
        if self.image_codebook is None:
            return self._finish(self.visual(image), self.image_bottleneck, normalize)
        x = vit_hidden_states(self.visual, image)  # (B, 1 + patches, width), no ln_post
        features = self.image_codebook(x[:, 1:], self.codebook)  # patch tokens only
        return self._finish(features, self.image_bottleneck, normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features (B, embed_dim)."""
        if self.text_codebook is None and self.text_pool is None:
            return self._finish(self.text(text), self.text_bottleneck, normalize)
        key_mask = self.text_key_mask(text)
        x = text_hidden_states(self.text, text, key_mask)  # (B, n, width), no ln_final
        key_mask = key_mask[:, : x.shape[1]]
        if self.text_codebook is not None:
            features = self.text_codebook(x, self.codebook, key_mask=key_mask)
        else:
            pooled = self.text_pool(x, key_mask=key_mask)[:, 0]  # (B, width)
            features = _project(self.text, self.text.ln_final(pooled))
        return self._finish(features, self.text_bottleneck, normalize)

    # ----------------------------------------------------------------------------------- locking
    def image_head_parameters(self) -> list[nn.Parameter]:
        """The image codebook query map and bottleneck (the shared codebook stays trainable)."""
        heads = (self.image_codebook, self.image_bottleneck)
        return [p for head in heads if head is not None for p in head.parameters()]

    def text_head_parameters(self) -> list[nn.Parameter]:
        """The text pooler, codebook query map and bottleneck (the shared codebook stays trainable)."""
        heads = (self.text_pool, self.text_codebook, self.text_bottleneck)
        return [p for head in heads if head is not None for p in head.parameters()]
