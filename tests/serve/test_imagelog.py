"""ImageStore (serve/imagelog.py): content names, extensions from bytes, the size bound."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from resnetkit.errors import ConfigError
from resnetkit.serve.imagelog import ImageStore, image_extension


def encoded(fmt: str, value: int = 120) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "extension"),
    [
        ("PNG", ".png"),
        ("JPEG", ".jpg"),
        ("WEBP", ".webp"),
        ("BMP", ".bmp"),
        ("GIF", ".gif"),
        ("TIFF", ".tif"),
    ],
)
def test_the_extension_comes_from_the_bytes_not_the_declared_type(fmt: str, extension: str) -> None:
    assert image_extension(encoded(fmt), "image/png") == extension


def test_unknown_bytes_fall_back_to_the_declared_type_then_bin() -> None:
    assert image_extension(b"????", "image/jpg; charset=x") == ".jpg"
    assert image_extension(b"????", None) == ".bin"


def test_an_image_is_stored_once_under_its_sha256(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    data = encoded("PNG")
    digest = hashlib.sha256(data).hexdigest()
    assert store.put(data) == store.put(data) == f"{digest[:2]}/{digest}.png"
    assert (tmp_path / "images" / digest[:2] / f"{digest}.png").read_bytes() == data
    assert store.total_bytes == len(data)


def test_a_reopened_store_counts_what_is_there_and_evicts_the_oldest(tmp_path: Path) -> None:
    images = [encoded("PNG", v) for v in range(4)]
    size = max(len(image) for image in images)
    first = ImageStore(tmp_path, max_bytes=3 * size)
    paths = [first.put(image) for image in images[:3]]
    for age, path in enumerate(paths):  # the files' times say which is oldest
        assert path is not None
        os.utime(tmp_path / path, (1_000_000 + age, 1_000_000 + age))
    (tmp_path / paths[0][:2] / ".x.png.123.tmp").write_bytes(b"left by a crash")
    second = ImageStore(tmp_path, max_bytes=3 * size)  # a restarted server
    assert second.total_bytes == sum(len(image) for image in images[:3])
    assert not list(tmp_path.rglob("*.tmp"))
    second.put(images[3])
    assert not (tmp_path / paths[0]).exists()  # the oldest went
    assert all((tmp_path / path).exists() for path in paths[1:])


def test_an_image_larger_than_the_bound_is_not_stored(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, max_bytes=10)
    assert store.put(encoded("PNG")) is None
    assert store.total_bytes == 0 and not any(tmp_path.iterdir())


def test_a_file_in_place_of_the_folder_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "images").write_bytes(b"")
    with pytest.raises(ConfigError, match="image log folder"):
        ImageStore(tmp_path / "images")
