"""DynamicBatcher (serve/batcher.py): real asyncio, real executor threads, numpy predict."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnetkit.errors import (
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    QueueFull,
    ServeError,
)
from resnetkit.serve.batcher import MIN_RETRY_AFTER_S, BatchStats, DynamicBatcher

T = TypeVar("T")
WAIT_S = 5.0  # upper bound on any wait for a thread; tests pass far sooner


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def affine(x: np.ndarray) -> dict[str, np.ndarray]:
    """A stand-in model: per-sample outputs that depend only on that sample."""
    flat = x.reshape(len(x), -1)  # (N, D)
    return {"logits": flat * 2.0 + 1.0, "embedding": flat.sum(axis=1, keepdims=True)}


def samples(n: int, first: float = 0.0) -> np.ndarray:
    """(n, 1, 2, 2) float32, each sample filled with its own value first, first + 1, ..."""
    values = np.arange(first, first + n, dtype=np.float32)
    return np.broadcast_to(values[:, None, None, None], (n, 1, 2, 2)).copy()


class Recorder:
    """A predict function that records what it saw, optionally held at a gate."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], dict[str, np.ndarray]] = affine,
        *,
        gated: bool = False,
        sleep_s: float = 0.0,
    ) -> None:
        self.fn = fn
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.sleep_s = sleep_s
        self.batches: list[np.ndarray] = []
        self.intervals: list[tuple[float, float]] = []

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        self.started.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        time.sleep(self.sleep_s)
        self.batches.append(x.copy())
        out = self.fn(x)
        self.intervals.append((start, time.perf_counter()))
        return out

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    def seen_values(self) -> set[float]:
        return {float(v) for batch in self.batches for v in batch[:, 0, 0, 0]}

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, WAIT_S)


def assert_outputs_of(result: dict[str, np.ndarray], x: np.ndarray) -> None:
    expected = affine(x)
    assert result.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(result[key], expected[key])


def test_concurrent_submits_form_batches_of_at_most_max_batch_size_mostly_full() -> None:
    recorder = Recorder()

    async def main() -> list[dict[str, np.ndarray]]:
        async with DynamicBatcher(recorder, max_batch_size=16, max_delay_ms=50) as batcher:
            return await asyncio.gather(*(batcher.submit(samples(1, i)) for i in range(64)))

    results = run(main())
    assert sum(recorder.sizes) == 64
    assert max(recorder.sizes) <= 16
    assert sum(size == 16 for size in recorder.sizes) >= 3
    for i, result in enumerate(results):
        assert_outputs_of(result, samples(1, i))


def test_a_lone_request_waits_max_delay_then_runs_alone() -> None:
    recorder = Recorder()

    async def main() -> float:
        async with DynamicBatcher(recorder, max_batch_size=8, max_delay_ms=40) as batcher:
            start = time.perf_counter()
            await batcher.submit(samples(1))
            return time.perf_counter() - start

    waited_s = run(main())
    assert recorder.sizes == [1]
    assert 0.035 <= waited_s < 2.0


def test_a_full_batch_does_not_wait_for_max_delay() -> None:
    recorder = Recorder()

    async def main() -> float:
        async with DynamicBatcher(recorder, max_batch_size=4, max_delay_ms=10_000) as batcher:
            start = time.perf_counter()
            await batcher.submit(samples(4))
            return time.perf_counter() - start

    assert run(main()) < 2.0
    assert recorder.sizes == [4]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=12),
    max_batch_size=st.integers(min_value=1, max_value=8),
)
def test_every_request_gets_exactly_the_outputs_of_its_own_input(
    sizes: list[int], max_batch_size: int
) -> None:
    starts = np.cumsum([0, *sizes[:-1]])
    inputs = [samples(n, float(first)) for n, first in zip(sizes, starts, strict=True)]

    async def main() -> list[dict[str, np.ndarray]]:
        async with DynamicBatcher(
            affine, max_batch_size=max_batch_size, max_delay_ms=1, queue_size=sum(sizes)
        ) as batcher:
            return await asyncio.gather(*(batcher.submit(x) for x in inputs))

    for result, x in zip(run(main()), inputs, strict=True):
        assert_outputs_of(result, x)


