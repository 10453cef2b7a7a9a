"""Float64 reference of the SPARO read-out, written from the equations, slot by slot (numpy)."""

import numpy as np


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def readout_reference(readout, x, key_mask=None):
    """Slots (B, L, V) and attention (B, L, N) of a SparoReadout's parameters, in float64."""
    x = x.detach().double().numpy()
    B, N, _ = x.shape
    L, H, d, dv = readout.num_slots, readout.heads, readout.attn_dim, readout.value_dim
    per_head = L // H
    wk = readout.key.weight.detach().double().numpy()
    bk = readout.key.bias.detach().double().numpy()
    if readout.value is None:
        wv, bv = wk, bk
    else:
        wv = readout.value.weight.detach().double().numpy()
        bv = readout.value.bias.detach().double().numpy()
    q = readout.query.detach().double().numpy()  # (H, L/H, d)
    wo = readout.out.weight.detach().double().numpy()
    bo = readout.out.bias.detach().double().numpy()
    mask = np.ones((B, N), bool) if key_mask is None else key_mask.numpy()
    raw = np.zeros((B, L, wo.shape[0]))
    attn = np.zeros((B, L, N))
    for b in range(B):
        for slot in range(L):
            h, j = divmod(slot, per_head)
            k = x[b] @ wk[h * d : (h + 1) * d].T + bk[h * d : (h + 1) * d]  # (N, d)
            v = x[b] @ wv[h * dv : (h + 1) * dv].T + bv[h * dv : (h + 1) * dv]  # (N, dv)
            scores = k @ q[h, j] / np.sqrt(d)
            valid = mask[b]
            a = np.zeros(N)
            a[valid] = _softmax(scores[valid])
            attn[b, slot] = a
            raw[b, slot] = wo @ (a @ v) + bo
    return slot_norm_reference(raw, readout.slot_norm), attn


def slot_norm_reference(raw, slot_norm):
    rep, weight = slot_norm.split(":")
    B, L, _ = raw.shape
    if weight in ("softmax", "sqrtsoftmax"):
        logits, x = raw[..., 0], raw[..., 1:]
    else:
        logits, x = None, raw
    out = np.zeros_like(x)
    for b in range(B):
        unnorm = []  # the un-normalised representation of each slot
        for slot in range(L):
            s = x[b, slot]
            if rep == "cont":
                u = s
                r = s / np.linalg.norm(s)
            elif rep == "sem":
                u = np.exp(s)
                r = _softmax(s) / np.linalg.norm(_softmax(s))
            else:
                u = np.exp(s / 2)
                r = np.sqrt(_softmax(s))
            unnorm.append(np.linalg.norm(u))
            out[b, slot] = r
        unnorm = np.array(unnorm)
        if weight == "const":
            w = np.full(L, 1 / np.sqrt(L))
        elif weight == "norm":
            w = unnorm / np.sqrt((unnorm**2).sum())
        elif weight == "softmax":
            p = _softmax(logits[b])
            w = p / np.linalg.norm(p)
        else:
            w = np.sqrt(_softmax(logits[b]))
        out[b] *= w[:, None]
    return out
