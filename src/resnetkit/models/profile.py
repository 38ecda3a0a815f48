"""Parameters and multiply-accumulates, counted from the real graph.

MACs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which sees every
convolution and matrix product the forward pass dispatches (FLOPs / 2), so grouped
convolutions, attention and any custom layer are counted as they run. Norms, activations
and additions are not counted, as in the papers' and torchvision's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["ModelProfile", "count_params", "profile"]


@dataclass(frozen=True)
class ModelProfile:
    """What :func:`profile` measured for one input of ``input_size``."""

    params: int
    trainable_params: int
    macs: int
    input_size: tuple[int, ...]
    stage_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _sample_input(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    return torch.zeros((1, *input_size), device=device, dtype=dtype)


def profile(model: nn.Module, input_size: Sequence[int]) -> ModelProfile:
    """Count parameters and MACs of ``model`` for one sample of ``input_size``.

    Works on any device, including ``meta`` (no memory, instant), which is how
    ``resnetkit models list`` profiles the whole zoo.

    Args:
        model: any module; zoo models also report their per-stage feature shapes.
        input_size: one sample's shape without the batch axis, e.g. ``(3, 224, 224)``.
    """
    x = _sample_input(model, input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                out = model(x)
            stages: tuple[tuple[int, ...], ...] = ()
            intermediates = getattr(model, "forward_intermediates", None)
            if callable(intermediates):
                stages = tuple(tuple(t.shape[1:]) for t in intermediates(x))
    finally:
        model.train(was_training)
    return ModelProfile(
        params=count_params(model),
        trainable_params=count_params(model, trainable_only=True),
        macs=counter.get_total_flops() // 2,
        input_size=tuple(input_size),
        stage_shapes=stages,
        output_shape=tuple(out.shape[1:]),
    )
