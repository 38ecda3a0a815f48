"""The per-request OOD score through every protocol, reject mode, and V2 image logging.

Real servers built in process (ONNX Runtime, the app's lifespan, gRPC on a free port) over
real resnet20 run directories: ``fm`` carries an OOD detector fitted on real Fashion-MNIST
embeddings of its own model, ``plain`` has none (a drift reference without logits, as runs
from before the flag have). For reject mode, ``strict`` flags everything and ``lenient``
nothing (the same detector with its threshold moved), so both paths are certain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as tgrpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from resnetkit.data import load_dataset
from resnetkit.export import load_model_ref
from resnetkit.monitor.ood import OOD_FILE, OODDetector
from tests.registry.rundirs import make_run_dir
from tests.serve.server import png

pytestmark = pytest.mark.slow
READY_TIMEOUT_S = 120.0


def _detector(run: Path) -> OODDetector:
    """A detector fitted on the run's own embeddings and logits of 200 real test images."""
    loaded = load_model_ref(run)
    model: Any = loaded.module()
    images = load_dataset("fashion-mnist", "test", limit=200).images
    with torch.no_grad():
        emb = model.forward_head(model.forward_features(loaded.normalized(images)), True)
        logits = model.get_classifier()(emb)
    return OODDetector.fit(emb.numpy(), logits.numpy(), source="fashion-mnist test[:200]")


def _moved(detector: OODDetector, factor: float) -> OODDetector:
    thresholds = {m: t * factor for m, t in detector.thresholds.items()}
    return dataclasses.replace(detector, thresholds=thresholds)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ood-runs")
    runs = {name: make_run_dir(base / name) for name in ("fm", "plain", "strict", "lenient")}
    detector = _detector(runs["fm"])
    detector.save(runs["fm"] / OOD_FILE)
    _moved(detector, 1e-9).save(runs["strict"] / OOD_FILE)
    _moved(detector, 1e9).save(runs["lenient"] / OOD_FILE)
    return runs


@contextlib.contextmanager
def _server(refs: list[Path], **config: Any) -> Iterator[tuple[Any, Any]]:
    from starlette.testclient import TestClient

    from resnetkit.serve.config import ServeConfig, build_app

    cfg = ServeConfig(
        refs=tuple(str(r) for r in refs), threads=1, warmup_batches=1, grpc_port=0, **config
    )
    app = build_app(cfg)
    state = app.state.resnetkit
    with TestClient(app) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/readyz").status_code != 200:
            assert not state.failed and time.monotonic() < deadline, state.failed
            time.sleep(0.05)
        yield client, state


@pytest.fixture(scope="module")
def flagging(
    runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Any, Path]]:
    log = tmp_path_factory.mktemp("ood-log") / "predictions.jsonl"
    with _server(
        [runs["fm"], runs["plain"]], prediction_log=log, prediction_log_rate=1.0, log_images=True
    ) as (client, state):
        yield client, state, log


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return load_dataset("fashion-mnist", "test", limit=300).images[200:, 0].numpy()


def _v2(pixels: np.ndarray, outputs: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input",
                "datatype": "UINT8",
                "shape": [len(pixels), 28, 28, 1],
                "data": pixels.reshape(-1).tolist(),
            }
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def _grpc(state: Any, model: str, pixels: np.ndarray) -> Any:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{state.grpc.port}")
    given = tgrpc.InferInput("input", [len(pixels), 28, 28, 1], "UINT8")
    given.set_data_from_numpy(pixels[..., None])
    return client.infer(model, [given])


def _metric(client: Any, name: str, model: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == name and s.labels.get("model") == model
    )


def test_every_protocol_returns_the_same_score_and_flag(
    flagging: tuple[Any, Any, Path], pixels: np.ndarray
) -> None:
    client, state, _ = flagging
    before = _metric(client, "resnetkit_ood_score_count", "fm")
    v1 = client.post("/v1/models/fm/predict", files={"file": png(pixels[0])})
    assert v1.status_code == 200
    ood = v1.json()["ood"]
    assert ood["method"] == "mahalanobis" and ood["flagged"] == (ood["score"] > 1.0)
    rest = client.post("/v2/models/fm/infer", json=_v2(pixels[:4])).json()
    outputs = {o["name"]: o for o in rest["outputs"]}
    assert outputs["ood_score"]["datatype"] == "FP32" and outputs["ood_score"]["shape"] == [4]
    scores = np.array(outputs["ood_score"]["data"])
    assert scores[0] == pytest.approx(ood["score"], rel=1e-5)
    flags = [f == "true" for f in rest["parameters"]["ood_flagged"].split(",")]
    assert flags == (scores > 1.0).tolist()
    assert rest["parameters"]["ood_flagged_count"] == int((scores > 1.0).sum())
    only = client.post("/v2/models/fm/infer", json=_v2(pixels[:4], ["ood_score"])).json()
    assert [o["name"] for o in only["outputs"]] == ["ood_score"]
    result = _grpc(state, "fm", pixels[:4])
    np.testing.assert_allclose(result.as_numpy("ood_score"), scores, rtol=1e-6)
    params = result.get_response().parameters
    assert params["ood_flagged"].string_param == rest["parameters"]["ood_flagged"]
    # 1 (V1) + 4 (REST) + 4 (REST, ood_score only) + 4 (gRPC) samples scored.
    assert _metric(client, "resnetkit_ood_score_count", "fm") == before + 13
    flagged = _metric(client, "resnetkit_ood_flagged_total", "fm")
    assert flagged >= 3 * int((scores > 1.0).sum())


