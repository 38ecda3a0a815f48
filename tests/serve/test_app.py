"""``resnetkit serve`` as a user and a standard client see it.

One trained Fashion-MNIST model (a few seconds of training, shared with the export tests),
served in this process: through Starlette's ``TestClient`` (no socket) where HTTP semantics
are the subject, and by the same uvicorn server ``resnetkit serve`` runs, in a thread on a
real loopback socket, for clients that need one (httpx with concurrent connections,
tritonclient.http, schemathesis). One test starts the real command, for its flag wiring.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from resnetkit.data import load_dataset, normalize
from resnetkit.evaluate import predict_log_probs
from resnetkit.models import load_model
from resnetkit.monitor.slo import SERVER_METRICS
from resnetkit.serve.pool import softmax
from tests.export.rundir import trained_run_dir
from tests.serve.server import in_process, png, serving, threaded

TOKEN = "s3cret-admin-token"
MAX_BODY_BYTES = 1_000_000  # what --max-body-bytes 1MB gives
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def client(run_dir: Path, log_dir: Path) -> Iterator[TestClient]:
    """The app in process, with a prediction log of every request and a 1 MB body limit."""
    with in_process(
        [str(run_dir)], token=TOKEN, prediction_log=log_dir / "predictions.jsonl",
        max_body_bytes=MAX_BODY_BYTES,
    ) as (test_client, _state):  # fmt: skip
        yield test_client


@pytest.fixture(scope="module")
def url(run_dir: Path) -> Iterator[str]:
    """The same server under uvicorn on a loopback socket, in a thread of this process."""
    with threaded([str(run_dir)], token=TOKEN, max_body_bytes=MAX_BODY_BYTES) as (base, _):
        yield base


@pytest.fixture(scope="module")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    test = load_dataset("fashion-mnist", "test", limit=200)
    return test.images[:, 0].numpy(), test.labels.numpy()


def test_predict_takes_a_raw_body_or_a_form_and_names_the_version(
    client: TestClient, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    image = png(test_images[0][0])
    raw = client.post("/v1/predict?k=3", content=image, headers={"Content-Type": "image/png"})
    form = client.post("/v1/models/run-resnet8/predict", files={"file": image})
    assert raw.status_code == form.status_code == 200, (raw.text, form.text)
    a, b = raw.json(), form.json()
    assert len(a["predictions"]) == 3 and len(b["predictions"]) == 5
    assert a["predictions"][0] == b["predictions"][0]
    assert a["version"].startswith("sha-") and raw.headers["x-model-version"] == a["version"]
    assert a["request_id"] == raw.headers["x-request-id"] != b["request_id"]
    probabilities = [p["probability"] for p in b["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)


async def _predict_all(url: str, images: np.ndarray) -> list[dict[str, object]]:
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(pixels: np.ndarray) -> dict[str, object]:
            response = await client.post(
                f"{url}/v1/predict?k=10", content=png(pixels), headers={"Content-Type": "image/png"}
            )
            assert response.status_code == 200, response.text
            return dict(response.json())

        return list(await asyncio.gather(*(one(p) for p in images)))


def test_served_predictions_are_exactly_those_of_evaluation(
    url: str, run_dir: Path, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = test_images
    answers = asyncio.run(_predict_all(url, images))  # 8 connections: batched answers
    model, card = load_model(run_dir)
    expected = predict_log_probs(model, torch.from_numpy(images[:, None]), card.spec()).exp()
    served = np.zeros((len(images), 10), dtype=np.float64)
    for row, answer in enumerate(answers):
        for p in answer["predictions"]:  # type: ignore[union-attr]
            served[row, p["index"]] = p["probability"]
    assert (served.argmax(1) == expected.argmax(1).numpy()).all()
    assert np.abs(served - expected.numpy()).max() < 1e-4


def test_the_v2_protocol_works_with_tritonclient(
    url: str, run_dir: Path, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("run-resnet8")
    meta = client.get_model_metadata("run-resnet8")
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert {o["name"] for o in meta["outputs"]} >= {"logits", "probabilities"}
    pixels = test_images[0][:8, :, :, None]  # (8, 28, 28, 1) uint8 pixels
    raw = triton.InferInput("input", list(pixels.shape), "UINT8")
    raw.set_data_from_numpy(pixels)  # binary tensor data, the client's default
    wanted = [
        triton.InferRequestedOutput("probabilities"),
        triton.InferRequestedOutput("logits", binary_data=False, class_count=3),
    ]
    result = client.infer("run-resnet8", [raw], outputs=wanted)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (8, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    top = result.as_numpy("logits")  # JSON BYTES come back as str, binary ones as bytes
    first = top[0, 0].decode() if isinstance(top[0, 0], bytes) else str(top[0, 0])
    assert top.shape == (8, 3) and first.split(":")[1] == str(probabilities[0].argmax())
    spec = load_model(run_dir)[1].spec()
    normalised = normalize(torch.from_numpy(pixels[..., 0][:, None].copy()), spec).numpy()
    fp32 = triton.InferInput("input", list(normalised.shape), "FP32")
    fp32.set_data_from_numpy(normalised, binary_data=False)
    as_json = client.infer("run-resnet8", [fp32], outputs=[triton.InferRequestedOutput("logits")])
    # The server's own preprocessing of the pixels and the client's give the same answer.
    assert np.allclose(softmax(as_json.as_numpy("logits")), probabilities, atol=1e-5)


# Each: what is wrong, and the request that says it. None may give a 5xx.
def _bad_requests() -> list[tuple[str, str, str, dict[str, str], bytes, int]]:
    good = png(np.zeros((28, 28), dtype=np.uint8))
    bomb = _png_header_only(30000, 30000)
    gray16 = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint16)).save(gray16, format="PNG")
    v2 = "/v2/models/run-resnet8/infer"
    pred = "/v1/predict"

    def v2_json(**overrides: object) -> bytes:
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28]}
        tensor["data"] = [0.0] * 784
        tensor.update(overrides)
        return json.dumps({"inputs": [tensor]}).encode()

    png_type = {"Content-Type": "image/png"}
    json_type = {"Content-Type": "application/json"}
    return [
        ("wrong content type", "POST", pred, {"Content-Type": "text/plain"}, good, 415),
        ("empty body", "POST", pred, png_type, b"", 400),
        ("body over the limit", "POST", pred, png_type, b"\0" * 1_100_000, 413),
        ("truncated image", "POST", pred, png_type, good[: len(good) // 2], 400),
        ("text named .png", "POST", pred, png_type, b"hello, not an image", 400),
        ("decompression bomb", "POST", pred, png_type, bomb, 413),
        ("unknown model", "POST", "/v1/models/nope/predict", png_type, good, 404),
        ("k out of range", "POST", pred + "?k=0", png_type, good, 400),
        ("v2 wrong shape", "POST", v2, json_type, v2_json(shape=[1, 3, 28, 28]), 400),
        ("v2 wrong datatype", "POST", v2, json_type, v2_json(datatype="INT64"), 400),
        ("v2 short data", "POST", v2, json_type, v2_json(data=[0.0] * 10), 400),
        ("v2 NaN", "POST", v2, json_type, v2_json(data=[float("nan")] * 784), 400),
        ("v2 not JSON", "POST", v2, json_type, b"{nope", 400),
        ("v2 unknown model", "POST", "/v2/models/nope/infer", json_type, v2_json(), 404),
        (
            "v2 binary header that lies",
            "POST",
            v2,
            {**json_type, "Inference-Header-Content-Length": "999999"},
            v2_json(),
            400,
        ),
        ("16-bit grayscale is handled", "POST", pred, png_type, gray16.getvalue(), 200),
    ]


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("what", "method", "path", "headers", "body", "status"),
    _bad_requests(),
    ids=[case[0] for case in _bad_requests()],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_up(
    client: TestClient,
    what: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    response = client.request(method, path, headers=headers, content=body)
    assert response.status_code == status, (what, response.text)
    if status >= 400:
        assert set(response.json()) == {"error"} and response.json()["error"]
    assert client.get("/healthz").status_code == 200


def test_management_needs_the_token_and_a_wrong_one_changes_nothing(
    client: TestClient, run_dir: Path
) -> None:
    url = "/v1/admin/models"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    body = {"ref": str(run_dir), "name": "second"}
    refused = client.post(url, json=body, headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 403
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert [m["name"] for m in client.get(url, headers=auth).json()["models"]] == ["run-resnet8"]
    loaded = client.post(url, json=body, headers=auth)
    assert loaded.status_code == 201, loaded.text
    image = png(np.zeros((28, 28), dtype=np.uint8))
    answer = client.post("/v1/models/second/predict", files={"file": image})
    assert answer.status_code == 200
    assert client.delete(f"{url}/second", headers={"Authorization": "Bearer x"}).status_code == 403
    assert client.delete(f"{url}/second", headers=auth).status_code == 200
    assert client.post("/v1/models/second/predict", files={"file": image}).status_code == 404


def test_metrics_are_prometheus_text_with_every_contract_name(client: TestClient) -> None:
    client.post("/v1/predict", files={"file": png(np.zeros((28, 28), np.uint8))})
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exported = set(families)
    for metric in SERVER_METRICS:
        name = metric.name.removesuffix("_total")
        if metric.name.startswith(("resnetkit_rollout", "resnetkit_drift")):
            continue  # exported once a rollout runs or drift is evaluated
        assert name in exported, metric.name
    requests = families["resnetkit_requests"].samples
    assert any(
        s.labels.get("route") == "/v1/predict" and s.labels["code"] == "200" for s in requests
    )
    assert families["resnetkit_cold_start_seconds"].samples[0].value > 0


def test_the_prediction_log_has_embeddings_and_no_images(client: TestClient, log_dir: Path) -> None:
    answer = client.post("/v1/predict", files={"file": png(np.zeros((28, 28), np.uint8))})
    state: Any = client.app.state.resnetkit  # type: ignore[attr-defined]
    state.predlog.flush()  # the log writes on its own thread: wait for it
    lines = (log_dir / "predictions.jsonl").read_text().splitlines()
    record = next(json.loads(r) for r in reversed(lines) if answer.json()["request_id"] in r)
    assert record["model"] == "run-resnet8" and len(record["embedding"]) > 0
    assert "image" not in record or record["image"] is None


def test_readiness_waits_for_warm_up_and_the_openapi_document_lists_the_routes(
    client: TestClient,
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v2/models/{name}/infer", "/metrics"} <= set(paths)
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["models"][0]["backend"] == "onnx-fp32"


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("token", [None, TOKEN], ids=["anonymous", "admin"])
def test_the_server_keeps_every_promise_of_its_openapi_document(
    url: str, token: str | None
) -> None:
    """``schemathesis run --checks all``: statuses, bodies, content types, Allow headers,
    valid requests accepted and invalid ones refused, with and without the admin token.
    Every phase (examples, coverage, fuzzing, stateful) runs once over every operation:
    no time budget that repeats random examples until it is spent."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    proc = subprocess.run(
        [
            str(schemathesis), "--config-file", str(REPO / "schemathesis.toml"), "run",
            f"{url}/openapi.json", "--checks", "all", *auth,
            "--max-examples", "10", "--seed", "1", "--workers", "1",
            "--request-timeout", "30", "--generation-database", "none",
        ],
        capture_output=True, text=True, timeout=400, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "failure" not in proc.stdout.strip().splitlines()[-1], proc.stdout[-3000:]
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["ready"] and "run-resnet8" in [m["name"] for m in ready["models"]]


