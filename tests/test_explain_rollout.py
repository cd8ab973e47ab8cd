"""Attention rollout and gradient rollout: the arithmetic on hand-made attention, and the capture."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitlab.explain import attention_rollout, gradient_rollout, ultimus_attention_maps
from vitlab.explain.rollout import (
    attention_modules,
    capture_attention_gradients,
    discard_lowest,
    fuse_heads,
    gradient_rollout_from,
    relevance_to_heatmap,
    residual_attention,
    rollout_from_attentions,
    rollout_matrix,
)
from vitlab.models import create_model

GRID = (4, 4)
TOKENS = 1 + GRID[0] * GRID[1]


def identity_attention(batch: int = 2, heads: int = 2, tokens: int = TOKENS) -> torch.Tensor:
    return torch.eye(tokens).expand(batch, heads, tokens, tokens).clone()


def random_attention(batch: int = 2, heads: int = 3, tokens: int = TOKENS, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(batch, heads, tokens, tokens, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=-1)


# --- attention rollout on hand-made attention -------------------------------------------------


@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_identity_attention_gives_a_uniform_map(head_fusion):
    relevance = rollout_from_attentions([identity_attention()] * 3, head_fusion)
    assert torch.equal(relevance, torch.zeros(2, TOKENS - 1))
    heatmap = relevance_to_heatmap(relevance, GRID, (32, 32))
    assert torch.equal(heatmap, torch.zeros(2, 32, 32))  # flat -> zeros, no NaN


def test_uniform_attention_gives_a_uniform_map():
    uniform = torch.full((1, 2, TOKENS, TOKENS), 1.0 / TOKENS)
    relevance = rollout_from_attentions([uniform] * 4)
    assert torch.allclose(relevance, relevance[:, :1].expand_as(relevance))
    assert torch.equal(relevance_to_heatmap(relevance, GRID, (32, 32)), torch.zeros(1, 32, 32))


def test_attention_to_one_patch_lights_that_patch():
    patch = 6  # row 1, column 2 of the 4x4 grid
    focused = torch.zeros(1, 2, TOKENS, TOKENS)
    focused[..., 1 + patch] = 1.0  # every token attends only to that patch
    relevance = rollout_from_attentions([identity_attention(1), focused, identity_attention(1)])
    assert relevance.argmax().item() == patch
    heatmap = relevance_to_heatmap(relevance, GRID, (32, 32))[0]
    row, col = np.unravel_index(heatmap.argmax().item(), (32, 32))
    assert (row // 8, col // 8) == (patch // 4, patch % 4)  # 8-pixel cells on a 32-pixel image
    assert heatmap.max() == 1.0 and heatmap.min() == 0.0


def test_head_fusion_mean_max_min():
    attention = torch.tensor([[[[0.2, 0.8], [0.6, 0.4]], [[0.4, 0.6], [0.1, 0.9]]]])  # (1, 2 heads, 2, 2)
    assert torch.allclose(fuse_heads(attention, "mean"), torch.tensor([[[0.3, 0.7], [0.35, 0.65]]]))
    assert torch.allclose(fuse_heads(attention, "max"), torch.tensor([[[0.4, 0.8], [0.6, 0.9]]]))
    assert torch.allclose(fuse_heads(attention, "min"), torch.tensor([[[0.2, 0.6], [0.1, 0.4]]]))
    with pytest.raises(ValueError):
        fuse_heads(attention, "median")


def test_discard_never_touches_class_token_entries_and_drops_the_lowest_per_image():
    fused = fuse_heads(random_attention(batch=2), "mean")
    kept = discard_lowest(fused, 0.75)
    assert torch.equal(kept[:, 0, :], fused[:, 0, :])  # class-token row
    assert torch.equal(kept[:, :, 0], fused[:, :, 0])  # class-token column
    patches, kept_patches = fused[:, 1:, 1:].reshape(2, -1), kept[:, 1:, 1:].reshape(2, -1)
    n_dropped = int(patches.shape[1] * 0.75)
    for image in range(2):  # each image of the batch ranks its own weights
        dropped = kept_patches[image] == 0
        assert dropped.sum().item() == n_dropped
        assert patches[image][dropped].max() <= patches[image][~dropped].min()
    assert torch.equal(discard_lowest(fused, 0.0), fused)
    with pytest.raises(ValueError):
        discard_lowest(fused, 1.0)


def test_rows_are_renormalised_along_the_right_axis():
    # Max fusion of softmax heads gives rows that do not sum to 1 and a matrix that
    # is not symmetric: dividing without keepdim (vit-explain issue #16) would
    # divide row i by column entries and leave the rows unnormalised.
    attention = random_attention(batch=2, seed=1)
    layer = residual_attention(attention, "max", discard_ratio=0.5)
    assert torch.allclose(layer.sum(dim=-1), torch.ones(2, TOKENS), atol=1e-6)
    assert not torch.allclose(layer.sum(dim=-2), torch.ones(2, TOKENS), atol=1e-3)
    with_residual = discard_lowest(fuse_heads(attention, "max"), 0.5) + torch.eye(TOKENS)
    assert torch.allclose(layer[1, 3], with_residual[1, 3] / with_residual[1, 3].sum())
    product = rollout_matrix([random_attention(seed=s) for s in range(3)], "max", 0.5)
    assert torch.allclose(product.sum(dim=-1), torch.ones(2, TOKENS), atol=1e-5)


def test_rollout_multiplies_layers_in_forward_order():
    first, second = random_attention(seed=2), random_attention(seed=3)
    a1, a2 = residual_attention(first), residual_attention(second)
    assert torch.allclose(rollout_matrix([first, second]), a2 @ a1, atol=1e-6)
    assert not torch.allclose(rollout_matrix([first, second]), a1 @ a2, atol=1e-4)


# --- gradient rollout ----------------------------------------------------------------------


def test_gradient_rollout_pairs_each_layer_with_its_own_gradient():
    # Layer 1 lets the class token read patch 0, layer 2 patch 1; each layer's
    # gradient is positive exactly where that layer's attention is. Correct
    # pairing credits both patches; pairing layer 1 with layer 2's gradient
    # (gradients collected in backward order) credits neither.
    eye = torch.eye(3)
    a1, a2 = eye.clone(), eye.clone()
    a1[0] = torch.tensor([0.5, 0.5, 0.0])
    a2[0] = torch.tensor([0.5, 0.0, 0.5])
    g1, g2 = torch.zeros(3, 3), torch.zeros(3, 3)
    g1[0, 1] = 1.0
    g2[0, 2] = 1.0
    attentions = [a1[None, None], a2[None, None]]
    gradients = [g1[None, None], g2[None, None]]
    # R = I + E1;  R += E2 @ R  with E1 = 0.5 at (0, 1), E2 = 0.5 at (0, 2).
    expected = torch.tensor([[0.5, 0.5]])
    assert torch.allclose(gradient_rollout_from(attentions, gradients), expected)
    assert torch.allclose(gradient_rollout_from(attentions, gradients[::-1]), torch.zeros(1, 2))


def test_gradient_rollout_update_rule_on_random_tensors():
    attentions = [random_attention(seed=s) for s in range(3)]
    gradients = [
        torch.randn(a.shape, generator=torch.Generator().manual_seed(10 + s))
        for s, a in enumerate(attentions)
    ]
    relevance = torch.eye(TOKENS).expand(2, TOKENS, TOKENS)
    for attention, gradient in zip(attentions, gradients):
        relevance = relevance + (gradient * attention).clamp(min=0).mean(dim=1) @ relevance
    assert torch.allclose(gradient_rollout_from(attentions, gradients), relevance[:, 0, 1:], atol=1e-6)
    assert not torch.allclose(gradient_rollout_from(attentions, gradients[::-1]), relevance[:, 0, 1:], atol=1e-4)


def test_captured_gradients_belong_to_their_own_layer():
    # Finite differences: nudging layer l's attention along D changes the target
    # logit by <grad_l, D> * eps, and not by <grad_other, D> * eps.
    torch.manual_seed(0)
    model = create_model("vit", dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64).double().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = [3, 5]
    attentions, gradients, chosen = capture_attention_gradients(model, images, targets)
    assert chosen.tolist() == targets and len(gradients) == len(attentions) == 2
    modules = attention_modules(model)

    def target_score(layer: int, direction: torch.Tensor, eps: float) -> float:
        handle = modules[layer].register_forward_hook(lambda _m, _i, out: out + eps * direction)
        try:
            with torch.no_grad():
                logits = model(images)
        finally:
            handle.remove()
        return logits[torch.arange(2), torch.tensor(targets)].sum().item()

    for layer in range(2):
        seeded = torch.Generator().manual_seed(layer)
        direction = torch.randn(attentions[layer].shape, dtype=torch.float64, generator=seeded)
        eps = 1e-6
        numeric = (target_score(layer, direction, eps) - target_score(layer, direction, -eps)) / (2 * eps)
        own = (gradients[layer] * direction).sum().item()
        other = (gradients[1 - layer] * direction).sum().item()
        assert numeric == pytest.approx(own, rel=1e-5, abs=1e-9)
        assert abs(numeric - other) > 1e-3 * max(abs(numeric), 1e-6)


# --- on models --------------------------------------------------------------------------------


def test_rollout_uses_the_models_own_token_grid():
    torch.manual_seed(0)
    model = create_model("vit_b16", image_size=64, patch_size=16, dim=48, depth=2, heads=2, mlp_dim=96)
    images = torch.randn(2, 3, 64, 64)
    assert model.token_grid == (4, 4)
    for heatmaps in (attention_rollout(model, images, "max", 0.5), gradient_rollout(model, images)):
        assert heatmaps.shape == (2, 64, 64)
        assert heatmaps.max() == pytest.approx(1.0) and heatmaps.min() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="token grid"):
        relevance_to_heatmap(torch.rand(2, 16), (8, 8), (64, 64))


def test_rollout_refuses_ultimus_and_ultimus_maps_refuse_token_models():
    ultimus = create_model("ultimus")
    with pytest.raises(ValueError, match="ultimus_attention_maps"):
        attention_rollout(ultimus, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError):
        ultimus_attention_maps(create_model("vit_nano_convstem"), torch.randn(1, 3, 32, 32))


def test_ultimus_attention_maps_are_each_images_softmax_of_q_k():
    torch.manual_seed(0)
    model = create_model("ultimus", residual=True).eval()
    images = torch.randn(3, 3, 32, 32)
    maps = ultimus_attention_maps(model, images)
    assert maps.shape == (3, 4, 8, 8) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-5)
    with torch.no_grad():
        x = model.pool(model.forward_features(images)).flatten(1)  # (B, 48)
        block = model.blocks[0]
        expected = torch.einsum("bi,bj->bij", block.to_q(x), block.to_k(x)).softmax(dim=-1)
    np.testing.assert_allclose(maps[:, 0], expected.numpy(), atol=1e-5)
    alone = ultimus_attention_maps(model, images[1:2])  # one 8x8 map per image, not per batch
    np.testing.assert_allclose(alone[0], maps[1], atol=1e-5)


def test_mean_pooled_vit_reads_out_the_mean_token_row():
    torch.manual_seed(0)
    model = create_model("vit", dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64, pool="mean")
    images = torch.randn(2, 3, 32, 32)
    attentions, _, _ = capture_attention_gradients(model, images)
    mean_row = rollout_matrix(attentions).mean(dim=1)[:, 1:]
    expected = relevance_to_heatmap(mean_row, model.token_grid, (32, 32))
    np.testing.assert_allclose(attention_rollout(model, images), expected.numpy(), atol=1e-6)