def test_an_oversize_request_is_split_across_batches_and_reassembled_in_order() -> None:
    recorder = Recorder()
    x = samples(10)

    async def main() -> dict[str, np.ndarray]:
        async with DynamicBatcher(recorder, max_batch_size=4, max_delay_ms=1) as batcher:
            return await batcher.submit(x)

    assert_outputs_of(run(main()), x)
    assert recorder.sizes == [4, 4, 2]


def test_requests_of_different_sample_shapes_never_share_a_batch() -> None:
    recorder = Recorder()
    small, large = samples(2), np.ones((3, 1, 3, 3), np.float32)

    async def main() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        async with DynamicBatcher(recorder, max_batch_size=8, max_delay_ms=20) as batcher:
            return await asyncio.gather(batcher.submit(small), batcher.submit(large))

    small_out, large_out = run(main())
    assert sorted(recorder.sizes) == [2, 3]
    assert_outputs_of(small_out, small)
    assert_outputs_of(large_out, large)


def test_a_full_queue_raises_queue_full_at_once_with_a_retry_after() -> None:
    recorder = Recorder(gated=True)

    async def main() -> None:
        batcher = DynamicBatcher(recorder, max_batch_size=2, max_delay_ms=0, queue_size=4)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(samples(2)))
        await recorder.wait_started()  # the worker is busy; the queue fills from here
        queued = [asyncio.ensure_future(batcher.submit(samples(2, 10 + i))) for i in (0, 2)]
        await asyncio.sleep(0)
        assert batcher.queue_depth == 4 and batcher.capacity == 4
        with pytest.raises(QueueFull) as info:
            await batcher.submit(samples(1))
        assert info.value.retry_after_s >= MIN_RETRY_AFTER_S > 0
        recorder.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.submit(samples(1))  # room again
        await batcher.stop()

    run(main())
    assert recorder.sizes == [2, 2, 2, 1]


def test_places_reserved_while_decoding_count_against_the_queue_and_pass_to_it() -> None:
    recorder = Recorder(gated=True)

    async def main() -> None:
        batcher = DynamicBatcher(recorder, max_batch_size=2, max_delay_ms=0, queue_size=3)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(samples(2)))
        await recorder.wait_started()
        with batcher.reserve(2) as first:  # two uploads being decoded, nothing queued yet
            assert batcher.queue_depth == 0
            with pytest.raises(QueueFull):  # 2 reserved + 2 > 3
                batcher.admit(2)
            with pytest.raises(QueueFull), batcher.reserve(2):
                pass
            queued = asyncio.ensure_future(batcher.submit(samples(2, 10), reservation=first))
            await asyncio.sleep(0)
            assert first.samples == 0 and batcher.queue_depth == 2  # the places moved
            with batcher.reserve(1), pytest.raises(QueueFull):  # 2 queued + 1 reserved: full
                batcher.admit(1)
        with batcher.reserve(1):  # left without submitting: the place was freed
            pass
        batcher.admit(1)
        recorder.gate.set()
        await asyncio.gather(running, queued)
        await batcher.stop()

    run(main())
    assert recorder.sizes == [2, 2]


def test_max_queue_wait_refuses_new_requests_but_not_those_already_let_in() -> None:
    recorder = Recorder(gated=True, sleep_s=0.05)

    async def main() -> None:
        batcher = DynamicBatcher(
            recorder, max_batch_size=1, max_delay_ms=0, queue_size=64, max_queue_wait_ms=120
        )
        batcher.start()
        recorder.gate.set()
        await batcher.submit(samples(1))  # measures about 50 ms per sample
        recorder.gate.clear()
        recorder.started.clear()
        running = asyncio.ensure_future(batcher.submit(samples(1)))
        await recorder.wait_started()
        # 1 ahead: ~50 ms and 2 ahead: ~100 ms, both let in
        with batcher.reserve(1) as early, batcher.reserve(1):
            with pytest.raises(QueueFull, match="estimated"):
                batcher.admit(1)  # 3 ahead: ~150 ms > 120 ms
            # Decoded first, the early request is queued though 2 others are ahead now.
            queued = asyncio.ensure_future(batcher.submit(samples(1, 7), reservation=early))
            await asyncio.sleep(0)
            assert batcher.queue_depth == 1
        recorder.gate.set()
        await asyncio.gather(running, queued)
        await batcher.stop()

    run(main())
    assert 7.0 in recorder.seen_values()


