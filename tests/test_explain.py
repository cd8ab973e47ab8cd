"""The explainer registry: every method on every model it applies to, hooks, targets, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.modules import module as torch_module

from vitlab.explain import EXPLAINERS, explainers_for
from vitlab.explain.cam import CAM_METHODS
from vitlab.models import create_model, list_models

# Tiny configs so every explainer runs on every model in seconds; a model not
# listed here is tested at its defaults the day it is registered.
TINY = {
    "vit": dict(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64),
    "vit_conv": dict(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64),
    # 64 px with patch 16: a 4x4 token grid, so nothing may assume 14x14 or 8x8.
    "vit_b16": dict(image_size=64, patch_size=16, dim=48, depth=2, heads=2, mlp_dim=96),
}
ROLLOUTS = ("attention_rollout", "gradient_rollout")


def make_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **TINY.get(name, {}))


def image_batch(model: torch.nn.Module, batch: int = 2, seed: int = 0, channels: int = 3) -> torch.Tensor:
    size = model.model_args.get("image_size", 32)
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def hook_state(model: torch.nn.Module) -> dict:
    """Hook counts of every module (forward, forward-pre, backward incl. full, backward-pre) and the global ones."""
    state = {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
        for name, m in model.named_modules()
    }
    state["<global>"] = tuple(
        len(hooks)
        for hooks in (
            torch_module._global_forward_hooks,
            torch_module._global_forward_pre_hooks,
            torch_module._global_backward_hooks,
            torch_module._global_backward_pre_hooks,
        )
    )
    return state


def structure(model: torch.nn.Module) -> list[tuple[str, int]]:
    return [(name, id(m)) for name, m in model.named_modules()]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {name: make_model(name) for name in list_models()}


@pytest.mark.parametrize("model_name", list_models())
@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_explainer_contract_on_every_model(models, model_name, method):
    model = models[model_name]
    images = image_batch(model)
    if method not in explainers_for(model):
        with pytest.raises(ValueError):
            EXPLAINERS[method](model, images)
        return
    model.train()  # the explainer must switch to eval itself
    hooks, layout = hook_state(model), structure(model)

    heatmaps = EXPLAINERS[method](model, images)

    assert isinstance(heatmaps, np.ndarray) and heatmaps.dtype == np.float32
    assert heatmaps.shape == (images.shape[0], *images.shape[-2:])
    assert np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0.0 and heatmaps.max() <= 1.0
    assert hook_state(model) == hooks and structure(model) == layout
    assert not model.training
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind


def test_explainers_for_matches_model_kind(models):
    assert explainers_for(models["ultimus"]) == list(CAM_METHODS)
    for name in ("vit", "vit_conv", "vit_b16", "vit_nano_convstem"):
        assert explainers_for(models[name]) == list(EXPLAINERS)
    assert set(ROLLOUTS) <= set(EXPLAINERS)


@pytest.mark.parametrize("method", ["gradcam", "gradient_rollout"])
def test_targets_accept_ints_lists_arrays_tensors_and_default_to_prediction(models, method):
    model = models["vit"]
    images = image_batch(model)
    explain = EXPLAINERS[method]
    predicted = model.eval()(images).argmax(dim=-1)
    as_list = explain(model, images, predicted.tolist())
    np.testing.assert_allclose(explain(model, images, None), as_list, atol=1e-6)
    np.testing.assert_allclose(explain(model, images, predicted.numpy()), as_list, atol=1e-6)
    np.testing.assert_allclose(explain(model, images, predicted), as_list, atol=1e-6)
    one_class = explain(model, images, 3)
    np.testing.assert_allclose(one_class, explain(model, images, [3, 3]), atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradient_rollout"])
def test_heatmap_depends_on_the_target_class(models, method):
    model = models["vit_nano_convstem"]
    images = image_batch(model, batch=1)
    first, second = (EXPLAINERS[method](model, images, [c]) for c in (0, 1))
    assert np.abs(first - second).max() > 1e-3


@pytest.mark.parametrize("model_name", ["vit", "ultimus"])
@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_no_hooks_remain_after_an_error(models, model_name, method):
    model = models[model_name]
    if method not in explainers_for(model):
        pytest.skip(f"{method} does not apply to {model_name}")
    hooks, layout = hook_state(model), structure(model)
    one_channel = image_batch(model, channels=1)  # fails inside the model's forward pass
    try:
        EXPLAINERS[method](model, one_channel)
    except (RuntimeError, ValueError):
        # Checked while the exception (and its traceback's frames) is alive, as
        # when a caller logs it: the hooks must be gone already, not only once
        # the garbage collector runs pytest-grad-cam's ``__del__``.
        assert hook_state(model) == hooks and structure(model) == layout
    else:
        pytest.fail("one-channel images should not explain")
    assert hook_state(model) == hooks and structure(model) == layout


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "gradient_rollout"])
def test_bad_targets_raise_instead_of_being_swallowed(models, method):
    # pytorch-grad-cam's ``with cam:`` would print and swallow the IndexError of a
    # class past the last one, returning nothing.
    model = models["vit"]
    images = image_batch(model)
    hooks = hook_state(model)
    with pytest.raises((IndexError, ValueError)):
        EXPLAINERS[method](model, images, [0, 10])
    with pytest.raises(ValueError, match="out of range"):
        EXPLAINERS[method](model, images, [-1, 0])
    with pytest.raises(ValueError, match="2 images"):
        EXPLAINERS[method](model, images, [0, 1, 2])
    assert hook_state(model) == hooks


def test_parameter_gradients_of_the_caller_are_kept(models):
    model = models["vit"]
    marker = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), marker):
        p.grad = g
    try:
        EXPLAINERS["gradcam"](model, image_batch(model))
        assert all(p.grad is g for p, g in zip(model.parameters(), marker))
    finally:
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", ["gradcam", "gradient_rollout", "attention_rollout"])
def test_explainers_work_inside_inference_mode_and_with_frozen_parameters(method):
    model = make_model("vit_nano_convstem")
    images = image_batch(model)
    reference = EXPLAINERS[method](model, images)
    model.requires_grad_(False)
    with torch.inference_mode():
        frozen = EXPLAINERS[method](model, image_batch(model))
    np.testing.assert_allclose(frozen, reference, atol=1e-5)


def test_fused_attention_is_turned_off_for_explaining():
    from vitlab.models import set_fused_attention

    model = make_model("vit")
    set_fused_attention(model, True)
    heatmaps = EXPLAINERS["attention_rollout"](model, image_batch(model))
    assert heatmaps.max() == pytest.approx(1.0)  # the attention was captured, not skipped
