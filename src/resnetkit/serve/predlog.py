"""A sampled log of predictions as JSON lines, written off the request path.

:class:`PredictionLog` keeps a fraction of requests (chosen by a hash of the request id, so
every replica keeps the same ones) for drift analysis and debugging. :meth:`~PredictionLog.log`
only puts the record on a bounded in-memory queue; a background thread encodes and writes it.
When the queue is full the record is dropped and counted: the request never waits on disk.

One line per record, written with one ``write`` call on an unbuffered file::

    {"time": "2025-01-31T12:00:00.123Z", "request_id": "...", "model": "fashion",
     "version": "3", "top_k": [{"label": "sneaker", "probability": 0.91}, ...],
     "confidence": 0.91, "latency_ms": 12.5, "embedding": [0.123457, ...]}

``embedding`` (the pre-logits features, rounded to :data:`EMBEDDING_DIGITS` significant
digits) appears when given; ``image`` (the uploaded bytes, base64) only with
``log_images=True``; raw images are never written otherwise. Non-finite numbers become
``null``, so every line is strict JSON. The file rotates by size (``path``, ``path.1``, ...,
``path.<backups>``), and a line cut short by a crash is trimmed when the log is reopened.
One process writes one file: give each replica its own path.
"""

from __future__ import annotations

import base64
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

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_QUEUE_RECORDS",
    "EMBEDDING_DIGITS",
    "PredictionLog",
    "PredictionRecord",
    "sample_point",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_QUEUE_RECORDS = 10_000
EMBEDDING_DIGITS = 6
_TAIL_SCAN_BYTES = 64 * 1024
_ERRORS_PER_REPORT = 1000  # log the first lost record, then every 1000th


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
        image: the uploaded image bytes; written (base64) only with ``log_images=True``.
    """

    request_id: str
    model: str
    version: str | int
    top_k: Sequence[tuple[str, float]]
    confidence: float
    latency_ms: float
    embedding: Sequence[float] | np.ndarray | None = None
    image: bytes | None = None


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
        log_images: write each record's image (base64); off by default.
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
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = 3,
        seed: int | None = None,
        queue_records: int = DEFAULT_QUEUE_RECORDS,
    ) -> None:
        _check_settings(sample_rate, max_bytes, backups, queue_records)
        self.path = check_output_file(path, what="prediction log")
        self.sample_rate = sample_rate
        self.log_images = log_images
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
        self._file, self._size = _open_for_append(self.path)
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
            if not self._closed:
                try:
                    self._queue.put_nowait((record, logged_at))
                    return True
                except queue.Full:
                    pass
            self._dropped += 1
            return False

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
            item = self._queue.get()
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
                self._queue.task_done()

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
        if self.log_images and record.image is not None:
            doc["image"] = base64.b64encode(record.image).decode("ascii")
        # ASCII-only JSON escapes every newline and odd character: one record, one line.
        return (json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")

    def _write(self, line: bytes) -> None:
        if self._file.closed:  # a rotation failed: try again
            self._file, self._size = _open_for_append(self.path)
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
        self._file, self._size = _open_for_append(self.path)


def _check_settings(sample_rate: float, max_bytes: int, backups: int, queue_records: int) -> None:
    if not 0.0 <= sample_rate <= 1.0:
        raise ConfigError(f"sample_rate must be between 0 and 1, got {sample_rate}")
    if max_bytes < 1:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
    if backups < 0:
        raise ConfigError(f"backups must be 0 or more, got {backups}")
    if queue_records < 1:
        raise ConfigError(f"queue_records must be at least 1, got {queue_records}")


def _open_for_append(path: Path) -> tuple[io.FileIO, int]:
    """Open ``path`` unbuffered for appending, after trimming a line a crash cut short."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            _trim_partial_line(path)
        handle = path.open("ab", buffering=0)
    except OSError as exc:
        raise ConfigError(f"prediction log {path}: cannot open it ({exc.strerror})") from exc
    return handle, handle.seek(0, os.SEEK_END)


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
