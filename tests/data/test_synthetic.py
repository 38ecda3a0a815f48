from __future__ import annotations

from typing import Any

import pytest
import torch

from resnetkit.data import load_synthetic
from resnetkit.errors import ConfigError


def test_same_seed_gives_identical_bytes_and_other_seeds_differ() -> None:
    a, b = load_synthetic(seed=5, num_samples=64), load_synthetic(seed=5, num_samples=64)
    c = load_synthetic(seed=6, num_samples=64)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_train_and_test_share_patterns_but_not_samples() -> None:
    train, test = load_synthetic("train", seed=1), load_synthetic("test", seed=1)
    assert (len(train), len(test)) == (2048, 512)
    assert not torch.equal(train.images[:512], test.images)
    # Learnable: nearest class mean on the training split classifies the test split.
    x_train = train.images.flatten(1).float()
    means = torch.stack([x_train[train.labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(test.images.flatten(1).float(), means).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.9


def test_shape_options() -> None:
    ds = load_synthetic(num_samples=8, num_classes=3, channels=3, size=(12, 16))
    assert ds.images.shape == (8, 3, 12, 16) and ds.num_classes == 3 and not ds.allows_hflip


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"channels": 2}, {"size": 2}])
def test_nonsense_options_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load_synthetic(**kwargs)
