"""A real ``resnetkit serve`` process on loopback, for tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
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


@contextlib.contextmanager
def in_process(
    refs: list[str],
    *,
    registry: str | None = None,
    token: str | None = None,
    prediction_log: Path | None = None,
    poll_s: float = 0.1,
) -> Iterator[tuple[Any, Any]]:
    """A server built in this process (no subprocess, no socket): ``(client, state)``, the
    client a Starlette ``TestClient`` that runs the app's lifespan, ready when yielded."""
    from starlette.testclient import TestClient

    from resnetkit.serve.auth import AdminAuth
    from resnetkit.serve.config import ServeConfig, build_app

    config = ServeConfig(
        refs=tuple(refs), registry=registry, threads=1, warmup_batches=1,
        prediction_log=prediction_log, prediction_log_rate=1.0, rollout_poll_s=poll_s,
    )  # fmt: skip
    app = build_app(config)
    state = app.state.resnetkit
    state.auth = AdminAuth(token)
    state.router.drain_s = 0.0  # a version leaving service needs no grace period in a test
    with TestClient(app) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/readyz").status_code != 200:
            if state.failed or time.monotonic() > deadline:
                raise RuntimeError(f"in-process server not ready: {state.failed}")
            time.sleep(0.05)
        yield client, state
