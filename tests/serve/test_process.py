"""The ``resnetkit serve`` process: binding its port, SIGTERM under keep-alive load, SIGHUP.

These need a real process: signals, sockets and uvicorn's connection handling are the subject.
The model has random weights (what it answers does not matter here, only that it answers).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from resnetkit.contract import PreprocessingSpec
from resnetkit.models import create_model, save_model
from tests.serve.server import ServerProcess, png, serving, threaded

pytestmark = pytest.mark.slow

CLIENTS = 8
IMAGE = png(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "run"
    save_model(
        create_model("resnet8", num_classes=10, in_chans=1).eval(),
        out,
        arch="resnet8",
        kwargs={"num_classes": 10, "in_chans": 1},
        labels=[f"class-{i}" for i in range(10)],
        preprocessing=PreprocessingSpec(size=(28, 28), channels=1, mean=(0.286,), std=(0.353,)),
    )
    return out


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until true or ``timeout_s`` passes (bounded; not synchronisation)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.05)
    return condition()


def test_a_port_in_use_is_one_error_line_and_exit_1_before_any_banner(run_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "resnetkit.cli.main", "serve", str(run_dir)]
        done = subprocess.run(
            [*cmd, "--port", str(port)], capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 1, done.stderr
    assert "resnetkit serve: http" not in done.stderr and "Errno" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: port {port} on 127.0.0.1 is in use (another server?): stop it or choose "
        "another --port"
    ]


class Client(threading.Thread):
    """Posts the image again and again on one keep-alive connection until the server is gone.

    Every outcome is counted: ``200``, another status, or the exception's class name. A
    ``ConnectError`` means the request was never sent (the server no longer accepts), so
    the client stops there.
    """

    def __init__(self, url: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.deadline = deadline
        self.outcomes: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < self.deadline:
                try:
                    response = client.post(
                        f"{self.url}/v1/predict",
                        content=IMAGE,
                        headers={"Content-Type": "image/png"},
                    )
                    self.outcomes[str(response.status_code)] += 1
                except httpx.ConnectError:
                    self.outcomes["refused"] += 1
                    return
                except httpx.HTTPError as exc:
                    self.outcomes[type(exc).__name__] += 1


def test_sigterm_under_keep_alive_load_answers_every_request_sent(
    run_dir: Path, tmp_path: Path
) -> None:
    server = ServerProcess([str(run_dir), "--threads", "1"], tmp_path / "server.log")
    try:
        server.wait_ready()
        idle = httpx.Client(timeout=10)  # one idle keep-alive connection must not block exit
        assert idle.get(f"{server.url}/healthz").status_code == 200
        clients = [Client(server.url, time.monotonic() + 120) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        assert wait_for(lambda: all(c.outcomes["200"] >= 3 for c in clients), 60), server.log()
        server.proc.send_signal(signal.SIGTERM)
        for client in clients:
            client.join(timeout=150)
        status = server.proc.wait(timeout=90)
        idle.close()
    finally:
        server.stop()
    outcomes, log = sum((c.outcomes for c in clients), Counter()), server.log_path.read_text()
    assert set(outcomes) == {"200", "refused"}, (outcomes, log)
    assert outcomes["refused"] == CLIENTS
    assert status == 0 and "Traceback" not in log, log


def test_an_idle_connection_outlives_a_client_pools_idle_timeout(run_dir: Path) -> None:
    # httpx retires an idle pooled connection after 5 s; had the server closed it at the same
    # moment (uvicorn's default), a request sent then is lost to a reset: the keep-alive race
    # behind the soak's one unanswered request. The server must keep it longer.
    idle_s = httpx.Limits().keepalive_expiry + 1.0
    with threaded([str(run_dir)]) as (url, _state):
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() and connection.sock is not None
        sock = connection.sock
        time.sleep(idle_s)
        connection.request("GET", "/healthz")  # on the same socket: raises if it was closed
        answer = connection.getresponse()
        assert answer.status == 200 and connection.sock is sock
        connection.close()


def test_sighup_reopens_the_prediction_log_and_images_are_files_beside_it(
    run_dir: Path, tmp_path: Path
) -> None:
    path, moved = tmp_path / "logs" / "predictions.jsonl", tmp_path / "logs" / "rotated.jsonl"
    args = [str(run_dir), "--threads", "1", "--prediction-log", str(path)]
    args += ["--prediction-log-rate", "1", "--log-images"]
    with serving(args, tmp_path / "server.log") as server:

        def predict() -> None:
            response = httpx.post(
                f"{server.url}/v1/predict", content=IMAGE, headers={"Content-Type": "image/png"}
            )
            assert response.status_code == 200, response.text

        predict()
        assert wait_for(lambda: path.exists() and path.read_bytes().endswith(b"\n"), 30)
        (line,) = [json.loads(text) for text in path.read_text().splitlines()]
        assert (path.parent / line["image"]).read_bytes() == IMAGE
        os.rename(path, moved)
        server.proc.send_signal(signal.SIGHUP)
        assert wait_for(path.exists, 30), server.log()  # reopened without waiting for a line
        predict()
        assert wait_for(lambda: path.read_bytes().endswith(b"\n"), 30)
        assert server.proc.poll() is None  # SIGHUP did not end the server
    assert len(moved.read_text().splitlines()) == 1 == len(path.read_text().splitlines())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--log-images"], "error: --log-images needs --prediction-log FILE"),
        (["--prediction-log", "p.jsonl", "--log-images-max-bytes", "lots"], "error: invalid size"),
    ],
)
def test_image_logging_flags_are_checked_before_anything_loads(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from resnetkit.cli.main import main

    assert main(["serve", str(tmp_path / "no-such-model"), *extra]) == 1
    assert capsys.readouterr().err.startswith(message)
