"""Pictures of explanations: colour maps, overlays, denormalisation, attention matrices.

Pure functions on numpy arrays (uint8 RGB images, float heatmaps in [0, 1]);
nothing here touches a model. Colour maps are matplotlib's, looked up by name
in ``matplotlib.colormaps`` (no pyplot, so no GUI backend is loaded).
Reference: pytorch-grad-cam ``utils/image.py`` ``show_cam_on_image`` (the same
alpha blend, done here in RGB and on uint8 images).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

ATTENTION_CELL_PIXELS = 32  # an 8x8 Ultimus map becomes 256x256 pixels


def colorize(heatmap: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) heatmap in [0, 1] -> (H, W, 3) uint8 RGB through a matplotlib colour map."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got {heatmap.shape}")
    rgba = matplotlib.colormaps[cmap](np.clip(heatmap, 0.0, 1.0))  # (H, W, 4) floats in [0, 1]
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> ``size`` (H, W), bilinear (half-pixel centres), clipped to the input's range."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape == tuple(size):
        return heatmap
    grid = torch.from_numpy(np.ascontiguousarray(heatmap))[None, None]
    resized = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(resized, heatmap.min(), heatmap.max())


def overlay(image: np.ndarray, heatmap: np.ndarray, opacity: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend the coloured ``heatmap`` over ``image`` (H, W, 3) uint8 -> (H, W, 3) uint8.

    ``opacity`` is the heatmap's weight: 0 gives the image, 1 the colour map.
    The heatmap is resized to the image if their sizes differ.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], not {opacity}")
    colours = colorize(resize_heatmap(heatmap, image.shape[:2]), cmap).astype(np.float32)
    blended = (1.0 - opacity) * image.astype(np.float32) + opacity * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def denormalize(image: torch.Tensor | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalised image -> (H, W, 3) uint8: ``x * std + mean``, clipped to [0, 1], times 255."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[0] != len(mean) or len(mean) != len(std):
        raise ValueError(f"image must be (C, H, W) with C = len(mean) = len(std), got {array.shape}")
    mean_ = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_ = np.asarray(std, dtype=np.float32)[:, None, None]
    pixels = np.clip(array.astype(np.float32) * std_ + mean_, 0.0, 1.0)
    return np.round(pixels * 255).astype(np.uint8).transpose(1, 2, 0)


def attention_matrix_image(
    matrix: np.ndarray, cell_pixels: int = ATTENTION_CELL_PIXELS, cmap: str = "viridis"
) -> np.ndarray:
    """An (n, m) attention matrix (Ultimus: 8x8) -> (n * cell, m * cell, 3) uint8, one flat square per entry.

    Entries are min-max scaled to the colour map (a constant matrix is drawn at
    the colour map's low end) and upscaled by nearest-neighbour repetition, so
    every cell stays a visible square.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got {matrix.shape}")
    low, high = float(matrix.min()), float(matrix.max())
    scaled = (matrix - low) / (high - low) if high > low else np.zeros_like(matrix)
    cells = colorize(scaled, cmap)
    return np.repeat(np.repeat(cells, cell_pixels, axis=0), cell_pixels, axis=1)
