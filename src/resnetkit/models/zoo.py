"""The model zoo: named configurations, one factory, one registry filled at import.

Variant tables are data: each row names a builder (a model class) and the keyword
arguments that make the variant. ``create_model(name, **kwargs)`` overrides any of them.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ConfigError, ModelNotFoundError
from resnetkit.models.hybrid import ResNetHybrid
from resnetkit.models.resnet import ResNet
from resnetkit.models.resnet9 import ResNet9
from resnetkit.models.tabular import ResidualMLP

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelEntry:
    """One named model: how to build it and what it expects."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, ...]  # one sample, without the batch axis
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def input_kind(self) -> str:
        """``image`` for ``(C, H, W)`` input, ``sequence`` for ``(C, L)``, else ``vector``."""
        return {3: "image", 2: "sequence"}.get(len(self.input_size), "vector")


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    family: str,
    input_size: tuple[int, ...],
    description: str = "",
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers ``builder`` under ``name`` with default keyword arguments."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, family, builder, input_size, defaults, description)
        return builder

    return decorator


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``.

    Raises:
        ModelNotFoundError: listing the closest names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}; {hint}`resnetkit models list` shows all "
            f"{len(_REGISTRY)} models"
        ) from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"resnet5*"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, *, device: str | torch.device | None = None, **kwargs: Any) -> Any:
    """Build a zoo model by name.

    Args:
        name: a name from :func:`list_models`.
        device: where to allocate the parameters (``"meta"`` builds without memory).
        **kwargs: overrides of the variant's arguments (``num_classes``, ``in_chans``, ...).

    Raises:
        ModelNotFoundError: for an unknown name.
        ConfigError: for an unknown or invalid argument, naming it.
    """
    entry = get_entry(name)
    accepted = inspect.signature(entry.builder).parameters
    for key in kwargs:
        if key not in accepted:
            known = ", ".join(sorted(k for k in accepted if k not in entry.defaults))
            raise ConfigError(f"{name} does not take the argument {key!r}; it takes: {known}")
    merged = {**entry.defaults, **kwargs}
    if device is None:
        return entry.builder(**merged)
    with torch.device(device):
        return entry.builder(**merged)


# --- variant tables ----------------------------------------------------------------------
_IMAGENET = (3, 224, 224)
_CIFAR = (3, 32, 32)
_BOTTLENECK_3463 = {"block": "bottleneck", "layers": (3, 4, 6, 3)}

_IMAGENET_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet18": ("resnet", {"block": "basic", "layers": (2, 2, 2, 2)}),
    "resnet34": ("resnet", {"block": "basic", "layers": (3, 4, 6, 3)}),
    "resnet50": ("resnet", _BOTTLENECK_3463),
    "resnet101": ("resnet", {"block": "bottleneck", "layers": (3, 4, 23, 3)}),
    "resnet152": ("resnet", {"block": "bottleneck", "layers": (3, 8, 36, 3)}),
    "wide_resnet50_2": ("wide", {**_BOTTLENECK_3463, "base_width": 128}),
    "resnext50_32x4d": ("resnext", {**_BOTTLENECK_3463, "groups": 32, "base_width": 4}),
    "resnet50d": ("resnet-d", {**_BOTTLENECK_3463, "stem": "deep", "shortcut": "avgpool"}),
    "seresnet50": ("se", {**_BOTTLENECK_3463, "se": 1 / 16}),
}

# He et al. (2015) CIFAR networks: 6n+2 layers, 16/32/64 channels, option A shortcuts.
_CIFAR_BASE = {
    "block": "basic",
    "channels": (16, 32, 64),
    "stem": "cifar",
    "stem_width": 16,
    "shortcut": "pad",
    "num_classes": 10,
}
_CIFAR_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    f"resnet{depth}": ("resnet-cifar", {**_CIFAR_BASE, "layers": ((depth - 2) // 6,) * 3})
    for depth in (8, 20, 32, 44, 56, 110)
}


def _wide(depth: int, k: int) -> dict[str, Any]:
    # Zagoruyko & Komodakis (2016): pre-activation basic blocks, (depth - 4) / 6 per stage.
    n = (depth - 4) // 6
    return {
        "block": "preact_basic",
        "layers": (n,) * 3,
        "channels": (16 * k, 32 * k, 64 * k),
        "stem": "cifar",
        "stem_width": 16,
        "num_classes": 10,
    }


_CIFAR_MODELS.update(
    {
        "preact_resnet18": (
            "preact",
            {
                "block": "preact_basic",
                "layers": (2, 2, 2, 2),
                "stem": "cifar",
                "num_classes": 10,
            },
        ),
        "preact_resnet164": (
            "preact",
            {
                "block": "preact_bottleneck",
                "layers": (18, 18, 18),
                "channels": (16, 32, 64),
                "stem": "cifar",
                "stem_width": 16,
                "num_classes": 10,
            },
        ),
        "wrn_16_4": ("wide", _wide(16, 4)),
        "wrn_28_10": ("wide", _wide(28, 10)),
    }
)

for _name, (_family, _cfg) in _IMAGENET_MODELS.items():
    register_model(_name, family=_family, input_size=_IMAGENET, **_cfg)(ResNet)
for _name, (_family, _cfg) in _CIFAR_MODELS.items():
    register_model(_name, family=_family, input_size=_CIFAR, **_cfg)(ResNet)

register_model(
    "resnet9",
    family="resnet9",
    input_size=_CIFAR,
    description="Page's DAWNBench ResNet-9: conv-pool stages, residual pairs, 64-512 wide",
)(ResNet9)
register_model(
    "resnet9_s",
    family="resnet9",
    input_size=_CIFAR,
    description="narrow ResNet-9 (16-128 wide): the fast Fashion-MNIST recipe's model",
    widths=(16, 32, 64, 128),
)(ResNet9)
register_model(
    "resnet_hybrid",
    family="hybrid",
    input_size=_IMAGENET,
    description="ResNet-18 trunk + 4 transformer layers over its 7x7 tokens",
)(ResNetHybrid)
register_model(
    "resnet1d_18",
    family="1d",
    input_size=(1, 4096),
    description="ResNet-18 with 1-D convolutions, input (B, C, L)",
    block="basic",
    layers=(2, 2, 2, 2),
    dims=1,
    in_chans=1,
    num_classes=10,
)(ResNet)
register_model(
    "resnet_tabular",
    family="tabular",
    input_size=(16,),
    description="residual MLP for feature vectors, input (B, F)",
)(ResidualMLP)
