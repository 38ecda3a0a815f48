from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import ExifTags, Image

from resnetkit.data import ImageDataset, image_to_array, open_image, read_image
from resnetkit.data.images import apply_exif_orientation
from resnetkit.errors import ConfigError, DataError

from .helpers import save_image, write_truncated_jpeg


@pytest.fixture()
def shirt(fashion_train: ImageDataset) -> np.ndarray:
    return fashion_train.images[0, 0].numpy()


def test_truncated_jpeg_is_a_data_error_naming_the_path(shirt: np.ndarray, tmp_path: Path) -> None:
    path = write_truncated_jpeg(shirt, tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="truncated") as info:
        open_image(path)
    assert str(path) in str(info.value)


def test_bytes_that_are_not_an_image_are_a_data_error() -> None:
    with pytest.raises(DataError, match="cannot read image"):
        open_image(b"definitely not a PNG")


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.png"):
        read_image(tmp_path / "nope.png", 28, None)


@pytest.mark.parametrize(
    ("mode", "channels", "expected"),
    [
        ("L", None, 1),
        ("RGB", None, 3),
        ("RGBA", None, 3),
        ("P", None, 3),
        ("RGB", 1, 1),
        ("L", 3, 3),
    ],
)
def test_modes_convert_to_the_requested_channels(
    shirt: np.ndarray, mode: str, channels: int | None, expected: int
) -> None:
    image = Image.fromarray(shirt, "L").convert(mode)
    out = image_to_array(image, (20, 24), channels)
    assert out.shape == (expected, 20, 24) and out.dtype == np.uint8


def test_sixteen_bit_grayscale_keeps_its_range(shirt: np.ndarray) -> None:
    wide = Image.fromarray(shirt.astype(np.uint16) * 257)
    np.testing.assert_array_equal(image_to_array(wide, 28, 1)[0], shirt)


def test_same_size_grayscale_is_unchanged(shirt: np.ndarray, tmp_path: Path) -> None:
    path = save_image(shirt, tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(path, 28, None)[0], shirt)
    buffer = io.BytesIO()
    Image.fromarray(shirt).save(buffer, "PNG")
    np.testing.assert_array_equal(image_to_array(open_image(buffer.getvalue()), 28, 1)[0], shirt)


def test_invalid_channels_or_size_are_config_errors(shirt: np.ndarray) -> None:
    image = Image.fromarray(shirt)
    with pytest.raises(ConfigError):
        image_to_array(image, 28, 2)
    with pytest.raises(ConfigError):
        image_to_array(image, (0, 5), 1)


def _with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored turned left: shown turned right
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied_as_a_viewer_shows_the_photo(
    shirt: np.ndarray, tmp_path: Path, orientation: int, upright: Any
) -> None:
    stored = np.ascontiguousarray(shirt[:, 4:24])  # (28, 20): not square, so a turn shows
    expected = upright(stored)
    path = tmp_path / "photo.png"
    path.write_bytes(_with_orientation(Image.fromarray(stored), orientation))
    np.testing.assert_array_equal(read_image(path, expected.shape, None)[0], expected)
    image = open_image(path.read_bytes())
    out = image_to_array(image, expected.shape, 1)[0]
    np.testing.assert_array_equal(out, expected)
    assert image.size == (20, 28)  # the caller's image is not modified
    # The server turns uploads upright first; doing it again changes nothing.
    twice = image_to_array(apply_exif_orientation(image), expected.shape, 1)[0]
    np.testing.assert_array_equal(twice, expected)


def test_broken_exif_leaves_the_pixels_as_they_are(shirt: np.ndarray) -> None:
    image = Image.fromarray(shirt)
    image.info["exif"] = b"Exif\x00\x00garbage"
    assert apply_exif_orientation(image) is image
    np.testing.assert_array_equal(image_to_array(image, 28, 1)[0], shirt)


def _transparent(white_background: np.ndarray, mode: str) -> Image.Image:
    """``white_background`` with its white (255) pixels transparent, in ``mode``."""
    gray = Image.fromarray(white_background, "L")
    alpha = Image.fromarray(np.where(white_background == 255, 0, 255).astype(np.uint8), "L")
    if mode == "LA":
        return Image.merge("LA", (gray, alpha))
    if mode == "RGBA":
        return Image.merge("RGBA", (*gray.convert("RGB").split(), alpha))
    if mode == "L-key":
        gray.info["transparency"] = 255
        return gray
    palette = gray.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))  # a background pixel
    return palette


@pytest.mark.parametrize(("mode", "channels"), [("LA", 1), ("RGBA", 3), ("L-key", 1), ("P", 3)])
def test_transparency_is_composited_over_black(
    shirt: np.ndarray, tmp_path: Path, mode: str, channels: int
) -> None:
    # Shirt on white, the white made transparent: a plain conversion would show the white.
    on_white = np.where(shirt == 0, 255, np.minimum(shirt, 254)).astype(np.uint8)
    expected = np.where(on_white == 255, 0, on_white)
    path = tmp_path / "cutout.png"
    _transparent(on_white, mode).save(path)
    out = read_image(path, 28, None)
    assert out.shape == (channels, 28, 28)
    for channel in out:
        np.testing.assert_array_equal(channel, expected)


def test_half_transparent_pixels_blend_with_black(shirt: np.ndarray) -> None:
    rgba = Image.merge(
        "RGBA", (*Image.fromarray(shirt).convert("RGB").split(), Image.new("L", (28, 28), 128))
    )
    out = image_to_array(rgba, 28, 1)[0].astype(int)
    assert np.abs(out - np.round(shirt.astype(int) * 128 / 255)).max() <= 1
