"""Model zoo: exact parameter counts, the registry contract, equivalences between implementations."""
from __future__ import annotations

import pytest
import torch
import torchvision

from vitlab.models import create_model, list_models, set_fused_attention
from vitlab.models.vit_b16 import torchvision_to_vit_b16_state_dict
from vitlab.models.vit_conv import vit_conv_to_vit_state_dict, vit_to_vit_conv_state_dict

REQUIRED = {"ultimus", "vit", "vit_conv", "vit_b16"}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def image_batch(model: torch.nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = model.model_args.get("image_size", 32)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name, overrides, expected",
    [
        ("ultimus", {}, 25_882),  # the seed's summary
        ("vit", {}, 1_988_490),  # kentaroy47 vit.py at the seed-000 config
        ("vit_conv", {}, 1_988_490),  # same parameters in 1x1-conv style
        ("vit_b16", {"num_classes": 3}, 85_800_963),  # ERA V1 S17 replication (3 food classes)
        ("vit_b16", {"num_classes": 10}, 85_806_346),
    ],
)
def test_exact_parameter_counts(name, overrides, expected):
    assert n_params(create_model(name, **overrides)) == expected


def test_small_vit_preset_fits_the_cpu_budget():
    model = create_model("vit_nano_convstem")
    assert n_params(model) <= 100_000
    assert model.token_grid == (8, 8)


def test_registry_lists_required_models_and_rejects_unknown_names():
    assert REQUIRED <= set(list_models())
    with pytest.raises(KeyError) as err:
        create_model("resnet9000")
    for name in list_models():
        assert name in str(err.value)
    with pytest.raises(TypeError, match="depthh"):
        create_model("vit", depthh=3)


def test_create_model_records_its_arguments():
    model = create_model("vit", depth=2)
    assert model.model_name == "vit"
    assert model.model_args["depth"] == 2 and model.model_args["dim"] == 128
    rebuilt = create_model(model.model_name, **model.model_args)
    assert n_params(rebuilt) == n_params(model)


@pytest.fixture(scope="module", params=list_models())
def any_model(request):
    torch.manual_seed(0)
    return create_model(request.param)


def test_forward_backward_shape_and_finite(any_model):
    model = any_model.train()
    x = image_batch(model)
    logits = model(x)
    assert logits.shape == (2, model.model_args["num_classes"])
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_eval_mode_is_deterministic(any_model):
    model = any_model.eval()
    x = image_batch(model)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_explainer_contract(any_model):
    """cam_target_layers(), token_grid and (B, heads, N, N) softmax outputs named `attend`."""
    model = any_model.eval()
    layers = model.cam_target_layers()
    assert layers and all(isinstance(m, torch.nn.Module) for m in layers)
    attends = [m for name, m in model.named_modules() if name.endswith("attend")]
    assert attends and all(isinstance(m, torch.nn.Softmax) for m in attends)
    captured = []
    handles = [m.register_forward_hook(lambda mod, i, out: captured.append(out)) for m in attends]
    try:
        with torch.no_grad():
            model(image_batch(model))
    finally:
        for h in handles:
            h.remove()
    assert len(captured) == len(attends)
    if model.token_grid is None:  # ultimus: 8x8 feature attention, one head
        expected_n = model.model_args["attn_dim"]
    else:
        h, w = model.token_grid
        expected_n = h * w + 1
    for attn in captured:
        assert attn.ndim == 4 and attn.shape[0] == 2 and attn.shape[-2:] == (expected_n, expected_n)
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)))


def test_token_grid_is_derived_from_the_config():
    assert create_model("vit", image_size=32, patch_size=4).token_grid == (8, 8)
    assert create_model("vit", image_size=32, patch_size=8).token_grid == (4, 4)
    assert create_model("vit_b16", image_size=64, dim=48, depth=1, heads=2, mlp_dim=96).token_grid == (4, 4)
    assert create_model("vit_b16").token_grid == (14, 14)


