"""Reliability under concurrency and crashes, on SQLite and PostgreSQL (engine.py, store.py).

Children are forked processes that open their own connections to the same store.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
from pathlib import Path

import pytest

from resnetkit.registry import RegistryStore, open_registry
from tests.registry import workers
from tests.registry.rundirs import make_large_run_dir

CTX = mp.get_context("fork")
JOIN_TIMEOUT_S = 120


def _join_all(procs: list[mp.process.BaseProcess]) -> None:
    for proc in procs:
        proc.join(JOIN_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)


@pytest.mark.slow
def test_two_processes_registering_50_versions_each_get_100_distinct_versions(
    store: RegistryStore, registry_url: str, artifact_root: Path, run_dir: Path
) -> None:
    store.engine.dispose()  # children must not inherit pooled connections
    start = CTX.Event()
    procs = [
        CTX.Process(
            target=workers.register_many,
            args=(registry_url, artifact_root, run_dir, "fashion", 50, start),
        )
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    start.set()
    _join_all(procs)

    numbers = [v.version for v in store.list_versions("fashion")]
    assert numbers == list(range(1, 101))
    assert sorted(int(v.description) for v in store.list_versions("fashion")) == sorted(
        list(range(50)) * 2
    )
    assert store.verify().ok


@pytest.mark.slow
def test_concurrent_alias_moves_never_lose_an_audit_entry(
    store: RegistryStore, registry_url: str, artifact_root: Path, run_dir: Path
) -> None:
    for _ in range(4):
        store.register(run_dir, "fashion")
    store.set_alias("fashion", "production", 1, reason="initial")
    store.engine.dispose()
    start = CTX.Event()
    moved = CTX.Value("i", 0)
    moves_per_worker = 25
    procs = [
        CTX.Process(
            target=workers.move_alias_many,
            args=(
                registry_url,
                artifact_root,
                "fashion",
                "production",
                moves_per_worker,
                w,
                start,
                moved,
            ),
        )
        for w in range(3)
    ]
    for proc in procs:
        proc.start()
    start.set()
    _join_all(procs)

    events = store.history("fashion", "production")
    # Every real move is logged once; a move to where the alias already points is not.
    assert len(events) == 1 + moved.value
    assert all(e.from_version != e.to_version for e in events)
    reasons = {e.reason for e in events[1:]}
    assert reasons <= {f"w{w}-{i}" for w in range(3) for i in range(moves_per_worker)}
    # Each move starts where the previous one left the alias: no interleaved read-then-write.
    for before, after in itertools.pairwise(events):
        assert after.from_version == before.to_version
    assert store.resolve("fashion@production").version == events[-1].to_version


KILL_STAGES = ("copy", "stored", "recording", "recorded")


@pytest.mark.slow
@pytest.mark.parametrize("stage", KILL_STAGES)
def test_registration_killed_at_any_stage_leaves_no_half_registered_version(
    store: RegistryStore, registry_url: str, artifact_root: Path, tmp_path: Path, stage: str
) -> None:
    big_run = make_large_run_dir(tmp_path / "big", megabytes=8)
    store.engine.dispose()
    parent_end, child_end = CTX.Pipe(duplex=False)
    child = CTX.Process(
        target=workers.register_and_hang_at,
        args=(registry_url, artifact_root, big_run, "fashion", stage, child_end),
    )
    child.start()
    try:
        assert parent_end.poll(60), f"child never reached stage {stage!r}"
        reached = parent_end.recv()
        assert reached != "finished", f"stage {stage!r} was never reported"
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    assert child.exitcode == -signal.SIGKILL

    with open_registry(registry_url, artifact_root) as reopened:
        models = reopened.list_models()
        if stage == "recorded":
            (only,) = reopened.list_versions("fashion")
            assert only.aliases == ("production",)
            assert reopened.load("fashion@production").files["model.safetensors"]
        else:
            assert models == [] or models[0].version_count == 0
        assert reopened.verify().ok
        # The store stays usable, and gc clears what the dead registration left behind.
        info = reopened.register(big_run, "fashion")
        assert info.version == (2 if stage == "recorded" else 1)
        reopened.gc(dry_run=False, grace_s=0)
        assert not any(is_temp for _, is_temp in reopened.artifacts.iter_files())
        assert reopened.verify().ok
