"""A sampled log of predictions as JSON lines, written off the request path.

:class:`PredictionLog` keeps a fraction of requests (chosen by a hash of the request id, so
every replica keeps the same ones) for drift analysis and debugging. :meth:`~PredictionLog.log`
only puts the record on a bounded in-memory queue; a background thread encodes and writes it.
When the queue is full the record is dropped and counted: the request never waits on disk.

One line per record, written with one ``write`` call on an unbuffered file::

    {"time": "2025-01-31T12:00:00.123Z", "request_id": "...", "model": "fashion",
     "version": "3", "top_k": [{"label": "sneaker", "probability": 0.91}, ...],
     "confidence": 0.91, "latency_ms": 12.5, "embedding": [0.123457, ...],
     "image": "images/3f/3f9a....png",
     "ood": {"score": 0.42, "flagged": false, "method": "mahalanobis"}}

``embedding`` (the pre-logits features, rounded to :data:`EMBEDDING_DIGITS` significant
digits) appears when given. ``image`` appears only with ``log_images=True``: the uploaded
file is kept in ``images/`` beside the log, named by its SHA-256 (an
:class:`~resnetkit.serve.imagelog.ImageStore`, bounded by size, oldest evicted first), and the
line holds its path relative to the log's folder. A KServe V2 request (REST or gRPC) whose
input is a ``UINT8`` pixel batch ``[N, H, W, C]`` gives each logged sample its pixels
(:attr:`PredictionRecord.pixels`); the writer thread encodes them as a PNG (Pillow) and
stores it the same way, so only records that are actually logged are ever encoded, and never
on the request path. ``ood`` appears for a version with an out-of-distribution detector: the
score (1.0 is the threshold calibrated so that 95 % of held-out in-distribution images pass),
whether it was flagged (score > 1) and the detector's method. An image that cannot be
written (a full disk, an unwritable folder) is left out of its line and counted in
:attr:`~PredictionLog.image_write_errors`; the line and the request go on. Non-finite numbers
become ``null``, so every line is strict JSON.

The file rotates by size (``path``, ``path.1``, ..., ``path.<backups>``), and a line cut short
by a crash is trimmed when the log is reopened. Rotation by another tool (``mv`` then a new
file, as logrotate does) is followed: the writer reopens ``path`` when the file there is no
longer the one it writes to, and on :meth:`~PredictionLog.reopen` (``resnetkit serve`` calls
it on SIGHUP). One process writes one log: give each replica its own folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from resnetkit.errors import ConfigError
from resnetkit.fileio import check_output_file
from resnetkit.serve.imagelog import DEFAULT_MAX_IMAGE_BYTES, ImageStore

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_QUEUE_RECORDS",
    "EMBEDDING_DIGITS",
    "IMAGES_FOLDER",
    "MAX_QUEUED_IMAGE_BYTES",
    "PredictionLog",
    "PredictionRecord",
    "encode_png",
    "sample_point",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_QUEUE_RECORDS = 10_000
EMBEDDING_DIGITS = 6
_TAIL_SCAN_BYTES = 64 * 1024
#: The folder beside the log that holds logged images (``log_images=True``).
IMAGES_FOLDER = "images"
#: Image bytes waiting in the queue at most; past it, records are queued without their image.
MAX_QUEUED_IMAGE_BYTES = 64 * 1024 * 1024
_ERRORS_PER_REPORT = 1000  # log the first lost record, then every 1000th
_IDLE_CHECK_S = 1.0  # how soon an idle writer honours reopen()


@dataclass(frozen=True)
class PredictionRecord:
    """One answered request, as the app hands it to :meth:`PredictionLog.log`.

    Attributes:
        request_id: the id the sampling decision hashes.
        model, version: which model version answered.
        top_k: ``(label, probability)`` pairs, best first.
        confidence: the top-1 probability.
        latency_ms: end-to-end latency of the request.
        embedding: the pre-logits features of this sample ``(D,)``, or None.
        image: the encoded image file as received; stored only with ``log_images=True``.
        image_content_type: its declared media type; names the file only when its bytes
            match no known image format.
        pixels: the sample as ``uint8`` ``(H, W, C)`` pixels (a V2 ``UINT8`` input), encoded
            as a PNG by the writer thread with ``log_images=True``; ignored when ``image``
            is given.
        ood_score, ood_flagged, ood_method: the out-of-distribution score, flag and method,
            or None for a version without a detector.
    """

    request_id: str
    model: str
    version: str | int
    top_k: Sequence[tuple[str, float]]
    confidence: float
    latency_ms: float
    embedding: Sequence[float] | np.ndarray | None = None
    image: bytes | None = None
    image_content_type: str | None = None
    pixels: np.ndarray | None = None
    ood_score: float | None = None
    ood_flagged: bool | None = None
    ood_method: str | None = None

    @property
    def image_bytes(self) -> int:
        """The bytes of image data the record holds (encoded, else raw pixels)."""
        if self.image is not None:
            return len(self.image)
        return 0 if self.pixels is None else int(self.pixels.nbytes)


def sample_point(request_id: str, seed: int | None = None) -> float:
    """Map a request id to a point in ``[0, 1)``, the same in every process and replica.

    A request is logged when its point is below the sample rate; ``seed`` picks another,
    equally sized subset.
    """
    text = request_id if seed is None else f"{seed}:{request_id}"
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class PredictionLog:
    """Sampled JSON-lines log of predictions with a background writer and size rotation.

    Args:
        path: the log file; rotated copies are ``path.1`` (newest) to ``path.<backups>``.
        sample_rate: the fraction of request ids logged, 0 (none) to 1 (all).
        log_images: keep each record's image as a file in ``images/`` beside the log, named
            by its content, referenced from the line; off by default.
        max_image_bytes: the most the logged images may take on disk; oldest go first.
        max_bytes: rotate before a line would take the file past this size.
        backups: rotated files kept; 0 truncates the log instead.
        seed: salts the request-id hash; replicas with the same seed keep the same requests.
        queue_records: records waiting for the writer at most; beyond it, records are dropped.

    Raises:
        ConfigError: for a setting out of range or a path that cannot be written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sample_rate: float = 0.1,
        log_images: bool = False,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = 3,
        seed: int | None = None,
        queue_records: int = DEFAULT_QUEUE_RECORDS,
    ) -> None:
        _check_settings(sample_rate, max_bytes, backups, queue_records)
        self.path = _check_log_path(path)
        self.sample_rate = sample_rate
        self.log_images = log_images
        self.images: ImageStore | None = None
        if log_images:
            self.images = ImageStore(self.path.parent / IMAGES_FOLDER, max_bytes=max_image_bytes)
        self._max_bytes = max_bytes
        self._backups = backups
        self._seed = seed
        self._queue: queue.Queue[tuple[PredictionRecord, datetime] | None] = queue.Queue(
            maxsize=queue_records
        )
        self._lock = threading.Lock()  # orders log() against close()
        self._closed = False
        self._dropped = 0
        self._written = 0
        self._errors = 0
        self._queued_image_bytes = 0
        self._images_dropped = 0
        self._image_errors = 0
        self._reopen_requested = False
        self._file, self._size, self._identity = _open_for_append(self.path)
        self._thread = threading.Thread(target=self._drain, name="prediction-log", daemon=True)
        self._thread.start()

    # -- the request side ------------------------------------------------------------------

    def should_log(self, request_id: str) -> bool:
        """Whether this request is in the sample (deterministic; call before building one)."""
        return sample_point(request_id, self._seed) < self.sample_rate

    def log(self, record: PredictionRecord) -> bool:
        """Queue ``record`` if its request is sampled; never blocks.

        Returns:
            True if queued for writing; False if not sampled, or dropped because the queue
            is full or the log is closed (those count in :attr:`dropped`).
        """
        if not self.should_log(record.request_id):
            return False
        logged_at = datetime.now(timezone.utc)
        with self._lock:
            record = self._bound_image(record)
            if not self._closed:
                try:
                    self._queue.put_nowait((record, logged_at))
                    self._queued_image_bytes += record.image_bytes
                    return True
                except queue.Full:
                    pass
            self._dropped += 1
            return False

    def _bound_image(self, record: PredictionRecord) -> PredictionRecord:
        """``record`` without its image when images are off or too many bytes wait already."""
        if record.image is None and record.pixels is None:
            return record
        if self.log_images and (
            self._queued_image_bytes + record.image_bytes <= MAX_QUEUED_IMAGE_BYTES
        ):
            return record
        if self.log_images:
            self._images_dropped += 1
        return dataclasses.replace(record, image=None, image_content_type=None, pixels=None)

    def reopen(self) -> None:
        """Reopen the file at :attr:`path` before the next line (after an external rotation).

        Only sets a flag, so it is safe to call from a signal handler; an idle writer acts
        on it within a second.
        """
        self._reopen_requested = True

    @property
    def dropped(self) -> int:
        """Sampled records dropped: the queue was full or the log closed."""
        return self._dropped

    @property
    def written(self) -> int:
        """Records written to the file."""
        return self._written

    @property
    def write_errors(self) -> int:
        """Records lost to an encoding or disk error (each is logged)."""
        return self._errors

    @property
    def image_write_errors(self) -> int:
        """Images left out of their line because writing the file failed."""
        return self._image_errors

    def drop_counts(self) -> dict[tuple[str, str], int]:
        """What was dropped, as ``{(what, reason): count}`` for the metrics: ``what`` is
        ``record`` or ``image``, ``reason`` ``queue_full`` or ``write_error``."""
        return {
            ("record", "queue_full"): self._dropped,
            ("record", "write_error"): self._errors,
            ("image", "queue_full"): self._images_dropped,
            ("image", "write_error"): self._image_errors,
        }

    @property
    def images_dropped(self) -> int:
        """Images left out because :data:`MAX_QUEUED_IMAGE_BYTES` were waiting already."""
        return self._images_dropped

    def flush(self) -> None:
        """Wait until every queued record is written."""
        self._queue.join()

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)  # after every accepted record; waits for room if full
        self._thread.join()
        self._file.close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the writer thread -----------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_CHECK_S)
            except queue.Empty:
                self._reopen_if_asked()
                continue
            try:
                if item is None:
                    return
                self._write(self._encode(*item))
                self._written += 1
            except Exception:
                self._errors += 1
                if self._errors == 1 or self._errors % _ERRORS_PER_REPORT == 0:
                    logger.exception("prediction log %s: %d records lost", self.path, self._errors)
            finally:
                if item is not None and item[0].image_bytes:
                    with self._lock:
                        self._queued_image_bytes -= item[0].image_bytes
                self._queue.task_done()

    def _reopen_if_asked(self) -> None:
        if not self._reopen_requested:
            return
        try:
            self._reopen()
        except ConfigError as exc:  # the next write tries again, and counts its record lost
            logger.warning("%s", exc)

    def _store_image(self, record: PredictionRecord) -> str | None:
        """Write the record's image; its path relative to the log's folder, or None."""
        if self.images is None or (record.image is None and record.pixels is None):
            return None
        try:
            if record.image is not None:
                stored = self.images.put(record.image, record.image_content_type)
            else:
                assert record.pixels is not None
                stored = self.images.put(encode_png(record.pixels), "image/png")
        except OSError as exc:
            self._image_errors += 1
            if self._image_errors == 1 or self._image_errors % _ERRORS_PER_REPORT == 0:
                logger.warning(
                    "image log %s: cannot write an image (%s); %d left out so far",
                    self.images.root,
                    exc.strerror or exc,
                    self._image_errors,
                )
            return None
        return None if stored is None else f"{IMAGES_FOLDER}/{stored}"

    def _encode(self, record: PredictionRecord, logged_at: datetime) -> bytes:
        doc: dict[str, Any] = {
            "time": logged_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": record.request_id,
            "model": record.model,
            "version": str(record.version),
            "top_k": [{"label": str(label), "probability": _round(p)} for label, p in record.top_k],
            "confidence": _round(record.confidence),
            "latency_ms": _round(record.latency_ms),
        }
        if record.embedding is not None:
            values = np.asarray(record.embedding, dtype=np.float64).ravel()
            doc["embedding"] = [_round(v) for v in values.tolist()]
        image = self._store_image(record)  # before the line, so the line never leads the file
        if image is not None:
            doc["image"] = image
        if record.ood_score is not None:
            doc["ood"] = {
                "score": _round(record.ood_score),
                "flagged": bool(record.ood_flagged),
                "method": record.ood_method,
            }
        # ASCII-only JSON escapes every newline and odd character: one record, one line.
        return (json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")

    def _write(self, line: bytes) -> None:
        if self._file.closed or self._reopen_requested or self._moved_away():
            self._reopen()  # after a failed rotation, a SIGHUP, or another tool's rotation
        if self._size > 0 and self._size + len(line) > self._max_bytes:
            self._rotate()
        view = memoryview(line)
        while view:  # one write call for a regular file; the loop only covers a short write
            view = view[self._file.write(view) or 0 :]
        self._size += len(line)

    def _rotate(self) -> None:
        self._file.close()
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self._backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file, self._size, self._identity = _open_for_append(self.path)

    def _moved_away(self) -> bool:
        """Whether :attr:`path` is no longer the file being written (one ``stat``)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        if (stat.st_dev, stat.st_ino) != self._identity:
            return True
        self._size = min(self._size, stat.st_size)  # truncated in place (copytruncate)
        return False

    def _reopen(self) -> None:
        self._reopen_requested = False
        self._file.close()
        self._file, self._size, self._identity = _open_for_append(self.path)


def encode_png(pixels: np.ndarray) -> bytes:
    """``uint8`` pixels ``(H, W, C)`` (C 1, 3 or 4) as a PNG file's bytes (Pillow)."""
    from PIL import Image

    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_settings(sample_rate: float, max_bytes: int, backups: int, queue_records: int) -> None:
    if not 0.0 <= sample_rate <= 1.0:
        raise ConfigError(f"sample_rate must be between 0 and 1, got {sample_rate}")
    if max_bytes < 1:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
    if backups < 0:
        raise ConfigError(f"backups must be 0 or more, got {backups}")
    if queue_records < 1:
        raise ConfigError(f"queue_records must be at least 1, got {queue_records}")


def _check_log_path(path: str | os.PathLike[str]) -> Path:
    target = Path(path)
    if target.is_dir():
        raise ConfigError(
            f"prediction log {target} is a folder; give a file name in it, "
            f"e.g. {target / 'predictions.jsonl'}"
        )
    return check_output_file(target, what="prediction log")


def _open_for_append(path: Path) -> tuple[io.FileIO, int, tuple[int, int]]:
    """Open ``path`` unbuffered for appending, after trimming a line a crash cut short.

    Returns:
        The file, its size, and its ``(st_dev, st_ino)`` identity.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _trim_partial_line(path)
        handle = path.open("ab", buffering=0)
    except OSError as exc:
        raise ConfigError(f"prediction log {path}: cannot open it ({exc.strerror})") from exc
    stat = os.fstat(handle.fileno())
    return handle, handle.seek(0, os.SEEK_END), (stat.st_dev, stat.st_ino)


def _trim_partial_line(path: Path) -> None:
    """Cut the file back to its last newline, dropping a half-written last line."""
    with path.open("r+b") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        while end > 0:
            start = max(0, end - _TAIL_SCAN_BYTES)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            end = start
        handle.truncate(0)


def _round(value: float) -> float | None:
    """Round to ``EMBEDDING_DIGITS`` significant digits; None for NaN or infinity."""
    value = float(value)
    return float(f"{value:.{EMBEDDING_DIGITS}g}") if math.isfinite(value) else None
