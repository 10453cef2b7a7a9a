"""What the slot pictures show, as data: per-slot agreement, patch maps, decoded tokens with weights.

The pure functions here take tensors (slots, attention weights, token ids), so a notebook or a test can
feed them known patterns; :func:`compute_readout` runs a :class:`~sparo_clip.SparoCLIP` to produce them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

SOT_LABEL, EOT_LABEL = "<SOT>", "<EOT>"


# ----------------------------------------------------------------------------------- pure functions
def slot_agreement(image_slots: torch.Tensor, text_slots: torch.Tensor) -> torch.Tensor:
    """Per-slot cosine between the image and text slots of matching pairs.

    Args:
        image_slots: (B, L, V) slots from ``encode_image(..., return_sparo=True)``.
        text_slots: (B, L, V) slots from ``encode_text(..., return_sparo=True)``.

    Returns:
        (B, L) cosine similarity in [-1, 1].
    """
    if image_slots.shape != text_slots.shape or image_slots.dim() != 3:
        raise ValueError(
            f"image and text slots must both be (B, L, V); got {tuple(image_slots.shape)} and "
            f"{tuple(text_slots.shape)}"
        )
    return F.cosine_similarity(image_slots.float(), text_slots.float(), dim=-1)


def attention_maps(attn: torch.Tensor, grid_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split image attention over CLS + patches into the CLS weight and a patch-grid map.

    Args:
        attn: (B, L, N) attention over N = 1 + grid_h * grid_w tokens (CLS first, patches row-major).
        grid_size: (grid_h, grid_w), e.g. ``model.visual.grid_size``.

    Returns:
        cls_weight (B, L) and patch_maps (B, L, grid_h, grid_w), the raw attention weights.
    """
    if len(grid_size) != 2 or min(grid_size) < 1:
        raise ValueError(f"grid_size must be (grid_h, grid_w) with positive entries, got {tuple(grid_size)}")
    gh, gw = int(grid_size[0]), int(grid_size[1])
    if attn.dim() != 3 or attn.shape[-1] != 1 + gh * gw:
        raise ValueError(
            f"image attention must be (B, L, 1 + grid_h * grid_w) = (B, L, {1 + gh * gw}) for grid "
            f"{gh}x{gw}; got {tuple(attn.shape)}"
        )
    return attn[..., 0], attn[..., 1:].reshape(*attn.shape[:2], gh, gw)


def display_map(patch_map: torch.Tensor | np.ndarray, sharpen: float = 2.0) -> np.ndarray:
    """A patch map scaled to [0, 1] by its maximum, then raised to ``sharpen`` (> 1 sharpens)."""
    if sharpen <= 0:
        raise ValueError(f"sharpen must be > 0, got {sharpen}")
    m = np.asarray(patch_map, dtype=np.float64)
    peak = m.max() if m.size else 0.0
    return (m / peak) ** sharpen if peak > 0 else np.zeros_like(m)


def map_to_pixels(
    grid: np.ndarray, image_hw: Sequence[int], patch_size: Sequence[int] | None = None
) -> np.ndarray:
    """Upsample a (grid_h, grid_w) map to (H, W) pixels, one constant block per patch.

    Patches of ``patch_size`` = (ph, pw) pixels (default: ``H // grid_h``, ``W // grid_w``) tile the image
    from its top-left corner, as the patch embedding's strided convolution does; pixels it drops (a
    remainder) get zero.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    gh, gw = grid.shape
    ph, pw = (h // gh, w // gw) if patch_size is None else (int(patch_size[0]), int(patch_size[1]))
    if ph < 1 or pw < 1 or gh * ph > h or gw * pw > w:
        raise ValueError(f"a {gh}x{gw} grid of {ph}x{pw}-pixel patches does not fit an image of {h}x{w}")
    out = np.zeros((h, w), dtype=np.float64)
    out[: gh * ph, : gw * pw] = np.kron(grid, np.ones((ph, pw)))
    return out


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the preprocessing normalisation: (B, 3, H, W) -> (B, H, W, 3) floats in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (images.detach().float().cpu() * s + m).clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Decode token ids one by one so that each string lines up with one position.

    Start- and end-of-text ids become ``<SOT>`` / ``<EOT>``. Works with OpenCLIP's ``SimpleTokenizer``
    (and anything with ``decode(list_of_ids)``, or a Hugging Face ``.tokenizer``).
    """
    specials = {
        getattr(tokenizer, "sot_token_id", None): SOT_LABEL,
        getattr(tokenizer, "eot_token_id", None): EOT_LABEL,
    }
    if hasattr(tokenizer, "decode"):
        decode = tokenizer.decode
    elif hasattr(getattr(tokenizer, "tokenizer", None), "decode"):
        decode = tokenizer.tokenizer.decode
    else:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no decode(ids); cannot show tokens")
    return [specials[i] if i in specials else decode([int(i)]) for i in ids]


