"""ResNet + Transformer hybrid: ResNet stem and stages, then transformer encoder layers over
the final feature map's tokens (as in the hybrid models of Dosovitskiy et al. 2021).

The attention block is written out (LayerNorm, qkv projection, scaled dot-product attention,
MLP) rather than taken from ``nn.TransformerEncoder``: its fused inference path hides the
matrix products from the MAC counter and complicates ONNX export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.models.base import ClassifierModel, check_positive
from resnetkit.models.layers import ActSpec, DropPath, NormSpec
from resnetkit.models.resnet import ResNet
from resnetkit.models.stems import stem_reduction

__all__ = ["ResNetHybrid", "TransformerBlock"]

POOLS = ("cls", "mean")


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder layer over tokens ``(B, N, D)``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, D/heads)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.drop_path(self.proj(attn.transpose(1, 2).reshape(B, N, D)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ResNetHybrid(ClassifierModel):
    """ResNet trunk followed by a transformer encoder over its feature-map tokens.

    Args:
        layers, block, channels, stem, norm, act, width, se: the ResNet trunk (see ResNet).
        img_size: input size the position embedding is laid out for; other sizes work by
            interpolating it.
        embed_dim, depth, num_heads, mlp_ratio: the transformer.
        pool: ``cls`` (a learned class token) or ``mean`` (average of the tokens).
    """

    def __init__(
        self,
        *,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        channels: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        stem: str = "imagenet",
        embed_dim: int = 256,
        depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        pool: str = "cls",
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        width: float = 1.0,
        se: float | bool = 0.0,
        zero_init_last: bool = False,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"pool={pool!r} is not known; use one of {', '.join(POOLS)}")
        for name, value in (("embed_dim", embed_dim), ("depth", depth), ("img_size", img_size)):
            check_positive(name, value)
        self.backbone = ResNet(
            block,
            layers,
            channels,
            num_classes=num_classes,
            in_chans=in_chans,
            stem=stem,
            norm=norm,
            act=act,
            width=width,
            se=se,
            zero_init_last=zero_init_last,
            drop_path_rate=drop_path_rate,
            grad_checkpointing=grad_checkpointing,
        )
        self.backbone.fc = nn.Identity()  # type: ignore[assignment]  # the transformer's head is ours
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.pool = pool
        self.grad_checkpointing = grad_checkpointing
        self.grid = self._grid_size(img_size, stem, len(layers))
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=1)
        n_tokens = self.grid * self.grid + (1 if pool == "cls" else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, drop_path_rate * i / max(1, depth))
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.num_features = embed_dim
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(embed_dim, num_classes)
        self.feature_info = [*self.backbone.feature_info, {"num_chs": embed_dim, "module": "norm"}]
        self.feature_info[-1]["reduction"] = self.backbone.feature_info[-1]["reduction"]

    @staticmethod
    def _grid_size(img_size: int, stem: str, n_stages: int) -> int:
        size = img_size
        for _ in range(int(math.log2(stem_reduction(stem))) + n_stages - 1):
            size = math.ceil(size / 2)  # every strided layer rounds up (padding 1 or 3)
        return size

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_embed
        extra = 1 if self.cls_token is not None else 0
        if h == w == self.grid:
            return pos
        grid = pos[:, extra:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([pos[:, :extra], grid.flatten(2).transpose(1, 2)], dim=1)

    def _tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        x = self.proj(fmap)  # (B, D, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos_embed(h, w)
        for blk in self.blocks:
            x = self.run_checkpointed(blk, x)
        return self.norm(x)  # (B, T, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(B, T, D)``; the class token first when ``pool='cls'``."""
        return self._tokens(self.backbone.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each trunk stage's map, then the transformer output as a map ``(B, D, h, w)``."""
        maps = self.backbone.forward_intermediates(x)
        h, w = maps[-1].shape[-2:]
        tokens = self._tokens(maps[-1])
        if self.cls_token is not None:
            tokens = tokens[:, 1:]
        return [*maps, tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens (class token or mean) and classify."""
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        if pre_logits:
            return x
        return self.fc(self.head_drop(x))
