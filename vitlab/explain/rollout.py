"""Attention-based explanations: attention rollout, gradient-weighted rollout, Ultimus maps.

Every model in :mod:`vitlab.models` computes its attention weights in a softmax
module named ``attend`` (output (B, heads, N, N), class token at index 0 for the
token models). Forward hooks on those modules capture the weights for one call
(:func:`captured_attention`, hooks always removed); the arithmetic on the
captured tensors is kept in pure functions (:func:`rollout_from_attentions`,
:func:`gradient_rollout_from`) that tests feed hand-made attention.

Attention rollout (Abnar & Zuidema 2020): each layer's heads are fused into one
(B, N, N) matrix, the identity is added for the residual connection, rows are
renormalised to sum to 1, and the layers are multiplied in forward order; the
class-token row over the patch tokens is the map. It is class-agnostic.

Gradient rollout (Chefer, Gur & Wolf 2021, the rule for self-attention layers
in section 3 of the bi-modal paper): with R = I,
``R += mean_heads((dA * A)^+) @ R`` for each layer in forward order, where dA is
the gradient of the target logit with respect to *that* layer's attention A.
The gradients are taken with one ``torch.autograd.grad`` call on the list of
captured attentions, so each layer is paired with its own gradient by
construction; collecting them from backward hooks, which fire in reverse
layer order, is the pairing bug of jacobgil/vit-explain issue #6.

Ultimus (EVA8 S9) attends over 8 features of one pooled vector, not over space,
so it has no spatial rollout; :func:`ultimus_attention_maps` returns its
per-block 8x8 maps.

References:
- Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", arXiv:2005.00928.
- Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for Interpreting
  Bi-Modal and Encoder-Decoder Transformers", arXiv:2103.15679; code:
  hila-chefer/Transformer-MM-Explainability.
- jacobgil/vit-explain ``vit_rollout.py`` (issue #16: the row normalisation must
  keep the summed dimension; issue #6: gradients paired with the wrong layer).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models import set_fused_attention

from .base import Targets, normalize_maps, resolve_targets

HEAD_FUSIONS = ("mean", "max", "min")


# ---------------------------------------------------------------------------
# Capturing attention from a model
# ---------------------------------------------------------------------------


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The softmax modules named ``attend``, in registration order."""
    return [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == "attend"]


def supports_rollout(model: nn.Module) -> bool:
    """True for token models: a patch-token grid and ``attend`` modules to hook."""
    return getattr(model, "token_grid", None) is not None and bool(attention_modules(model))


@contextmanager
def captured_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect every ``attend`` output of the forward passes run inside the block.

    The list fills in call order (forward order). The hooks are removed on
    leaving the block, also when it raises.
    """
    attentions: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        attentions.append(output)

    handles = [module.register_forward_hook(record) for module in attention_modules(model)]
    try:
        yield attentions
    finally:
        for handle in handles:
            handle.remove()


def _prepare(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Eval mode and unfused attention (fused kernels skip ``attend``); the images on the model's device."""
    model.eval()
    set_fused_attention(model, False)
    return images.detach().to(next(model.parameters()).device)


def _require_token_model(model: nn.Module, method: str) -> tuple[int, int]:
    if not supports_rollout(model):
        raise ValueError(
            f"{method} needs a token model (a token_grid and 'attend' modules); "
            f"{type(model).__name__} has token_grid={getattr(model, 'token_grid', None)}"
            " (for ultimus use ultimus_attention_maps)"
        )
    return tuple(model.token_grid)


def _readout_for(model: nn.Module) -> str:
    # Mean-pooled ViTs decide from the average token, the others from the class token.
    return "mean" if getattr(model, "pool", "cls") == "mean" else "cls"


