"""Upload checks on real photos (scikit-image) and Fashion-MNIST, and on every bad upload."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnetkit.data import PreprocessingSpec, load_dataset, normalize, read_image
from resnetkit.errors import ConfigError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from resnetkit.serve.validation import (
    decode_image,
    image_to_model_input,
    parse_size,
    read_limited,
    sniff_format,
)

PHOTOS = ("astronaut", "chelsea", "coffee", "camera")
RGB_SPEC = PreprocessingSpec(size=(32, 32), channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
GRAY_SPEC = PreprocessingSpec(size=(28, 28), channels=1, mean=(0.286,), std=(0.353,))
# Pillow's save options per format: lossless where the format allows it.
SAVE_OPTIONS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 90},
    "PNG": {},
    "WEBP": {"lossless": True},
    "BMP": {},
}
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    """The photos at half size (256 to 300 pixels wide), to keep the encoders quick."""
    skimage_data = pytest.importorskip("skimage.data")  # scikit-image ships them offline
    return {
        name: np.asarray(Image.fromarray(getattr(skimage_data, name)()).reduce(2))
        for name in PHOTOS
    }


@pytest.fixture(scope="module")
def astronaut_png(photos: dict[str, np.ndarray]) -> bytes:
    return encode(Image.fromarray(photos["astronaut"]), "PNG")


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of ``width`` x ``height`` zeros: a few KB that decode to a huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = bytes(1 + (width + 7) // 8) * 500  # each row: filter byte 0, then packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(rows) for _ in range(height // 500))
    idat += compressor.compress(rows[: len(rows) // 500 * (height % 500)]) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# --- Real images -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(SAVE_OPTIONS))
@pytest.mark.parametrize("name", PHOTOS)
def test_real_photos_decode_in_every_format(
    photos: dict[str, np.ndarray], name: str, fmt: str
) -> None:
    pixels = photos[name]
    body = encode(Image.fromarray(pixels), fmt, **SAVE_OPTIONS[fmt])
    for content_type in (MEDIA_TYPES[fmt], None, "application/octet-stream"):
        image = decode_image(body, content_type)
        assert image.size == (pixels.shape[1], pixels.shape[0])
    decoded = np.asarray(image.convert("L" if pixels.ndim == 2 else "RGB"))  # WebP has no L
    if fmt == "JPEG":
        assert np.abs(decoded.astype(int) - pixels).mean() < 4
    else:  # lossless
        np.testing.assert_array_equal(decoded, pixels)
    x = image_to_model_input(image, RGB_SPEC)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("spec", [RGB_SPEC, GRAY_SPEC], ids=["rgb", "gray"])
def test_served_photo_matches_training_preprocessing_exactly(
    photos: dict[str, np.ndarray], tmp_path, fmt: str, spec: PreprocessingSpec
) -> None:
    # The same file through ImageFolder's reader (training) and through the upload path.
    body = encode(Image.fromarray(photos["chelsea"]), fmt)
    path = tmp_path / f"chelsea.{fmt.lower()}"
    path.write_bytes(body)
    trained_on = normalize(
        torch.from_numpy(read_image(path, spec.size, spec.channels).copy()), spec
    )
    served = image_to_model_input(decode_image(body, MEDIA_TYPES[fmt]), spec)
    np.testing.assert_array_equal(served, trained_on.numpy())


def test_fashion_mnist_png_uploads_give_exactly_the_training_input() -> None:
    dataset = load_dataset("fashion-mnist", "test", limit=20)
    expected = normalize(dataset.images, GRAY_SPEC).numpy()
    for i, pixels in enumerate(dataset.images):
        body = encode(Image.fromarray(pixels[0].numpy()), "PNG")
        image = decode_image(body, "image/png")
        assert image.mode == "L" and image.size == (28, 28)
        np.testing.assert_array_equal(image_to_model_input(image, GRAY_SPEC), expected[i])


# --- Content types and formats -------------------------------------------------------------


def test_sniffing_recognises_each_format_by_its_magic_bytes(astronaut_png: bytes) -> None:
    small = Image.new("RGB", (4, 4))
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"):
        assert sniff_format(encode(small, fmt)) == fmt
    assert sniff_format(b"BMW is a car, not a bitmap") is None
    assert sniff_format(b"%PDF-1.4 a document") is None


@pytest.mark.parametrize(
    "content_type", ["image/png", "IMAGE/PNG", "image/png; charset=binary", " image/png "]
)
def test_declared_type_is_matched_without_case_or_parameters(
    astronaut_png: bytes, content_type: str
) -> None:
    assert decode_image(astronaut_png, content_type).size == (256, 256)


@pytest.mark.parametrize(
    "content_type",
    ["image/jpg", "image/pjpeg", "image/x-png", "image/x-ms-bmp", "image/tiff", "image/heic"],
)
def test_the_bytes_decide_the_format_whatever_image_type_is_declared(
    photos, content_type: str
) -> None:
    # Browsers name a part's type from the file name: a PNG saved as photo.jpg is image/jpeg.
    for fmt in ("PNG", "JPEG"):
        body = encode(Image.fromarray(photos["coffee"]), fmt)
        assert decode_image(body, content_type).size == (300, 200)


def test_text_file_named_png_is_refused() -> None:
    text = b"this is a text file, saved as photo.png\n"
    with pytest.raises(InvalidInput, match="declared image/png but is no JPEG, PNG") as info:
        decode_image(text, "image/png")
    assert type(info.value) is InvalidInput
    with pytest.raises(UnsupportedMediaType, match="not a JPEG, PNG, WebP, BMP, GIF or TIFF"):
        decode_image(text, None)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/json", "multipart/form-data; boundary=x"]
)
def test_content_types_that_cannot_carry_an_image_are_unsupported(
    astronaut_png: bytes, content_type: str
) -> None:
    with pytest.raises(UnsupportedMediaType, match="is not accepted"):
        decode_image(astronaut_png, content_type)


def test_tiff_is_decoded_as_the_cli_reads_it(photos, tmp_path) -> None:
    # `resnetkit explain` and training read TIFF files; the server takes them too.
    body = encode(Image.fromarray(photos["camera"]), "TIFF")
    (tmp_path / "camera.tif").write_bytes(body)
    served = image_to_model_input(decode_image(body, "image/tiff"), GRAY_SPEC)
    read = read_image(tmp_path / "camera.tif", GRAY_SPEC.size, GRAY_SPEC.channels)
    np.testing.assert_array_equal(served, normalize(torch.from_numpy(read.copy()), GRAY_SPEC))


def test_empty_body_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="empty") as info:
        decode_image(b"", "image/png")
    assert type(info.value) is InvalidInput


# --- Size limits ---------------------------------------------------------------------------


def test_decompression_bomb_is_refused_before_its_pixels_are_decoded() -> None:
    bomb = png_bomb(20_000, 10_000)  # 200 million pixels in 25 KB: over Pillow's own limit
    assert len(bomb) < 30_000
    with pytest.raises(PayloadTooLarge, match="too large"):
        decode_image(bomb, "image/png")


def test_image_over_max_pixels_is_refused_from_its_header() -> None:
    # The IDAT is garbage: had the pixels been decoded, this would be a corrupt image.
    header = png_bomb(8000, 6000)[:33]  # signature and IHDR only
    body = header + b"\x00\x00\x00\x04IDATjunk\x00\x00\x00\x00"
    with pytest.raises(PayloadTooLarge, match="8000x6000 = 48000000 pixels"):
        decode_image(body, "image/png")
    with pytest.raises(PayloadTooLarge):
        decode_image(png_bomb(300, 300), "image/png", max_pixels=300 * 299)
    assert decode_image(png_bomb(300, 300), "image/png", max_pixels=300 * 300).size == (300, 300)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_raised_as_an_error_is_payload_too_large() -> None:
    body = png_bomb(10_000, 9_000)  # over Pillow's warning threshold, under its error
    with pytest.raises(PayloadTooLarge):
        decode_image(body, "image/png", max_pixels=10**9)


# --- Corrupt and unusual files ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image_is_invalid_input(photos, fmt: str) -> None:
    body = encode(Image.fromarray(photos["astronaut"]), fmt, **SAVE_OPTIONS[fmt])
    with pytest.raises(InvalidInput, match="truncated or corrupt image") as info:
        decode_image(body[: len(body) // 2], None)
    assert type(info.value) is InvalidInput


def test_corrupt_pixel_data_is_invalid_input(astronaut_png: bytes) -> None:
    body = bytearray(astronaut_png)
    body[200:400] = bytes(200)  # zero out part of the compressed IDAT stream
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(bytes(body), "image/png")


def _two_frames(fmt: str) -> bytes:
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    options = {"lossless": True} if fmt == "WEBP" else {}
    return encode(red, fmt, save_all=True, append_images=[blue], duration=100, loop=0, **options)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_gives_its_first_frame(fmt: str) -> None:
    image = decode_image(_two_frames(fmt), None)
    assert image.convert("RGB").getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    # 40 wide, 20 high, left half red; orientation 6 means "rotate 90° clockwise to view".
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(encode(image, "JPEG", exif=exif, quality=95), "image/jpeg")
    assert upright.size == (20, 40)
    r, _, b = upright.getpixel((10, 5))  # the old left half is now on top
    assert r > 200 and b < 60


def _with_alpha(mode: str) -> Image.Image:
    """Left half opaque white, right half fully transparent but white underneath."""
    image = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    image.paste((255, 255, 255, 0), (4, 0, 8, 8))
    return image.convert(mode)


@pytest.mark.parametrize(("mode", "fmt"), [("RGBA", "PNG"), ("LA", "PNG"), ("RGBA", "WEBP")])
def test_transparent_pixels_are_composited_over_black(mode: str, fmt: str) -> None:
    options = {"lossless": True} if fmt == "WEBP" else {}
    image = decode_image(encode(_with_alpha(mode), fmt, **options), None)
    assert "A" not in image.mode
    gray = image.convert("L")
    assert gray.getpixel((1, 1)) == 255 and gray.getpixel((6, 1)) == 0


def test_palette_and_color_key_transparency_are_composited_over_black() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.paste(0, (2, 0, 4, 4))
    # Index 1 (white) is transparent: the left half becomes black, the right stays index 0.
    for fmt in ("PNG", "GIF"):
        image = decode_image(encode(palette, fmt, transparency=1), None)
        assert image.convert("L").getpixel((0, 0)) == 0
    keyed = encode(Image.new("RGB", (4, 4), (10, 20, 30)), "PNG", transparency=(10, 20, 30))
    assert decode_image(keyed, "image/png").getpixel((0, 0)) == (0, 0, 0)


def test_sixteen_bit_png_is_served_as_training_reads_it(tmp_path) -> None:
    wide = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    body = encode(Image.fromarray(wide), "PNG")
    path = tmp_path / "depth.png"
    path.write_bytes(body)
    image = decode_image(body, "image/png")
    assert image.mode == "I;16"
    pixels = torch.from_numpy(read_image(path, (28, 28), 1).copy())
    expected = normalize(pixels, GRAY_SPEC).numpy()
    np.testing.assert_array_equal(image_to_model_input(image, GRAY_SPEC), expected)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("1", "PNG"), ("1", "BMP"), ("L", "JPEG"), ("L", "BMP"), ("CMYK", "JPEG"), ("P", "PNG")],
)
def test_every_mode_becomes_finite_model_input(photos, mode: str, fmt: str) -> None:
    image = Image.fromarray(photos["coffee"]).resize((60, 40)).convert(mode)
    decoded = decode_image(encode(image, fmt), None)
    for spec in (RGB_SPEC, GRAY_SPEC):
        x = image_to_model_input(decoded, spec)
        assert x.shape == spec.input_size and np.isfinite(x).all()


# --- Property: no bytes make decode_image fail any other way ------------------------------

SMALL_FILES = [
    encode(Image.new("RGB", (6, 5), (200, 10, 10)), fmt)
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF")
]
CONTENT_TYPES = [None, "image/png", "image/jpeg", "application/octet-stream", "text/plain"]


def _decode_or_invalid(body: bytes, content_type: str | None) -> None:
    try:
        image = decode_image(body, content_type, max_pixels=1_000_000)
    except InvalidInput:
        return
    image_to_model_input(image, RGB_SPEC)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=256), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bytes_decode_or_raise_invalid_input(body: bytes, content_type: str | None) -> None:
    _decode_or_invalid(body, content_type)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    original=st.sampled_from(SMALL_FILES),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 400),
    content_type=st.sampled_from(CONTENT_TYPES),
)
def test_damaged_real_files_decode_or_raise_invalid_input(
    original: bytes, edits: list[tuple[int, int]], cut: int, content_type: str | None
) -> None:
    body = bytearray(original)
    for position, value in edits:
        if position < len(body):
            body[position] = value
    _decode_or_invalid(bytes(body[: max(cut, 1)] if cut < len(body) else body), content_type)


# --- Request bodies and sizes -----------------------------------------------------------------


class _Chunks:
    """An async stream of chunks that counts how many were pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.pulled = chunks, 0

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def test_read_limited_returns_a_body_within_the_limit() -> None:
    source = _Chunks([b"abc", b"", b"defg"])
    assert asyncio.run(read_limited(source.stream(), max_bytes=7)) == b"abcdefg"


def test_read_limited_stops_reading_as_soon_as_the_limit_is_passed() -> None:
    source = _Chunks([b"x" * 400] * 1000)
    with pytest.raises(PayloadTooLarge, match="over the limit of 1 KB"):
        asyncio.run(read_limited(source.stream(), max_bytes=1000))
    assert source.pulled == 3


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("10MB", 10_000_000),
        ("10mb", 10_000_000),
        ("512KiB", 512 * 1024),
        ("1.5GB", 1_500_000_000),
        ("2 MiB", 2 * 1024 * 1024),
        ("7B", 7),
    ],
)
def test_parse_size_reads_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten MB", "10XB", "-5MB", "0", "0.5B", "1e6", "10 M B"])
def test_parse_size_refuses_bad_text_with_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(text)
