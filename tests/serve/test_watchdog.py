"""The event loop's watchdog: a loop held by a blocking call is counted, timed and located."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from resnetkit.serve.watchdog import LoopWatchdog


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # a blocking call on the loop's thread, as a bug would make one


async def _serve_then_block(dog: LoopWatchdog, block_s: float) -> None:
    watching = asyncio.create_task(dog.run())
    await asyncio.sleep(0.5)  # heartbeats on time
    _hold_the_loop(block_s)
    await asyncio.sleep(0.6)  # the loop runs again; the thread sees it
    watching.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watching


def test_a_blocked_loop_is_one_stall_logged_with_the_blocking_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lags: list[float] = []
    stalls: list[None] = []
    dog = LoopWatchdog(lags.append, lambda: stalls.append(None), interval_s=0.05, stall_s=0.5)
    with caplog.at_level(logging.WARNING, logger="resnetkit.serve"):
        asyncio.run(_serve_then_block(dog, 1.2))
    assert len(stalls) == 1 and dog.stalls == 1
    assert max(lags) >= 1.1  # the heartbeat after the block was that late
    assert sorted(lags)[len(lags) // 2] < 0.05  # and the others were on time
    stalled = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalled) == 1 and "_hold_the_loop" in stalled[0]
    resumed = [r.getMessage() for r in caplog.records if "ran again" in r.getMessage()]
    assert len(resumed) == 1
    assert 0.9 <= float(resumed[0].split("after ")[1].split(" s")[0]) <= 1.5


def test_a_loop_that_only_waits_for_io_never_stalls(caplog: pytest.LogCaptureFixture) -> None:
    stalls: list[None] = []
    dog = LoopWatchdog(lambda _: None, lambda: stalls.append(None), interval_s=0.05, stall_s=0.3)

    async def idle() -> None:
        watching = asyncio.create_task(dog.run())
        await asyncio.sleep(1.0)
        watching.cancel()

    asyncio.run(idle())
    assert stalls == [] and "stalled" not in caplog.text


def test_the_heartbeat_must_be_shorter_than_a_stall() -> None:
    with pytest.raises(ValueError, match="interval_s < stall_s"):
        LoopWatchdog(lambda _: None, lambda: None, interval_s=1.0, stall_s=1.0)