def capture_attention_gradients(
    model: nn.Module, images: torch.Tensor, targets: Targets = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Each layer's attention (B, H, N, N), the target logit's gradient w.r.t. it, and the targets.

    One forward pass with gradients on; ``torch.autograd.grad`` returns the
    gradients in the order of the attentions it is given, so ``gradients[i]``
    belongs to ``attentions[i]``. No parameter's ``.grad`` is touched.
    """
    images = _prepare(model, images)
    # inference_mode(False) lets a caller inside inference_mode still get gradients
    # (the clone is an ordinary tensor); the input requires grad so the attention
    # does even when the parameters are frozen.
    with torch.inference_mode(False), torch.enable_grad():
        images = images.clone().requires_grad_(True)
        with captured_attention(model) as attentions:
            logits = model(images)
        if not attentions:
            raise RuntimeError(f"no 'attend' module of {type(model).__name__} ran in the forward pass")
        chosen = resolve_targets(targets, logits)
        # Images are independent in eval mode, so the sum's gradient on image b's
        # attention is the gradient of image b's own target logit.
        score = logits.gather(1, chosen[:, None]).sum()
        gradients = torch.autograd.grad(score, attentions)
    return [a.detach() for a in attentions], [g.detach() for g in gradients], chosen


# ---------------------------------------------------------------------------
# Pure arithmetic on attention tensors
# ---------------------------------------------------------------------------


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N): the mean, max or min over heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, not {head_fusion!r}")


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the lowest ``discard_ratio`` fraction of patch-to-patch weights of each (N, N) matrix.

    The class-token row and column (index 0) are never zeroed: they carry the
    class token's mixing, which the read-out row depends on. vit-explain keeps
    only entry [0, 0] (and, indexing the flattened batch, only for image 0).
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), not {discard_ratio}")
    b, n, _ = fused.shape
    patches = fused[:, 1:, 1:].reshape(b, -1)  # (B, (N-1)^2) candidate weights
    count = int(patches.shape[1] * discard_ratio)
    if count == 0:
        return fused
    lowest = patches.topk(count, dim=-1, largest=False).indices
    out = fused.clone()
    out[:, 1:, 1:] = patches.scatter(-1, lowest, 0.0).view(b, n - 1, n - 1)
    return out


def residual_attention(attention: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """One layer's rollout factor: fuse heads, discard, add I, renormalise rows to 1. (B, N, N)."""
    fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
    with_residual = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    # keepdim: divide row i by row i's sum (without it, row i is divided by
    # entries of a *column*: vit-explain issue #16).
    return with_residual / with_residual.sum(dim=-1, keepdim=True)


def rollout_matrix(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """The product A_L ... A_1 of the layers' residual attentions, first layer rightmost. (B, N, N)."""
    if not attentions:
        raise ValueError("attention rollout needs at least one layer of attention")
    result = None
    for attention in attentions:  # forward order: layer 1 first
        layer = residual_attention(attention, head_fusion, discard_ratio)
        result = layer if result is None else layer @ result
    return result


def _read_out(relevance: torch.Tensor, readout: str) -> torch.Tensor:
    """(B, N, N) token-to-token relevance -> (B, N - 1) over patch tokens."""
    if readout == "cls":
        return relevance[:, 0, 1:]
    if readout == "mean":
        return relevance.mean(dim=1)[:, 1:]
    raise ValueError(f"readout must be 'cls' or 'mean', not {readout!r}")


def rollout_from_attentions(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    readout: str = "cls",
) -> torch.Tensor:
    """Attention rollout of (B, H, N, N) layers, in forward order -> (B, N - 1) patch relevance.

    ``readout="cls"`` reads the class-token row; ``"mean"`` the mean row (for
    mean-pooled models). The class token's own column is dropped.
    """
    return _read_out(rollout_matrix(attentions, head_fusion, discard_ratio), readout)


def gradient_rollout_from(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor], readout: str = "cls"
) -> torch.Tensor:
    """Chefer et al. rollout: ``gradients[i]`` is the target's gradient w.r.t. ``attentions[i]``.

    R = I; for each layer in forward order R += mean_heads((dA * A)^+) @ R.
    Returns (B, N - 1) patch relevance read out like :func:`rollout_from_attentions`.
    """
    if len(attentions) != len(gradients) or not attentions:
        raise ValueError(f"need one gradient per attention layer, got {len(attentions)} and {len(gradients)}")
    b, _, n, _ = attentions[0].shape
    relevance = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(b, n, n)
    for attention, gradient in zip(attentions, gradients):
        weighted = (gradient * attention).clamp(min=0).mean(dim=1)  # (B, N, N)
        relevance = relevance + weighted @ relevance
    return _read_out(relevance, readout)


def relevance_to_heatmap(
    relevance: torch.Tensor, token_grid: tuple[int, int], image_size: tuple[int, int]
) -> torch.Tensor:
    """(B, h*w) patch relevance -> (B, H, W) heatmap in [0, 1], upsampled bilinearly."""
    h, w = token_grid
    if relevance.shape[1] != h * w:
        raise ValueError(f"{relevance.shape[1]} patch tokens do not fill the {h}x{w} token grid")
    grid = relevance.reshape(relevance.shape[0], 1, h, w)  # tokens are in raster order
    upsampled = F.interpolate(grid.float(), size=tuple(image_size), mode="bilinear", align_corners=False)
    return normalize_maps(upsampled[:, 0])


# ---------------------------------------------------------------------------
# Explainers on a model
# ---------------------------------------------------------------------------


def attention_rollout(
    model: nn.Module, images: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> np.ndarray:
    """Attention rollout heatmaps, (B, H, W) float32 in [0, 1] at the input resolution.

    Class-agnostic. ``head_fusion``: "mean" (the paper), "max" or "min";
    ``discard_ratio``: fraction of the weakest patch-to-patch weights dropped
    per layer (vit-explain suggests "max" with 0.9 for sharper maps). A map with
    no spatial preference (e.g. identity attention) is all zeros (see
    :func:`vitlab.explain.base.normalize_maps`).
    """
    token_grid = _require_token_model(model, "attention_rollout")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, not {head_fusion!r}")
    images = _prepare(model, images)
    with torch.inference_mode(), captured_attention(model) as attentions:
        model(images)
        relevance = rollout_from_attentions(attentions, head_fusion, discard_ratio, _readout_for(model))
        heatmaps = relevance_to_heatmap(relevance, token_grid, images.shape[-2:])
    return heatmaps.cpu().numpy().astype(np.float32)


def gradient_rollout(model: nn.Module, images: torch.Tensor, targets: Targets = None) -> np.ndarray:
    """Chefer et al. gradient-weighted rollout for ``targets`` (default: predicted), (B, H, W) in [0, 1]."""
    token_grid = _require_token_model(model, "gradient_rollout")
    attentions, gradients, _ = capture_attention_gradients(model, images, targets)
    relevance = gradient_rollout_from(attentions, gradients, _readout_for(model))
    heatmaps = relevance_to_heatmap(relevance, token_grid, images.shape[-2:])
    return heatmaps.cpu().numpy().astype(np.float32)


def ultimus_attention_maps(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Each Ultimus block's per-image attention map, (B, num_blocks, 8, 8) float32.

    These are the outputs of the blocks' ``attend`` softmax (rows sum to 1); in
    the default formula the block then multiplies them by 1/sqrt(8).
    """
    blocks = getattr(model, "blocks", None)
    attends_over_features = hasattr(model, "token_grid") and model.token_grid is None  # Ultimus, not a token model
    if not attends_over_features or blocks is None:
        raise ValueError(f"ultimus_attention_maps needs an Ultimus model, got {type(model).__name__}")
    images = _prepare(model, images)
    with torch.inference_mode(), captured_attention(model) as attentions:
        model(images)
    if len(attentions) != len(blocks):
        raise RuntimeError(f"captured {len(attentions)} attention maps for {len(blocks)} blocks")
    maps = torch.stack([a.squeeze(1) for a in attentions], dim=1)  # (B, blocks, 8, 8)
    return maps.cpu().numpy().astype(np.float32)
