"""A small synthetic dataset for smoke tests: deterministic from a seed, and learnable.

Each class has a fixed smooth template (a few random blobs drawn from ``seed``); a sample is
its class template at a random brightness plus noise. Train and test share the templates and
differ in the samples, so a model that learns on the training split scores on the test split.
"""

from __future__ import annotations

import torch

from resnetkit.data.dataset import ImageDataset
from resnetkit.errors import ConfigError

__all__ = ["load_synthetic"]

_BLOBS_PER_CLASS = 3
_NOISE_STD = 24.0


def _templates(num_classes: int, channels: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    shape = (num_classes, _BLOBS_PER_CLASS, 1, 1)
    cy, cx = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
    radius = 0.08 + 0.15 * torch.rand(shape, generator=generator)
    blobs = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius**2))  # (K, B, H, W)
    colour = 0.4 + 0.6 * torch.rand((num_classes, _BLOBS_PER_CLASS, channels), generator=generator)
    templates = torch.einsum("kbhw,kbc->kchw", blobs, colour)  # (K, C, H, W)
    return templates / templates.amax(dim=(1, 2, 3), keepdim=True)


def load_synthetic(
    split: str = "train",
    *,
    num_samples: int | None = None,
    num_classes: int = 10,
    channels: int = 1,
    size: int | tuple[int, int] = 28,
    seed: int = 0,
) -> ImageDataset:
    """Make a synthetic dataset of class-dependent patterns.

    Args:
        split: ``"train"`` or ``"test"``; they share the class patterns, not the samples.
        num_samples: number of samples; 2048 for train and 512 for test by default.
        num_classes: number of classes (at least 2).
        channels: 1 or 3.
        size: ``(height, width)`` or one number for a square.
        seed: the same seed gives the same data, byte for byte.

    Raises:
        ConfigError: a count or size that makes no sense.
    """
    height, width = (size, size) if isinstance(size, int) else size
    count = num_samples if num_samples is not None else (2048 if split == "train" else 512)
    if num_classes < 2 or count < 1 or channels not in (1, 3) or min(height, width) < 4:
        raise ConfigError(
            "synthetic data needs num_classes >= 2, num_samples >= 1, channels 1 or 3 and a "
            f"size of at least 4, got {num_classes}, {count}, {channels}, {(height, width)}"
        )
    templates = _templates(num_classes, channels, (height, width), seed)
    generator = torch.Generator().manual_seed(seed * 2 + (1 if split == "test" else 2))
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    brightness = 140 + 100 * torch.rand((count, 1, 1, 1), generator=generator)
    noise = _NOISE_STD * torch.randn((count, channels, height, width), generator=generator)
    images = (templates[labels] * brightness + noise).round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(
        images=images,
        labels=labels,
        classes=tuple(f"pattern_{i}" for i in range(num_classes)),
        name="synthetic",
        split=split,
        allows_hflip=False,
        source=f"synthetic(seed={seed})",
    )
