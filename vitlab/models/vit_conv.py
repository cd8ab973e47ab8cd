"""The CIFAR-10 ViT rewritten in the course's "1x1 convolution + Rearrange" style.

Same network, same parameters, same function as :mod:`vitlab.models.vit`:
every ``Linear`` applied to tokens becomes a 1x1 ``Conv2d`` with einops
``Rearrange`` around it (tokens ``(B, N, D)`` are viewed as a ``(B, D, N, 1)``
feature map), and the patch embedding ``Rearrange + Linear`` becomes a
``Conv2d`` with kernel and stride equal to the patch size. The classifier on the
pooled token is a 1x1 convolution too. :func:`vit_to_vit_conv_state_dict` and
:func:`vit_conv_to_vit_state_dict` map weights both ways; the tests check the
logits agree.

Parameter count at the seed-000 config: exactly 1,988,490, like ``vit``. The
seed assignment's torchsummary printed 1,989,258: its 1x1 ``to_qkv`` convolution
kept a bias (6 layers x 1,536 = +9,216) and torchsummary does not see bare
``nn.Parameter`` s, so it skipped the class token and position embedding
(128 + 65 x 128 = -8,448). The reference ``to_qkv`` has no bias, and neither
does this one.

References: kentaroy47/vision-transformers-cifar10 ``models/vit.py``; the
course's transformer assignment (1x1 convolutions instead of Linear layers).
"""
from __future__ import annotations

import torch
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from .registry import register_model
from .vit import ViT


class TokenConv1x1(nn.Module):
    """A token-wise linear map as a 1x1 convolution: (B, N, Din) -> (B, N, Dout)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.to_map = Rearrange("b n d -> b d n 1")
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=1, bias=bias)
        self.to_tokens = Rearrange("b d n 1 -> b n d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_tokens(self.conv(self.to_map(x)))


class ViTConv(ViT):
    """``ViT`` with 1x1-convolution token maps and a strided-convolution patch embedding."""

    token_linear = TokenConv1x1

    def make_patch_embedding(self, channels: int, patch_size: int, dim: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size),
            Rearrange("b d h w -> b (h w) d"),
        )

    def make_head(self, dim: int, num_classes: int) -> nn.Module:
        return nn.Sequential(
            nn.LayerNorm(dim),
            Rearrange("b d -> b d 1 1"),
            nn.Conv2d(dim, num_classes, kernel_size=1),
            Rearrange("b c 1 1 -> b c"),
        )


# Keys that differ between the two implementations, as (vit prefix, vit_conv prefix).
_PATCH = ("to_patch_embedding.1.", "to_patch_embedding.0.")
_HEAD = ("mlp_head.1.", "mlp_head.2.")


def vit_to_vit_conv_state_dict(state: dict[str, torch.Tensor], *, patch_size: int) -> dict[str, torch.Tensor]:
    """Map a ``vit`` state dict onto ``vit_conv``'s keys and shapes."""
    out = {}
    for key, value in state.items():
        if key.startswith(_PATCH[0]):
            key = _PATCH[1] + key[len(_PATCH[0]) :]
            if key.endswith("weight"):  # Linear over (p1 p2 c) -> Conv2d (c, p1, p2)
                value = rearrange(value, "o (p1 p2 c) -> o c p1 p2", p1=patch_size, p2=patch_size)
        elif key.startswith(_HEAD[0]):
            key = _HEAD[1] + key[len(_HEAD[0]) :]
            if key.endswith("weight"):
                value = value[:, :, None, None]
        elif key.startswith("transformer.") and key.endswith((".weight", ".bias")) and ".norm." not in key:
            key = key.rsplit(".", 1)[0] + ".conv." + key.rsplit(".", 1)[1]
            if key.endswith("weight"):
                value = value[:, :, None, None]
        out[key] = value
    return out


def vit_conv_to_vit_state_dict(state: dict[str, torch.Tensor], *, patch_size: int) -> dict[str, torch.Tensor]:
    """Map a ``vit_conv`` state dict onto ``vit``'s keys and shapes (inverse of the above)."""
    out = {}
    for key, value in state.items():
        if key.startswith(_PATCH[1]):
            key = _PATCH[0] + key[len(_PATCH[1]) :]
            if key.endswith("weight"):
                value = rearrange(value, "o c p1 p2 -> o (p1 p2 c)")
        elif key.startswith(_HEAD[1]):
            key = _HEAD[0] + key[len(_HEAD[1]) :]
            if key.endswith("weight"):
                value = value[:, :, 0, 0]
        elif ".conv." in key:
            key = key.replace(".conv.", ".")
            if key.endswith("weight"):
                value = value[:, :, 0, 0]
        out[key] = value
    return out


register_model(
    "vit_conv",
    ViTConv,
    description="the seed-000 ViT in 1x1-conv + Rearrange style (same 1,988,490 parameters as vit)",
)
