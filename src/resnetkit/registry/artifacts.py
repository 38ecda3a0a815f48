"""Content-addressed artifact files: ``ROOT/sha256/<hex digest>``.

Files are written atomically (a temp file in the same folder, fsync, rename, fsync of the
folder), so a reader or a crash sees either no file or the whole file. A temp file left by a
killed writer starts with ``.tmp-`` and is never mistaken for an artifact; ``gc`` removes it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from resnetkit.errors import IntegrityError, RegistryError

__all__ = ["ArtifactStore", "StoredFile", "sha256_file"]

CHUNK_BYTES = 1 << 20
_TMP_PREFIX = ".tmp-"

#: Called with the number of bytes copied so far while a file is stored.
CopyProgress = Callable[[int], None]


@dataclass(frozen=True)
class StoredFile:
    """A file now held in the store."""

    digest: str
    size_bytes: int
    # True when this put wrote the file (no earlier artifact had the same bytes): a caller
    # whose registration then fails removes it again with :meth:`ArtifactStore.discard`.
    created: bool = False


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Immutable files named by their sha256 under one root folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.folder = self.root / "sha256"

    def path_for(self, digest: str) -> Path:
        """Where the file with this digest lives (it may not exist)."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise RegistryError(f"malformed sha256 digest {digest!r}")
        return self.folder / digest

    def put(self, source: Path, progress: CopyProgress | None = None) -> StoredFile:
        """Copy ``source`` into the store, hashing it on the way; idempotent per content.

        Raises:
            RegistryError: when the source cannot be read or the store cannot be written.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.folder, prefix=_TMP_PREFIX)
        except OSError as exc:
            raise RegistryError(f"cannot write to artifact folder {self.folder}: {exc}") from exc
        tmp = Path(tmp_name)
        try:
            digest, size = self._copy_hashing(source, fd, progress)
            target = self.path_for(digest)
            created = not (target.exists() and sha256_file(target) == digest)
            if not created:
                tmp.unlink()
                os.utime(target)  # a fresh mtime keeps it out of a concurrent gc's reach
            else:
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())  # only files we keep need to reach the disk
                os.chmod(tmp, 0o444)
                os.replace(tmp, target)
                _fsync_dir(self.folder)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RegistryError(
                    f"cannot store {source}: no space left in the artifact folder {self.folder} "
                    "(nothing was registered); free space and register again"
                ) from exc
            raise RegistryError(f"cannot store {source}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredFile(digest, size, created)

    def discard(self, stored: StoredFile) -> None:
        """Remove a file this process just stored for a registration that then failed
        (only one it created: an artifact that was already there belongs to others)."""
        if stored.created:
            with contextlib.suppress(FileNotFoundError):
                self.path_for(stored.digest).unlink()

    @staticmethod
    def _copy_hashing(source: Path, fd: int, progress: CopyProgress | None) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
            while chunk := src.read(CHUNK_BYTES):
                dst.write(chunk)
                h.update(chunk)
                size += len(chunk)
                if progress is not None:
                    dst.flush()
                    progress(size)
        return h.hexdigest(), size

    def read_verified(self, digest: str, label: str) -> bytes:
        """The bytes of an artifact, after checking them against ``digest``.

        Args:
            digest: the sha256 recorded for the file.
            label: how to name the file in an error (e.g. ``resnet20:3/model.safetensors``).

        Raises:
            IntegrityError: when the file is missing or its bytes do not match.
        """
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise IntegrityError(f"artifact {label} is missing: {path} does not exist") from exc
        except OSError as exc:
            raise IntegrityError(f"artifact {label} cannot be read ({path}): {exc}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError(
                f"artifact {label} is corrupt: {path} has sha256 {actual}, expected {digest}"
            )
        return data

    def check(self, digest: str) -> str | None:
        """None when the artifact is intact, else what is wrong with it."""
        path = self.path_for(digest)
        if not path.is_file():
            return f"missing file {path}"
        try:
            actual = sha256_file(path)
        except OSError as exc:
            return f"unreadable file {path}: {exc}"
        return None if actual == digest else f"sha256 mismatch in {path}: {actual}"

    def iter_files(self) -> Iterator[tuple[Path, bool]]:
        """Every file in the store, each with whether it is a leftover temp file."""
        if not self.folder.is_dir():
            return
        for entry in sorted(self.folder.iterdir()):
            if entry.is_file():
                yield entry, entry.name.startswith(_TMP_PREFIX)

    @staticmethod
    def age_s(path: Path) -> float:
        """Seconds since the file was last modified."""
        return time.time() - path.stat().st_mtime

    def remove(self, path: Path) -> int:
        """Delete one file of the store; returns the bytes freed."""
        if path.parent != self.folder:
            raise RegistryError(f"refusing to remove {path}: it is outside {self.folder}")
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        return size
