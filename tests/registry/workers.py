"""Bodies of the child processes the reliability tests start (forked, so no re-import)."""

from __future__ import annotations

import random
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from resnetkit.registry import RegistrationOptions, open_registry
from resnetkit.registry.artifacts import CHUNK_BYTES

HANG_S = 600


def register_many(
    url: str, artifacts: Path, run_dir: Path, name: str, count: int, start: Event
) -> None:
    """Register ``run_dir`` ``count`` times as new versions of ``name``."""
    with open_registry(url, artifacts) as store:
        start.wait(30)
        for i in range(count):
            store.register(run_dir, name, RegistrationOptions(description=f"{i}"))


def move_alias_many(
    url: str,
    artifacts: Path,
    name: str,
    alias: str,
    count: int,
    worker: int,
    start: Event,
    moved: Any,
) -> None:
    """Point ``name@alias`` at random versions ``count`` times; count the real moves in
    ``moved`` (a shared integer): a move to where the alias already points is not logged."""
    rng = random.Random(worker)
    with open_registry(url, artifacts) as store:
        numbers = [v.version for v in store.list_versions(name)]
        start.wait(30)
        for i in range(count):
            target = rng.choice(numbers)
            event = store.set_alias(
                name, alias, target, reason=f"w{worker}-{i}", actor=f"worker{worker}"
            )
            if event is not None:
                with moved.get_lock():
                    moved.value += 1


def register_and_hang_at(
    url: str, artifacts: Path, run_dir: Path, name: str, stage: str, report: Connection
) -> None:
    """Register, but stop at ``stage`` and tell the parent, which then SIGKILLs us."""

    def progress(at: str, detail: str) -> None:
        if at != stage:
            return
        if at == "copy" and not (
            detail.startswith("model.safetensors:") and int(detail.rsplit(":", 1)[1]) > CHUNK_BYTES
        ):
            return  # stop in the middle of the weights, not at their first chunk
        report.send(detail)
        time.sleep(HANG_S)

    with open_registry(url, artifacts) as store:
        store.register(run_dir, name, RegistrationOptions(aliases=("production",)), progress)
        report.send("finished")
        time.sleep(HANG_S)
