"""Explanations of vitlab models: which pixels a decision rests on, and how much to trust that.

Every explainer in :data:`EXPLAINERS` is one callable
``(model, images, targets=None) -> np.ndarray`` of shape (B, H, W), float32 in
[0, 1], at the input resolution; ``images`` are (B, 3, H, W) normalised
tensors, ``targets`` one class index per image (or one int for all), ``None``
meaning each image's predicted class. Class-agnostic methods (``eigencam``,
``attention_rollout``) accept and ignore ``targets``. :func:`explainers_for`
names the ones that apply to a model: the CAM methods to every model with
``cam_target_layers()``, the rollouts to token models only (Ultimus attends
over features, not space: see :func:`ultimus_attention_maps`).

Modules, one per method family:
- :mod:`.cam`: CAM methods through pytorch-grad-cam;
- :mod:`.rollout`: attention rollout, gradient-weighted rollout, Ultimus maps;
- :mod:`.faithfulness`: deletion / insertion scores and a random-map baseline;
- :mod:`.overlay`: colour maps and overlays on numpy arrays;
- :mod:`.base`: the shared contract: ``targets`` and map normalisation.

Explainers register hooks for one call and always remove them; they leave the
model in eval mode with fused attention off. Callers sharing a model between
threads hold its lock around a call.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .cam import CAM_METHODS, class_activation_map, supports_cam, token_reshape_transform
from .faithfulness import deletion_insertion, faithfulness_report, random_baseline
from .overlay import attention_matrix_image, colorize, denormalize, overlay
from .rollout import (
    attention_rollout,
    gradient_rollout,
    gradient_rollout_from,
    rollout_from_attentions,
    supports_rollout,
    ultimus_attention_maps,
)
from .base import Targets, normalize_maps

Explainer = Callable[[nn.Module, torch.Tensor, Targets], np.ndarray]


def _cam(method: str) -> Explainer:
    def explain(model: nn.Module, images: torch.Tensor, targets: Targets = None) -> np.ndarray:
        return class_activation_map(model, images, targets, method=method)

    explain.__name__ = explain.__qualname__ = method
    explain.__doc__ = f"{CAM_METHODS[method].__name__} heatmaps, (B, H, W) in [0, 1]; see vitlab.explain.cam."
    return explain


def _ignoring_targets(method: Callable[[nn.Module, torch.Tensor], np.ndarray]) -> Explainer:
    """Registry adapter for a class-agnostic method: ``targets`` is accepted and unused."""

    def explain(model: nn.Module, images: torch.Tensor, targets: Targets = None) -> np.ndarray:
        return method(model, images)

    explain.__name__ = explain.__qualname__ = method.__name__
    explain.__doc__ = f"{method.__name__} with its defaults; ``targets`` is ignored (class-agnostic)."
    return explain


EXPLAINERS: dict[str, Explainer] = {
    **{method: _cam(method) for method in CAM_METHODS},
    "attention_rollout": _ignoring_targets(attention_rollout),
    "gradient_rollout": gradient_rollout,
}

# Which models each explainer applies to.
_APPLIES_TO: dict[str, Callable[[nn.Module], bool]] = {
    **{method: supports_cam for method in CAM_METHODS},
    "attention_rollout": supports_rollout,
    "gradient_rollout": supports_rollout,
}


def explainers_for(model: nn.Module) -> list[str]:
    """Names in :data:`EXPLAINERS` that apply to ``model``, in registry order."""
    return [name for name in EXPLAINERS if _APPLIES_TO[name](model)]


__all__ = [
    "EXPLAINERS",
    "Explainer",
    "attention_matrix_image",
    "attention_rollout",
    "class_activation_map",
    "colorize",
    "deletion_insertion",
    "denormalize",
    "explainers_for",
    "faithfulness_report",
    "gradient_rollout",
    "gradient_rollout_from",
    "normalize_maps",
    "overlay",
    "random_baseline",
    "rollout_from_attentions",
    "token_reshape_transform",
    "ultimus_attention_maps",
]
