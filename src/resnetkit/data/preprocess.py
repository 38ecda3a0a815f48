"""The preprocessing spec that travels with a model, and the normalisation it defines.

Training, evaluation and serving all turn ``uint8`` pixels into model input with
:func:`normalize` and the same :class:`PreprocessingSpec` (saved in ``model.json``), so they
cannot disagree. A served photo first goes through :func:`preprocess_image`, which resizes and
converts channels with the same code as ImageFolder training data. The spec itself is part of
the artifact contract (:mod:`resnetkit.contract`); it is re-exported here.
"""

from __future__ import annotations

import torch
from PIL import Image

from resnetkit.contract import PreprocessingSpec
from resnetkit.data.dataset import ImageDataset
from resnetkit.data.images import image_to_array
from resnetkit.errors import DataError

__all__ = ["PreprocessingSpec", "compute_preprocessing", "normalize", "preprocess_image"]

_STATS_CHUNK = 8192  # images per chunk when computing mean/std, to bound memory


def compute_preprocessing(dataset: ImageDataset) -> PreprocessingSpec:
    """Compute the spec (size, channels, per-channel mean and std) from training data.

    Call it on the training split only, so validation and test data do not leak into it.

    Raises:
        DataError: the dataset is empty.
    """
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


def normalize(
    batch: torch.Tensor,
    spec: PreprocessingSpec,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turn ``uint8`` pixels ``(B, C, H, W)`` or ``(C, H, W)`` into normalised floats.

    Computes ``(x / 255 - mean) / std`` on the batch's own device. Float input is taken to be
    already scaled to [0, 1].

    Raises:
        DataError: the channel count or image size does not match the spec.
    """
    if batch.dim() not in (3, 4) or tuple(batch.shape[-3:]) != (spec.channels, *spec.size):
        raise DataError(
            f"input of shape {tuple(batch.shape)} does not fit the model's preprocessing "
            f"({spec.channels}, {spec.size[0]}, {spec.size[1]})"
        )
    mean = torch.tensor(spec.mean, dtype=dtype, device=batch.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=dtype, device=batch.device).view(-1, 1, 1)
    scale = 255.0 if batch.dtype == torch.uint8 else 1.0
    # One fused multiply-add: x * (1 / (scale * std)) + (-mean / std).
    return torch.addcmul(-mean / std, batch.to(dtype), 1.0 / (scale * std))


def preprocess_image(image: Image.Image, spec: PreprocessingSpec) -> torch.Tensor:
    """Prepare one decoded photo for a model: resize, convert channels, normalise.

    Returns:
        A float32 tensor ``(C, H, W)``.

    Raises:
        DataError: Pillow cannot convert the image.
    """
    pixels = torch.from_numpy(image_to_array(image, spec.size, spec.channels).copy())
    return normalize(pixels, spec)