def test_the_command_line_server_answers_with_its_flags_applied(
    run_dir: Path, tmp_path: Path
) -> None:
    """The real ``resnetkit serve`` process: its flags reach the server (token file, body
    limit in SI units, prediction log, access log) and SIGTERM ends it with status 0."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    args = [
        str(run_dir), "--admin-token-file", str(tmp_path / "token"), "--threads", "1",
        "--prediction-log", str(tmp_path / "predictions.jsonl"), "--prediction-log-rate", "1",
        "--max-body-bytes", "1MB", "--access-log",
    ]  # fmt: skip
    png_type = {"Content-Type": "image/png"}
    with serving(args, tmp_path / "server.log") as server:
        answer = httpx.post(
            f"{server.url}/v1/predict", content=png(np.zeros((28, 28), np.uint8)), headers=png_type
        )
        assert answer.status_code == 200, answer.text
        rid = answer.json()["request_id"]
        over = httpx.post(f"{server.url}/v1/predict", content=b"\0" * 1_000_001, headers=png_type)
        assert over.status_code == 413, over.text
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{server.url}/v1/admin/models", headers=auth).status_code == 200
        assert server.stop() == 0
    printed = (tmp_path / "server.log").read_text().splitlines()
    access = [json.loads(line) for line in printed if line.startswith("{")]
    assert {"request_id": rid, "route": "/v1/predict", "status": 200}.items() <= next(
        a for a in access if a["request_id"] == rid
    ).items()
    logged = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in logged] == [rid]
