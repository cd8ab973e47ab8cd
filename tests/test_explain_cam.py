"""CAM methods: equal to a hand-computed Grad-CAM, class-sensitive, and safe when they fail."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from torch import nn

from vitlab.explain import EXPLAINERS
from vitlab.explain.cam import token_reshape_transform
from vitlab.models import create_model

from test_explain import hook_state, structure

CLASS_SPECIFIC_CAMS = ["gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam"]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low)).view_as(maps)


def reference_gradcam(activations: torch.Tensor, score: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Selvaraju et al.: ReLU(sum_c mean_xy(dS/dA_c) * A_c), upsampled bilinearly, min-max normalised."""
    (grads,) = torch.autograd.grad(score, activations)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    return minmax(F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]).detach()


def test_gradcam_equals_hand_computed_on_a_cnn():
    # Ultimus with 2x2 pooling: the target layer is 8x8 on a 32 px input, so the
    # upsampling is exercised too. The reference splits the model at the same
    # layer through its own forward_features / forward_head.
    torch.manual_seed(0)
    model = create_model("ultimus", downsample=True, residual=True).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [2, 7, 7]
    features = model.forward_features(images)
    assert features.shape[-2:] == (8, 8)
    score = model.forward_head(features)[torch.arange(3), torch.tensor(targets)].sum()
    expected = reference_gradcam(features, score, (32, 32))
    np.testing.assert_allclose(EXPLAINERS["gradcam"](model, images, targets), expected.numpy(), atol=1e-4)


def test_gradcam_equals_hand_computed_on_a_vit():
    # The reference reads the tokens entering the last attention with its own
    # hook and lays the patch tokens out row by row without einops.
    torch.manual_seed(0)
    model = create_model("vit", dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = [1, 4]
    captured = []
    handle = model.transformer.layers[-1][0].norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(images)
    finally:
        handle.remove()
    tokens = captured[0]  # (B, 65, D)
    score = logits[torch.arange(2), torch.tensor(targets)].sum()
    (grads,) = torch.autograd.grad(score, tokens)
    h, w = model.token_grid
    as_map = lambda t: t[:, 1:].reshape(2, h, w, -1).permute(0, 3, 1, 2)  # noqa: E731
    cam = F.relu((as_map(grads).mean(dim=(2, 3), keepdim=True) * as_map(tokens)).sum(dim=1, keepdim=True))
    expected = minmax(F.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]).detach()
    np.testing.assert_allclose(EXPLAINERS["gradcam"](model, images, targets), expected.numpy(), atol=1e-4)


def test_token_reshape_drops_the_class_token_and_fills_the_grid_row_by_row():
    tokens = torch.arange(1 + 2 * 3, dtype=torch.float32).view(1, 7, 1).expand(1, 7, 2)  # token k has value k
    feature_map = token_reshape_transform((2, 3))(tokens)
    assert feature_map.shape == (1, 2, 2, 3)
    assert feature_map[0, 0].tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(ValueError):
        token_reshape_transform((3, 3))(tokens)


class TwoHalves(nn.Module):
    """Class 0 = red in the left half, class 1 = green in the right half.

    A 1x1 convolution copies red and green into two ReLU channels; each logit is
    the mean of its channel over its half of the image.
    """

    token_grid = None

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, kernel_size=1, bias=False), nn.ReLU())
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(2, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels = self.features(images)  # (B, 2, H, W)
        half = channels.shape[-1] // 2
        red_left = channels[:, 0, :, :half].mean(dim=(1, 2))
        green_right = channels[:, 1, :, half:].mean(dim=(1, 2))
        return torch.stack([red_left, green_right], dim=1)

    def cam_target_layers(self) -> list[nn.Module]:
        return [self.features]


@pytest.mark.parametrize("method", CLASS_SPECIFIC_CAMS)
def test_heatmap_moves_with_the_target_class(method):
    image = torch.zeros(1, 3, 16, 16)
    image[0, 0, 4:9, 1:6] = 3.0  # red square, left half
    image[0, 1, 8:13, 10:15] = 3.0  # green square, right half
    model = TwoHalves()
    for target, half in ((0, slice(0, 8)), (1, slice(8, 16))):
        heatmap = EXPLAINERS[method](model, image, [target])[0]
        _, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert half.start <= col < half.stop, f"{method}: class {target} peaks at column {col}"


@pytest.mark.parametrize("model_name, layer_class", [("vit", AblationLayerVit), ("ultimus", AblationLayer)])
def test_ablationcam_puts_the_target_layer_back_when_it_fails(monkeypatch, model_name, layer_class):
    torch.manual_seed(0)
    overrides = dict(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64) if model_name == "vit" else {}
    model = create_model(model_name, **overrides)
    target_layer = model.cam_target_layers()[0]
    hooks, layout = hook_state(model), structure(model)

    def fail(*args, **kwargs):
        raise RuntimeError("ablation failed half-way")

    # Fails after AblationCAM has swapped the target layer for its ablation layer.
    monkeypatch.setattr(layer_class, "set_next_batch", fail)
    with pytest.raises(RuntimeError, match="half-way"):
        EXPLAINERS["ablationcam"](model, torch.randn(1, 3, 32, 32))
    assert model.cam_target_layers()[0] is target_layer
    assert hook_state(model) == hooks and structure(model) == layout
