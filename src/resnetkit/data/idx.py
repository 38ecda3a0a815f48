"""Reading the IDX format of (Fashion-)MNIST, gzipped or not, with checked headers.

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions,
then one ``uint32`` size per dimension) followed by the raw array. We read only ``uint8``
files, which is what MNIST and Fashion-MNIST ship.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import IO, cast

import numpy as np

from resnetkit.errors import DataError

__all__ = ["IDX_FILES", "find_idx_pair", "read_idx"]

_UBYTE = 0x08

# The standard names (Fashion-MNIST and MNIST use the same ones), without ``.gz``.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _read_exact(stream: IO[bytes], n: int, path: Path, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise DataError(f"{path}: corrupt IDX file: {what} has {len(data)} of {n} bytes")
    return bytes(data)


def read_idx(path: Path, *, ndim: int, limit: int | None = None) -> np.ndarray:
    """Read a ``uint8`` IDX file (``.gz`` or plain) into a numpy array.

    Args:
        path: the file.
        ndim: the number of dimensions expected (3 for images, 1 for labels).
        limit: read only the first ``limit`` items (faster for small subsets).

    Returns:
        A ``uint8`` array with the shape from the header (first dimension cut to ``limit``).

    Raises:
        DataError: the file is missing, not IDX, of another type or shape, or truncated.
    """
    try:
        with _open(path) as stream:
            magic = _read_exact(stream, 4, path, "the header")
            zero, dtype, dims = struct.unpack(">HBB", magic)
            if zero != 0 or dtype != _UBYTE or dims != ndim:
                raise DataError(
                    f"{path}: not a uint8 IDX file with {ndim} dimensions "
                    f"(magic number 0x{magic.hex()})"
                )
            shape = list(struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, "sizes")))
            if limit is not None:
                shape[0] = min(shape[0], limit)
            count = math.prod(shape)
            data = _read_exact(stream, count, path, "the data")
            if limit is None and stream.read(1):
                raise DataError(f"{path}: corrupt IDX file: bytes after the {shape} array")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc}") from exc
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    # The MNIST site once served names with a dot (``train-images.idx3-ubyte``).
    dotted = stem.replace("-idx", ".idx")
    for name in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        if (directory / name).is_file():
            return directory / name
    return None


def find_idx_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
    """Return the (images, labels) IDX files of ``split`` in ``directory``, or None if absent."""
    image_stem, label_stem = IDX_FILES[split]
    images, labels = _find(directory, image_stem), _find(directory, label_stem)
    if images is None or labels is None:
        return None
    return images, labels
