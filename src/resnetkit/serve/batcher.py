"""Dynamic batching: many small requests, one forward pass. No HTTP in here.

A :class:`DynamicBatcher` sits in front of one model. Requests join a bounded queue counted
in *samples* (a request of 8 images takes 8 places), so backpressure tracks the work queued
rather than the number of callers. One worker task forms batches and runs each forward pass
in an executor thread, never on the event loop::

    submit(x) ─► queue (≤ queue_size samples) ─► worker: up to max_batch_size samples, or
                                                 max_delay_ms after the oldest arrived
    result  ◄─ this request's slice of every output ◄─ predict(batch) in the executor

Requests larger than ``max_batch_size`` are split across batches and reassembled in order.
What goes wrong is raised from :mod:`resnetkit.errors`; the app maps each class to a status:

- :class:`~resnetkit.errors.QueueFull` at once when the samples do not fit (``retry_after_s``
  is at least :data:`MIN_RETRY_AFTER_S`, so a rounded ``Retry-After`` header is never 0);
- :class:`~resnetkit.errors.DeadlineExceeded` when a request's deadline passes while it is
  still queued: it is dropped before inference, never computed;
- :class:`~resnetkit.errors.NotReady` before :meth:`DynamicBatcher.start` and once
  :meth:`DynamicBatcher.stop` has begun;
- :class:`~resnetkit.errors.InvalidInput` for an input that is not ``(n, ...)`` with
  ``1 <= n <= queue_size``.

If ``predict`` raises, only the requests of that batch fail and the worker goes on. A
:class:`~resnetkit.errors.ServeError` from ``predict`` (a backend's ``InvalidInput``, say)
reaches each caller unchanged; any other exception reaches each caller as a new plain
``ServeError`` ("inference failed ...") whose ``__cause__`` is the original, which the app
should answer with 500.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple, Protocol

import numpy as np

from resnetkit.errors import (
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    QueueFull,
    ServeError,
)

__all__ = [
    "MAX_RETRY_AFTER_S",
    "MIN_RETRY_AFTER_S",
    "BatchStats",
    "ComputeSlot",
    "DynamicBatcher",
    "Outputs",
    "PredictFn",
    "Reservation",
]

logger = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]
"""Named outputs, each with the samples on its leading axis: ``{"logits": (N, K), ...}``."""
PredictFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
"""A batch ``(N, ...)`` in, named outputs with leading axis ``N`` out."""

MIN_RETRY_AFTER_S = 1.0
MAX_RETRY_AFTER_S = 60.0
_LATENCY_EWMA_WEIGHT = 0.2  # weight of the newest batch in the running batch latency


class ComputeSlot(Protocol):
    """What a shared compute slot offers: ``threading.Lock`` and ``threading.Semaphore`` fit."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class BatchStats:
    """What one forward pass did; handed to ``on_batch`` after its requests are resolved.

    Attributes:
        batch_size: samples in the forward pass.
        num_requests: requests with at least one sample in it.
        queue_wait_s: per request that *started* in this batch (its first samples), seconds
            from ``submit`` until dispatch. The later pieces of a split request are not
            counted again.
        inference_s: seconds ``predict`` ran (without the wait for the compute slot).
        slot_wait_s: seconds spent waiting for the shared compute slot (0 without one).
        failed: whether ``predict`` raised (every request of the batch then failed).
    """

    batch_size: int
    num_requests: int
    queue_wait_s: tuple[float, ...]
    inference_s: float
    slot_wait_s: float
    failed: bool


@dataclass(eq=False)
class Reservation:
    """Places held in a batcher's queue by :meth:`DynamicBatcher.reserve` (``samples`` drops
    to 0 once they pass to the queue or are freed)."""

    batcher: DynamicBatcher
    samples: int


@dataclass(eq=False)
class _Request:
    """One ``submit`` call: its input, its future and how far it has been dispatched."""

    x: np.ndarray  # (n, ...)
    future: asyncio.Future[Outputs]
    enqueued_at: float  # loop.time()
    deadline: float | None  # loop.time() after which it must not start
    next_index: int = 0  # samples [0, next_index) are dispatched (or dropped)
    done_samples: int = 0
    parts: dict[int, Outputs] = field(default_factory=dict)  # start index -> outputs
    timer: asyncio.TimerHandle | None = None

    @property
    def size(self) -> int:
        return int(self.x.shape[0])

    @property
    def remaining(self) -> int:
        return self.size - self.next_index

    @property
    def key(self) -> tuple[tuple[int, ...], np.dtype]:
        # Only samples of one shape and dtype can be concatenated into one batch.
        return (tuple(self.x.shape[1:]), self.x.dtype)


