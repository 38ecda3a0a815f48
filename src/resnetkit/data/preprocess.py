"""The preprocessing spec that travels with a model, and the normalisation it defines.

Training, evaluation and serving all turn ``uint8`` pixels into model input with
:func:`normalize` and the same :class:`PreprocessingSpec` (saved in ``model.json``), so they
cannot disagree. A served photo first goes through :func:`preprocess_image`, which resizes and
converts channels with the same code as ImageFolder training data. The spec itself is part of
the artifact contract (:mod:`resnetkit.contract`); it is re-exported here.

:func:`normalize` works on torch tensors (training, evaluation); :func:`normalize_array` is the
same arithmetic on NumPy arrays, and :func:`preprocess_image` uses it, so the serving runtime
turns images into model input without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from resnetkit.contract import PreprocessingSpec
from resnetkit.data.images import image_to_array
from resnetkit.errors import DataError

if TYPE_CHECKING:
    import torch

    from resnetkit.data.dataset import ImageDataset

__all__ = [
    "PreprocessingSpec",
    "compute_preprocessing",
    "normalize",
    "normalize_array",
    "preprocess_image",
]

_STATS_CHUNK = 8192  # images per chunk when computing mean/std, to bound memory


def compute_preprocessing(dataset: ImageDataset) -> PreprocessingSpec:
    """Compute the spec (size, channels, per-channel mean and std) from training data.

    Call it on the training split only, so validation and test data do not leak into it.

    Raises:
        DataError: the dataset is empty.
    """
    import torch

    if len(dataset) == 0:
        raise DataError(f"{dataset.name}: cannot compute preprocessing on an empty dataset")
    channels = dataset.channels
    # Exact statistics from per-channel histograms of the 256 pixel values: fast on uint8,
    # and no float rounding that would depend on the order of summation.
    counts = torch.zeros(channels, 256, dtype=torch.float64)
    for chunk in dataset.images.split(_STATS_CHUNK):
        for c in range(channels):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64)
    n = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / n
    std = ((counts * (values - mean[:, None]) ** 2).sum(dim=1) / n).sqrt()
    return PreprocessingSpec(
        size=dataset.image_size,
        channels=channels,
        mean=tuple(float(m) / 255.0 for m in mean),
        # A constant channel would divide by zero; 1/255 keeps it finite.
        std=tuple(max(float(s), 1.0) / 255.0 for s in std),
    )


def _check_shape(shape: tuple[int, ...], spec: PreprocessingSpec) -> None:
    if len(shape) not in (3, 4) or tuple(shape[-3:]) != (spec.channels, *spec.size):
        raise DataError(
            f"input of shape {tuple(shape)} does not fit the model's preprocessing "
            f"({spec.channels}, {spec.size[0]}, {spec.size[1]})"
        )


def normalize(
    batch: torch.Tensor,
    spec: PreprocessingSpec,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Turn ``uint8`` pixels ``(B, C, H, W)`` or ``(C, H, W)`` into normalised floats.

    Computes ``(x / 255 - mean) / std`` on the batch's own device. Float input is taken to be
    already scaled to [0, 1].

    Raises:
        DataError: the channel count or image size does not match the spec.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    _check_shape(tuple(batch.shape), spec)
    mean = torch.tensor(spec.mean, dtype=dtype, device=batch.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=dtype, device=batch.device).view(-1, 1, 1)
    scale = 255.0 if batch.dtype == torch.uint8 else 1.0
    # A multiply, then a subtraction, each rounded: exactly what normalize_array computes, so
    # the torch-free serving path gives the very floats training and evaluation see (a fused
    # multiply-add would round once, and differ in the last bit).
    return batch.to(dtype) * (1.0 / (scale * std)) - mean / std


def normalize_array(pixels: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """:func:`normalize` on NumPy: ``uint8`` ``(B, C, H, W)`` or ``(C, H, W)`` to float32.

    The same float32 arithmetic, ``x * (1 / (255 * std)) - mean / std``, bit for bit.

    Raises:
        DataError: the channel count or image size does not match the spec.
    """
    _check_shape(pixels.shape, spec)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    scale = np.float32(255.0 if pixels.dtype == np.uint8 else 1.0)
    out: np.ndarray = pixels.astype(np.float32) * (np.float32(1.0) / (scale * std)) - mean / std
    return out


def preprocess_image(image: Image.Image, spec: PreprocessingSpec) -> np.ndarray:
    """Prepare one decoded photo for a model: resize, convert channels, normalise.

    The one image-to-model-input path: ``/v1`` uploads, V2 UINT8 pixels, ``resnetkit
    explain`` and, through :func:`image_to_array`, ImageFolder training data.

    Returns:
        A float32 array ``(C, H, W)``.

    Raises:
        DataError: Pillow cannot convert the image.
    """
    return normalize_array(image_to_array(image, spec.size, spec.channels), spec)
