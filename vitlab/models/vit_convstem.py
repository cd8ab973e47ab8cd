"""Small vision transformers with a convolutional stem, for CPU training.

A conv stem (three 3x3 convolutions with BatchNorm, the last two with stride 2)
turns a 32 px image into an 8x8 grid of tokens, the same grid as ``vit``'s
4-pixel patches; then a class token, learned position embeddings and the
pre-norm transformer blocks of :mod:`vitlab.models.vit`. Convolutional stems
train faster and more stably than patchify stems on small data (Xiao et al.
2021, "Early Convolutions Help Transformers See Better", arXiv:2106.14881), which
is what a 24-epoch CPU budget needs.

The ``vit_nano_convstem`` preset (95,258 parameters) is the CPU-trained app
default; its measured accuracy and time are in ``checkpoints/vit_nano_convstem``.
"""
from __future__ import annotations

import torch
from einops import repeat
from einops.layers.torch import Rearrange
from torch import nn

from .registry import register_model
from .vit import Transformer


def stem_conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ConvStemViT(nn.Module):
    """Conv stem (/4) -> tokens -> pre-norm transformer -> LayerNorm + Linear on the class token."""

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_classes: int = 10,
        stem_width: int = 16,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        dim_head: int = 16,
        mlp_dim: int = 128,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        channels: int = 3,
    ):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size {image_size} must be divisible by 4 (the stem's stride)")
        grid = image_size // 4
        self.token_grid = (grid, grid)
        self.stem = nn.Sequential(
            stem_conv(channels, stem_width, 1),
            stem_conv(stem_width, 2 * stem_width, 2),
            stem_conv(2 * stem_width, dim, 2),
            Rearrange("b d h w -> b (h w) d"),
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward_features(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + h*w, D) tokens, class token first."""
        x = self.stem(img)
        x = torch.cat((repeat(self.cls_token, "1 1 d -> b 1 d", b=x.shape[0]), x), dim=1)
        x = self.dropout(x + self.pos_embedding)
        return self.transformer(x)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp_head(tokens[:, 0])

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(img))

    def cam_target_layers(self) -> list[nn.Module]:
        # Norm in front of the last attention: see ``ViT.cam_target_layers``.
        return [self.transformer.layers[-1][0].norm]


register_model(
    "vit_nano_convstem",
    ConvStemViT,
    description="95k-parameter ViT with a 3-conv stem, 8x8 tokens, 2 blocks of dim 64: the CPU-trained app default",
)
