"""Small real training configurations: a Fashion-MNIST subset and a tiny ResNet."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from resnetkit.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig


def tiny_config(**overrides: Any) -> TrainConfig:
    """resnet8 at half width on 1,024 real Fashion-MNIST images, 2 epochs of 8 steps."""
    cfg = TrainConfig(
        model=ModelConfig("resnet8", {"width": 0.5}),
        data=DataConfig(name="fashion-mnist", limit=1088, val_fraction=64 / 1088),
        augment=AugmentConfig(crop_padding=2, hflip=True),
        optim=OptimConfig(lr=0.1, warmup_epochs=0.5),
        epochs=2,
        batch_size=128,
        seed=0,
        num_threads=1,
        progress=False,
    )
    return dataclasses.replace(cfg, **overrides)


@pytest.fixture
def config() -> TrainConfig:
    return tiny_config()
