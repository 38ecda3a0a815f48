"""Decoding image files into ``uint8`` arrays: the one code path for training and serving.

ImageFolder training data and photos sent to the server both pass through
:func:`image_to_array`, so a model sees the same resize and channel conversion in both.
Pillow's many exception types are translated into :class:`~resnetkit.errors.DataError`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from resnetkit.errors import ConfigError, DataError

__all__ = ["GRAYSCALE_MODES", "image_to_array", "open_image", "read_image"]

# Modes whose pixels carry no colour; everything else is converted to RGB.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

_RESAMPLE = Image.Resampling.BILINEAR


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open and fully decode an image from a path or from encoded bytes.

    Raises:
        DataError: the file is missing, truncated, not an image, or too large; the message
            names the path and Pillow's reason.
    """
    where = "image data" if isinstance(source, bytes) else str(source)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.load()  # decode now, so a truncated file fails here and not mid-epoch
    # Pillow raises OSError, ValueError, SyntaxError, struct.error, DecompressionBombError and
    # more depending on the codec; any of them means "this file cannot be used".
    except Exception as exc:
        raise DataError(f"{where}: cannot read image: {exc}") from exc
    return image


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ConfigError(f"image size must be positive, got {size}")
    return int(height), int(width)


def image_to_array(
    image: Image.Image,
    size: int | tuple[int, int],
    channels: int | None,
) -> np.ndarray:
    """Convert an image to a ``uint8`` array ``(C, H, W)`` of the given size and channels.

    Args:
        image: a decoded Pillow image in any mode.
        size: output ``(height, width)``, or one number for a square.
        channels: 1 (grayscale), 3 (RGB), or None to keep grayscale images grayscale and
            convert everything else to RGB.

    Raises:
        ConfigError: channels is not 1, 3 or None.
        DataError: Pillow cannot convert or resize the image.
    """
    if channels not in (1, 3, None):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    height, width = _size_hw(size)
    if channels is None:
        channels = 1 if image.mode in GRAYSCALE_MODES else 3
    try:
        if image.mode.startswith("I;16"):
            # 16-bit grayscale (PNG): keep the high byte; Pillow's "L" conversion would clip.
            wide = np.asarray(image).astype(np.uint16)
            image = Image.fromarray((wide >> 8).astype(np.uint8), "L")
        converted = image.convert("L" if channels == 1 else "RGB")
        if converted.size != (width, height):
            converted = converted.resize((width, height), _RESAMPLE)
        array = np.asarray(converted, dtype=np.uint8)
    except Exception as exc:  # see open_image: Pillow's error types vary by mode
        raise DataError(f"cannot convert image of mode {image.mode}: {exc}") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_image(
    path: str | Path,
    size: int | tuple[int, int],
    channels: int | None,
) -> np.ndarray:
    """Read an image file into a ``uint8`` array ``(C, H, W)``; see :func:`image_to_array`."""
    try:
        return image_to_array(open_image(path), size, channels)
    except DataError as exc:
        message = str(exc)
        raise DataError(message if message.startswith(str(path)) else f"{path}: {message}") from exc
