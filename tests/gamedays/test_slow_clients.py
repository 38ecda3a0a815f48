"""Game day: slow, stalled, vanishing and idle clients against a real server process.

Slowloris headers and bodies (a byte at a time), idle connections that never send a
request, uploads and responses abandoned half-way, and hundreds of idle keep-alive
connections: each is bounded by a timeout or a limit, the server keeps its memory, and the
other clients' latency stays where it was.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.registry.rundirs import make_run_dir
from tests.serve.server import ServerProcess, png, serving

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1.5
# A timeout's effect is seen within this long of it (a loaded CI machine included).
MARGIN_S = 6.0
BYTE_EVERY_S = 0.25  # the slow clients' pace (a byte a second would only make tests longer)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("slow-clients")
    run = make_run_dir(base / "run")
    args = [
        str(run), "--backend", "torch", "--threads", "1",
        "--header-timeout-s", str(HEADER_TIMEOUT_S), "--body-timeout-s", str(BODY_TIMEOUT_S),
        "--keep-alive-s", str(KEEP_ALIVE_S),
    ]  # fmt: skip
    with serving(args, base / "server.log") as proc:
        yield proc


def _image() -> bytes:
    return png(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``seconds``; what it sent before."""
    sock.settimeout(seconds)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return False, received
    return True, received


def _trickle(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send ``data`` a byte at a time until done, stopped, or the server hangs up."""
    for byte in data:
        if stop.wait(BYTE_EVERY_S):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def _p95_ms(url: str, image: bytes, n: int) -> float:
    latencies = []
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            start = time.perf_counter()
            answer = client.post(
                f"{url}/v1/predict", content=image, headers={"content-type": "image/png"}
            )
            latencies.append((time.perf_counter() - start) * 1000)
            assert answer.status_code == 200, answer.text
    return float(np.percentile(latencies, 95))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_slow_headers_and_silent_connections_are_closed(server: ServerProcess) -> None:
    stop = threading.Event()
    silent, slow = _connect(server), _connect(server)
    header = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    feeder = threading.Thread(target=_trickle, args=(slow, header, stop))
    feeder.start()
    try:
        start = time.monotonic()
        assert _closed_within(silent, HEADER_TIMEOUT_S + MARGIN_S)[0]
        assert _closed_within(slow, HEADER_TIMEOUT_S + MARGIN_S)[0]
        assert time.monotonic() - start < HEADER_TIMEOUT_S + MARGIN_S
    finally:
        stop.set()
        feeder.join()
        silent.close()
        slow.close()


def test_headers_growing_past_the_limit_are_refused(server: ServerProcess) -> None:
    sock = _connect(server)
    try:  # 20 KB of headers and still no end: refused without waiting for the rest
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        closed, received = _closed_within(sock, MARGIN_S)
        assert closed and received.startswith(b"HTTP/1.1 400"), received[:200]
    finally:
        sock.close()


@pytest.mark.slow
def test_a_slow_body_is_a_408_and_the_connection_is_closed(server: ServerProcess) -> None:
    image = _image()
    sock = _connect(server)
    stop = threading.Event()
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(image)}\r\n\r\n".encode()
    )
    feeder = threading.Thread(target=_trickle, args=(sock, image, stop))
    feeder.start()
    try:
        closed, received = _closed_within(sock, BODY_TIMEOUT_S + MARGIN_S)
        assert closed, received[:300]
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert b"did not arrive within" in received
    finally:
        stop.set()
        feeder.join()
        sock.close()


@pytest.mark.slow
def test_abandoned_uploads_and_responses_leave_the_server_serving(server: ServerProcess) -> None:
    image = _image()
    for _ in range(20):
        upload = _connect(server)  # half an upload, then gone
        upload.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(image)}\r\n\r\n".encode()
            + image[: len(image) // 2]
        )
        upload.close()
        asked = _connect(server)  # a whole request, then gone before the answer
        asked.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(image)}\r\n\r\n".encode()
            + image
        )
        asked.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        asked.close()  # a reset, not a polite close
    answer = httpx.post(
        f"{server.url}/v1/predict", content=image, headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    five_xx = [
        line for line in metrics.splitlines()
        if line.startswith("resnetkit_requests_total{") and 'code="5' in line
        and not line.endswith(" 0.0")
    ]  # fmt: skip
    assert not five_xx, five_xx
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_idle_and_slow_connections_leave_memory_and_latency_unchanged(
    server: ServerProcess,
) -> None:
    image = _image()
    _p95_ms(server.url, image, 20)  # warm-up
    before_ms = _p95_ms(server.url, image, 100)
    rss_before = _rss_kib(server.proc.pid)
    stop = threading.Event()
    idle = [_connect(server) for _ in range(200)]
    slow = [_connect(server) for _ in range(50)]
    request = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 50
    feeders = [threading.Thread(target=_trickle, args=(s, request, stop)) for s in slow]
    for feeder in feeders:
        feeder.start()
    try:
        during_ms = _p95_ms(server.url, image, 100)
        rss_during = _rss_kib(server.proc.pid)
    finally:
        stop.set()
        for feeder in feeders:
            feeder.join()
        for sock in idle + slow:
            sock.close()
    # Within 20%, plus 5 ms for the scheduler noise of a shared machine at these tiny latencies.
    assert during_ms <= 1.2 * before_ms + 5.0, (before_ms, during_ms)
    assert rss_during - rss_before < 32 * 1024, (rss_before, rss_during)
