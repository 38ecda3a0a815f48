"""Fold BatchNorm into the neighbouring convolution or linear layer, for inference.

In eval mode a BatchNorm is a per-channel affine map ``y = s * x + t`` with
``s = gamma / sqrt(running_var + eps)`` and ``t = beta - running_mean * s``. When it directly
follows a convolution ``z = W * x + b`` whose output nothing else reads, the two collapse into
one convolution with ``W' = s[:, None, ...] * W`` and ``b' = s * b + t`` ("output side"): one
layer less to run, one pass over memory less.

What is folded, by block type (each block declares its pairs as data on its class:
``FOLD_OUTPUT_SIDE``, ``FOLD_THROUGH_MAX_POOL``, ``FOLD_INPUT_SIDE``; see
``resnetkit.models.blocks.ResidualBlock``), so a new block needs no edit here:

* **basic / bottleneck** (post-activation): every ``convN -> bnN``, the stem ``conv1 -> bn1``
  (the last convolution of a ``deep`` stem), and ``conv -> norm`` inside every
  ``nn.Sequential`` (projection and ResNet-D shortcuts, the deep stem).
* **pre-activation**: a block computes ``bn1 -> relu -> conv1 -> bn2 -> relu -> conv2``, so
  ``conv1 -> bn2`` (and ``conv2 -> bn3`` in the bottleneck) fold. ``bn1`` does not: it
  normalises the residual sum (nothing to fold into on its input side) and a ReLU separates
  it from ``conv1`` (folding into a following layer is only exact with no non-linearity and
  no zero padding between). The same holds for ``final_norm``. These norms stay, and
  :func:`plan_folding` lists them with the reason.
* **ResNet-9**: ``conv -> norm`` in the stem and residual pairs (``nn.Sequential``). In a
  conv-pool stage a 2x2 max-pool sits between ``conv`` and ``bn``; max commutes with
  ``s * x + t`` only where ``s > 0``, so ``bn`` folds when every channel's scale is positive
  (the usual case) and stays, with that reason, otherwise.
* **tabular residual MLP**: ``norm -> fc1`` has nothing between, and a linear layer has no
  padding, so the norm folds into ``fc1``'s *input* side: ``W' = W * s``, ``b' = b + W t``.

Arithmetic is done in float64 and rounded once, so folded and unfolded models agree to
float32 rounding (relative 1e-5 on real images; see ``tests/compress/test_fuse.py``).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from resnetkit.errors import ConfigError

__all__ = ["FoldPair", "FoldPlan", "fold_batchnorm", "plan_folding"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_CONVS = (nn.Conv1d, nn.Conv2d)


def _declared(module: nn.Module, kind: str) -> Any:
    """A module's own fold declaration (``FOLD_OUTPUT_SIDE``, ...), never an inherited one:
    a subclass may rewire ``forward``, so it must declare its pairs itself."""
    return type(module).__dict__.get(kind, ())


@dataclass(frozen=True)
class FoldPair:
    """One fold: ``norm`` into ``layer`` (qualified module names), on the given side."""

    layer: str
    norm: str
    side: str  # "output": layer -> norm; "input": norm -> layer


@dataclass(frozen=True)
class FoldPlan:
    """What :func:`fold_batchnorm` will fold, and every BatchNorm it leaves, with why."""

    pairs: tuple[FoldPair, ...] = ()
    kept: dict[str, str] = field(default_factory=dict)


def _qualify(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _last_conv(module: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    # A deep stem is a Sequential whose last layer is the convolution bn1 follows.
    if isinstance(module, nn.Sequential) and len(module) > 0:
        return f"{name}.{len(module) - 1}", module[len(module) - 1]
    return name, module


def _foldable_norm(norm: nn.Module) -> str | None:
    """``None`` when ``norm`` can be folded, else the reason it cannot."""
    if not isinstance(norm, _BATCHNORMS):
        return "not a BatchNorm"
    if norm.running_mean is None or norm.running_var is None:
        return "tracks no running statistics, so it is not an affine map at inference"
    return None


def _declared_pairs(name: str, module: nn.Module) -> list[FoldPair]:
    pairs: list[FoldPair] = []
    for layer_attr, norm_attr in _declared(module, "FOLD_OUTPUT_SIDE"):
        found = _last_conv(getattr(module, layer_attr), _qualify(name, layer_attr))
        norm = getattr(module, norm_attr)
        if found and isinstance(found[1], _CONVS) and _foldable_norm(norm) is None:
            pairs.append(FoldPair(found[0], _qualify(name, norm_attr), "output"))
    for layer_attr, norm_attr in _declared(module, "FOLD_THROUGH_MAX_POOL"):
        layer, norm = getattr(module, layer_attr), getattr(module, norm_attr)
        foldable = isinstance(layer, _CONVS) and _foldable_norm(norm) is None
        if foldable and bool((_norm_affine(norm)[0] > 0).all()):
            pairs.append(FoldPair(_qualify(name, layer_attr), _qualify(name, norm_attr), "output"))
    for norm_attr, layer_attr in _declared(module, "FOLD_INPUT_SIDE"):
        layer, norm = getattr(module, layer_attr), getattr(module, norm_attr)
        if isinstance(layer, nn.Linear) and _foldable_norm(norm) is None:
            pairs.append(FoldPair(_qualify(name, layer_attr), _qualify(name, norm_attr), "input"))
    if isinstance(module, nn.Sequential):
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            if isinstance(a, _CONVS) and _foldable_norm(b) is None:
                pairs.append(FoldPair(_qualify(name, a_name), _qualify(name, b_name), "output"))
    return pairs


def _keep_reason(name: str, model: nn.Module) -> str:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    declared = dict(_declared(parent, "FOLD_KEEP_REASONS"))
    if attr in declared:
        return declared[attr]
    through_pool = {n for _, n in _declared(parent, "FOLD_THROUGH_MAX_POOL")}
    if attr in through_pool and _foldable_norm(getattr(parent, attr)) is None:
        return "a max-pool precedes it and some channels' scales are not positive"
    reason = _foldable_norm(model.get_submodule(name))
    return reason or f"no known conv/linear neighbour in {type(parent).__name__}"


def plan_folding(model: nn.Module) -> FoldPlan:
    """Find every BatchNorm that can be folded, and say why each other one cannot."""
    pairs = [p for name, mod in model.named_modules() for p in _declared_pairs(name, mod)]
    folded = {p.norm for p in pairs}
    kept = {
        name: _keep_reason(name, model)
        for name, mod in model.named_modules()
        if isinstance(mod, _BATCHNORMS) and name not in folded
    }
    return FoldPlan(tuple(pairs), kept)


def _norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in float64 with ``norm(x) == s * x + t`` per channel in eval mode."""
    assert isinstance(norm, _BATCHNORMS) and norm.running_var is not None
    assert norm.running_mean is not None
    var, mean = norm.running_var.double(), norm.running_mean.double()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(var)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    return scale, beta - mean * scale


