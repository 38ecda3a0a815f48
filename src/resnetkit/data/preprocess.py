"""The preprocessing spec that travels with a model, and the normalisation it defines.

Training, evaluation and serving all turn ``uint8`` pixels into model input with
:func:`normalize` and the same :class:`PreprocessingSpec` (saved in ``model.json``), so they
cannot disagree. A served photo first goes through :func:`preprocess_image`, which resizes and
converts channels with the same code as ImageFolder training data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image

from resnetkit.data.dataset import ImageDataset
from resnetkit.data.images import image_to_array
from resnetkit.errors import ConfigError, DataError

__all__ = ["PreprocessingSpec", "compute_preprocessing", "normalize", "preprocess_image"]

_STATS_CHUNK = 8192  # images per chunk when computing mean/std, to bound memory


@dataclasses.dataclass(frozen=True)
class PreprocessingSpec:
    """What a model expects as input: size, channels, and per-channel mean/std on [0, 1].

    Attributes:
        size: ``(height, width)``.
        channels: 1 or 3.
        mean: per-channel mean of the training pixels scaled to [0, 1].
        std: per-channel standard deviation, likewise.
    """

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"preprocessing size must be (height, width) > 0, got {self.size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocessing channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"preprocessing needs one mean and std per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``model.json``: ``{"size": [h, w], "channels", "mean", "std"}``."""
        return {
            "size": list(self.size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessingSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises:
            ConfigError: a key is missing or unknown, or a value has the wrong type.
        """
        keys = {"size", "channels", "mean", "std"}
        if set(data) != keys:
            raise ConfigError(
                f"preprocessing needs exactly the keys {sorted(keys)}, got {sorted(data)}"
            )
        try:
            return cls(
                size=(int(data["size"][0]), int(data["size"][1])),
                channels=int(data["channels"]),
                mean=tuple(float(m) for m in data["mean"]),
                std=tuple(float(s) for s in data["std"]),
            )
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"invalid preprocessing {dict(data)!r}: {exc}") from exc


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
