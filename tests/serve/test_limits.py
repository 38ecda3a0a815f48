"""Backpressure, deadlines and graceful shutdown of a real ``resnetkit serve`` process."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from resnetkit.serve.grpc_v2 import SERVICE, messages
from tests.export.rundir import trained_run_dir
from tests.serve.server import free_port, serving

pytestmark = pytest.mark.slow
TOKEN = "limits-token"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


def _v2_body(batch: int) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [batch, 1, 28, 28]}
    tensor["data"] = [0.0] * (batch * 784)
    return json.dumps({"inputs": [tensor]}).encode()


async def _flood(url: str, body: bytes, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(url, content=body, headers={"Content-Type": "application/json"})
                    for _ in range(count)
                )
            )
        )


async def _flood_grpc(address: str, count: int) -> list[tuple[grpc.StatusCode, str | None]]:
    """``count`` concurrent ModelInfer calls of 8 images: each call's code and retry hint."""
    m = messages()
    request = m.ModelInferRequest(model_name="run-resnet8")
    request.inputs.add(name="input", datatype="UINT8", shape=[8, 28, 28, 1])
    request.raw_input_contents.append(bytes(8 * 28 * 28))

    async def one(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str | None]:
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=m.ModelInferResponse.FromString,
        )(request, timeout=60)
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            trailers = dict(exc.trailing_metadata() or ())
            return exc.code(), trailers.get("retry-after")
        return grpc.StatusCode.OK, None

    async with grpc.aio.insecure_channel(address) as channel:
        return list(await asyncio.gather(*(one(channel) for _ in range(count))))


def test_a_full_queue_answers_503_with_retry_after_and_never_a_500(
    run_dir: Path, tmp_path: Path
) -> None:
    grpc_port = free_port()
    args = [str(run_dir), "--queue-size", "8", "--max-batch-size", "8", "--max-delay-ms", "20",
            "--grpc-port", str(grpc_port)]  # fmt: skip
    with serving(args, tmp_path / "server.log") as server:
        url = f"{server.url}/v2/models/run-resnet8/infer"
        answers = asyncio.run(_flood(url, _v2_body(8), 60))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503}, codes
        full = [a for a in answers if a.status_code == 503]
        assert full and all(int(a.headers["retry-after"]) >= 1 for a in full)
        assert codes.count(200) >= 1
        # gRPC shares the queue and refuses the same way: RESOURCE_EXHAUSTED with the hint.
        calls = asyncio.run(_flood_grpc(f"127.0.0.1:{grpc_port}", 60))
        grpc_codes = {code for code, _ in calls}
        assert grpc_codes == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, calls
        assert all(int(hint or 0) >= 1 for code, hint in calls if code != grpc.StatusCode.OK)
        text = httpx.get(f"{server.url}/metrics").text
        assert 'resnetkit_rejected_total{model="run-resnet8"' in text
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_request_past_its_deadline_gets_504_and_is_not_computed(
    run_dir: Path, tmp_path: Path
) -> None:
    with serving([str(run_dir), "--timeout-ms", "0.001"], tmp_path / "server.log") as server:
        image = io.BytesIO()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(image, format="PNG")
        answer = httpx.post(f"{server.url}/v1/predict", files={"file": image.getvalue()})
        assert answer.status_code == 504 and "deadline" in answer.json()["error"]


async def _slow_requests(url: str, count: int, after_s: float, stop: object) -> list[int]:
    image = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image, format="PNG")
    async with httpx.AsyncClient(timeout=60) as client:
        calls = [
            asyncio.create_task(client.post(f"{url}/v1/predict", files={"file": image.getvalue()}))
            for _ in range(count)
        ]
        await asyncio.sleep(after_s)
        stop()  # type: ignore[operator]
        answers = await asyncio.gather(*calls, return_exceptions=True)
    return [a.status_code if isinstance(a, httpx.Response) else 0 for a in answers]


def test_sigterm_finishes_what_is_in_flight_then_exits_0(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    args = [str(run_dir), "--admin-token-file", str(tmp_path / "token")]
    with serving(args, tmp_path / "server.log") as server:
        versions = httpx.get(f"{server.url}/v1/models").json()["models"]
        version = versions[0]["version"]
        fault = httpx.put(
            f"{server.url}/v1/admin/faults/run-resnet8/{version}", json={"delay_ms": 800},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        assert fault.status_code == 200, fault.text
        started = time.monotonic()
        codes = asyncio.run(
            _slow_requests(server.url, 10, 0.4, lambda: server.proc.send_signal(signal.SIGTERM))
        )
        assert codes == [200] * 10, codes  # each was in flight when SIGTERM came
        assert server.proc.wait(60) == 0
        assert time.monotonic() - started >= 0.8
