"""Deletion and insertion curves: does a heatmap point at what the model uses?

Deletion: pixels are replaced by a baseline in order of decreasing heatmap
importance and the softmax probability of the target class is recorded; a
faithful map makes it fall fast (low area under the curve). Insertion: start
from the baseline and reveal pixels in the same order; a faithful map makes the
probability rise fast (high area). Both curves are sampled at ``steps + 1``
fractions 0, 1/steps, ..., 1 of the pixels and integrated with the trapezoid
rule over the fraction in [0, 1].

Baselines (what a removed pixel becomes):
- ``"blur"``: the image blurred by a Gaussian (11x11 kernel, sigma 5, the RISE
  setting; replicate padding), which removes detail without adding colours
  the model never saw;
- ``"mean"``: zero in normalised space, i.e. the dataset's mean colour.

All the step images of both curves go through the model as one batch (chunked):
the deletion curve's last point (all pixels replaced) is the insertion curve's
first, and the insertion curve's last is the original image, so one heatmap
costs ``2 * steps`` images. Pixels with equal importance are taken in raster
order (a stable sort). :func:`random_baseline` scores a seeded random map the
same way, the chance level an explanation should beat.

Reference: Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for
Explanation of Black-box Models", arXiv:1806.07421, section 4.2 (and its
``evaluation.py``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Targets, class_indices, resolve_targets

BASELINES = ("blur", "mean")
BLUR_KERNEL_SIZE = 11  # RISE evaluation.py: gkern(11, 5)
BLUR_SIGMA = 5.0
MAX_BATCH_IMAGES = 512  # images per forward pass when a request is large


def gaussian_blur(images: torch.Tensor, kernel_size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images, replicate padding, same size."""
    offsets = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    pad = kernel_size // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1), groups=channels)


def baseline_images(images: torch.Tensor, baseline: str) -> torch.Tensor:
    """What removed pixels become: a blurred copy or zeros (the mean colour) in normalised space."""
    if baseline == "blur":
        return gaussian_blur(images)
    if baseline == "mean":
        return torch.zeros_like(images)
    raise ValueError(f"baseline must be one of {BASELINES}, not {baseline!r}")


def _as_heatmaps(heatmaps, images: torch.Tensor) -> torch.Tensor:
    maps = torch.as_tensor(np.asarray(heatmaps) if not isinstance(heatmaps, torch.Tensor) else heatmaps)
    maps = maps.to(device=images.device, dtype=torch.float32)
    if maps.ndim == 2:
        maps = maps.expand(images.shape[0], -1, -1)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"heatmaps {tuple(maps.shape)} do not match images {tuple(images.shape)}: need (B, H, W)")
    return maps


def _curves(
    model: nn.Module, images: torch.Tensor, heatmaps: torch.Tensor, targets: Targets, steps: int, baseline: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves (B, steps + 1) and the (B,) targets scored."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")
    b, c, h, w = images.shape
    base = baseline_images(images, baseline)

    # rank[b, p]: position of pixel p in the order of decreasing importance.
    order = torch.argsort(heatmaps.reshape(b, -1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=images.device).expand(b, -1))
    # Pixels changed at fractions k / steps for k < steps (k = steps is the other curve's start).
    counts = torch.round(torch.arange(steps, device=images.device) * (h * w / steps)).long()
    changed = (rank[:, None, :] < counts[None, :, None]).to(images.dtype).view(b, steps, 1, h, w)

    original, base = images[:, None], base[:, None]  # (B, 1, C, H, W)
    deletion = original + changed * (base - original)  # k pixels replaced by the baseline
    insertion = base + changed * (original - base)  # k pixels revealed on the baseline
    batch = torch.cat([deletion, insertion], dim=1).view(b * 2 * steps, c, h, w)

    with torch.inference_mode():
        logits = torch.cat([model(chunk) for chunk in batch.split(MAX_BATCH_IMAGES)])
        probs = logits.float().softmax(dim=-1).view(b, 2 * steps, -1)
        chosen = resolve_targets(targets, probs[:, 0])  # step 0 of deletion is the original image
        scores = probs.gather(2, chosen[:, None, None].expand(b, 2 * steps, 1))[..., 0]  # (B, 2 * steps)
    deletion_curve = torch.cat([scores[:, :steps], scores[:, steps : steps + 1]], dim=1)  # ends on the baseline
    insertion_curve = torch.cat([scores[:, steps:], scores[:, :1]], dim=1)  # ends on the original
    return deletion_curve, insertion_curve, chosen


