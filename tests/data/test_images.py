from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetkit.data import ImageDataset, image_to_array, open_image, read_image
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
