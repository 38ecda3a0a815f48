"""Request images kept as files named by their content, for the prediction log.

:class:`ImageStore` writes each image once, as ``<root>/<first two hex digits>/<sha256>.<ext>``
(the extension read from the bytes), so a log line refers to it by a short relative path and
the same image sent twice is stored once. The folder is bounded by total size: before a new
image would take it past ``max_bytes``, the least recently stored images are deleted (a log
line may then refer to an image that is gone; old lines age out first). Each file is written
to a temp file in the same folder and renamed, so a reader never sees half an image.

One writer per folder: the store keeps its index in memory, built from the folder when it
opens, and is not thread-safe (the prediction log's writer thread is its only caller).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

from resnetkit.errors import ConfigError
from resnetkit.fileio import check_output_dir

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "ImageStore", "image_extension"]

DEFAULT_MAX_IMAGE_BYTES = 1_000_000_000

# (leading bytes, extension); WebP is RIFF....WEBP and is checked on its own.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)
_CONTENT_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/gif": ".gif",
    "image/tiff": ".tif",
}
_TEMP_SUFFIX = ".tmp"


def image_extension(data: bytes, content_type: str | None = None) -> str:
    """The file extension of an encoded image, read from its first bytes.

    The declared ``content_type`` is only a fallback for bytes no signature matches; ``.bin``
    when neither says what the image is.
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for signature, extension in _SIGNATURES:
        if data.startswith(signature):
            return extension
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    return _CONTENT_TYPES.get(declared, ".bin")


class ImageStore:
    """A size-bounded folder of content-addressed image files.

    Args:
        root: the folder; created on the first write.
        max_bytes: the most the stored images may take together; oldest are evicted first.

    Raises:
        ConfigError: ``max_bytes`` below 1, or ``root`` cannot be used as a folder.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES):
        if max_bytes < 1:
            raise ConfigError(f"the image log's size limit must be positive, got {max_bytes}")
        self.root = check_output_dir(root, what="image log folder")
        self.max_bytes = max_bytes
        self._index: OrderedDict[str, int] = OrderedDict()  # relative path -> size, oldest first
        self._total = 0
        self._scan()

    @property
    def total_bytes(self) -> int:
        """The size of the images stored now."""
        return self._total

    def put(self, data: bytes, content_type: str | None = None) -> str | None:
        """Store ``data`` unless it is there already; its path relative to :attr:`root`.

        Returns:
            The relative path (``"ab/abcd....png"``), or None for an image larger than
            ``max_bytes`` on its own (nothing is evicted for it).

        Raises:
            OSError: the file could not be written (nothing is left behind).
        """
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{digest[:2]}/{digest}{image_extension(data, content_type)}"
        if relative in self._index and (self.root / relative).exists():
            self._index.move_to_end(relative)  # used again: evict it last
            return relative
        if len(data) > self.max_bytes:
            return None
        self._forget(relative)
        self._evict_for(len(data))
        _write_atomically(self.root / relative, data)
        self._index[relative] = len(data)
        self._total += len(data)
        return relative

    def _evict_for(self, size: int) -> None:
        while self._index and self._total + size > self.max_bytes:
            relative, stored = self._index.popitem(last=False)
            self._total -= stored
            (self.root / relative).unlink(missing_ok=True)

    def _forget(self, relative: str) -> None:
        """Drop an index entry whose file was deleted behind our back."""
        self._total -= self._index.pop(relative, 0)

    def _scan(self) -> None:
        """Index the images already in the folder, oldest first; remove stale temp files."""
        if not self.root.is_dir():
            return
        found: list[tuple[float, str, int]] = []
        for path in self.root.glob("*/*"):
            try:
                if path.name.endswith(_TEMP_SUFFIX):  # left by a crash mid-write
                    path.unlink(missing_ok=True)
                    continue
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, path.relative_to(self.root).as_posix(), stat.st_size))
        for _, relative, size in sorted(found):
            self._index[relative] = size
            self._total += size


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it into place.

    No fsync: a sampled debugging log is not worth a disk flush per image; the rename still
    keeps readers from ever seeing a partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
