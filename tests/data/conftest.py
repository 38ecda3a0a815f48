"""Shared fixtures: small subsets of the real Fashion-MNIST files."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.data import ImageDataset, load_dataset
from resnetkit.data.sources import DEFAULT_FASHION_MNIST_DIR

FASHION_DIR = DEFAULT_FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The directory of the real Fashion-MNIST IDX files (Debian's dataset-fashion-mnist)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"Fashion-MNIST missing in {FASHION_DIR}: apt-get install dataset-fashion-mnist"
        )
    return FASHION_DIR


@pytest.fixture(scope="session")
def fashion_train(fashion_dir: Path) -> ImageDataset:
    """The first 2,000 training images of Fashion-MNIST."""
    return load_dataset("fashion-mnist", "train", data_dir=fashion_dir, limit=2000)
