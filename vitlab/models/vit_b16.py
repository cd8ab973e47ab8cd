"""ViT-B/16 as in the paper, and a loader for torchvision's ImageNet weights.

Equations (1)-(4) of Dosovitskiy et al.: a 16x16 patch embedding (a strided
convolution), a learnable class token, learned 1-D position embeddings, L = 12
pre-norm encoder blocks ``z' = MSA(LN(z)) + z; z = MLP(LN(z')) + z'`` with
D = 768, 12 heads and a 3072-wide GELU MLP, a final LayerNorm and a linear head
on the class token. Dropout sits where the paper (appendix B.1) and torchvision
put it: after the position embedding add, after every dense layer but the
``qkv`` projection, and (``attn_dropout``) on the attention weights.

Parameters: exactly 85,800,963 with 3 classes (the ERA V1 S17 food replication)
and 85,806,346 with 10. The module names follow torchvision's
``VisionTransformer`` closely, so :func:`load_torchvision_vit_b16` maps its
``vit_b_16`` ImageNet state dict by renaming keys only (same logits; tested).

References:
- Dosovitskiy et al. 2021, arXiv:2010.11929, section 3.1 and appendix B.1.
- torchvision ``models/vision_transformer.py`` (``vit_b_16``).
- ERA V1 session 17 ViT replication (PatchEmbedding / MSA / MLP blocks).
"""
from __future__ import annotations

import os
import re

import torch
from einops import repeat
from einops.layers.torch import Rearrange
from torch import nn

from .registry import register_model
from .vit import Attention, FeedForward

LAYER_NORM_EPS = 1e-6  # torchvision and the paper's JAX code; PyTorch's default is 1e-5


class EncoderBlock(nn.Module):
    """One transformer encoder block, paper eqs. (2) and (3)."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int, dropout: float, attn_dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attention = Attention(
            dim, heads, dim // heads, dropout, qkv_bias=True, attn_dropout=attn_dropout
        )
        self.ln_2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.ln_1(x)) + x
        return self.mlp(self.ln_2(x)) + x


class ViTB16(nn.Module):
    """ViT-B/16 (224 px, patch 16, D 768, 12 layers, 12 heads, MLP 3072)."""

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 10,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        emb_dropout: float = 0.1,
        channels: int = 3,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        grid = image_size // patch_size
        self.token_grid = (grid, grid)
        self.patch_embedding = nn.Sequential(
            nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size),  # eq. (1): x_p E
            Rearrange("b d h w -> b (h w) d"),
        )
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, grid * grid + 1, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(dim=dim, heads=heads, mlp_dim=mlp_dim, dropout=dropout, attn_dropout=attn_dropout)
            for _ in range(depth)
        )
        self.ln = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + h*w, D) normalised tokens, class token first."""
        x = self.patch_embedding(img)
        x = torch.cat((repeat(self.class_token, "1 1 d -> b 1 d", b=x.shape[0]), x), dim=1)
        x = self.dropout(x + self.pos_embedding)
        for block in self.blocks:
            x = block(x)
        return self.ln(x)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(tokens[:, 0])  # eq. (4): y = LN(z_L^0), then the head

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(img))

    def cam_target_layers(self) -> list[nn.Module]:
        # Norm in front of the last attention: see ``ViT.cam_target_layers``.
        return [self.blocks[-1].ln_1]


_TORCHVISION_RENAMES = [
    (r"^conv_proj\.", "patch_embedding.0."),
    (r"^encoder\.pos_embedding$", "pos_embedding"),
    (r"^encoder\.ln\.", "ln."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attention.to_qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attention.to_out.0."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.", r"blocks.\1.mlp.net.0."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.", r"blocks.\1.mlp.net.3."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
]


def torchvision_to_vit_b16_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision ``VisionTransformer`` keys to :class:`ViTB16` keys.

    torchvision's ``in_proj_weight`` stacks q, k, v and splits heads as
    ``(heads, head_dim)``, exactly like ``to_qkv`` + ``chunk(3)`` + ``'b n (h d)'``,
    so tensors are copied unchanged.
    """
    out = {}
    for key, value in state.items():
        new_key = key
        for pattern, replacement in _TORCHVISION_RENAMES:
            new_key, n = re.subn(pattern, replacement, new_key)
            if n:
                break
        out[new_key] = value
    return out


def load_torchvision_vit_b16(path: str | os.PathLike, *, num_classes: int = 1000, **overrides) -> ViTB16:
    """Build ``vit_b16`` from a local torchvision ``vit_b_16`` weights file.

    ``path``: the ``vit_b_16-c867db91.pth`` file the user downloaded (read with
    ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects)
    or a ``.safetensors`` file. With ``num_classes != 1000`` the ImageNet head
    is dropped and a fresh head is kept (fine-tuning).
    """
    from .registry import create_model

    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = torchvision_to_vit_b16_state_dict(state)
    model = create_model("vit_b16", num_classes=num_classes, **overrides)
    if num_classes != state["head.weight"].shape[0]:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    model.load_state_dict(state, strict=True)
    return model


register_model("vit_b16", ViTB16, description="ViT-B/16 from the paper, 224 px (85.8M parameters)")