def caption_tokens(
    tokenizer: Any, ids: torch.Tensor, attn: torch.Tensor, length: int
) -> tuple[list[str], torch.Tensor]:
    """One caption's decoded tokens and the attention on them, position by position.

    Args:
        tokenizer: the model's tokenizer.
        ids: (T,) token ids of the caption (padded to the context length).
        attn: (L, T) text attention of the caption.
        length: valid positions, start-of-text up to and including end-of-text.

    Returns:
        ``length`` token strings and their (L, length) weights.
    """
    if not 1 <= length <= ids.shape[-1] or attn.shape[-1] != ids.shape[-1]:
        raise ValueError(
            f"caption of {ids.shape[-1]} positions with attention over {attn.shape[-1]}: length {length} must "
            f"be in 1..{ids.shape[-1]} and the attention must cover every position"
        )
    return decode_tokens(tokenizer, ids[:length].tolist()), attn[:, :length]


def valid_slots(
    agreement: torch.Tensor,
    text_attn: torch.Tensor,
    lengths: torch.Tensor,
    min_agreement: float | None = 0.75,
    drop_special: bool = True,
) -> torch.Tensor:
    """The reference notebook's filters, per pair and slot.

    Args:
        agreement: (B, L) per-slot image-text agreement.
        text_attn: (B, L, T) text attention.
        lengths: (B,) number of valid positions per caption (start-of-text .. end-of-text).
        min_agreement: drop slots whose agreement is below this (None: keep all).
        drop_special: drop slots whose text attention peaks on position 0 or on end-of-text.

    Returns:
        (B, L) bool, True where the slot passes.
    """
    keep = torch.ones_like(agreement, dtype=torch.bool)
    if min_agreement is not None:
        keep &= agreement >= min_agreement
    if drop_special:
        peak = text_attn.argmax(dim=-1)  # (B, L)
        keep &= (peak != 0) & (peak != (lengths - 1)[:, None])
    return keep


