"""Decoding image files into ``uint8`` arrays: the one code path for training and serving.

ImageFolder training data and photos sent to the server both pass through
:func:`image_to_array`, so a model sees the same pixels in both. In order, it:

* applies the EXIF orientation (:func:`apply_exif_orientation`), so a phone photo stored
  sideways is seen upright, as a viewer shows it;
* composites transparency (RGBA, LA, PA, palette or colour-key transparency) over **black**
  (:func:`flatten_transparency`): the background of MNIST-style data, and what most encoders
  store under fully transparent pixels, which a plain conversion would reveal;
* converts to grayscale or RGB and resizes (bilinear, aspect ratio not kept) to the size asked.

Both steps leave an image without EXIF orientation or transparency untouched, so applying them
twice (the server does it while validating an upload) changes nothing. Pillow's many exception
types are translated into :class:`~resnetkit.errors.DataError`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from resnetkit.errors import ConfigError, DataError

__all__ = [
    "ALPHA_BACKGROUND",
    "GRAYSCALE_MODES",
    "apply_exif_orientation",
    "flatten_transparency",
    "image_to_array",
    "open_image",
    "read_image",
]

# Modes whose pixels carry no colour; everything else is converted to RGB.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

#: Grey level that transparent pixels are composited over (0 is black).
ALPHA_BACKGROUND = 0

_RESAMPLE = Image.Resampling.BILINEAR
# Modes with an alpha channel, and the mode each becomes once composited.
_ALPHA_MODES = {"LA": "L", "La": "L", "PA": "RGB", "RGBA": "RGB", "RGBa": "RGB"}
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))  # EXIF 1 is upright; 2-8 flip or rotate


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open and fully decode an image from a path or from encoded bytes.

    The image is returned as stored; :func:`image_to_array` applies its EXIF orientation and
    flattens its transparency.

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


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Return the image turned upright by its EXIF orientation tag (a new image), or itself.

    An image without the tag, or with an unreadable EXIF block (no reason to refuse the
    pixels), is returned as it is; the input is never modified.
    """
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a malformed EXIF block: Pillow raises whatever its parser hit
        return image
    if orientation not in _TRANSPOSING_ORIENTATIONS:
        return image
    try:
        # exif_transpose also drops the tag from the copy, so a second call is a no-op.
        return ImageOps.exif_transpose(image)
    except Exception:  # an EXIF block that parsed but cannot be applied
        return image


def flatten_transparency(image: Image.Image) -> Image.Image:
    """Composite any transparency over :data:`ALPHA_BACKGROUND` (black); other images pass.

    Returns:
        A new ``L`` or ``RGB`` image for RGBA, LA, PA (and premultiplied) images and for
        palette, ``L`` or ``RGB`` images with a transparent colour; otherwise the image itself.
    """
    mode = image.mode
    if "transparency" in image.info and mode in ("P", "L", "RGB"):
        # Palette or colour-key transparency becomes an alpha channel first.
        image = image.convert("LA" if mode == "L" else "RGBA")
        mode = image.mode
    if mode not in _ALPHA_MODES:
        return image
    if mode in ("La", "PA", "RGBa"):
        image = image.convert("LA" if mode == "La" else "RGBA")
    target = _ALPHA_MODES[mode]
    fill = ALPHA_BACKGROUND if target == "L" else (ALPHA_BACKGROUND,) * 3
    background = Image.new(target, image.size, fill)
    background.paste(image.convert(target), mask=image.getchannel("A"))
    return background


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

    The image is first turned upright by its EXIF orientation and its transparency composited
    over black (see the module docstring); the input image is not modified.

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
    try:
        image = flatten_transparency(apply_exif_orientation(image))
    except Exception as exc:  # see open_image: Pillow's error types vary by mode
        raise DataError(f"cannot orient or flatten image of mode {image.mode}: {exc}") from exc
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
