"""The SPARO read-out layer (pure torch, no open_clip import).

SPARO: "Selective Attention for Robust and Compositional Transformer Encodings for Vision"
(Vani et al., ECCV 2024, arXiv 2404.15721). Each of L slots is one attention head with a learned
query over the tokens of a transformer tower; a single output map shared by all slots turns each
head's output into a V-wide slot. Slots are then normalised (``slot_norm``) so that the flattened
(L * V) vector has unit norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparo_clip.models.config import SparoCfg, parse_slot_norm


def normalize_slots(raw: torch.Tensor, slot_norm: str = "cont:const") -> torch.Tensor:
    """Turn raw slot outputs into unit-norm-overall slots, in fp32 (float64 stays float64).

    Args:
        raw: (B, L, V) raw slot outputs, or (B, L, V + 1) for the softmax weights, whose first unit
            per slot is the weight logit.
        slot_norm: ``"<rep>:<weight>"``.
            rep: ``cont`` L2-normalises each slot; ``sem`` L2-normalises its softmax; ``sqrtsem`` takes
            the square root of its softmax (already unit norm).
            weight: ``const`` 1/sqrt(L); ``norm`` the norm of the slot's un-normalised representation
            (cont: the raw slot; sem: exp(x); sqrtsem: exp(x/2)) over the norm of all of them together;
            ``softmax`` a softmax over slot logits, rescaled to unit norm; ``sqrtsoftmax`` its square root.

    Returns:
        (B, L, V) slots in fp32 or wider; the flattened (B, L * V) vector has unit L2 norm.
    """
    rep, weight = parse_slot_norm(slot_norm)
    raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
    if weight in ("softmax", "sqrtsoftmax"):
        logits, x = raw[..., 0], raw[..., 1:]  # (B, L), (B, L, V)
    else:
        logits, x = None, raw
    num_slots = x.shape[-2]

    if rep == "cont":
        r = F.normalize(x, dim=-1)
    elif rep == "sem":
        r = F.normalize(x.softmax(dim=-1), dim=-1)
    else:  # sqrtsem
        r = x.softmax(dim=-1).sqrt()

    if weight == "const":
        w = x.new_full(x.shape[:-1], num_slots**-0.5)  # (B, L)
    elif weight == "norm":
        # log of each slot's un-normalised norm, computed stably from the raw outputs
        if rep == "cont":
            log_norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12).log()
        elif rep == "sem":  # ||exp(x)|| = exp(lse(2x) / 2)
            log_norm = 0.5 * torch.logsumexp(2 * x, dim=-1)
        else:  # sqrtsem: ||exp(x / 2)|| = exp(lse(x) / 2)
            log_norm = 0.5 * torch.logsumexp(x, dim=-1)
        # w_l = n_l / sqrt(sum_k n_k^2) = exp(log n_l - lse(2 log n) / 2)
        w = torch.exp(log_norm - 0.5 * torch.logsumexp(2 * log_norm, dim=-1, keepdim=True))
    elif weight == "softmax":
        w = F.normalize(logits.softmax(dim=-1), dim=-1)
    else:  # sqrtsoftmax
        w = logits.softmax(dim=-1).sqrt()
    return r * w.unsqueeze(-1)


class SparoReadout(nn.Module):
    """Separate-head attention read-out: L slots, one learned query and one attention head each.

    For slot l in head h (``L / heads`` slots share a key/value projection)::

        k = X Wk_h + bk_h;  v = k (share_kv) or X Wv_h + bv_h
        a_l = softmax(q_l k^T / sqrt(d))  over unmasked tokens
        s_l = Wo (a_l v) + bo             (Wo shared by all slots)

    The fused path uses ``scaled_dot_product_attention``; the explicit path (``return_attn=True``)
    computes the same in fp32 and also returns the attention weights. The fused path folds the key
    projection into the queries when that costs fewer multiply-adds (with one head per slot: N >= 2):
    ``q_l . (Wk_h x + bk_h) = (Wk_h^T q_l) . x + const``, and with weights summing to one the values
    need projecting only once per slot, after pooling. ``pool_first`` (None: by cost) forces either form.
    """

    pool_first: bool | None = None

    def __init__(
        self,
        in_dim: int,
        num_slots: int,
        slot_dim: int,
        attn_dim: int,
        value_dim: int | None = None,
        heads: int | None = None,
        share_kv: bool = True,
        slot_norm: str = "cont:const",
    ) -> None:
        super().__init__()
        heads = num_slots if heads is None else heads
        value_dim = attn_dim if value_dim is None else value_dim
        if num_slots % heads:
            raise ValueError(f"heads={heads} must divide num_slots={num_slots}")
        if share_kv and value_dim != attn_dim:
            raise ValueError(f"share_kv needs value_dim == attn_dim, got {value_dim} != {attn_dim}")
        self.num_slots, self.slot_dim, self.heads = num_slots, slot_dim, heads
        self.attn_dim, self.value_dim, self.share_kv = attn_dim, value_dim, share_kv
        self.slot_norm = slot_norm
        _, weight = parse_slot_norm(slot_norm)
        self.has_logit = weight in ("softmax", "sqrtsoftmax")

        self.key = nn.Linear(in_dim, heads * attn_dim)
        self.value = None if share_kv else nn.Linear(in_dim, heads * value_dim)
        self.query = nn.Parameter(torch.empty(heads, num_slots // heads, attn_dim))  # (H, L/H, d)
        self.out = nn.Linear(value_dim, slot_dim + int(self.has_logit))
        self.init_weights()

    @classmethod
    def from_cfg(cls, cfg: SparoCfg, in_dim: int, tower_heads: int, tower: str = "vision") -> SparoReadout:
        """The read-out ``cfg`` describes over the tokens of a tower of width ``in_dim`` with ``tower_heads``
        attention heads (``attn_dim`` / ``value_dim`` default to ``in_dim / tower_heads``; ``tower`` names it in
        errors)."""
        attn_dim, value_dim = cfg.resolve_dims(in_dim, tower_heads, tower)
        return cls(
            in_dim,
            cfg.num_slots,
            cfg.slot_dim,
            attn_dim,
            value_dim,
            cfg.num_heads,
            cfg.share_kv,
            cfg.slot_norm,
        )

    def init_weights(self) -> None:
        nn.init.normal_(self.query)
        for lin in (self.key, self.value):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
        self.out.reset_parameters()
        nn.init.zeros_(self.out.bias)

    def _pools_first(self, num_tokens: int, in_dim: int) -> bool:
        """Whether attending over the tokens themselves costs fewer multiply-adds than projecting them."""
        if self.pool_first is not None:
            return self.pool_first
        L, n = self.num_slots, num_tokens
        kv_width = self.heads * (self.attn_dim + (0 if self.value is None else self.value_dim))
        projected = n * in_dim * kv_width + L * n * (self.attn_dim + self.value_dim)
        pooled = 2 * L * n * in_dim + L * in_dim * self.value_dim
        return pooled < projected

    def _attend_pooled(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Fused attention without projected keys or values: (B, L, dv), slot order h-major.

        Slot l of head h scores token x with ``(Wk_h^T q_l) . x + q_l . bk_h``. The bias term shifts all
        of the slot's scores equally, which softmax ignores: with ``share_kv`` it is left out (the bias
        still acts through the values); a separate key bias is passed as the additive mask, so it keeps
        its (zero) gradient as in the equations. As the weights sum to one, the slot's output
        ``sum_n a_n (Wv_h x_n + bv_h)`` is ``Wv_h (sum_n a_n x_n) + bv_h``: one attention head of width D
        pools the tokens, then each slot projects its pooled token.
        """
        B, N, D = x.shape
        L, H, d = self.num_slots, self.heads, self.attn_dim
        wk = self.key.weight.view(H, d, D)
        u = torch.einsum("hjd,hdD->hjD", self.query.to(wk.dtype), wk)  # (H, L/H, D)
        u = u.reshape(1, 1, L, D).to(x.dtype).expand(B, -1, -1, -1)  # (B, 1, L, D)
        xs = x.unsqueeze(1)  # (B, 1, N, D): the tokens are the keys and the values
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
        if self.value is not None:
            shift = (self.query * self.key.bias.view(H, 1, d)).sum(-1) * d**-0.5  # (H, L/H)
            shift = shift.reshape(1, 1, L, 1).to(x.dtype)
            mask = shift if mask is None else shift.masked_fill(~mask, float("-inf"))  # (B, 1, L, N)
        pooled = F.scaled_dot_product_attention(u, xs, xs, attn_mask=mask, scale=d**-0.5)  # (B, 1, L, D)
        value = self.key if self.value is None else self.value
        wv = value.weight.view(H, self.value_dim, D)
        o = torch.einsum("bhjD,hvD->bhjv", pooled.view(B, H, L // H, D), wv)  # (B, H, L/H, dv)
        o = o + value.bias.view(H, 1, self.value_dim)
        return o.reshape(B, L, self.value_dim)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        k = self.key(x).view(B, N, self.heads, self.attn_dim).transpose(1, 2)  # (B, H, N, d)
        if self.value is None:
            return k, k
        v = self.value(x).view(B, N, self.heads, self.value_dim).transpose(1, 2)  # (B, H, N, dv)
        return k, v

    def forward_raw(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        return_attn: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw slot outputs (B, L, V[+1]) before slot normalisation, and optionally attention (B, L, N).

        Args:
            x: (B, N, D) tokens.
            key_mask: (B, N) bool, True where a token may be attended. Every row needs a True.
            return_attn: take the explicit path and return the attention weights.
        """
        B, N, D = x.shape
        if not return_attn and self._pools_first(N, D):
            return self.out(self._attend_pooled(x, key_mask)), None
        k, v = self._project(x)
        q = self.query.to(k.dtype)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, N)
        attn = None
        if return_attn:
            scores = torch.einsum("hld,bhnd->bhln", q.float(), k.float()) * self.attn_dim**-0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            attn = scores.softmax(dim=-1)  # (B, H, L/H, N), fp32
            o = attn.to(v.dtype) @ v  # (B, H, L/H, dv)
            attn = attn.reshape(B, self.num_slots, N)  # (B, L, N)
        else:
            o = F.scaled_dot_product_attention(q.expand(B, -1, -1, -1), k, v, attn_mask=mask)
        o = o.reshape(B, self.num_slots, self.value_dim)  # (B, L, dv), slot order h-major
        return self.out(o), attn

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        return_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalised slots (B, L, V), plus attention (B, L, N, fp32) when ``return_attn``.

        The slots have the dtype of the read-out's output projection (the tower's dtype, or autocast's), as
        the features of OpenCLIP's CLIP follow its projection's; the normalisation itself runs in fp32.
        """
        raw, attn = self.forward_raw(x, key_mask, return_attn)
        slots = normalize_slots(raw, self.slot_norm).to(raw.dtype)
        return (slots, attn) if return_attn else slots

    def extra_repr(self) -> str:
        return (
            f"num_slots={self.num_slots}, slot_dim={self.slot_dim}, heads={self.heads}, "
            f"attn_dim={self.attn_dim}, value_dim={self.value_dim}, share_kv={self.share_kv}, "
            f"slot_norm={self.slot_norm!r}"
        )


def select_slots(slots: torch.Tensor, selection: torch.Tensor | list[int] | tuple[int, ...]) -> torch.Tensor:
    """Zero every slot outside ``selection`` and renormalise the flattened result to unit norm.

    Args:
        slots: (B, L, V).
        selection: slot indices, or a (L,) boolean mask.

    Returns:
        (B, L, V) in the dtype of ``slots`` (computed in fp32) with unselected slots zero; ``flatten(1)`` has
        unit norm.
    """
    num_slots = slots.shape[1]
    sel = torch.as_tensor(selection, device=slots.device)
    if sel.dtype == torch.bool:
        if sel.shape != (num_slots,):
            raise ValueError(f"a boolean slot mask must have shape ({num_slots},), got {tuple(sel.shape)}")
        keep = sel
    else:
        if sel.numel() == 0:
            raise ValueError("slot selection is empty: select at least one slot")
        if sel.is_floating_point() or sel.is_complex():
            raise ValueError(f"slot indices must be integers (or a boolean mask), got {sel.tolist()}")
        sel = sel.long().flatten()
        if sel.unique().numel() != sel.numel():
            raise ValueError(f"slot indices must not repeat, got {sel.tolist()}")
        if int(sel.min()) < 0 or int(sel.max()) >= num_slots:
            raise ValueError(f"slot indices must lie in [0, {num_slots - 1}], got {sel.tolist()}")
        keep = torch.zeros(num_slots, dtype=torch.bool, device=slots.device)
        keep[sel] = True
    if not bool(keep.any()):
        raise ValueError("slot selection is empty: select at least one slot")
    kept = slots.to(torch.promote_types(slots.dtype, torch.float32)) * keep[None, :, None]  # fp32 or wider
    norm = kept.flatten(1).norm(dim=-1).clamp_min(1e-12)
    return (kept / norm[:, None, None]).to(slots.dtype)
