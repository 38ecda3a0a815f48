"""Game day: the registry database lost (stopped), hung (SIGSTOP) or locked by another
writer. Loaded versions keep serving, ``/readyz`` stays ready, registry routes answer 503
within the timeout, the metric shows the registry down, commands fail in seconds with one
line, and everything recovers when the database returns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from resnetkit.errors import RegistryUnavailable
from resnetkit.registry import RegistryStore, open_registry
from resnetkit.registry import rollouts as db
from tests.gamedays.conftest import Postgres
from tests.registry.rundirs import make_run_dir
from tests.serve.server import ServerProcess, in_process, png

TIMEOUT_S = 1.0  # the registry timeout of these tests
# The bound on a failing call: connect_timeout (at least 2 s in libpq) plus the client's
# grace, with room for a loaded CI machine; without the timeouts these calls hang forever.
BOUND_S = 12.0
# SIGTERM to a server whose database hangs: one registry call's bound (the call in flight
# when the signal came, and the lease given back; libpq's connect timeout is at least 2 s),
# plus 5 s for the drain and the interpreter's exit. Without the timeouts it never exits.
SHUTDOWN_BOUND_S = max(2.0, TIMEOUT_S) + 5.0


def _cli(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "resnetkit.cli.main", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False,
    )  # fmt: skip
    return done, time.monotonic() - start


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pg_registry(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("pg-registry")
    url = postgres.create_database()
    with open_registry(url, base / "artifacts") as store:
        store.register(make_run_dir(base / "run"), "fmnist")
        store.set_alias("fmnist", "prod", 1, reason="game day")
    return {
        "RESNETKIT_REGISTRY": url,
        "RESNETKIT_ARTIFACTS": str(base / "artifacts"),
        "RESNETKIT_REGISTRY_TIMEOUT_S": str(TIMEOUT_S),
    }


@pytest.fixture(scope="module")
def server(pg_registry: dict[str, str]) -> Iterator[tuple[object, object]]:
    previous = {k: os.environ.get(k) for k in pg_registry}
    os.environ.update(pg_registry)
    try:
        with in_process(["fmnist@prod"], registry=pg_registry["RESNETKIT_REGISTRY"]) as pair:
            yield pair
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _image() -> bytes:
    return png(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))


def _check_outage(client: object, state: object, pg_registry: dict[str, str]) -> None:
    for _ in range(3):
        answer = client.post(  # type: ignore[attr-defined]
            "/v1/models/fmnist/predict", content=_image(), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
    assert client.get("/readyz").status_code == 200  # type: ignore[attr-defined]
    start = time.monotonic()
    history = client.get("/v1/models/fmnist/history")  # type: ignore[attr-defined]
    assert time.monotonic() - start < BOUND_S
    assert history.status_code == 503, history.text
    assert "unavailable" in history.json()["error"]
    assert history.headers["retry-after"]
    metrics = client.get("/metrics").text  # type: ignore[attr-defined]
    assert "resnetkit_registry_up 0.0" in metrics
    assert 'resnetkit_registry_errors_total{operation="history"}' in metrics
    assert client.get("/v1/stats").json()["registry"]["up"] is False  # type: ignore[attr-defined]
    done, took = _cli(["registry", "list"], pg_registry)
    assert took < BOUND_S + 5  # + the interpreter's start
    assert "unavailable" in _one_error_line(done)


def _check_recovered(client: object) -> None:
    history = client.get("/v1/models/fmnist/history")  # type: ignore[attr-defined]
    assert history.status_code == 200, history.text
    assert history.json()["events"]
    assert "resnetkit_registry_up 1.0" in client.get("/metrics").text  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_stopped_database_is_a_503_while_loaded_versions_keep_serving(
    server: tuple[object, object], postgres: Postgres, pg_registry: dict[str, str]
) -> None:
    client, state = server
    with postgres.down():
        _check_outage(client, state, pg_registry)
    _check_recovered(client)


@pytest.mark.slow
def test_a_hung_database_is_a_503_within_the_timeout_not_a_hang(
    server: tuple[object, object], postgres: Postgres, pg_registry: dict[str, str]
) -> None:
    client, state = server
    with postgres.frozen():
        _check_outage(client, state, pg_registry)
        # a connection opened by the library hangs no longer than the timeout either
        start = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="unavailable"):
            open_registry(pg_registry["RESNETKIT_REGISTRY"], create=False)
        assert time.monotonic() - start < BOUND_S
    _check_recovered(client)


def test_sqlite_writer_waits_a_bounded_time_for_a_held_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    url = f"sqlite:///{db}"
    with open_registry(url, tmp_path / "artifacts") as store:
        store.register(make_run_dir(tmp_path / "run"), "fmnist")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.read()"
        ), str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        env = {"RESNETKIT_REGISTRY": url, "RESNETKIT_REGISTRY_TIMEOUT_S": str(TIMEOUT_S)}
        done, took = _cli(["registry", "alias", "fmnist", "prod", "1", "--reason", "x"], env)
        line = _one_error_line(done)
        assert "locked by another writer" in line and "RESNETKIT_REGISTRY_TIMEOUT_S" in line
        assert took < BOUND_S
    finally:
        holder.communicate("", timeout=30)
    with open_registry(url, create=False) as store:  # the lock is gone: the move goes through
        store.set_alias("fmnist", "prod", 1, reason="after the lock")
        assert store.resolve("fmnist@prod").version == 1


@pytest.mark.slow
def test_sigterm_while_the_database_hangs_stops_a_rollout_leader_in_bounded_time(
    postgres: Postgres, tmp_path: Path
) -> None:
    # A database of its own: the module's in-process server never follows this rollout.
    url = postgres.create_database()
    with open_registry(url, tmp_path / "artifacts") as store:
        for seed in (0, 1):
            store.register(make_run_dir(tmp_path / f"run{seed}", seed=seed), "fmnist")
        store.set_alias("fmnist", "prod", 1, reason="game day")
        db.start_rollout(
            store, "fmnist", stable_version=1, canary_version=2, actor="game day",
            config={"interval_s": 0.5, "progress_deadline_s": 3600}, first_weight=5.0,
        )  # fmt: skip
    # Its own artifacts too: the module's server fixture exports RESNETKIT_ARTIFACTS.
    env = {"RESNETKIT_REGISTRY_TIMEOUT_S": str(TIMEOUT_S),
           "RESNETKIT_ARTIFACTS": str(tmp_path / "artifacts")}  # fmt: skip
    args = ["fmnist@prod", "--registry", url, "--rollout-poll-s", "0.2"]
    server = ServerProcess(args, tmp_path / "server.log", env)
    try:
        server.wait_ready()
        with open_registry(url, create=False) as store:
            _wait_for_lease(store)  # the server leads the rollout: it writes every round
        with postgres.frozen():
            time.sleep(2 * TIMEOUT_S)  # its rollout loop is stuck in a call by now
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                status = server.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit 60 s after SIGTERM:\n{server.log()}")
            took = time.monotonic() - start
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert status == 0, log
    assert took <= SHUTDOWN_BOUND_S, f"{took:.1f} s:\n{log}"
    assert "Traceback" not in log


def _wait_for_lease(store: RegistryStore, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with store.engine.connect() as conn:
            if conn.exec_driver_sql("SELECT count(*) FROM rollout_leases").scalar():
                return
        if time.monotonic() > deadline:
            pytest.fail("the server never took the rollout's lease")
        time.sleep(0.1)
