"""Slow set-up that starts with the session and runs on a thread beside the tests.

A few fixtures spend most of a minute outside this process, mostly waiting on one core: a
container image built from Debian's packages, a fresh virtual environment installed with pip.
Their test modules define ``start_early(tmp_path_factory)``, which calls :func:`start`; the
session's first fixture (``tests/conftest.py``) calls it for every module it will run, and the
module's fixture takes :func:`result`, which waits only for what is not done yet. Run alone,
a module starts its work from its own fixture and the result is the same.

One job at a time, at the lowest priority (nice 19, which the job's processes inherit): the
tests' PyTorch threads spin on both cores, and a job at their priority slowed them by about
what it saved; at nice 19 it takes the cores only while the tests wait on servers and
subprocesses. A
session that ends first drops the jobs not yet begun and waits for the one under way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def _lowest_priority() -> None:
    """Nice 19 for this thread (Linux sets it per thread; the processes it starts inherit it)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


_POOL = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="early-setup", initializer=_lowest_priority
)
_JOBS: dict[str, Future[Any]] = {}


def started(key: str) -> bool:
    return key in _JOBS


def start(key: str, work: Callable[[], Any]) -> None:
    """Queue ``work`` under ``key``, once: a second start of the same key does nothing."""
    if key not in _JOBS:
        _JOBS[key] = _POOL.submit(work)


def result(key: str) -> Any:
    """What the work under ``key`` returned, once it is done; its exception if it raised."""
    return _JOBS[key].result()


def cancel_pending() -> None:
    """Drop the jobs that have not begun (the session ended before their tests ran)."""
    for job in _JOBS.values():
        job.cancel()
