"""Stems: the layers before the first residual stage.

The stem is returned as three modules that the ResNet stores as ``conv1``, ``bn1`` and
``maxpool``, so the state-dict keys match torchvision (``imagenet``) and timm (``deep``).
"""

from __future__ import annotations

from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.models.layers import ActSpec, NormSpec, conv_nd, make_act, make_norm

__all__ = ["STEMS", "build_stem", "stem_reduction"]

STEMS = ("imagenet", "cifar", "deep")


def stem_reduction(stem: str) -> int:
    """By how much the stem divides the spatial size."""
    return 1 if stem == "cifar" else 4


def build_stem(
    stem: str,
    in_chans: int,
    width: int,
    *,
    norm: NormSpec,
    act: ActSpec,
    dims: int = 2,
    preact: bool = False,
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Build ``(conv1, bn1, maxpool)`` for a stem kind.

    Args:
        stem: ``imagenet`` (7x7 stride 2 + max-pool), ``cifar`` (3x3 stride 1, no pool) or
            ``deep`` (three 3x3 convolutions, the first strided, + max-pool; ResNet-C/D).
        in_chans: input channels (1 for grayscale).
        width: output channels of the stem.
        preact: pre-activation networks normalise inside the first block, so ``bn1`` is
            an identity.

    Raises:
        ConfigError: for an unknown stem.
    """
    conv = conv_nd(dims)
    pool_cls = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
    if stem == "imagenet":
        conv1: nn.Module = conv(in_chans, width, 7, stride=2, padding=3, bias=False)
        pool: nn.Module = pool_cls(kernel_size=3, stride=2, padding=1)
    elif stem == "cifar":
        conv1, pool = conv(in_chans, width, 3, stride=1, padding=1, bias=False), nn.Identity()
    elif stem == "deep":
        mid = width // 2
        conv1 = nn.Sequential(
            conv(in_chans, mid, 3, stride=2, padding=1, bias=False),
            make_norm(norm, mid, dims),
            make_act(act),
            conv(mid, mid, 3, padding=1, bias=False),
            make_norm(norm, mid, dims),
            make_act(act),
            conv(mid, width, 3, padding=1, bias=False),
        )
        pool = pool_cls(kernel_size=3, stride=2, padding=1)
    else:
        raise ConfigError(f"stem={stem!r} is not known; use one of {', '.join(STEMS)}")
    bn1 = nn.Identity() if preact else make_norm(norm, width, dims)
    return conv1, bn1, pool
