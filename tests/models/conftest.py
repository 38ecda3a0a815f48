"""Small real inputs for every zoo model."""

from __future__ import annotations

import torch

from resnetkit.models import get_entry


def tiny_input_size(name: str) -> tuple[int, ...]:
    """A small input of the right layout: 32x32 images, length-256 sequences."""
    size = get_entry(name).input_size
    if len(size) == 3:
        return (size[0], 32, 32)
    if len(size) == 2:
        return (size[0], 256)
    return size


def tiny_batch(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *tiny_input_size(name)), generator=gen)