def test_noise_scores_above_real_images(
    flagging: tuple[Any, Any, Path], pixels: np.ndarray
) -> None:
    client, _, _ = flagging
    noise = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    far = client.post("/v2/models/fm/infer", json=_v2(noise, ["ood_score"])).json()
    near = client.post("/v2/models/fm/infer", json=_v2(pixels[:16], ["ood_score"])).json()
    assert np.median(far["outputs"][0]["data"]) > np.median(near["outputs"][0]["data"])


def test_metadata_advertises_ood_score_only_for_a_version_with_a_detector(
    flagging: tuple[Any, Any, Path], pixels: np.ndarray
) -> None:
    client, state, _ = flagging
    fm = client.get("/v2/models/fm").json()
    assert {"name": "ood_score", "datatype": "FP32", "shape": [-1]} in fm["outputs"]
    assert fm["parameters"]["ood_detector"] == "mahalanobis"
    plain = client.get("/v2/models/plain").json()
    assert "ood_score" not in {o["name"] for o in plain["outputs"]}
    assert plain["parameters"]["ood_detector"] == "none"
    assert "no logits" in plain["parameters"]["ood_note"]
    info = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert info["plain"]["ood"]["available"] is False and info["fm"]["ood"]["available"]
    v1 = client.post("/v1/models/plain/predict", files={"file": png(pixels[0])}).json()
    assert "ood" not in v1
    rest = client.post("/v2/models/plain/infer", json=_v2(pixels[:2])).json()
    assert "ood_score" not in {o["name"] for o in rest["outputs"]} and "parameters" not in rest
    asked = client.post("/v2/models/plain/infer", json=_v2(pixels[:2], ["ood_score"]))
    assert asked.status_code == 400 and "ood_score" in asked.json()["error"]
    result = _grpc(state, "plain", pixels[:2])
    assert result.as_numpy("ood_score") is None


def test_v2_uint8_images_land_in_the_image_store_as_the_pngs_sent(
    flagging: tuple[Any, Any, Path], pixels: np.ndarray
) -> None:
    client, state, log = flagging
    batch = pixels[20:23]
    sent = client.post(
        "/v2/models/fm/infer", json=_v2(batch), headers={"X-Request-Id": "v2-images"}
    )
    assert sent.status_code == 200
    _grpc(state, "fm", pixels[30:32])
    state.predlog.flush()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    by_id = {r["request_id"]: r for r in records}
    for row, image in enumerate(batch):
        record = by_id[f"v2-images:{row}"]
        stored = Image.open(io.BytesIO((log.parent / record["image"]).read_bytes()))
        assert stored.format == "PNG"
        np.testing.assert_array_equal(np.asarray(stored), image)
        assert record["ood"]["method"] == "mahalanobis"
        assert isinstance(record["ood"]["flagged"], bool)
    grpc_images = {
        (log.parent / r["image"]).read_bytes()
        for r in records
        if "image" in r and r["top_k"] and r["request_id"].count(":") == 1
    }
    for image in pixels[30:32]:
        assert any(
            np.array_equal(np.asarray(Image.open(io.BytesIO(b))), image) for b in grpc_images
        )
    plain = [r for r in records if r["model"] == "plain"]
    assert plain and all("ood" not in r for r in plain)


def test_reject_mode_answers_422_with_the_score_and_still_counts_it(
    runs: dict[str, Path], pixels: np.ndarray
) -> None:
    with _server([runs["strict"], runs["lenient"]], ood_action="reject") as (client, state):
        v1 = client.post("/v1/models/strict/predict", files={"file": png(pixels[0])})
        assert v1.status_code == 422
        body = v1.json()
        assert "out of distribution" in body["error"] and body["ood"]["flagged"] is True
        assert body["ood"]["score"] > 1.0 and v1.headers["X-Model-Version"]
        rest = client.post("/v2/models/strict/infer", json=_v2(pixels[:3]))
        assert rest.status_code == 422 and rest.json()["ood"]["flagged"] == [True] * 3
        with pytest.raises(tgrpc.InferenceServerException) as raised:
            _grpc(state, "strict", pixels[:2])
        assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
        assert "out of distribution" in raised.value.message()
        assert _metric(client, "resnetkit_ood_flagged_total", "strict") == 1 + 3 + 2
        ok = client.post("/v1/models/lenient/predict", files={"file": png(pixels[0])})
        assert ok.status_code == 200 and ok.json()["ood"]["flagged"] is False
        assert client.post("/v2/models/lenient/infer", json=_v2(pixels[:3])).status_code == 200