def _fold_output_side(layer: nn.Module, norm: nn.Module) -> None:
    assert isinstance(layer, _CONVS)
    scale, shift = _norm_affine(norm)
    weight = layer.weight.double()
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    view = (-1,) + (1,) * (weight.dim() - 1)
    new_weight = (weight * scale.view(view)).to(layer.weight.dtype)
    new_bias = (bias * scale + shift).to(layer.weight.dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=False)
    layer.bias = nn.Parameter(new_bias, requires_grad=False)


def _fold_input_side(layer: nn.Module, norm: nn.Module) -> None:
    assert isinstance(layer, nn.Linear)
    scale, shift = _norm_affine(norm)
    weight = layer.weight.double()  # (out, in)
    bias = layer.bias.double() if layer.bias is not None else weight.new_zeros(weight.shape[0])
    layer.weight = nn.Parameter((weight * scale).to(layer.weight.dtype), requires_grad=False)
    layer.bias = nn.Parameter((bias + weight @ shift).to(layer.weight.dtype), requires_grad=False)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)


def fold_batchnorm(model: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """A copy of ``model`` with every foldable BatchNorm folded away, for inference only.

    The original is untouched. The copy is in eval mode with ``requires_grad`` off; each
    folded norm becomes an ``nn.Identity`` so attribute names and ``forward`` stay as they
    were. See :func:`plan_folding` for which norms fold and which stay.

    Args:
        model: any module; zoo models fold fully except where the module docstring says.
        channels_last: also convert 4-D weights to ``torch.channels_last`` (NHWC), which
            oneDNN convolutions run faster; feed it ``channels_last`` inputs too.

    Raises:
        ConfigError: ``channels_last`` on a model with no 2-D convolution (1-D, tabular).
    """
    folded = copy.deepcopy(model).eval()
    for pair in plan_folding(folded).pairs:
        layer, norm = folded.get_submodule(pair.layer), folded.get_submodule(pair.norm)
        with torch.no_grad():
            if pair.side == "output":
                _fold_output_side(layer, norm)
            else:
                _fold_input_side(layer, norm)
        _replace(folded, pair.norm, nn.Identity())
    folded.requires_grad_(False)
    if channels_last:
        if not any(isinstance(m, nn.Conv2d) for m in folded.modules()):
            raise ConfigError("channels_last applies to 2-D convolutions; this model has none")
        folded = folded.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return folded
