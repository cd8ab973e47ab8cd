"""The reference CIFAR-10 Vision Transformer (lucidrains structure).

A faithful port of kentaroy47/vision-transformers-cifar10 ``models/vit.py``,
itself lucidrains/vit-pytorch ``vit_pytorch/vit.py``: patch ``Rearrange`` +
``Linear`` embedding, a learned class token and position embedding, pre-norm
attention with a bias-free ``to_qkv``, pre-norm GELU feed-forward, residuals,
and a ``LayerNorm`` + ``Linear`` head on the class token (or the token mean).

At the seed-000 config (32 px, patch 4, dim 128, depth 6, heads 8, dim_head 64,
mlp_dim 256, 10 classes) it has exactly 1,988,490 parameters.

References:
- Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", arXiv:2010.11929.
- https://github.com/kentaroy47/vision-transformers-cifar10/blob/main/models/vit.py
- https://github.com/lucidrains/vit-pytorch/blob/main/vit_pytorch/vit.py
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import repeat
from einops.layers.torch import Rearrange
from torch import nn

from .registry import register_model

# A factory for the token-wise linear maps: (in_features, out_features, bias) -> module.
# ``nn.Linear`` here; ``vit_conv`` swaps in 1x1 convolutions.
TokenLinear = Callable[..., nn.Module]


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))``: the norm is a named child so CAM hooks can target it."""

    def __init__(self, dim: int, fn: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout, on (B, N, D) tokens."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, linear: TokenLinear = nn.Linear):
        super().__init__()
        self.net = nn.Sequential(
            linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention with an observable softmax ``attend``.

    ``attend`` outputs the (B, heads, N, N) attention weights; explainers hook it.
    ``fused = True`` uses ``scaled_dot_product_attention`` instead, which never
    materialises the weights: a training-speed option only, never for explaining.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        *,
        qkv_bias: bool = False,
        attn_dropout: float = 0.0,
        linear: TokenLinear = nn.Linear,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        project_out = not (heads == 1 and dim_head == dim)
        self.heads = heads
        self.scale = dim_head**-0.5
        self.fused = False
        self.attend = nn.Softmax(dim=-1)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.to_qkv = linear(dim, inner_dim * 3, bias=qkv_bias)
        self.to_out = nn.Sequential(linear(inner_dim, dim), nn.Dropout(dropout)) if project_out else nn.Identity()
        self.split_heads = Rearrange("b n (h d) -> b h n d", h=heads)
        self.merge_heads = Rearrange("b h n d -> b n (h d)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = map(self.split_heads, self.to_qkv(x).chunk(3, dim=-1))  # (B, H, N, d) each
        if self.fused:
            p = self.attn_dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            dots = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, H, N, N)
            attn = self.attn_dropout(self.attend(dots))
            out = torch.matmul(attn, v)
        return self.to_out(self.merge_heads(out))


class Transformer(nn.Module):
    """``depth`` pre-norm blocks: ``x = attn(x) + x; x = ff(x) + x``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        mlp_dim: int,
        dropout: float = 0.0,
        linear: TokenLinear = nn.Linear,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, heads, dim_head, dropout, linear=linear)),
                    PreNorm(dim, FeedForward(dim, mlp_dim, dropout, linear=linear)),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class ViT(nn.Module):
    """kentaroy47/lucidrains ViT for CIFAR-10; keyword-only, JSON-friendly config."""

    token_linear: TokenLinear = nn.Linear

    def __init__(
        self,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        num_classes: int = 10,
        dim: int = 128,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        mlp_dim: int = 256,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
        pool: str = "cls",
        channels: int = 3,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
        grid = image_size // patch_size
        self.token_grid = (grid, grid)
        self.pool = pool
        self.to_patch_embedding = self.make_patch_embedding(channels, patch_size, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, grid * grid + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, dropout, linear=type(self).token_linear)
        self.mlp_head = self.make_head(dim, num_classes)

    def make_patch_embedding(self, channels: int, patch_size: int, dim: int) -> nn.Module:
        return nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size),
            nn.Linear(channels * patch_size * patch_size, dim),
        )

    def make_head(self, dim: int, num_classes: int) -> nn.Module:
        return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward_features(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, 1 + h*w, D) tokens, class token first."""
        x = self.to_patch_embedding(img)
        b, n, _ = x.shape
        cls_tokens = repeat(self.cls_token, "1 1 d -> b 1 d", b=b)
        x = torch.cat((cls_tokens, x), dim=1)
        x = x + self.pos_embedding[:, : n + 1]
        x = self.dropout(x)
        return self.transformer(x)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, num_classes) logits."""
        x = tokens.mean(dim=1) if self.pool == "mean" else tokens[:, 0]
        return self.mlp_head(x)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(img))

    def cam_target_layers(self) -> list[nn.Module]:
        # The norm in front of the last attention. The last block's *output* patch
        # tokens never reach the class-token head, so their gradient is zero and a
        # CAM there is blank; the tokens entering the last attention are the latest
        # point where every patch still influences the class token.
        return [self.transformer.layers[-1][0].norm]


register_model(
    "vit",
    ViT,
    description="kentaroy47 CIFAR-10 ViT, seed-000 config (patch 4, dim 128, depth 6, 8x64 heads, mlp 256)",
)
