"""Residual blocks and shortcuts.

Post-activation blocks (He et al. 2015) keep torchvision's attribute names, which are our
state-dict contract: ``conv1``, ``bn1``, ``conv2``, ``bn2`` (``conv3``, ``bn3``), ``downsample``.
The bottleneck puts its stride on the 3x3 convolution ("ResNet v1.5"). Pre-activation blocks
(He et al. 2016, "Identity Mappings") normalise and activate before each convolution.
Every block works on 1-D ``(B, C, L)`` or 2-D ``(B, C, H, W)`` inputs, chosen by ``dims``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.models.layers import (
    ActSpec,
    DropPath,
    NormSpec,
    SqueezeExcite,
    conv_nd,
    make_act,
    make_norm,
)

__all__ = [
    "SHORTCUTS",
    "BasicBlock",
    "BottleneckBlock",
    "PadShortcut",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResidualBlock",
    "make_shortcut",
]

SHORTCUTS = ("projection", "pad", "avgpool", "identity")


_PREACT_BN1 = "pre-activation: normalises the residual sum and a ReLU precedes conv1"


class ResidualBlock(nn.Module):
    """Interface shared by every block: ``expansion``, ``preact`` and ``zero_init_last``.

    A module tells BN folding (``resnetkit.compress.fold_batchnorm``) what it may fuse by
    declaring, on its own class, ``FOLD_OUTPUT_SIDE`` (``(conv, norm)`` attribute pairs where
    the norm reads only the conv's output), ``FOLD_THROUGH_MAX_POOL`` (the same with a
    max-pool between), ``FOLD_INPUT_SIDE`` (``(norm, linear)`` pairs with nothing between)
    and ``FOLD_KEEP_REASONS`` (why a norm cannot fold). Only a class's own declarations
    count, not inherited ones: a subclass that rewires ``forward`` declares its own.
    """

    expansion: ClassVar[int] = 1
    preact: ClassVar[bool] = False

    def zero_init_last(self) -> None:
        """Start the block as an identity map (Goyal et al. 2017)."""
        raise NotImplementedError


def _block_tail(
    out_chs: int, se_ratio: float, drop_path: float, act: ActSpec, dims: int
) -> tuple[nn.Module, nn.Module]:
    se: nn.Module = SqueezeExcite(out_chs, se_ratio, act, dims) if se_ratio > 0 else nn.Identity()
    return se, DropPath(drop_path) if drop_path > 0 else nn.Identity()


def _zero_weight(module: nn.Module) -> None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        nn.init.zeros_(weight)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions, each followed by norm; activation after the addition."""

    FOLD_OUTPUT_SIDE = (("conv1", "bn1"), ("conv2", "bn2"))

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dims: int = 2,
        drop_path: float = 0.0,
        se_ratio: float = 0.0,
        dropout: float = 0.0,
        inner: int | None = None,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ConfigError("BasicBlock supports only groups=1 and base_width=64")
        conv = conv_nd(dims)
        mid = inner or planes  # fewer after structured pruning
        self.conv1 = conv(in_chs, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, mid, dims)
        self.relu = make_act(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv(mid, planes, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes, dims)
        self.se, self.drop_path = _block_tail(planes, se_ratio, drop_path, act, dims)
        self.act2 = make_act(act)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        _zero_weight(self.bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.dropout(out)))
        out = self.drop_path(self.se(out))
        return self.act2(out + shortcut)


class BottleneckBlock(ResidualBlock):
    """1x1 reduce, 3x3 (strided, optionally grouped), 1x1 expand by 4."""

    FOLD_OUTPUT_SIDE = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dims: int = 2,
        drop_path: float = 0.0,
        se_ratio: float = 0.0,
        dropout: float = 0.0,
        inner: int | None = None,
    ) -> None:
        super().__init__()
        conv = conv_nd(dims)
        width = inner or int(planes * (base_width / 64.0)) * groups  # torchvision's ResNeXt rule
        out_chs = planes * self.expansion
        self.conv1 = conv(in_chs, width, 1, bias=False)
        self.bn1 = make_norm(norm, width, dims)
        self.conv2 = conv(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = make_norm(norm, width, dims)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = conv(width, out_chs, 1, bias=False)
        self.bn3 = make_norm(norm, out_chs, dims)
        self.relu = make_act(act)
        self.act2 = make_act(act)
        self.act3 = make_act(act)
        self.se, self.drop_path = _block_tail(out_chs, se_ratio, drop_path, act, dims)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        _zero_weight(self.bn3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.dropout(out)))
        out = self.drop_path(self.se(out))
        return self.act3(out + shortcut)


