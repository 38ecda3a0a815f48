"""Checking what clients upload: request body size, image files, and the model input made of them.

An uploaded photo goes ``read_limited`` → :func:`decode_image` → :func:`image_to_model_input`.
The last step is ``data.preprocess_image`` with the model's spec, the same code that training
and evaluation use, so the server cannot drift from them. Every bad upload is an
:class:`~resnetkit.errors.InvalidInput` (or its subclasses ``PayloadTooLarge``,
``UnsupportedMediaType``); Pillow's many exception types never escape.

Decoding rules:

* Formats: JPEG, PNG, WebP, BMP, GIF and TIFF (:data:`IMAGE_TYPES`, the one table of the
  formats and media types the server takes, for ``/v1`` bodies, form parts and the OpenAPI
  document), recognised by their magic bytes; only the matching Pillow plugin parses the body.
  The bytes decide, never the declared type: browsers set a part's type from the file name,
  so a PNG saved as ``photo.jpg`` arrives as ``image/jpeg`` and is decoded as the PNG it is.
  Any ``image/*`` type, ``application/octet-stream`` or no type at all is taken; another type
  (``text/plain``, ``application/json``) is 415, and so are bytes of no format we take. Bytes
  of no format sent under a type of the table (a text file sent as ``image/png``) are 400.
* Size (:data:`SIZE_POLICY`): the pixel count is read from the header and checked against
  ``max_pixels`` before any pixel is decoded (413); Pillow's own decompression-bomb guard maps
  to 413 as well. The same rule bounds V2 pixel tensors (:func:`check_image_size`).
* Animated GIF, PNG and WebP, multi-page TIFF: the first frame is used.
* EXIF orientation is applied, so the model sees the photo the way a viewer shows it.
* Transparency (RGBA, LA, PA, palette or 8-bit colour-key transparency) is composited over
  **black**: the background of MNIST-style data, and what most encoders store under fully
  transparent pixels, which training's plain conversion would reveal.
* Other modes (1-bit, L, P, RGB, CMYK, YCbCr, 16-bit I;16) are left to
  ``data.image_to_array``, which converts them exactly as for training images.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from decimal import Decimal

import numpy as np
from PIL import Image

from resnetkit.data import PreprocessingSpec, preprocess_image
from resnetkit.data.images import apply_exif_orientation, flatten_transparency
from resnetkit.errors import (
    ConfigError,
    DataError,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)

__all__ = [
    "GENERIC_TYPES",
    "IMAGE_TYPES",
    "MAX_PIXELS",
    "SIZE_POLICY",
    "check_image_size",
    "decode_image",
    "image_to_model_input",
    "is_upload_type",
    "media_type",
    "parse_size",
    "read_limited",
    "sniff_format",
]

#: The formats the server decodes, by Pillow format name, with the media types that name
#: them (the first is the canonical one; the others are aliases clients send).
IMAGE_TYPES: dict[str, tuple[str, ...]] = {
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "PNG": ("image/png", "image/x-png", "image/apng"),
    "WEBP": ("image/webp",),
    "BMP": ("image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/x-windows-bmp"),
    "GIF": ("image/gif",),
    "TIFF": ("image/tiff", "image/tif", "image/x-tiff"),
}
#: Content types that say nothing about the format: the bytes decide.
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
#: The size policy, one rule for every protocol: an image holds at most this many pixels
#: (width x height), whether it arrives as a file (``/v1``) or as a UINT8 pixel tensor (V2);
#: FP32 tensors have the model's own input size. ``HttpSettings.max_pixels`` overrides it.
MAX_PIXELS = 40_000_000
SIZE_POLICY = (
    "one size policy for every protocol: a request body of at most max_body_bytes; each "
    "image (a /v1 file or a V2 UINT8 [N, H, W, C] tensor) of at most max_pixels pixels "
    "(width x height), resized to the model's input by training's code; a V2 FP32 tensor "
    "of exactly the model's input shape; at most the batcher's capacity of images a request"
)
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
# The sizes a BMP's DIB header can have (BITMAPCOREHEADER ... BITMAPV5HEADER).
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def sniff_format(head: bytes) -> str | None:
    """The Pillow format name of an image by its magic bytes, or None if it is none we take."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def media_type(content_type: str | None) -> str:
    """The bare media type of a ``Content-Type`` value: lower case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def is_upload_type(content_type: str | None) -> bool:
    """Whether a declared type may carry an image: any ``image/*``, or a generic type."""
    declared = media_type(content_type)
    return declared in GENERIC_TYPES or declared.startswith("image/")


def check_image_size(width: int, height: int, max_pixels: int, what: str = "the image") -> None:
    """Apply the size policy to one image of ``width`` x ``height`` pixels.

    Raises:
        PayloadTooLarge: over ``max_pixels``, with the limit in the message.
        InvalidInput: an image without pixels.
    """
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels, over this server's limit "
            f"of {max_pixels} pixels per image; send a smaller image"
        )
    if width < 1 or height < 1:
        raise InvalidInput(f"{what} is {width}x{height}: it has no pixels")


def decode_image(
    body: bytes,
    content_type: str | None,
    *,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode an uploaded image file, refusing anything unsafe or malformed.

    Args:
        body: the file's bytes.
        content_type: the request's ``Content-Type`` header, or None.
        max_pixels: the most pixels (width × height) an image may have.

    Returns:
        A fully loaded image, upright, without alpha, in a mode ``data.image_to_array`` takes.

    Raises:
        InvalidInput: an empty body, bytes of no image format under an image type of
            :data:`IMAGE_TYPES`, or a truncated or corrupt file.
        UnsupportedMediaType: a content type that cannot carry an image, or bytes of a format
            that is not JPEG, PNG, WebP, BMP, GIF or TIFF.
        PayloadTooLarge: more than ``max_pixels`` pixels.
    """
    if not body:
        raise InvalidInput("the body is empty; send the image file's bytes")
    fmt = _check_format(body, content_type)
    try:
        image = Image.open(io.BytesIO(body), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"the {fmt} image is too large to decode: {exc}") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise InvalidInput(f"truncated or corrupt image ({fmt}): {exc}") from exc
    check_image_size(*image.size, max_pixels)
    try:
        image.load()  # the first frame of an animation
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"the {fmt} image is too large to decode: {exc}") from exc
    except Exception as exc:
        raise InvalidInput(f"truncated or corrupt image ({fmt}): {exc}") from exc
    return flatten_transparency(apply_exif_orientation(image))


def _check_format(body: bytes, content_type: str | None) -> str:
    """The format of the bytes; the declared type only chooses between 400 and 415."""
    declared = media_type(content_type)
    if not is_upload_type(declared):
        raise UnsupportedMediaType(
            f"content type {declared!r} is not accepted; send a {_FORMAT_NAMES} image as "
            "image/* or application/octet-stream"
        )
    fmt = sniff_format(body[:32])
    if fmt is not None:
        return fmt
    head = body[:8]
    if any(declared in types for types in IMAGE_TYPES.values()):
        raise InvalidInput(
            f"the body is declared {declared} but is no {_FORMAT_NAMES} file "
            f"(it starts with {head!r})"
        )
    raise UnsupportedMediaType(f"the body is not a {_FORMAT_NAMES} image (it starts with {head!r})")


def image_to_model_input(image: Image.Image, spec: PreprocessingSpec) -> np.ndarray:
    """A decoded image as the model's float32 input ``(C, H, W)``: training's preprocessing.

    Raises:
        InvalidInput: Pillow cannot convert the image to the spec's channels.
    """
    try:
        return preprocess_image(image, spec)
    except DataError as exc:
        raise InvalidInput(f"the image cannot be made into model input: {exc}") from exc


async def read_limited(chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    """Read a request body, refusing it as soon as it grows past ``max_bytes``.

    The rest of the stream is not read, so an oversized upload costs at most ``max_bytes``
    plus one chunk of memory.

    Raises:
        PayloadTooLarge: the body is longer than ``max_bytes``.
    """
    if max_bytes < 0:
        raise ConfigError(f"max_bytes must not be negative, got {max_bytes}")
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(
                f"the request body is over the limit of {_format_size(max_bytes)}; send a "
                "smaller body"
            )
        parts.append(chunk)
    return b"".join(parts)


def parse_size(text: str) -> int:
    """Parse a byte size such as ``10MB``, ``512KiB``, ``1.5GB`` or ``1048576``.

    KB, MB, GB and TB are powers of 1000; KiB, MiB, GiB and TiB powers of 1024; units are
    case-insensitive and may follow a space.

    Raises:
        ConfigError: the text is not a positive whole number of bytes with a known unit.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f"invalid size {text!r}: use a number of bytes with an optional unit, "
            "e.g. 10MB, 512KiB or 1048576"
        )
    value = Decimal(match.group(1)) * _UNITS[unit]
    if value != value.to_integral_value() or value < 1:
        raise ConfigError(f"invalid size {text!r}: it must be a whole number of bytes, at least 1")
    return int(value)


def _format_size(n: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= factor:
            return f"{n / factor:g} {unit} ({n} bytes)"
    return f"{n} bytes"