@pytest.mark.parametrize("variant", [{}, {"batch_norm": True, "downsample": True, "residual": True}])
def test_ultimus_attention_never_mixes_images_of_a_batch(variant):
    """An image's logits must not depend on its batch-mates (the Q^T K-over-the-batch bug)."""
    torch.manual_seed(0)
    model = create_model("ultimus", **variant).eval()
    first = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        alone = model(first)
        with_a = model(torch.cat([first, torch.randn(7, 3, 32, 32)]))[:1]
        with_b = model(torch.cat([first, torch.randn(3, 3, 32, 32) * 5]))[:1]
    torch.testing.assert_close(with_a, alone, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(with_b, alone, atol=1e-6, rtol=1e-5)


def test_ultimus_attention_map_is_an_outer_product_per_image():
    torch.manual_seed(0)
    model = create_model("ultimus").eval()
    block = model.blocks[0]
    x = torch.randn(3, 48)
    maps = []
    handle = block.attend.register_forward_hook(lambda m, i, out: maps.append(out))
    with torch.no_grad():
        block(x)
    handle.remove()
    q, k = block.to_q(x), block.to_k(x)
    expected = torch.softmax(q[:, :, None] * k[:, None, :], dim=-1)
    torch.testing.assert_close(maps[0][:, 0], expected.detach())


def test_ultimus_default_has_no_optional_parts():
    model = create_model("ultimus")
    kinds = {type(m).__name__ for m in model.modules()}
    assert not kinds & {"BatchNorm2d", "MaxPool2d"}
    assert n_params(create_model("ultimus", batch_norm=True)) == 25_882 + 2 * (16 + 32 + 48)
    assert n_params(create_model("ultimus", downsample=True, residual=True)) == 25_882


VIT_CONFIGS = [
    {},
    {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "mlp_dim": 64},
    {"patch_size": 8, "dim": 48, "depth": 1, "heads": 3, "dim_head": 8, "mlp_dim": 32, "pool": "mean"},
    {"dim": 16, "depth": 1, "heads": 1, "dim_head": 16, "mlp_dim": 16, "num_classes": 7},  # heads=1, dim_head=dim: no to_out
]


@pytest.mark.parametrize("config", VIT_CONFIGS)
def test_vit_and_vit_conv_are_the_same_function(config):
    torch.manual_seed(0)
    vit = create_model("vit", **config).eval()
    vit_conv = create_model("vit_conv", **config).eval()
    assert n_params(vit) == n_params(vit_conv)
    patch = vit.model_args["patch_size"]
    vit_conv.load_state_dict(vit_to_vit_conv_state_dict(vit.state_dict(), patch_size=patch), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit_conv(x), vit(x), atol=1e-5, rtol=1e-5)
    # and back: fresh vit_conv weights mapped into a fresh vit
    torch.manual_seed(1)
    other_conv = create_model("vit_conv", **config).eval()
    back = create_model("vit", **config).eval()
    back.load_state_dict(vit_conv_to_vit_state_dict(other_conv.state_dict(), patch_size=patch), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(x), other_conv(x), atol=1e-5, rtol=1e-5)


def test_vit_conv_uses_no_linear_layers_on_tokens():
    model = create_model("vit_conv", dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.to_patch_embedding[0], torch.nn.Conv2d)


def test_fused_attention_matches_the_observable_path():
    torch.manual_seed(0)
    model = create_model("vit", dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        set_fused_attention(model, True)
        fused = model(x)
        set_fused_attention(model, False)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "tv_kwargs, ours",
    [
        (dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5),
         dict(image_size=32, patch_size=8, depth=2, heads=2, dim=32, mlp_dim=64, num_classes=5)),
        (dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072, num_classes=1000),
         dict(num_classes=1000)),  # the real vit_b_16 architecture, randomly initialised
    ],
    ids=["small", "vit_b_16"],
)
def test_vit_b16_loads_torchvision_weights(tv_kwargs, ours):
    torch.manual_seed(0)
    reference = torchvision.models.VisionTransformer(**tv_kwargs).eval()
    with torch.no_grad():  # torchvision zero-initialises its head: randomise it so the test can fail
        reference.heads.head.weight.normal_()
        reference.heads.head.bias.normal_()
    model = create_model("vit_b16", **ours).eval()
    model.load_state_dict(torchvision_to_vit_b16_state_dict(reference.state_dict()), strict=True)
    x = torch.randn(2, 3, tv_kwargs["image_size"], tv_kwargs["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)