def test_a_request_past_its_deadline_is_dropped_and_never_computed() -> None:
    recorder = Recorder(gated=True)
    marker = 99.0

    async def main() -> None:
        batcher = DynamicBatcher(recorder, max_batch_size=4, max_delay_ms=0)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(samples(1)))
        await recorder.wait_started()
        late = asyncio.ensure_future(batcher.submit(samples(1, marker), deadline_s=0.02))
        on_time = asyncio.ensure_future(batcher.submit(samples(1, 5.0), deadline_s=WAIT_S))
        with pytest.raises(DeadlineExceeded):
            await late  # fails while still queued, without waiting for the worker
        assert batcher.queue_depth == 1
        recorder.gate.set()
        await asyncio.gather(running, on_time)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(samples(1), deadline_s=0)
        await batcher.stop()

    run(main())
    assert marker not in recorder.seen_values()
    assert 5.0 in recorder.seen_values()


def test_a_failing_predict_fails_only_its_batch_and_the_worker_goes_on() -> None:
    def fragile(x: np.ndarray) -> dict[str, np.ndarray]:
        if (x < 0).any():
            raise RuntimeError("negative input")
        return affine(x)

    async def main() -> None:
        async with DynamicBatcher(fragile, max_batch_size=2, max_delay_ms=1) as batcher:
            bad, good = samples(2, -5.0), samples(2, 1.0)
            outcomes = await asyncio.gather(
                batcher.submit(bad), batcher.submit(good), return_exceptions=True
            )
            assert isinstance(outcomes[0], ServeError)
            assert isinstance(outcomes[0].__cause__, RuntimeError)
            assert "negative input" in str(outcomes[0])
            assert isinstance(outcomes[1], dict)
            assert_outputs_of(outcomes[1], good)
            assert_outputs_of(await batcher.submit(samples(1, 7.0)), samples(1, 7.0))

    run(main())


def test_a_serve_error_from_predict_reaches_the_caller_unchanged() -> None:
    def refuses(x: np.ndarray) -> dict[str, np.ndarray]:
        raise InvalidInput("expected 3 channels")

    async def main() -> None:
        async with DynamicBatcher(refuses, max_delay_ms=0) as batcher:
            with pytest.raises(InvalidInput, match="3 channels"):
                await batcher.submit(samples(1))

    run(main())


def test_outputs_without_one_row_per_sample_fail_the_batch() -> None:
    async def main() -> None:
        async with DynamicBatcher(lambda x: {"logits": np.zeros(3)}, max_delay_ms=0) as batcher:
            with pytest.raises(ServeError, match="leading axis of 2"):
                await batcher.submit(samples(2))

    run(main())


def test_a_cancelled_request_is_skipped_and_frees_its_queue_places() -> None:
    recorder = Recorder(gated=True)
    marker = 42.0

    async def main() -> None:
        batcher = DynamicBatcher(recorder, max_batch_size=4, max_delay_ms=0)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(samples(1)))
        await recorder.wait_started()
        gone = asyncio.ensure_future(batcher.submit(samples(3, marker)))
        await asyncio.sleep(0)
        assert batcher.queue_depth == 3 and batcher.in_flight == 2
        gone.cancel()
        await asyncio.sleep(0)
        assert batcher.queue_depth == 0
        recorder.gate.set()
        await running
        await batcher.stop()
        assert batcher.in_flight == 0

    run(main())
    assert marker not in recorder.seen_values()


def test_stop_with_drain_finishes_queued_work_then_refuses_new_requests() -> None:
    recorder = Recorder(sleep_s=0.005)

    async def main() -> None:
        batcher = DynamicBatcher(recorder, max_batch_size=4, max_delay_ms=50)
        batcher.start()
        inputs = [samples(2, 10.0 * i) for i in range(6)]
        pending = [asyncio.ensure_future(batcher.submit(x)) for x in inputs]
        await asyncio.sleep(0)
        await batcher.stop(drain=True)
        assert all(p.done() for p in pending)
        for future, x in zip(pending, inputs, strict=True):
            assert_outputs_of(future.result(), x)
        with pytest.raises(NotReady, match="shutting down"):
            await batcher.submit(samples(1))

    run(main())
    assert sum(recorder.sizes) == 12


