"""Servers for tests: built in this process (``in_process``: no socket; ``threaded``: uvicorn
on a real loopback socket), or a real ``resnetkit serve`` process where the process itself is
what a test is about (signals, its memory map, the command line)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

READY_TIMEOUT_S = 180.0


def png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image (H, W) or (H, W, 3)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM, then wait (SIGKILL after ``timeout_s``); the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``resnetkit serve ARGS`` in a subprocess; stderr is kept in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-m", "resnetkit.cli.main", "serve", *args, "--port", str(self.port)]
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``/readyz`` until 200 (bounded); fail with the server's log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        """Everything the server printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``); the exit status."""
        status = terminate(self.proc, timeout_s)
        self._log.close()
        return status


@contextlib.contextmanager
def serving(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """A ready server for the ``with`` block, stopped afterwards."""
    server = ServerProcess(args, log_path, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _config(
    refs: list[str],
    registry: str | None,
    prediction_log: Path | None,
    poll_s: float,
    settings: dict[str, Any],
) -> Any:
    from resnetkit.serve.config import ServeConfig

    return ServeConfig(
        refs=tuple(refs), registry=registry, threads=1, warmup_batches=1,
        prediction_log=prediction_log, prediction_log_rate=1.0, rollout_poll_s=poll_s,
        **settings,
    )  # fmt: skip


def _for_tests(state: Any, token: str | None) -> None:
    from resnetkit.serve.auth import AdminAuth

    state.auth = AdminAuth(token)
    state.rollouts.drain_s = 0.0  # a version leaving service needs no grace period in a test


@contextlib.contextmanager
def in_process(
    refs: list[str],
    *,
    registry: str | None = None,
    token: str | None = None,
    prediction_log: Path | None = None,
    poll_s: float = 0.1,
    **settings: Any,
) -> Iterator[tuple[Any, Any]]:
    """A server built in this process (no subprocess, no socket): ``(client, state)``, the
    client a Starlette ``TestClient`` that runs the app's lifespan, ready when yielded.
    ``settings``: more :class:`~resnetkit.serve.config.ServeConfig` fields."""
    from starlette.testclient import TestClient

    from resnetkit.serve.config import build_app

    app = build_app(_config(refs, registry, prediction_log, poll_s, settings))
    state = app.state.resnetkit
    _for_tests(state, token)
    with TestClient(app) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/readyz").status_code != 200:
            if state.failed or time.monotonic() > deadline:
                raise RuntimeError(f"in-process server not ready: {state.failed}")
            time.sleep(0.05)
        yield client, state


@contextlib.contextmanager
def threaded(
    refs: list[str],
    *,
    registry: str | None = None,
    token: str | None = None,
    prediction_log: Path | None = None,
    poll_s: float = 0.1,
    **settings: Any,
) -> Iterator[tuple[str, Any]]:
    """The server ``resnetkit serve`` runs (uvicorn, the same protocol and limits) in a
    thread of this process, on a real socket on loopback: ``(url, state)``, ready when
    yielded; for clients that need a socket (tritonclient, schemathesis' CLI)."""
    from resnetkit.serve.config import build_server
    from resnetkit.serve.process import bind_listener

    server, state = build_server(_config(refs, registry, prediction_log, poll_s, settings))
    _for_tests(state, token)
    listener = bind_listener("127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if state.failed or not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"threaded server not ready: {state.failed}")
            time.sleep(0.05)
        yield url, state
    finally:
        server.should_exit = True
        thread.join(60)
        listener.close()
