"""Read-out layers of the baselines: FDT-style codebook pooling and a masked attentional pooler."""

from __future__ import annotations

import torch
from open_clip.transformer import AttentionalPooler
from torch import nn

from sparo_clip.models.baselines.sparsemax import sparsemax


class CodebookPool(nn.Module):
    """Pool a token sequence into a sparse mixture of learned codes (FDT; Chen et al., CVPR 2023).

    Tokens are mapped into code space by ``LayerNorm -> Linear -> GELU -> LayerNorm -> Linear``; each
    token-code score ``q_n . c_k / sqrt(code_dim)`` is divided by ``temperature``, max-pooled over the valid
    tokens, and sparsemax over the codes gives the weights ``w`` (B, K). The feature is ``w @ codes``.
    The codes are passed in, so one codebook can be shared by several poolers.

    Args:
        in_dim: token width.
        code_dim: code width.
        temperature: divisor of the scaled scores (larger: flatter, less sparse weights).
    """

    def __init__(self, in_dim: int, code_dim: int, temperature: float) -> None:
        super().__init__()
        self.query_map = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, code_dim),
            nn.GELU(),
            nn.LayerNorm(code_dim),
            nn.Linear(code_dim, code_dim),
        )
        self.code_dim = code_dim
        self.temperature = float(temperature)

    def code_weights(
        self, tokens: torch.Tensor, codes: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sparsemax weights over the codes, (B, K), in fp32 (or the tokens' dtype if wider).

        Args:
            tokens: (B, N, in_dim).
            codes: (K, code_dim).
            key_mask: (B, N) bool, True for tokens that take part; each row needs one True.
        """
        q = self.query_map(tokens)  # (B, N, C)
        scale = self.code_dim**-0.5 / self.temperature
        scores = q @ codes.to(q.dtype).T  # (B, N, K)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * scale  # at least fp32
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, :, None], float("-inf"))
        return sparsemax(scores.amax(dim=1), dim=-1)  # (B, K)

    def forward(
        self,
        tokens: torch.Tensor,
        codes: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The pooled feature (B, code_dim), and the code weights (B, K) with ``return_weights``."""
        weights = self.code_weights(tokens, codes, key_mask)
        features = weights.to(codes.dtype) @ codes  # (B, C)
        return (features, weights) if return_weights else features


class MaskedAttentionalPooler(AttentionalPooler):
    """OpenCLIP's ``AttentionalPooler`` (learned queries, cross-attention) with a key mask.

    Same parameters and layout as OpenCLIP's pooler; ``forward`` also takes a (B, N) bool ``key_mask``
    (True = attend), which OpenCLIP's version lacks.
    """

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, context_dim) tokens -> (B, n_queries, d_model)."""
        x = self.ln_k(x)
        q = self.ln_q(self.query).to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        padding = None if key_mask is None else ~key_mask
        return self.attn(q, x, x, key_padding_mask=padding, need_weights=False)[0]
