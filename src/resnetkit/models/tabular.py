"""Residual MLP for tabular input ``(B, F)`` (Gorishniy et al. 2021, "ResNet" baseline)."""

from __future__ import annotations

import torch
from torch import nn

from resnetkit.models.base import FINAL_NORM_KEPT, ClassifierModel, check_positive, check_rate
from resnetkit.models.layers import ActSpec, DropPath, NormSpec, make_act, make_norm

__all__ = ["ResidualMLP", "ResidualMLPBlock"]


class ResidualMLPBlock(nn.Module):
    """``x + Linear(Dropout(Act(Linear(Norm(x)))))`` on ``(B, D)``."""

    FOLD_INPUT_SIDE = (("norm", "fc1"),)

    def __init__(
        self,
        dim: int,
        hidden: int,
        *,
        norm: NormSpec,
        act: ActSpec,
        dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm = make_norm(norm, dim, dims=1)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.dropout(self.act(self.fc1(self.norm(x)))))
        return x + self.drop_path(out)


class ResidualMLP(ClassifierModel):
    """Residual network for feature vectors.

    Args:
        in_features: number of input features ``F``.
        num_classes: classifier outputs.
        hidden_dim: width of the residual stream (times ``width``).
        depth: number of residual blocks.
        expansion: hidden size of each block relative to the stream.
        norm: ``batch`` (BatchNorm1d), ``layer``, ``group``, or a class.
        dropout: dropout inside each block; ``drop_rate`` before the classifier.
    """

    FOLD_KEEP_REASONS = (("final_norm", FINAL_NORM_KEPT),)

    def __init__(
        self,
        *,
        in_features: int = 16,
        num_classes: int = 2,
        hidden_dim: int = 256,
        depth: int = 4,
        expansion: float = 2.0,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        width: float = 1.0,
        dropout: float = 0.1,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        zero_init_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_classes", num_classes),
            ("hidden_dim", hidden_dim),
            ("depth", depth),
        ):
            check_positive(name, value)
        check_positive("width", width, integer=False)
        check_positive("expansion", expansion, integer=False)
        for name, rate in (("dropout", dropout), ("drop_path_rate", drop_path_rate)):
            check_rate(name, rate)
        check_rate("drop_rate", drop_rate)
        dim = max(1, round(hidden_dim * width))
        self.in_features = in_features
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        self.stem = nn.Linear(in_features, dim)
        self.blocks = nn.ModuleList(
            ResidualMLPBlock(
                dim,
                max(1, round(dim * expansion)),
                norm=norm,
                act=act,
                dropout=dropout,
                drop_path=drop_path_rate * i / max(1, depth - 1),
            )
            for i in range(depth)
        )
        self.final_norm = make_norm(norm, dim, dims=1)
        self.final_act = make_act(act)
        self.num_features = dim
        self.feature_info = [
            {"num_chs": dim, "reduction": 1, "module": f"blocks.{i}"} for i in range(depth)
        ]
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        if zero_init_last:
            for blk in self.blocks:
                assert isinstance(blk, ResidualMLPBlock)
                nn.init.zeros_(blk.fc2.weight)
                nn.init.zeros_(blk.fc2.bias)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after each block, each ``(B, D)``."""
        x = self.stem(x)
        outputs = []
        for blk in self.blocks:
            x = self.run_checkpointed(blk, x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F) -> (B, D)``."""
        x = self.stem(x)
        for blk in self.blocks:
            x = self.run_checkpointed(blk, x)
        return self.final_act(self.final_norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classify the embedding (there is nothing to pool)."""
        return x if pre_logits else self.fc(self.head_drop(x))
