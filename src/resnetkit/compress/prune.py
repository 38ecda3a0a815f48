"""Structured pruning: remove whole filters and get a genuinely smaller dense ResNet.

Only the channels *inside* each residual block are pruned (the output of ``conv1`` in a
basic block; both inner widths of a bottleneck). The residual stream — every tensor that a
shortcut adds to — keeps its width, so the pruned network stays consistent across every
residual connection without tying masks between blocks, and it is an ordinary zoo model:
``create_model(arch, inner_widths=[...])`` plus the sliced weights rebuild it exactly. Filters
are ranked by the L1 norm of their weights (Li et al. 2017) or by the magnitude of the
following BatchNorm's scale (Liu et al. 2017, "network slimming").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ConfigError
from resnetkit.models import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
    ResNet,
    create_model,
)

__all__ = ["CRITERIA", "PrunedModel", "prune_model"]

CRITERIA = ("l1", "bn")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")

# For each block type, each inner dimension: the conv whose filters are ranked, the norm
# whose scale can rank them instead, and every (parameter prefix, axis) that it indexes.
_INNER_DIMS: dict[type[nn.Module], list[tuple[str, str, list[tuple[str, int]]]]] = {
    BasicBlock: [("conv1", "bn1", [("conv1.weight", 0), ("bn1", 0), ("conv2.weight", 1)])],
    PreActBasicBlock: [("conv1", "bn2", [("conv1.weight", 0), ("bn2", 0), ("conv2.weight", 1)])],
    BottleneckBlock: [
        ("conv1", "bn1", [("conv1.weight", 0), ("bn1", 0), ("conv2.weight", 1)]),
        ("conv2", "bn2", [("conv2.weight", 0), ("bn2", 0), ("conv3.weight", 1)]),
    ],
    PreActBottleneckBlock: [
        ("conv1", "bn2", [("conv1.weight", 0), ("bn2", 0), ("conv2.weight", 1)]),
        ("conv2", "bn3", [("conv2.weight", 0), ("bn3", 0), ("conv3.weight", 1)]),
    ],
}


@dataclass
class PrunedModel:
    """The smaller model and what rebuilds it: ``create_model(arch, **kwargs)``."""

    model: ResNet
    kwargs: dict[str, Any]
    kept: dict[str, int]  # inner channels kept per block, e.g. {"layer1.0": 8}


def _scores(block: nn.Module, conv: str, norm: str, criterion: str) -> torch.Tensor:
    if criterion == "bn":
        scale = getattr(getattr(block, norm), "weight", None)
        if scale is None:
            raise ConfigError("criterion 'bn' needs norm layers with a scale; use 'l1'")
        return scale.detach().abs()
    weight = getattr(block, conv).weight.detach()
    return weight.abs().flatten(1).sum(dim=1)  # L1 norm of each output filter


def _keep_indices(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    keep = max(1, round(scores.numel() * (1.0 - ratio)))
    return scores.topk(keep).indices.sort().values  # keep the original channel order


def _slice_block(
    block: nn.Module, prefix: str, ratio: float, criterion: str, state: dict[str, torch.Tensor]
) -> int:
    """Slice ``state`` in place for one block; return its new inner width."""
    width = 0
    for conv, norm, params in _INNER_DIMS[type(block)]:
        keep = _keep_indices(_scores(block, conv, norm, criterion), ratio)
        for name, axis in params:
            keys = [f"{name}.{k}" for k in _BN_KEYS] if "." not in name else [name]
            for key in keys:
                full = f"{prefix}.{key}"
                if full in state:
                    state[full] = state[full].index_select(axis, keep.to(state[full].device))
        width = keep.numel()
    return width


def prune_model(
    model: nn.Module, arch: str, kwargs: dict[str, Any], ratio: float, criterion: str = "l1"
) -> PrunedModel:
    """Remove ``ratio`` of the inner filters of every block of a zoo ResNet.

    Args:
        model: a trained :class:`~resnetkit.models.ResNet` (not grouped: ResNeXt is refused).
        arch, kwargs: how it was built (from ``model.json``).
        ratio: share of inner filters to remove, in ``[0, 1)``.
        criterion: ``l1`` (filter weight norm) or ``bn`` (BatchNorm scale).

    Raises:
        ConfigError: for a model that is not a ResNet, grouped convolutions, a bad ratio or
            criterion.
    """
    if not isinstance(model, ResNet):
        raise ConfigError(
            f"structured pruning works on the ResNet class (basic, bottleneck and "
            f"pre-activation blocks), not on {type(model).__name__}"
        )
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio}")
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion {criterion!r} is not known; use one of {CRITERIA}")
    if int(kwargs.get("groups", 1)) != 1:
        raise ConfigError("pruning grouped convolutions (ResNeXt) is not supported")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    kept: dict[str, int] = {}
    for stage_name, stage in zip(model.stage_names, model.stages, strict=True):
        for i, block in enumerate(stage):
            prefix = f"{stage_name}.{i}"
            kept[prefix] = _slice_block(block, prefix, ratio, criterion, state)
    new_kwargs = {**kwargs, "inner_widths": list(kept.values())}
    device = next(model.parameters()).device
    pruned = create_model(arch, device=device, **new_kwargs)
    pruned.load_state_dict(state, strict=True)
    return PrunedModel(pruned.train(model.training), new_kwargs, kept)
