"""The event loop's watchdog: how late the loop runs, and where it was when it stalled.

Every request of the server (REST and gRPC) is handled on one asyncio event loop; anything
that holds it (a blocking call, a long computation on the loop's thread, the process starved
of CPU) delays every request at once, and nothing in a request's own metrics says why. The
watchdog measures it from both sides:

* a heartbeat task on the loop sleeps ``interval_s`` and records how late it woke up
  (``resnetkit_event_loop_lag_seconds``);
* a thread outside the loop checks the heartbeat; when it is ``stall_s`` overdue it counts a
  stall (``resnetkit_event_loop_stalls_total``) and logs one warning with the loop thread's
  stack at that moment: the code that holds the loop, or, when the stack shows the loop
  waiting in its selector, that the whole process was not scheduled (a starved or paused
  machine) rather than blocked by our code. When the loop runs again a second line gives the
  stall's length.

Cost: ``1 / interval_s`` wake-ups a second on the loop and ``1 / check_s`` in the thread.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

__all__ = ["LoopWatchdog"]

log = logging.getLogger("resnetkit.serve")

# Frames of the loop thread that mean "waiting for I/O", not "running our code".
_IDLE_FRAMES = ("select", "poll", "_run_once")
# Top frames of a thread that waits (a pool's worker on its queue, a timer, a lock).
_WAITING_FRAMES = (
    *_IDLE_FRAMES,
    "wait",
    "get",
    "_worker",
    "acquire",
    "sleep",
    "_wait_for_tstate_lock",
)


class LoopWatchdog:
    """Measures the lateness of one event loop and reports stalls from another thread.

    Args:
        observe_lag: called on the loop with each heartbeat's lateness in seconds.
        count_stall: called (from the watchdog thread) once per stall.
        interval_s: the heartbeat's period.
        stall_s: how overdue the heartbeat must be to count as a stall.
        check_s: how often the thread looks.
    """

    def __init__(
        self,
        observe_lag: Callable[[float], None],
        count_stall: Callable[[], None],
        *,
        interval_s: float = 0.1,
        stall_s: float = 1.0,
        check_s: float = 0.25,
    ) -> None:
        if not 0 < interval_s < stall_s:
            raise ValueError(f"need 0 < interval_s < stall_s, got {interval_s} and {stall_s}")
        self._observe_lag, self._count_stall = observe_lag, count_stall
        self.interval_s, self.stall_s, self.check_s = interval_s, stall_s, check_s
        self._beat = time.monotonic()
        self._loop_thread: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stalls = 0

    async def run(self) -> None:
        """The heartbeat; runs until cancelled, with the watching thread beside it."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()
        try:
            while True:
                due = time.monotonic() + self.interval_s
                await asyncio.sleep(self.interval_s)
                now = time.monotonic()
                self._beat = now
                self._observe_lag(max(0.0, now - due))
        finally:
            self._stop.set()

    def _watch(self) -> None:
        stalled_since: float | None = None
        while not self._stop.wait(self.check_s):
            beat = self._beat
            overdue = time.monotonic() - beat - self.interval_s
            if stalled_since is None and overdue >= self.stall_s:
                stalled_since = beat
                self.stalls += 1
                self._count_stall()
                log.warning(
                    "event loop stalled: no heartbeat for %.1f s; every request waits. %s",
                    overdue, self._where(),
                )  # fmt: skip
            elif stalled_since is not None and beat > stalled_since:
                log.warning(
                    "event loop ran again after %.1f s", beat - stalled_since - self.interval_s
                )
                stalled_since = None

    def _where(self) -> str:
        """Where the loop's thread is now, and what the process's other threads are doing."""
        frames = sys._current_frames()
        frame = frames.get(self._loop_thread or -1)
        if frame is None:
            return "The loop's thread is gone."
        stack = traceback.extract_stack(frame)
        if stack and stack[-1].name in _IDLE_FRAMES:
            where = (
                "The loop's thread waits in its selector although its timer is due: it was not "
                "scheduled (another thread held the interpreter, or the process was starved of "
                "CPU)."
            )
        else:
            lines = traceback.format_list(stack[-8:])
            where = "The loop's thread is in:\n" + "".join(lines).rstrip()
        names = {t.ident: t.name for t in threading.enumerate()}
        others = [
            f"{names.get(ident, ident)} in {top.name} ({top.filename}:{top.lineno})"
            for ident, other in frames.items()
            if ident not in (self._loop_thread, threading.get_ident())
            and (top := traceback.extract_stack(other)[-1]).name not in _WAITING_FRAMES
        ]
        return where + ("\nBusy threads: " + "; ".join(others) if others else "")