# ----------------------------------------------------------------------------------- the data object
@dataclass
class SlotReadout:
    """Everything the slot pictures show for B image-caption pairs and L slots.

    Attributes:
        agreement: (B, L) cosine between image and text slots.
        cls_weight: (B, L) image attention on the CLS token.
        patch_maps: (B, L, grid_h, grid_w) image attention on the patches (raw weights).
        tokens: per caption, the decoded tokens from start- to end-of-text.
        token_weights: per caption, (L, n_tokens) text attention on those tokens.
        images: (B, H, W, 3) the preprocessed images the model saw, de-normalised to [0, 1] (all kept in
            memory: compute read-outs for hundreds of pairs at a time, not whole datasets).
        captions: the caption strings.
        names: a label per pair (e.g. the image file name).
        valid: (B, L) bool, the slots that pass the filters.
        allowed: (L,) bool, the slots the user asked to see (all by default).
        patch_size: (ph, pw) pixels per patch (default: image size // grid size).
    """

    agreement: torch.Tensor
    cls_weight: torch.Tensor
    patch_maps: torch.Tensor
    tokens: list[list[str]]
    token_weights: list[torch.Tensor]
    images: np.ndarray
    captions: list[str]
    names: list[str]
    valid: torch.Tensor
    allowed: torch.Tensor = field(default=None)  # type: ignore[assignment]
    patch_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.allowed is None:
            self.allowed = torch.ones(self.num_slots, dtype=torch.bool)
        if self.patch_size is None:
            (h, w), (gh, gw) = self.images.shape[1:3], self.grid_size
            self.patch_size = (h // gh, w // gw)

    @property
    def num_pairs(self) -> int:
        return self.agreement.shape[0]

    @property
    def num_slots(self) -> int:
        return self.agreement.shape[1]

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_maps.shape[-2:])  # type: ignore[return-value]

    def pair_slots(self, pair: int, top_k: int = 3) -> tuple[list[int], bool]:
        """The ``top_k`` allowed slots of one pair by agreement, among those passing the filters.

        Returns:
            (slot ids, filtered). When no allowed slot passes, the unfiltered ranking is returned and
            ``filtered`` is False.
        """
        cand = self.allowed & self.valid[pair]
        filtered = bool(cand.any())
        if not filtered:
            cand = self.allowed
        scores = self.agreement[pair].masked_fill(~cand, float("-inf"))
        k = min(top_k, int(cand.sum()))
        return scores.topk(k).indices.tolist(), filtered

    def slot_ranking(self) -> tuple[list[int], torch.Tensor, bool]:
        """Allowed slots ranked by mean agreement over the pairs where they pass the filters.

        Returns:
            (slot ids best first, mean agreement (L,), filtered). Slots that pass on no pair are left
            out; when that is every slot, all allowed slots are ranked by their plain mean and
            ``filtered`` is False.
        """
        valid = self.valid & self.allowed[None, :]
        counts = valid.sum(dim=0)
        filtered = bool(counts.any())
        if filtered:
            mean = (self.agreement * valid).sum(dim=0) / counts.clamp_min(1)
            cand = counts > 0
        else:
            mean, cand = self.agreement.mean(dim=0), self.allowed
        order = mean.masked_fill(~cand, float("-inf")).argsort(descending=True)
        return order[: int(cand.sum())].tolist(), mean, filtered

    def slot_pairs(self, slot: int, n: int = 6, filtered: bool = True) -> list[int]:
        """The ``n`` pairs that agree most on ``slot`` (among those where it passes, if ``filtered``)."""
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} out of range: allowed 0..{self.num_slots - 1}")
        scores = self.agreement[:, slot].clone()
        if filtered and self.valid[:, slot].any():
            scores = scores.masked_fill(~self.valid[:, slot], float("-inf"))
            n = min(n, int(self.valid[:, slot].sum()))
        return scores.topk(min(n, self.num_pairs)).indices.tolist()

    def summary(self, top_k: int = 3) -> dict[str, Any]:
        """A JSON-friendly summary: slot ranking with mean agreement, and each pair's top slots."""
        ranking, mean, filtered = self.slot_ranking()
        pairs = []
        for i in range(self.num_pairs):
            slots, pair_filtered = self.pair_slots(i, top_k)
            pairs.append(
                {
                    "name": self.names[i],
                    "caption": self.captions[i],
                    "filtered": pair_filtered,
                    "slots": [
                        {
                            "slot": s,
                            "agreement": round(float(self.agreement[i, s]), 4),
                            "cls_weight": round(float(self.cls_weight[i, s]), 4),
                        }
                        for s in slots
                    ],
                }
            )
        return {
            "grid_size": list(self.grid_size),
            "filtered": filtered,
            "slot_ranking": [{"slot": s, "mean_agreement": round(float(mean[s]), 4)} for s in ranking],
            "pairs": pairs,
        }


# ----------------------------------------------------------------------------------- from a model
def _preprocess_mean_std(model: torch.nn.Module) -> tuple[Sequence[float], Sequence[float]]:
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, get_model_preprocess_cfg

    cfg = get_model_preprocess_cfg(model)
    return cfg.get("mean") or OPENAI_DATASET_MEAN, cfg.get("std") or OPENAI_DATASET_STD