class _Piece(NamedTuple):
    """Samples ``[start, stop)`` of one request, placed in one batch."""

    request: _Request
    start: int
    stop: int


class DynamicBatcher:
    """Queue requests for one model and run them in batches on an executor thread.

    Use it inside a running event loop: ``start()``, then ``await submit(x)`` from any number
    of tasks, then ``await stop()``; or ``async with DynamicBatcher(...) as batcher:``.

    Args:
        predict: a batch ``(N, ...)`` float32 to named outputs with leading axis ``N``.
            Called on the executor's thread, one batch at a time.
        max_batch_size: most samples in one forward pass.
        max_delay_ms: longest a batch waits to fill, counted from its oldest request.
        queue_size: most samples waiting (not yet dispatched); beyond it ``QueueFull``.
        max_queue_wait_ms: also refuse (``QueueFull``) a request whose estimated wait (the
            samples ahead of it, reserved, queued or running, times the recent time per
            sample) is over this, so that under overload the requests let in are answered
            about as fast as without load; the first request into an idle batcher is always
            let in. None: no such limit.
        executor: the thread pool for forward passes; None owns a one-thread pool that
            :meth:`stop` shuts down. A shared pool is never shut down here.
        compute_slot: a lock or semaphore shared with other batchers in the process (a
            stable and a canary model) so their forward passes never overlap and
            oversubscribe the CPU cores. Acquired on the executor thread around ``predict``.
        on_batch: called on the event loop with :class:`BatchStats` after each batch (for
            metrics); an exception in it is logged and ignored.
        name: how messages name this model, e.g. ``"fashion:3"``.

    Raises:
        ConfigError: for a size or delay out of range.
    """

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int = 32,
        max_delay_ms: float = 5.0,
        queue_size: int = 256,
        max_queue_wait_ms: float | None = None,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
        compute_slot: ComputeSlot | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "model",
    ) -> None:
        _check_settings(max_batch_size, max_delay_ms, queue_size)
        self._predict = predict
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_ms / 1000.0
        self._queue_size = queue_size
        self._max_wait_s = None if max_queue_wait_ms is None else max_queue_wait_ms / 1000
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"batcher-{name}"
        )
        self._compute_slot = compute_slot
        self._on_batch = on_batch
        self.name = name
        self._queue: deque[_Request] = deque()
        self._queued_samples = 0
        self._reserved = 0
        self._running: list[_Piece] = []
        self._unresolved = 0
        self._batch_latency_s: float | None = None
        self._sample_s: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker task on the running event loop (a no-op if already running).

        Raises:
            NotReady: if this batcher was stopped; make a new one.
        """
        if self._closing:
            raise NotReady(f"{self.name}: this batcher was stopped; create a new one")
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting requests, then finish (or fail) what is queued and return.

        Args:
            drain: True runs every queued request before returning (graceful shutdown);
                False fails queued requests with ``NotReady`` and waits only for the batch
                already running.
        """
        self._closing = True
        if not drain:
            for request in list(self._queue):
                self._fail(request, NotReady(f"{self.name} is shutting down; retry"))
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await asyncio.shield(self._task)
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> DynamicBatcher:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(drain=True)

    # -- the request side ------------------------------------------------------------------

    async def submit(
        self,
        x: np.ndarray,
        *,
        deadline_s: float | None = None,
        reservation: Reservation | None = None,
    ) -> Outputs:
        """Queue ``x`` and wait for its outputs.

        Args:
            x: ``(n, C, H, W)`` float32 (any ``(n, ...)``), ``1 <= n <= capacity``. Only
                requests with equal sample shape and dtype share a batch.
            deadline_s: seconds from now by which inference must *start*; a request still
                queued then fails with ``DeadlineExceeded`` and is never computed. Once its
                forward pass has started it runs to the end. None waits as long as it takes.
            reservation: from :meth:`reserve` on this batcher: the request was admitted then
                (only the queue's room is checked again). Another batcher's is ignored.

        Returns:
            This request's slice of every output, e.g. ``{"logits": (n, K)}`` (copies).

        Raises:
            QueueFull: the queue has no room for ``n`` more samples (``retry_after_s`` set).
            DeadlineExceeded: the deadline passed before inference started.
            NotReady: the batcher is not started or is stopping.
            InvalidInput: ``x`` is not an array of 1 to ``capacity`` samples.
            ServeError: ``predict`` failed for this request's batch (see the module doc).
        """
        request = self._enqueue(x, deadline_s, reservation)
        return await request.future

    def admit(self, n: int = 1) -> None:
        """Check, without queueing anything, that a request of ``n`` samples would be let in.

        Raises:
            QueueFull: no room for ``n`` more samples (reservations count as queued), or an
                estimated wait over ``max_queue_wait_ms``.
        """
        self._check_room(n)
        ahead = self._ahead()
        if self._max_wait_s is None or ahead == 0 or self._sample_s is None:
            return
        wait_s = ahead * self._sample_s
        if wait_s > self._max_wait_s:
            raise QueueFull(
                f"{self.name}: busy (an estimated {wait_s * 1000:.0f} ms wait, over the "
                f"{self._max_wait_s * 1000:.0f} ms allowed); retry later",
                retry_after_s=self.retry_after_s(),
            )

    @contextlib.contextmanager
    def reserve(self, n: int = 1) -> Iterator[Reservation]:
        """Admit ``n`` samples and hold their places while the caller reads and decodes them.

        The server reserves before reading an upload, so a refused request costs nothing,
        and requests still being decoded count against the queue and the wait estimate:
        under overload, decoding cannot pile up work that the queue never sees. Pass the
        reservation to :meth:`submit`, inside the block: the places move to the queue and
        the request, already admitted, is not refused for the requests let in after it.
        Leaving the block without submitting frees the places.

        Raises:
            QueueFull: as :meth:`admit`.
        """
        self.admit(n)
        reservation = Reservation(self, n)
        self._reserved += n
        try:
            yield reservation
        finally:
            self._reserved -= reservation.samples
            reservation.samples = 0

    def _check_room(self, n: int) -> None:
        waiting = self._queued_samples + self._reserved
        if waiting + n > self._queue_size:
            raise QueueFull(
                f"{self.name}: queue full ({waiting}/{self._queue_size} samples waiting or "
                "being decoded); retry later",
                retry_after_s=self.retry_after_s(),
            )

    def _ahead(self) -> int:
        """Samples a new request waits behind: reserved, queued and in the running batch."""
        running = sum(p.stop - p.start for p in self._running)
        return self._reserved + self._queued_samples + running

    def retry_after_s(self) -> float:
        """Estimate when the queue has room again: the batches ahead times a batch's latency.

        Returns:
            Seconds, clamped to ``[MIN_RETRY_AFTER_S, MAX_RETRY_AFTER_S]``.
        """
        batches_ahead = math.ceil(self._ahead() / self._max_batch_size)
        estimate = batches_ahead * (self._batch_latency_s or 0.0)
        return min(max(estimate, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)

    @property
    def queue_depth(self) -> int:
        """Samples queued and not yet dispatched to a forward pass."""
        return self._queued_samples

    @property
    def capacity(self) -> int:
        """Most samples the queue holds (``queue_size``)."""
        return self._queue_size

    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet resolved (queued or in a forward pass)."""
        return self._unresolved

    @property
    def max_batch_size(self) -> int:
        """Most samples in one forward pass."""
        return self._max_batch_size

    @property
    def accepting(self) -> bool:
        """Whether :meth:`submit` takes requests now."""
        return self._task is not None and not self._closing

    def _enqueue(
        self, x: np.ndarray, deadline_s: float | None, reservation: Reservation | None
    ) -> _Request:
        if not self.accepting or self._loop is None:
            state = "is shutting down" if self._closing else "is not started"
            raise NotReady(f"{self.name} {state}; retry shortly")
        n = _check_input(x, self._queue_size, self.name)
        if deadline_s is not None and deadline_s <= 0:
            raise DeadlineExceeded(f"{self.name}: the request's deadline had passed on arrival")
        if reservation is not None and reservation.batcher is self and reservation.samples:
            self._reserved -= reservation.samples  # its places pass to the queue
            reservation.samples = 0
            self._check_room(n)
        else:
            self.admit(n)
        now = self._loop.time()
        deadline = None if deadline_s is None else now + deadline_s
        request = _Request(x, self._loop.create_future(), now, deadline)
        if deadline is not None:
            request.timer = self._loop.call_at(deadline, self._expire, request)
        request.future.add_done_callback(lambda _: self._on_resolved(request))
        self._queue.append(request)
        self._queued_samples += n
        self._unresolved += 1
        assert self._wakeup is not None
        self._wakeup.set()
        return request

    def _on_resolved(self, request: _Request) -> None:
        # Runs once per request, whether it got a result, an error or was cancelled (the
        # caller went away): what it still had queued stops counting.
        if request.timer is not None:
            request.timer.cancel()
        self._release(request)
        self._unresolved -= 1

    def _release(self, request: _Request) -> None:
        """Drop what ``request`` still has queued; the worker then skips it. Idempotent."""
        self._queued_samples -= request.remaining
        request.next_index = request.size

    def _expire(self, request: _Request) -> None:
        if request.remaining > 0:  # all dispatched: it runs to the end
            self._fail(request, _deadline_error(self.name))

    def _fail(self, request: _Request, error: BaseException) -> None:
        if not request.future.done():
            request.future.set_exception(error)
        self._release(request)

    # -- the worker ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._serve_batches()
        finally:
            # Whatever ended the worker, leave no caller waiting forever.
            for request in [*self._queue, *(p.request for p in self._running)]:
                self._fail(request, NotReady(f"{self.name} stopped; retry"))
            self._queue.clear()

    async def _serve_batches(self) -> None:
        assert self._wakeup is not None and self._loop is not None
        while True:
            head = self._head()
            if head is None:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._wait_to_fill(head.enqueued_at + self._max_delay_s)
            pieces = self._take_batch()
            if pieces:
                await self._execute(pieces)

    def _head(self) -> _Request | None:
        while self._queue and (self._queue[0].remaining == 0 or self._queue[0].future.done()):
            self._release(self._queue.popleft())
        return self._queue[0] if self._queue else None

    async def _wait_to_fill(self, flush_at: float) -> None:
        """Wait until a full batch is queued, ``flush_at`` comes, or the batcher stops."""
        assert self._wakeup is not None and self._loop is not None
        while not self._closing and self._queued_samples < self._max_batch_size:
            timeout_s = flush_at - self._loop.time()
            if timeout_s <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout_s)

    def _take_batch(self) -> list[_Piece]:
        """Take up to ``max_batch_size`` samples of one shape from the head of the queue."""
        assert self._loop is not None
        now = self._loop.time()
        pieces: list[_Piece] = []
        room = self._max_batch_size
        while room > 0 and (request := self._head()) is not None:
            if request.deadline is not None and now >= request.deadline:
                self._fail(request, _deadline_error(self.name))
                continue
            if pieces and request.key != pieces[0].request.key:
                break
            start = request.next_index
            stop = start + min(room, request.remaining)
            request.next_index = stop
            self._queued_samples -= stop - start
            pieces.append(_Piece(request, start, stop))
            room -= stop - start
            if request.remaining == 0:  # fully dispatched: the queue only holds what waits
                self._queue.popleft()
        return pieces

    async def _execute(self, pieces: list[_Piece]) -> None:
        """Run one forward pass in the executor and resolve every request it completes."""
        assert self._loop is not None
        dispatched_at = self._loop.time()
        waits = tuple(dispatched_at - p.request.enqueued_at for p in pieces if p.start == 0)
        inputs = [p.request.x[p.start : p.stop] for p in pieces]
        size = sum(p.stop - p.start for p in pieces)
        self._running = pieces
        slot_wait_s = inference_s = 0.0
        try:
            outputs, slot_wait_s, inference_s = await self._loop.run_in_executor(
                self._executor, self._forward, inputs
            )
        except Exception as exc:
            logger.error("%s: a batch of %d samples failed", self.name, size, exc_info=exc)
            self._fail_batch(pieces, exc)
            failed = True
        else:
            self._note_latency(slot_wait_s + inference_s, size)
            _deliver(pieces, outputs)
            failed = False
        finally:
            self._running = []
        requests = len({id(p.request) for p in pieces})
        self._report(BatchStats(size, requests, waits, inference_s, slot_wait_s, failed))

    def _forward(self, inputs: list[np.ndarray]) -> tuple[Outputs, float, float]:
        """On the executor thread: concatenate, wait for the compute slot, predict."""
        batch = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)  # (N, ...)
        slot = self._compute_slot
        slot_wait_s = 0.0
        if slot is not None:
            asked_at = time.perf_counter()
            slot.acquire()
            slot_wait_s = time.perf_counter() - asked_at
        try:
            started_at = time.perf_counter()
            raw = self._predict(batch)
            inference_s = time.perf_counter() - started_at
        finally:
            if slot is not None:
                slot.release()
        return _check_outputs(raw, len(batch), self.name), slot_wait_s, inference_s

    def _fail_batch(self, pieces: list[_Piece], exc: Exception) -> None:
        for piece in pieces:
            if isinstance(exc, ServeError):
                error: ServeError = exc
            else:
                error = ServeError(f"{self.name}: inference failed: {type(exc).__name__}: {exc}")
                error.__cause__ = exc
            self._fail(piece.request, error)

    def _note_latency(self, seconds: float, size: int) -> None:
        self._batch_latency_s = _ewma(self._batch_latency_s, seconds)
        self._sample_s = _ewma(self._sample_s, seconds / size)

    def _report(self, stats: BatchStats) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(stats)
        except Exception:
            logger.exception("%s: the on_batch callback failed; ignoring it", self.name)


def _ewma(previous: float | None, value: float) -> float:
    if previous is None:
        return value
    return (1 - _LATENCY_EWMA_WEIGHT) * previous + _LATENCY_EWMA_WEIGHT * value


def _check_settings(max_batch_size: int, max_delay_ms: float, queue_size: int) -> None:
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if not max_delay_ms >= 0:  # also rejects NaN
        raise ConfigError(f"max_delay_ms must be 0 or more, got {max_delay_ms}")
    if queue_size < 1:
        raise ConfigError(f"queue_size must be at least 1 sample, got {queue_size}")


def _check_input(x: object, capacity: int, name: str) -> int:
    """Return the number of samples in ``x``, or raise ``InvalidInput``."""
    if not isinstance(x, np.ndarray) or x.ndim < 1:
        raise InvalidInput(f"{name}: expected an array of shape (n, ...), got {type(x).__name__}")
    n = int(x.shape[0])
    if n < 1:
        raise InvalidInput(f"{name}: the request has no samples; send at least one")
    if n > capacity:
        raise InvalidInput(
            f"{name}: the request has {n} samples; this model queues at most {capacity}; "
            "send smaller batches"
        )
    return n


def _check_outputs(raw: Mapping[str, np.ndarray], n: int, name: str) -> Outputs:
    """Check that ``predict`` returned named arrays with ``n`` samples each."""
    if not isinstance(raw, Mapping) or not raw:
        raise ServeError(f"{name}: predict returned {type(raw).__name__}, not named outputs")
    outputs = {key: np.asarray(value) for key, value in raw.items()}
    for key, value in outputs.items():
        if value.ndim < 1 or value.shape[0] != n:
            raise ServeError(
                f"{name}: predict output {key!r} has shape {value.shape}; "
                f"expected a leading axis of {n} (one row per sample)"
            )
    return outputs


def _deliver(pieces: list[_Piece], outputs: Outputs) -> None:
    """Give each piece its rows of ``outputs``; resolve requests that are now complete."""
    offset = 0
    for request, start, stop in pieces:
        rows = slice(offset, offset + stop - start)
        offset += stop - start
        if request.future.done():  # cancelled or expired meanwhile
            continue
        request.parts[start] = {key: value[rows].copy() for key, value in outputs.items()}
        request.done_samples += stop - start
        if request.done_samples == request.size:
            request.future.set_result(_assemble(request.parts))


def _assemble(parts: dict[int, Outputs]) -> Outputs:
    """Join the pieces of a split request back in sample order."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    ordered = [parts[start] for start in sorted(parts)]
    return {key: np.concatenate([part[key] for part in ordered]) for key in ordered[0]}


def _deadline_error(name: str) -> DeadlineExceeded:
    return DeadlineExceeded(f"{name}: the request waited past its deadline and was dropped")
