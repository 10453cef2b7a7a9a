"""The one place that imports lightly (an optional extra): DINO loss, head, multi-crop transform, EMA helpers."""

from __future__ import annotations

from types import SimpleNamespace

MISSING = "SPARO-DINO needs lightly: pip install sparo-clip[dino]"


def require_lightly() -> SimpleNamespace:
    """lightly's DINO pieces, or ImportError with the one-line install hint."""
    try:
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.transforms import DINOTransform
        from lightly.utils.scheduler import cosine_schedule
    except ImportError as e:
        raise ImportError(f"{MISSING} ({e})") from e
    return SimpleNamespace(
        DINOLoss=DINOLoss,
        DINOProjectionHead=DINOProjectionHead,
        DINOTransform=DINOTransform,
        deactivate_requires_grad=deactivate_requires_grad,
        update_momentum=update_momentum,
        cosine_schedule=cosine_schedule,
    )
