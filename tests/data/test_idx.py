from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from resnetkit.data.idx import find_idx_pair, read_idx
from resnetkit.errors import DataError


def test_reads_real_fashion_mnist_headers_and_a_prefix(fashion_dir: Path) -> None:
    images = read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(fashion_dir / "t10k-labels-idx1-ubyte.gz", ndim=1)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    head = read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz", ndim=3, limit=7)
    np.testing.assert_array_equal(head, images[:7])


def test_plain_uncompressed_files_are_found_and_read(fashion_dir: Path, tmp_path: Path) -> None:
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(fashion_dir / f"{stem}.gz") as src, (tmp_path / stem).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    pair = find_idx_pair(tmp_path, "test")
    assert pair is not None
    assert read_idx(pair[1], ndim=1).shape == (10000,)
    assert find_idx_pair(tmp_path, "train") is None


def _write_gz(path: Path, data: bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"\x01\x02", "2 of 3 bytes"),
        (b"\x00\x00\x0d\x01" + (2).to_bytes(4, "big") + b"\x01\x02", "magic number"),  # float
        (b"\x00\x00\x08\x03" + (1).to_bytes(4, "big"), "magic number"),  # wrong ndim
        (b"\x00\x00", "header"),
        (b"\x00\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x01\x02", "bytes after"),
    ],
)
def test_corrupt_files_raise_data_error_naming_the_path(
    tmp_path: Path, payload: bytes, reason: str
) -> None:
    path = _write_gz(tmp_path / "labels.gz", payload)
    with pytest.raises(DataError, match=reason) as info:
        read_idx(path, ndim=1)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream_is_a_data_error(fashion_dir: Path, tmp_path: Path) -> None:
    data = (fashion_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_idx(path, ndim=1)


def test_not_gzip_at_all_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read IDX"):
        read_idx(path, ndim=1)