@torch.no_grad()
def compute_readout(
    model: torch.nn.Module,
    images: torch.Tensor,
    captions: Sequence[str],
    tokenizer: Any,
    names: Sequence[str] | None = None,
    slots: Sequence[int] | None = None,
    min_agreement: float | None = 0.75,
    drop_special: bool = True,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> SlotReadout:
    """Run a SPARO model over image-caption pairs and collect what the pictures show.

    Args:
        model: a :class:`~sparo_clip.SparoCLIP` (e.g. from ``open_clip.create_model_and_transforms``).
        images: (B, 3, H, W) preprocessed images (the model's ``preprocess`` applied).
        captions: B caption strings, one per image.
        tokenizer: the model's tokenizer (``open_clip.get_tokenizer(name)``).
        names: a label per pair (defaults to its index).
        slots: restrict the pictures to these slot ids (default: all).
        min_agreement, drop_special: the filters of :func:`valid_slots`.
        batch_size: pairs per forward pass.
        device: where to run the model.
    """
    from sparo_clip.models.sparo import SparoCLIP

    if not isinstance(model, SparoCLIP):
        raise ValueError(
            f"slot pictures need a SparoCLIP model (a config with sparo_cfg), got {type(model).__name__}"
        )
    if not all(hasattr(model.visual, a) for a in ("grid_size", "patch_size")):
        raise ValueError(
            f"slot pictures draw attention over a ViT patch grid; this model's image tower "
            f"({type(model.visual).__name__}) has none (timm and CNN towers are not drawn)"
        )
    if len(captions) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(captions)} captions: they must pair up 1:1")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_slots = model.sparo_cfg.num_slots
    allowed = torch.zeros(num_slots, dtype=torch.bool)
    if slots is None:
        allowed[:] = True
    else:
        bad = [s for s in slots if not 0 <= int(s) < num_slots]
        if bad or not len(slots):
            raise ValueError(
                f"slots must be a non-empty list of ids in 0..{num_slots - 1}; got {list(slots)}"
            )
        allowed[list(slots)] = True

    model = model.eval().to(device)
    text = tokenizer(list(captions))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("agr", "img_attn", "txt_attn")}
    starts = range(0, len(captions), batch_size)
    for start in tqdm(starts, desc="slot read-out", unit="batch", disable=len(starts) < 2):
        img = images[start : start + batch_size].to(device)
        txt = text[start : start + batch_size].to(device)
        img_slots, img_attn = model.encode_image(img, return_sparo=True, return_attn=True)
        txt_slots, txt_attn = model.encode_text(txt, return_sparo=True, return_attn=True)
        parts["agr"].append(slot_agreement(img_slots, txt_slots).cpu())
        parts["img_attn"].append(img_attn.float().cpu())
        parts["txt_attn"].append(txt_attn.float().cpu())
    agreement = torch.cat(parts["agr"])
    cls_weight, patch_maps = attention_maps(torch.cat(parts["img_attn"]), model.visual.grid_size)
    text_attn = torch.cat(parts["txt_attn"])
    lengths = model.text_key_mask(text).sum(dim=1).cpu()  # positions up to and including end-of-text
    decoded = [caption_tokens(tokenizer, text[i], text_attn[i], n) for i, n in enumerate(lengths.tolist())]
    mean, std = _preprocess_mean_std(model)
    return SlotReadout(
        agreement=agreement,
        cls_weight=cls_weight,
        patch_maps=patch_maps,
        tokens=[t for t, _ in decoded],
        token_weights=[w for _, w in decoded],
        images=denormalize(images, mean, std),
        captions=list(captions),
        names=list(names) if names is not None else [str(i) for i in range(len(captions))],
        valid=valid_slots(agreement, text_attn, lengths, min_agreement, drop_special),
        allowed=allowed,
        patch_size=tuple(model.visual.patch_size),
    )