def test_stop_without_drain_fails_queued_requests_with_not_ready() -> None:
    recorder = Recorder(gated=True)

    async def main() -> None:
        batcher = DynamicBatcher(recorder, max_batch_size=1, max_delay_ms=0)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(samples(1)))
        await recorder.wait_started()
        queued = asyncio.ensure_future(batcher.submit(samples(1, 3.0)))
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(batcher.stop(drain=False))
        with pytest.raises(NotReady):
            await queued
        recorder.gate.set()
        await stopping
        assert_outputs_of(await running, samples(1))

    run(main())
    assert recorder.sizes == [1]


def test_submit_before_start_raises_not_ready() -> None:
    async def main() -> None:
        with pytest.raises(NotReady, match="not started"):
            await DynamicBatcher(affine).submit(samples(1))

    run(main())


def _overlaps(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> int:
    return sum(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)


@pytest.mark.parametrize("shared_slot", [True, False], ids=["with-slot", "without-slot"])
def test_a_shared_compute_slot_keeps_two_batchers_from_overlapping(shared_slot: bool) -> None:
    stable, canary = Recorder(sleep_s=0.02), Recorder(sleep_s=0.02)
    slot = threading.Semaphore(1) if shared_slot else None

    async def main() -> None:
        kwargs: dict[str, Any] = {"max_batch_size": 2, "max_delay_ms": 0, "compute_slot": slot}
        async with DynamicBatcher(stable, **kwargs) as a, DynamicBatcher(canary, **kwargs) as b:
            await asyncio.gather(
                *(a.submit(samples(2, i)) for i in range(4)),
                *(b.submit(samples(2, i)) for i in range(4)),
            )

    run(main())
    overlaps = _overlaps(stable.intervals, canary.intervals)
    # Without the slot the two executors run side by side, which shows the check can see it.
    assert overlaps == 0 if shared_slot else overlaps > 0


def test_on_batch_reports_size_queue_waits_and_inference_time() -> None:
    reports: list[BatchStats] = []

    async def main() -> None:
        async with DynamicBatcher(
            Recorder(sleep_s=0.01), max_batch_size=4, max_delay_ms=30, on_batch=reports.append
        ) as batcher:
            await asyncio.gather(batcher.submit(samples(1)), batcher.submit(samples(2)))

    run(main())
    (stats,) = reports
    assert (stats.batch_size, stats.num_requests, stats.failed) == (3, 2, False)
    assert len(stats.queue_wait_s) == 2 and all(0.0 <= w < 2.0 for w in stats.queue_wait_s)
    assert stats.inference_s >= 0.009 and stats.slot_wait_s == 0.0


def test_a_failing_on_batch_callback_does_not_stop_the_worker() -> None:
    def broken(stats: BatchStats) -> None:
        raise ValueError("dashboard is down")

    async def main() -> None:
        async with DynamicBatcher(affine, max_delay_ms=0, on_batch=broken) as batcher:
            for i in range(3):
                assert_outputs_of(await batcher.submit(samples(1, i)), samples(1, i))

    run(main())


@pytest.mark.parametrize(
    "kwargs", [{"max_batch_size": 0}, {"max_delay_ms": -1.0}, {"queue_size": 0}]
)
def test_settings_out_of_range_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DynamicBatcher(affine, **kwargs)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((0, 1, 2, 2), np.float32), "no samples"),
        (np.zeros((9, 1, 2, 2), np.float32), "at most 8"),
        ([[1.0]], "expected an array"),
    ],
)
def test_inputs_that_cannot_be_queued_are_invalid(x: Any, match: str) -> None:
    async def main() -> None:
        async with DynamicBatcher(affine, queue_size=8, max_batch_size=4) as batcher:
            with pytest.raises(InvalidInput, match=match):
                await batcher.submit(x)

    run(main())