class PreActBasicBlock(ResidualBlock):
    """Pre-activation basic block: norm → act → 3x3, twice; nothing after the addition.

    With ``dropout`` between the convolutions this is the Wide ResNet block.
    """

    FOLD_OUTPUT_SIDE = (("conv1", "bn2"),)
    FOLD_KEEP_REASONS = (("bn1", _PREACT_BN1),)

    expansion = 1
    preact = True

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dims: int = 2,
        drop_path: float = 0.0,
        se_ratio: float = 0.0,
        dropout: float = 0.0,
        inner: int | None = None,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ConfigError("PreActBasicBlock supports only groups=1 and base_width=64")
        conv = conv_nd(dims)
        self.bn1 = make_norm(norm, in_chs, dims)
        self.relu = make_act(act)
        mid = inner or planes  # fewer after structured pruning
        self.conv1 = conv(in_chs, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = make_norm(norm, mid, dims)
        self.act2 = make_act(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv(mid, planes, 3, padding=1, bias=False)
        self.se, self.drop_path = _block_tail(planes, se_ratio, drop_path, act, dims)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        _zero_weight(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        # A projection shortcut sees the pre-activated input, as in He et al. (2016).
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.act2(self.bn2(out))))
        return self.drop_path(self.se(out)) + shortcut


class PreActBottleneckBlock(ResidualBlock):
    """Pre-activation bottleneck: (norm → act → conv) for 1x1, 3x3 (strided), 1x1."""

    FOLD_OUTPUT_SIDE = (("conv1", "bn2"), ("conv2", "bn3"))
    FOLD_KEEP_REASONS = (("bn1", _PREACT_BN1),)

    expansion = 4
    preact = True

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        norm: NormSpec = "batch",
        act: ActSpec = "relu",
        dims: int = 2,
        drop_path: float = 0.0,
        se_ratio: float = 0.0,
        dropout: float = 0.0,
        inner: int | None = None,
    ) -> None:
        super().__init__()
        conv = conv_nd(dims)
        width = inner or int(planes * (base_width / 64.0)) * groups
        out_chs = planes * self.expansion
        self.bn1 = make_norm(norm, in_chs, dims)
        self.relu = make_act(act)
        self.conv1 = conv(in_chs, width, 1, bias=False)
        self.bn2 = make_norm(norm, width, dims)
        self.act2 = make_act(act)
        self.conv2 = conv(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn3 = make_norm(norm, width, dims)
        self.act3 = make_act(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv3 = conv(width, out_chs, 1, bias=False)
        self.se, self.drop_path = _block_tail(out_chs, se_ratio, drop_path, act, dims)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        _zero_weight(self.conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act2(self.bn2(out)))
        out = self.conv3(self.dropout(self.act3(self.bn3(out))))
        return self.drop_path(self.se(out)) + shortcut


class PadShortcut(nn.Module):
    """Option A of He et al. (2015): subsample, then zero-pad the new channels. No parameters."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            index = (slice(None), slice(None)) + (slice(None, None, self.stride),) * (x.ndim - 2)
            x = x[index]
        if self.extra:
            # Pad the channel dimension (the third from the end for 1-D, the fourth for 2-D).
            pad = [0, 0] * (x.ndim - 2) + [self.extra // 2, self.extra - self.extra // 2]
            x = F.pad(x, pad)
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra}"


def make_shortcut(
    kind: str,
    in_chs: int,
    out_chs: int,
    stride: int,
    *,
    norm: NormSpec,
    dims: int,
    preact: bool,
    where: str,
) -> nn.Module | None:
    """The shortcut of one block, or ``None`` when the identity fits.

    ``where`` names the block (``"stage 2, block 0"``) for error messages.

    Raises:
        ConfigError: when the identity cannot be added to the branch, or ``pad`` would have
            to drop channels.
    """
    if kind not in SHORTCUTS:
        raise ConfigError(f"shortcut={kind!r} is not known; use one of {', '.join(SHORTCUTS)}")
    if in_chs == out_chs and stride == 1:
        return None
    axes = ["L"] if dims == 1 else ["H", "W"]
    strided = axes if stride == 1 else [f"{a}/{stride}" for a in axes]
    shapes = (
        f"branch output ({out_chs}, {', '.join(strided)}) vs shortcut ({in_chs}, {', '.join(axes)})"
    )
    if kind == "identity":
        raise ConfigError(
            f"{where}: the identity shortcut cannot be added: {shapes}; "
            "use shortcut='projection', 'pad' or 'avgpool'"
        )
    if kind == "pad":
        if out_chs < in_chs:
            raise ConfigError(f"{where}: shortcut='pad' cannot shrink channels: {shapes}")
        return PadShortcut(in_chs, out_chs, stride)
    conv = conv_nd(dims)
    layers: list[nn.Module] = []
    if kind == "avgpool":
        # ResNet-D (He et al. 2019): average-pool, then a stride-1 projection, in timm's layout.
        pool = nn.AvgPool1d if dims == 1 else nn.AvgPool2d
        layers.append(
            pool(2, stride, ceil_mode=True, count_include_pad=False)
            if stride > 1
            else nn.Identity()
        )
        stride = 1
    layers.append(conv(in_chs, out_chs, 1, stride=stride, bias=False))
    if not preact:  # the pre-activation papers project with a bare convolution
        layers.append(make_norm(norm, out_chs, dims))
    return nn.Sequential(*layers)
