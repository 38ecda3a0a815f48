"""The one ResNet class: stem, residual stages, global pooling, linear head.

Every layout in the zoo — ImageNet, CIFAR, pre-activation, wide, ResNeXt, SE, ResNet-D and
1-D — is this class with different arguments. Attribute names follow torchvision
(``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``) so its checkpoints load with
``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.models.base import FINAL_NORM_KEPT, ClassifierModel, check_positive, check_rate
from resnetkit.models.blocks import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResidualBlock,
    make_shortcut,
)
from resnetkit.models.layers import (
    ActSpec,
    NormSpec,
    make_act,
    make_norm,
    resolve_act,
    resolve_norm,
)
from resnetkit.models.stems import build_stem, stem_reduction

__all__ = ["BLOCKS", "ResNet"]

BLOCKS: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneckBlock,
}


class ResNet(ClassifierModel):
    """Residual network over 2-D images ``(B, C, H, W)`` or 1-D sequences ``(B, C, L)``.

    Args:
        block: ``basic``, ``bottleneck``, ``preact_basic``, ``preact_bottleneck`` or a class.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        channels: base channels (``planes``) per stage; outputs are ``planes * expansion``.
        num_classes: classifier outputs.
        in_chans: input channels (1 for grayscale).
        stem: ``imagenet``, ``cifar`` or ``deep``; ``stem_width`` its output channels.
        shortcut: how a block that changes shape is bridged: ``projection`` (1x1 conv +
            norm), ``pad`` (option A, parameter-free), ``avgpool`` (ResNet-D) or
            ``identity`` (only valid when no block changes shape).
        strides: stride of each stage; defaults to 1 for the first and 2 for the others.
        groups, base_width: ResNeXt cardinality and width per group.
        norm, act: names or classes (``"batch"``, ``"group"``, ``"layer"``; ``"relu"``, ...).
        width: multiplier on every channel count.
        se: squeeze-and-excitation reduction ratio (``0`` disables; ``True`` means 1/16).
        zero_init_last: initialise each block's last norm (or conv) to zero.
        drop_path_rate: stochastic-depth rate, growing linearly to this value.
        drop_rate: dropout before the classifier; ``block_dropout`` inside blocks (WRN).
        grad_checkpointing: recompute each block's activations in backward to save memory.
        dims: 2 for images, 1 for sequences.
        inner_widths: inner channels of every block in order (what structured pruning
            leaves); by default each block's own rule.
    """

    FOLD_OUTPUT_SIDE = (("conv1", "bn1"),)
    FOLD_KEEP_REASONS = (("final_norm", FINAL_NORM_KEPT),)

    def __init__(
        self,
        block: str | type[ResidualBlock] = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        channels: Sequence[int] = (64, 128, 256, 512),
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        stem_width: int = 64,
        shortcut: str = "projection",
        strides: Sequence[int] | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        width: float = 1.0,
        se: float | bool = 0.0,
        zero_init_last: bool = False,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        block_dropout: float = 0.0,
        grad_checkpointing: bool = False,
        dims: int = 2,
        inner_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        block_cls = self._resolve_block(block)
        check_positive("num_classes", num_classes)
        check_positive("in_chans", in_chans)
        check_positive("width", width, integer=False)
        check_positive("groups", groups)
        check_positive("base_width", base_width)
        check_rate("drop_path_rate", drop_path_rate)
        check_rate("drop_rate", drop_rate)
        check_rate("block_dropout", block_dropout)
        if dims not in (1, 2):
            raise ConfigError(f"dims must be 1 or 2, got {dims!r}")
        if not layers or len(layers) != len(channels):
            raise ConfigError(
                f"layers {tuple(layers)} and channels {tuple(channels)} must be non-empty "
                "and of the same length (one entry per stage)"
            )
        for i, n in enumerate(layers):
            check_positive(f"layers[{i}]", n)
        if inner_widths is not None:
            if len(inner_widths) != sum(layers):
                raise ConfigError(
                    f"inner_widths needs one entry per block ({sum(layers)}), "
                    f"got {len(inner_widths)}"
                )
            for i, w in enumerate(inner_widths):
                check_positive(f"inner_widths[{i}]", w)
        strides = tuple(strides) if strides is not None else (1,) + (2,) * (len(layers) - 1)
        if len(strides) != len(layers):
            raise ConfigError(f"strides {strides} must have one entry per stage ({len(layers)})")
        resolve_norm(norm, dims)  # fail early, naming the argument
        resolve_act(act)
        se_ratio = 1 / 16 if se is True else float(se)
        check_rate("se", se_ratio)

        self.dims = dims
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.grad_checkpointing = grad_checkpointing
        preact = block_cls.preact
        scaled = [max(1, round(c * width)) for c in channels]
        stem_chs = max(1, round(stem_width * width))
        self.conv1, self.bn1, self.maxpool = build_stem(
            stem, in_chans, stem_chs, norm=norm, act=act, dims=dims, preact=preact
        )
        self.relu: nn.Module = nn.Identity() if preact else make_act(act)

        total_blocks, done = sum(layers), 0
        in_chs, reduction = stem_chs, stem_reduction(stem)
        self.stage_names: list[str] = []
        self.feature_info: list[dict[str, Any]] = []
        for i, (n, planes, stride) in enumerate(zip(layers, scaled, strides, strict=True)):
            blocks: list[nn.Module] = []
            for b in range(n):
                s = stride if b == 0 else 1
                out_chs = planes * block_cls.expansion
                downsample = make_shortcut(
                    shortcut,
                    in_chs,
                    out_chs,
                    s,
                    norm=norm,
                    dims=dims,
                    preact=preact,
                    where=f"stage {i + 1}, block {b}",
                )
                dpr = drop_path_rate * done / max(1, total_blocks - 1)
                blocks.append(
                    block_cls(
                        in_chs,
                        planes,
                        stride=s,
                        downsample=downsample,
                        groups=groups,
                        base_width=base_width,
                        norm=norm,
                        act=act,
                        dims=dims,
                        drop_path=dpr,
                        se_ratio=se_ratio,
                        dropout=block_dropout,
                        inner=inner_widths[done] if inner_widths is not None else None,
                    )
                )
                in_chs, done = out_chs, done + 1
            reduction *= stride
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": name})

        self.num_features = in_chs
        # Pre-activation networks end with the norm and activation the last block skipped.
        self.final_norm = make_norm(norm, in_chs, dims) if preact else nn.Identity()
        self.final_act = make_act(act) if preact else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_chs, num_classes)
        self._init_weights(zero_init_last)

    @staticmethod
    def _resolve_block(block: str | type[ResidualBlock]) -> type[ResidualBlock]:
        if isinstance(block, str):
            if block not in BLOCKS:
                raise ConfigError(f"block={block!r} is not known; use one of {', '.join(BLOCKS)}")
            return BLOCKS[block]
        if isinstance(block, type) and issubclass(block, ResidualBlock):
            return block
        raise ConfigError(f"block must be a name or a ResidualBlock subclass, got {block!r}")

    def _init_weights(self, zero_init_last: bool) -> None:
        # He initialisation as in torchvision; norms start at the identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    m.zero_init_last()

    @property
    def stages(self) -> list[nn.Sequential]:
        """The residual stages in order."""
        return [getattr(self, name) for name in self.stage_names]

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for blk in stage:  # block by block, so that checkpointing can wrap each one
            x = self.run_checkpointed(blk, x)
        return x

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem only: ``(B, C, H, W) -> (B, stem_width, H/4, W/4)`` (``H`` for cifar)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output feature map, for detection or segmentation heads."""
        self._check_input(x)
        x = self.forward_stem(x)
        outputs = []
        for stage in self.stages:
            x = self._run_stage(stage, x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map, ``(B, num_features, H/32, W/32)`` for ImageNet layouts."""
        self._check_input(x)
        x = self.forward_stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return self.final_act(self.final_norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool and classifier; ``pre_logits`` returns the pooled embedding."""
        x = x.mean(dim=tuple(range(2, x.ndim)))  # (B, C); export-friendly, unlike adaptive pools
        if pre_logits:
            return x
        return self.fc(self.head_drop(x))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_chans:
            layout = "(B, C, L)" if self.dims == 1 else "(B, C, H, W)"
            raise ConfigError(
                f"expected input {layout} with C={self.in_chans}, got shape {tuple(x.shape)}"
            )
