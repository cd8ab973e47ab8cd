"""The contract every explainer shares: ``targets`` in, (B, H, W) maps in [0, 1] out.

``targets=None`` means each image's predicted class; otherwise one class index
per image (a list, array or tensor of ints), or one int for the whole batch.
Negative indices are refused rather than counted from the end, so a ``-1`` never
silently explains the last class.

Maps are min-max normalised per image by :func:`normalize_maps`. A map with no
spatial preference (its range is float noise on a constant) becomes all zeros,
as pytorch-grad-cam's ``scale_cam_image`` does for a flat CAM, rather than NaN
or amplified rounding noise.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# A map whose range is below this fraction of its magnitude is float noise on a
# constant (identity attention gives a class row of exact zeros, uniform
# attention one of equal values up to rounding).
RELATIVE_FLATNESS = 1e-6

Targets = int | Sequence[int] | np.ndarray | torch.Tensor | None


def class_indices(targets: Targets, batch_size: int, num_classes: int | None = None) -> torch.Tensor | None:
    """``targets`` as a (B,) long tensor, ``None`` staying ``None``.

    Raises ``ValueError`` for a wrong count, a non-integer, a negative index, or
    (when ``num_classes`` is known) an index past the last class.
    """
    if targets is None:
        return None
    indices = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets))
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.is_complex():
        raise ValueError(f"targets must be integer class indices, got dtype {indices.dtype}")
    indices = indices.long().reshape(-1)
    if indices.numel() == 1:
        indices = indices.expand(batch_size)
    if indices.numel() != batch_size:
        raise ValueError(f"got {indices.numel()} targets for {batch_size} images")
    if (indices < 0).any() or (num_classes is not None and (indices >= num_classes).any()):
        bound = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise ValueError(f"targets {indices.tolist()} out of range: class indices must be {bound}")
    return indices.contiguous()


def resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """(B,) class indices: ``targets`` checked against ``logits`` (B, C), or its argmax when ``None``."""
    indices = class_indices(targets, logits.shape[0], logits.shape[1])
    return logits.argmax(dim=-1) if indices is None else indices.to(logits.device)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of a (B, ...) batch to [0, 1]; a flat map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    high = flat.amax(dim=1, keepdim=True)
    span = high - low
    is_flat = span <= RELATIVE_FLATNESS * torch.maximum(low.abs(), high.abs())
    scaled = (flat - low) / torch.where(is_flat, torch.ones_like(span), span)
    return torch.where(is_flat, torch.zeros_like(scaled), scaled).view_as(maps)
