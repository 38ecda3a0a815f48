"""The feedback log: every label ``POST /v1/feedback`` accepts, as JSON lines beside the
prediction log (``<log>.feedback.jsonl``), so labels outlive the process and
``resnetkit data export-feedback`` can join them with the logged images.

Each accepted label (a replacement too: the last line of a request wins) is appended with one
``write`` call on a file opened for appending, in a worker thread, never on the event loop.
The request waits for that write (a few hundred bytes), so a label the client saw accepted is
on disk; a write that fails (a full disk, a removed folder) is logged and counted in
:meth:`FeedbackLog.drop_counts` and the request still succeeds. Opening the file for every
line follows rotation by another tool without a signal. The line format is
:func:`resnetkit.data.feedback.feedback_record`.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from resnetkit.data.feedback import feedback_log_path, feedback_record
from resnetkit.fileio import check_output_file

__all__ = ["FeedbackLog"]

logger = logging.getLogger(__name__)
_ERRORS_PER_REPORT = 100  # log the first lost label, then every 100th


class FeedbackLog:
    """Append-only JSON lines of accepted labels, beside a prediction log.

    Args:
        prediction_log: the server's prediction log; the feedback log is its path plus
            ``.feedback.jsonl``.

    Raises:
        ConfigError: the file cannot be created there.
    """

    def __init__(self, prediction_log: str | os.PathLike[str]) -> None:
        self.path: Path = check_output_file(feedback_log_path(prediction_log), what="feedback log")
        self._lock = threading.Lock()  # one line at a time: no interleaving on short writes
        self._written = 0
        self._errors = 0

    def append(
        self, request_id: str, label: int, label_name: str, model: str, version: str
    ) -> bool:
        """Write one label line now (blocking: call it from a worker thread).

        Returns:
            True if written; False if the write failed (counted, logged).
        """
        line = feedback_record(
            request_id, label, label_name, model, version, datetime.now(timezone.utc)
        )
        with self._lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                self._errors += 1
                if self._errors == 1 or self._errors % _ERRORS_PER_REPORT == 0:
                    logger.warning(
                        "feedback log %s: cannot write a label (%s); %d lost so far",
                        self.path,
                        exc.strerror or exc,
                        self._errors,
                    )
                return False
            self._written += 1
            return True

    @property
    def written(self) -> int:
        """Labels written."""
        return self._written

    def drop_counts(self) -> dict[tuple[str, str], int]:
        """``{("feedback", "write_error"): n}``, in the prediction log's metric's form."""
        return {("feedback", "write_error"): self._errors}
