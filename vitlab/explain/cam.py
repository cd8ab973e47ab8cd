"""Class activation maps through pytorch-grad-cam (jacobgil/pytorch-grad-cam 1.5.x).

A CAM weighs the channels of a target layer's activations by how much the
target class depends on them, and sums them into a spatial map. The model names
its target layers (``model.cam_target_layers()``); for token models the layer
outputs (B, 1 + h*w, D) tokens, which :func:`token_reshape_transform` turns into
a (B, D, h, w) feature map by dropping the class token and laying the patch
tokens on ``model.token_grid`` (raster order), as in the library's ViT example.

Methods (name in :data:`CAM_METHODS` -> paper):
- ``gradcam``: Selvaraju et al. 2017, arXiv:1610.02391 (spatially averaged gradients).
- ``gradcam_pp``: Chattopadhyay et al. 2018, arXiv:1710.11063 (Grad-CAM++).
- ``xgradcam``: Fu et al. 2020, arXiv:2008.02312 (Axiom-based Grad-CAM).
- ``hirescam``: Draelos & Carin 2020, arXiv:2011.08891 (element-wise gradients).
- ``layercam``: Jiang et al. 2021, IEEE TIP 30 (positive element-wise gradients).
- ``eigencam``: Muhammad & Yeasin 2020, arXiv:2008.00299 (first principal
  component of the activations; gradient-free and class-agnostic).
- ``scorecam``: Wang et al. 2020, arXiv:1910.01279 (one forward pass per channel
  on the input masked by that channel).
- ``ablationcam``: Desai & Ramaswamy 2020, WACV (one forward pass per channel
  with that channel ablated; ``AblationLayerVit`` for token layers, as the
  library's ``usage_examples/vit_example.py`` does).

Every call builds a fresh CAM object and, in a ``finally``, releases its hooks,
puts back any target layer AblationCAM swapped out, and restores the parameters'
``.grad`` (the library zeroes them and backpropagates into them). The library's
own ``with cam:`` is not used because its ``__exit__`` swallows ``IndexError``.
Gradients are enabled even inside a caller's ``no_grad`` / ``inference_mode``.
Maps come from the library upsampled with OpenCV's bilinear ``cv2.resize``
and are min-max normalised per image again here (the library's absolute
epsilon squashes maps of small magnitude).

References: jacobgil/pytorch-grad-cam ``base_cam.py``, ``ablation_cam.py``,
``usage_examples/vit_example.py``; https://jacobgil.github.io/pytorch-gradcam-book.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from einops import rearrange
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from vitlab.models import set_fused_attention

from .base import Targets, class_indices, normalize_maps

CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam_pp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}

# Images per forward pass for ScoreCAM and AblationCAM, which run one pass per
# channel of the target layer (64 for vit_nano_convstem, 768 for vit_b16).
PERTURBATION_BATCH_SIZE = 32


def supports_cam(model: nn.Module) -> bool:
    """True when the model names its CAM target layers."""
    return callable(getattr(model, "cam_target_layers", None))


def token_reshape_transform(token_grid: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform (B, 1 + h*w, D) tokens -> (B, D, h, w) feature map, class token dropped."""
    h, w = token_grid

    def tokens_to_feature_map(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[1] != 1 + h * w:
            raise ValueError(f"expected (B, 1 + {h}*{w}, D) tokens, got {tuple(tokens.shape)}")
        return rearrange(tokens[:, 1:], "b (h w) d -> b d h w", h=h, w=w)

    return tokens_to_feature_map


def _slot_of(model: nn.Module, layer: nn.Module) -> tuple[nn.Module, str]:
    """The (parent, attribute name) under which ``layer`` sits in ``model``."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is layer:
                return parent, name
    raise ValueError(f"target layer {type(layer).__name__} is not a submodule of the model")


@contextmanager
def _model_restored(model: nn.Module, target_layers: list[nn.Module]) -> Iterator[None]:
    """Undo what a CAM call may leave behind: swapped target layers and parameter gradients.

    AblationCAM replaces the target layer by its ablation layer and puts it back
    only when it finishes without error; BaseCAM calls ``model.zero_grad()`` and
    ``backward()``, which overwrite every parameter's ``.grad``.
    """
    slots = [(*_slot_of(model, layer), layer) for layer in target_layers]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    try:
        yield
    finally:
        for parent, name, layer in slots:
            setattr(parent, name, layer)
        for p, grad in zip(params, grads):
            p.grad = grad


def class_activation_map(
    model: nn.Module, images: torch.Tensor, targets: Targets = None, *, method: str = "gradcam"
) -> np.ndarray:
    """A CAM of ``images`` (B, 3, H, W) for ``targets`` -> (B, H, W) float32 in [0, 1].

    ``targets=None`` explains each image's predicted class (``eigencam``
    ignores targets). Leaves the model in eval mode with fused attention off.
    """
    try:
        cam_class = CAM_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}") from None
    if not supports_cam(model):
        raise ValueError(f"{type(model).__name__} has no cam_target_layers()")
    indices = class_indices(targets, images.shape[0])
    cam_targets = None if indices is None else [ClassifierOutputTarget(int(i)) for i in indices]

    model.eval()
    set_fused_attention(model, False)
    target_layers = list(model.cam_target_layers())
    token_grid = getattr(model, "token_grid", None)
    reshape = None if token_grid is None else token_reshape_transform(tuple(token_grid))
    options = {}
    if cam_class is AblationCAM:
        # A fresh ablation layer per call: the library's default argument is one shared instance.
        options["ablation_layer"] = AblationLayer() if reshape is None else AblationLayerVit()
        options["batch_size"] = PERTURBATION_BATCH_SIZE

    device = next(model.parameters()).device
    with _model_restored(model, target_layers):
        cam = cam_class(model=model, target_layers=target_layers, reshape_transform=reshape, **options)
        if cam_class is ScoreCAM:
            cam.batch_size = PERTURBATION_BATCH_SIZE  # ScoreCAM reads the attribute (default 16)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # A private leaf that requires grad: gradients reach the target layer
                # even when the caller froze the parameters.
                inputs = images.detach().to(device).clone().requires_grad_(True)
                maps = cam(input_tensor=inputs, targets=cam_targets)
        finally:
            cam.activations_and_grads.release()
    # The library divides by (max + 1e-7), which squashes maps of small magnitude
    # (an untrained Ultimus has gradients ~1e-8) towards 0: normalise them again.
    return normalize_maps(torch.from_numpy(maps.astype(np.float32))).numpy()