def _report(deletion: torch.Tensor, insertion: torch.Tensor, chosen: torch.Tensor, steps: int) -> dict[str, np.ndarray]:
    fractions = torch.linspace(0.0, 1.0, steps + 1)
    return {
        "fractions": fractions.numpy(),
        "deletion_curve": deletion.cpu().numpy(),
        "insertion_curve": insertion.cpu().numpy(),
        "deletion_auc": torch.trapezoid(deletion.cpu(), fractions, dim=1).numpy(),
        "insertion_auc": torch.trapezoid(insertion.cpu(), fractions, dim=1).numpy(),
        "targets": chosen.cpu().numpy(),
    }


def _prepare(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return images.detach().to(next(model.parameters()).device)


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    heatmaps,
    targets: Targets = None,
    steps: int = 16,
    baseline: str = "blur",
) -> dict[str, np.ndarray]:
    """Deletion and insertion scores of ``heatmaps`` (B, H, W) for ``images`` (B, 3, H, W).

    Returns per-image arrays ``deletion_auc`` and ``insertion_auc`` (B,), the
    curves ``deletion_curve`` / ``insertion_curve`` (B, steps + 1) over
    ``fractions`` (steps + 1,), and the ``targets`` scored (predicted class when
    ``None``). Lower deletion and higher insertion AUC mean a more faithful map.
    """
    images = _prepare(model, images)
    deletion, insertion, chosen = _curves(model, images, _as_heatmaps(heatmaps, images), targets, steps, baseline)
    return _report(deletion, insertion, chosen, steps)


def random_heatmaps(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, H, W) uniform noise from a seeded generator: a map with no information."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(images.shape[0], *images.shape[-2:], generator=generator).to(images.device)


def random_baseline(
    model: nn.Module,
    images: torch.Tensor,
    targets: Targets = None,
    steps: int = 16,
    baseline: str = "blur",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`deletion_insertion` of a seeded random heatmap: the chance level."""
    images = _prepare(model, images)
    return deletion_insertion(model, images, random_heatmaps(images, seed), targets, steps, baseline)


def faithfulness_report(
    model: nn.Module,
    images: torch.Tensor,
    heatmap,
    targets: Targets = None,
    steps: int = 16,
    baseline: str = "blur",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Deletion/insertion AUCs of ``heatmap`` ((H, W) or (B, H, W)) and of a random map, in one batch.

    Keys: ``deletion_auc``, ``insertion_auc``, ``random_deletion_auc``,
    ``random_insertion_auc`` (each (B,)), ``deletion_curve``,
    ``insertion_curve``, ``random_deletion_curve``, ``random_insertion_curve``
    ((B, steps + 1)), ``fractions`` and ``targets``.
    """
    images = _prepare(model, images)
    b = images.shape[0]
    maps = torch.cat([_as_heatmaps(heatmap, images), random_heatmaps(images, seed)])
    indices = class_indices(targets, b)
    # With targets None each copy resolves to the same predicted class: its step 0 is the same image.
    deletion, insertion, chosen = _curves(
        model, images.repeat(2, 1, 1, 1), maps, None if indices is None else indices.repeat(2), steps, baseline
    )
    explained = _report(deletion[:b], insertion[:b], chosen[:b], steps)
    chance = _report(deletion[b:], insertion[b:], chosen[b:], steps)
    return {
        **explained,
        "random_deletion_auc": chance["deletion_auc"],
        "random_insertion_auc": chance["insertion_auc"],
        "random_deletion_curve": chance["deletion_curve"],
        "random_insertion_curve": chance["insertion_curve"],
    }
