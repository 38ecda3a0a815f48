"""Drift detection on live traffic: a sliding window per served version, tested off the path.

Every answered request appends its pre-logits embedding and softmax output to the version's
window (a bounded ring, O(1) under a lock). Every ``every_requests`` requests, or
``every_s`` seconds when traffic is slow, the window is compared with the version's
training-time reference (:class:`resnetkit.monitor.drift.DriftReference`) in a worker
thread; a request never waits for it. The result goes to the ``resnetkit_drift_*`` gauges,
one series per detector and one ``combined`` for the verdict, and is kept for the dashboard.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnetkit.errors import DriftError

if TYPE_CHECKING:  # monitor.drift loads with the first drift reference, not with the server
    from resnetkit.monitor.drift import DriftReference, DriftReport

__all__ = ["LiveDrift", "LiveDriftSettings"]

log = logging.getLogger("resnetkit.serve")


@dataclasses.dataclass(frozen=True)
class LiveDriftSettings:
    """How much traffic a window holds and how often it is tested."""

    window: int = 200
    every_requests: int = 100
    every_s: float = 30.0


#: Called with (detector, statistic, p_value, detected) for each detector and "combined".
Publish = Callable[[str, float, float, bool], None]


class LiveDrift:
    """The sliding window of one served version and its latest drift verdict."""

    def __init__(
        self, reference: DriftReference, settings: LiveDriftSettings, publish: Publish
    ) -> None:
        self.reference = reference
        self.settings = settings
        self._publish = publish
        self._embeddings: collections.deque[np.ndarray] = collections.deque(maxlen=settings.window)
        self._probabilities: collections.deque[np.ndarray] = collections.deque(
            maxlen=settings.window
        )
        self._lock = threading.Lock()
        self._since = 0
        self._last_s = time.monotonic()
        self._running = False
        self.last_report: DriftReport | None = None
        self.last_error: str | None = None
        self.evaluations = 0

    @classmethod
    def from_file(
        cls, path: Path, settings: LiveDriftSettings, publish: Publish
    ) -> LiveDrift | None:
        """A window for the reference at ``path``; None (logged) when it cannot be read."""
        from resnetkit.monitor.drift import DriftReference

        try:
            return cls(DriftReference.from_file(path), settings, publish)
        except DriftError as exc:
            log.warning("no live drift detection: %s", exc)
            return None

    def add(self, embeddings: np.ndarray, probabilities: np.ndarray) -> bool:
        """Append a request's rows; True when a test is due (the caller schedules it)."""
        with self._lock:
            for e, p in zip(embeddings, probabilities, strict=True):
                self._embeddings.append(np.asarray(e, dtype=np.float32))
                self._probabilities.append(np.asarray(p, dtype=np.float32))
            self._since += len(embeddings)
            due = self._since >= self.settings.every_requests or (
                time.monotonic() - self._last_s >= self.settings.every_s
            )
            full = len(self._embeddings) >= self.reference_min
            if not (due and full) or self._running:
                return False
            self._running = True
            return True

    @property
    def reference_min(self) -> int:
        """The smallest window the detectors accept."""
        return self.reference.settings.min_window

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self._since = 0
            self._last_s = time.monotonic()
            return np.stack(self._embeddings), np.stack(self._probabilities)

    def evaluate(self) -> DriftReport | None:
        """Test the current window (in the calling thread) and publish the verdict."""
        try:
            embeddings, probabilities = self._snapshot()
            report = self.reference.evaluate(embeddings, probabilities, seed=self.evaluations)
        except DriftError as exc:
            self.last_error = str(exc)
            return None
        finally:
            with self._lock:
                self._running = False
        self.evaluations += 1
        self.last_report, self.last_error = report, None
        from resnetkit.monitor.drift import holm_adjust

        adjusted = holm_adjust([r.p_value for r in report.results])
        for result in report.results:
            self._publish(result.name, result.statistic, result.p_value, result.drift)
        self._publish("combined", float(min(adjusted)), float(min(adjusted)), report.drift_detected)
        return report

    async def evaluate_soon(self) -> None:
        """Run :meth:`evaluate` in a worker thread (never on the event loop)."""
        await asyncio.to_thread(self.evaluate)

    def describe(self) -> dict[str, Any]:
        """Plain data for the dashboard: window fill and the last verdict."""
        with self._lock:
            filled = len(self._embeddings)
        return {
            "window": filled,
            "window_size": self.settings.window,
            "evaluations": self.evaluations,
            "error": self.last_error,
            "report": None if self.last_report is None else self.last_report.to_dict(),
        }
