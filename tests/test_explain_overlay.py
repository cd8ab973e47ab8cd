"""Colour maps and overlays: pure functions on arrays."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from vitlab.explain import attention_matrix_image, colorize, denormalize, overlay

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def test_colorize_uses_the_matplotlib_colour_map():
    heatmap = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    rgb = colorize(heatmap, "jet")
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    jet = matplotlib.colormaps["jet"]
    for value, pixel in ((0.0, rgb[0, 0]), (1.0, rgb[1, 0]), (0.5, rgb[0, 1])):
        assert pixel.tolist() == np.round(np.array(jet(value)[:3]) * 255).astype(int).tolist()
    assert colorize(heatmap, "gray")[1, 0].tolist() == [255, 255, 255]


def test_overlay_blends_by_opacity_and_resizes_the_heatmap():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    heatmap = rng.random((8, 8), dtype=np.float32)  # token-grid resolution
    assert np.array_equal(overlay(image, heatmap, opacity=0.0), image)
    full = overlay(image, heatmap, opacity=1.0)
    assert full.shape == (32, 32, 3) and full.dtype == np.uint8
    half = overlay(image, heatmap, opacity=0.5).astype(int)
    assert np.abs(half - (image.astype(int) + full.astype(int)) / 2).max() <= 1
    flat = overlay(image, np.ones((32, 32), np.float32), opacity=1.0, cmap="gray")
    assert (flat == 255).all()
    with pytest.raises(ValueError):
        overlay(image.astype(np.float32), heatmap)


def test_denormalize_inverts_normalisation():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    normalised = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    assert np.array_equal(denormalize(normalised, MEAN, STD), image)
    assert np.array_equal(denormalize(normalised.numpy(), MEAN, STD), image)


def test_attention_matrix_image_draws_one_square_per_entry():
    matrix = np.arange(64, dtype=np.float32).reshape(8, 8)
    picture = attention_matrix_image(matrix, cell_pixels=4)
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    cell = picture[8:12, 20:24]  # entry (2, 5)
    assert (cell == cell[0, 0]).all()
    assert cell[0, 0].tolist() == colorize(np.array([[21 / 63]]), "viridis")[0, 0].tolist()
    assert (attention_matrix_image(np.full((8, 8), 0.125)) == colorize(np.zeros((1, 1)), "viridis")[0, 0]).all()
