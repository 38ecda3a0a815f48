"""The request path as a client sees it, in process: real models from a real registry.

Three small untrained ResNets registered as ``fm`` versions 1 and 2 (different seeds) and 3
(weights with infinities: every output is NaN, as from a diverged or corrupt model). What is
tested: a broken canary costs no request, feedback is one label per request for every
protocol, V2 traffic is logged, shadow rollouts say they are shadow, conflicts are 409, and
two versions given at start-up stay addressable.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file, save_file

from resnetkit.cli.rollout import show_rollout
from resnetkit.registry import RegistrationOptions, open_registry
from resnetkit.registry import rollouts as db
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.pool import ModelPool, PoolSettings
from resnetkit.serve.rollout_loop import RolloutLoop
from resnetkit.serve.router import RolloutRouter
from tests.registry.rundirs import LABELS, make_run_dir
from tests.serve.server import in_process, png

pytestmark = pytest.mark.slow
TOKEN = "inference-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 60.0


def _broken_run_dir(path: Path) -> Path:
    """A run whose classifier bias holds infinities: its logits are inf, its softmax NaN."""
    make_run_dir(path, seed=3)
    weights = load_file(str(path / "model.safetensors"))
    weights["fc.bias"] = torch.full_like(weights["fc.bias"], float("inf"))
    save_file(weights, str(path / "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {
        "one": make_run_dir(base / "one", seed=0),
        "two": make_run_dir(base / "two", seed=1),
        "broken": _broken_run_dir(base / "broken"),
    }


@pytest.fixture
def registry(tmp_path: Path, runs: dict[str, Path]) -> str:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with open_registry(url, tmp_path / "artifacts") as store:
        store.register(runs["one"], "fm", RegistrationOptions(aliases=("production",)))
        store.register(runs["two"], "fm")
        store.register(runs["broken"], "fm")
    return url


@pytest.fixture(scope="module")
def image() -> bytes:
    return png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))


def _wait(predicate: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.05)


def _samples(client: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = client.get("/metrics").text
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def _metric(client: Any, name: str, **labels: str) -> float:
    return sum(
        value
        for key, value in _samples(client, name).items()
        if all((k, v) in key for k, v in labels.items())
    )


def _predict(client: Any, image: bytes) -> Any:
    return client.post("/v1/models/fm/predict", files={"file": image})


def _v2_body(batch: int, request_id: str | None = None) -> dict[str, Any]:
    pixels = np.random.default_rng(1).integers(0, 256, (batch, 28, 28, 1)).tolist()
    body: dict[str, Any] = {
        "inputs": [
            {"name": "input", "datatype": "UINT8", "shape": [batch, 28, 28, 1], "data": pixels}
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def _start(client: Any, canary: int, **config: Any) -> Any:
    return client.post(
        "/v1/admin/rollouts", headers=AUTH, json={"model": "fm", "canary": canary, **config}
    )


def _canary_ready(client: Any, version: str) -> bool:
    models = client.get("/v1/models").json()["models"]
    return any(m["version"] == version and m["ready"] for m in models)


def test_a_canary_answering_nan_fails_no_request_and_is_rolled_back(
    registry: str, image: bytes
) -> None:
    rollout = {"steps": [50, 100], "interval_s": 0.5, "min_requests": 5, "failure_limit": 1,
               "mirror_fraction": 0.0}  # fmt: skip
    with in_process(["fm@production"], registry=registry, token=TOKEN) as (client, _state):
        assert _start(client, 3, **rollout).status_code == 201
        _wait(lambda: _canary_ready(client, "3"), "the canary")
        statuses: list[int] = []
        non_finite = 0.0  # read while the canary is served: its series go when it is unloaded
        deadline = time.monotonic() + WAIT_S
        while client.get("/v1/rollouts/fm").json()["state"] == "progressing":
            assert time.monotonic() < deadline, client.get("/v1/rollouts/fm").json()
            answer = _predict(client, image)
            statuses.append(answer.status_code)
            assert answer.headers.get("x-model-version") in ("1", None), answer.text
            v2 = client.post("/v2/models/fm/infer", json=_v2_body(1))
            statuses.append(v2.status_code)
            errors = _metric(client, "resnetkit_model_errors_total", version="3")
            non_finite = max(non_finite, errors)
        done = client.get("/v1/rollouts/fm").json()
    assert done["state"] == "rolled_back" and "error_rate" in done["reason"], done
    assert statuses and set(statuses) == {200}, statuses
    assert non_finite > 0


def test_a_nan_answer_without_a_stable_to_fall_back_on_is_a_json_500(
    registry: str, image: bytes
) -> None:
    with in_process(["fm:3"], registry=registry) as (client, _state):
        v1 = _predict(client, image)
        v2 = client.post("/v2/models/fm/infer", json=_v2_body(2))
        errors = _metric(client, "resnetkit_model_errors_total", reason="non_finite")
    for answer in (v1, v2):
        assert answer.status_code == 500
        assert "non-finite" in answer.json()["error"]
    assert errors == 2


def test_feedback_is_one_label_per_request_and_a_new_label_replaces_the_first(
    registry: str, image: bytes
) -> None:
    slow = {"steps": [50, 100], "interval_s": 3600, "mirror_fraction": 0.0}
    with in_process(["fm@production"], registry=registry, token=TOKEN) as (client, state):
        assert _start(client, 2, **slow).status_code == 201
        _wait(lambda: _canary_ready(client, "2"), "the canary")
        answered = _predict(client, image).json()
        rid, version = answered["request_id"], answered["version"]
        top = answered["predictions"][0]["index"]
        wrong = (top + 1) % len(LABELS)
        first = client.post("/v1/feedback", json={"request_id": rid, "label": top})
        again = client.post("/v1/feedback", json={"request_id": rid, "label": LABELS[top]})
        other = client.post("/v1/feedback", json={"request_id": rid, "label": wrong})
        assert first.status_code == again.status_code == other.status_code == 200
        assert again.json()["repeated"] is True and "replaced" not in first.json()
        assert other.json()["replaced"] == top

        def live(outcome: str) -> float:
            given = _metric(client, "resnetkit_feedback_total", version=version, outcome=outcome)
            taken = _metric(
                client, "resnetkit_feedback_retracted_total", version=version, outcome=outcome
            )
            return given - taken

        counted = {outcome: live(outcome) for outcome in ("correct", "incorrect")}
        assert counted == {"correct": 0, "incorrect": 1}
        # What the rollout analysis reads: this replica's counts of the step, in the registry.
        record = state.rollouts.records["fm"]
        client.portal.call(state.rollouts.sync, "fm")
        with open_registry(registry, create=False) as store:
            parts = db.read_stats(store, record.id, record.step)
    role = "canary" if version == "2" else "stable"
    assert [(p[role]["feedback_total"], p[role]["feedback_correct"]) for p in parts] == [(1, 0)]


def test_v2_requests_are_logged_and_take_feedback_by_either_id(
    registry: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "predictions.jsonl"
    with in_process(["fm:1"], registry=registry, prediction_log=log_path) as (client, state):
        one = client.post("/v2/models/fm/infer", json=_v2_body(1, "client-7"))
        anonymous = client.post("/v2/models/fm/infer", json=_v2_body(1))
        batch = client.post("/v2/models/fm/infer", json=_v2_body(3, "batch-1"))
        assert one.status_code == anonymous.status_code == batch.status_code == 200
        assert one.json()["id"] == "client-7"
        server_id = anonymous.json()["id"]
        assert server_id == anonymous.headers["x-request-id"]
        for rid in ("client-7", one.headers["x-request-id"], server_id, "batch-1:2"):
            scored = client.post("/v1/feedback", json={"request_id": rid, "label": 0})
            assert scored.status_code == 200, (rid, scored.text)
        repeat = client.post("/v1/feedback", json={"request_id": one.headers["x-request-id"],
                                                   "label": 0})  # fmt: skip
        assert repeat.json().get("repeated") is True  # the same request under its other id
        assert state.predlog is not None
        state.predlog.flush()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 5  # one record per sample
    ids = [line["request_id"] for line in lines]
    assert one.headers["x-request-id"] in ids and server_id in ids
    assert {f"{batch.headers['x-request-id']}:{i}" for i in range(3)} <= set(ids)
    assert all(line["model"] == "fm" and line["version"] == "1" for line in lines)


def test_a_shadow_rollout_reports_no_traffic_share_for_the_canary(
    registry: str, image: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    shadow = {"steps": [50, 100], "interval_s": 3600, "shadow": True}
    with in_process(["fm@production"], registry=registry, token=TOKEN) as (client, _state):
        started = _start(client, 2, **shadow)
        assert started.status_code == 201, started.text
        _wait(lambda: _canary_ready(client, "2"), "the canary")
        versions = {_predict(client, image).headers["x-model-version"] for _ in range(12)}
        listed = client.get("/v1/rollouts").json()["rollouts"][0]
        weight = _metric(client, "resnetkit_rollout_canary_weight", model="fm")
        mirrored = _metric(client, "resnetkit_rollout_mirrored_share", model="fm")
    assert versions == {"1"}
    assert (listed["mode"], listed["canary_weight"], listed["mirrored_percent"]) == (
        "shadow", 0, 100
    )  # fmt: skip
    assert (weight, mirrored) == (0, 1)
    show_rollout(listed, as_json=False)  # what `resnetkit rollout status` prints
    printed = " ".join(capsys.readouterr().out.split())
    assert "shadow: stable answers every request; 100% also run on the canary" in printed
    assert "to the canary)" not in printed


def test_conflicting_requests_answer_409_naming_the_conflict(registry: str, image: bytes) -> None:
    slow = {"steps": [50, 100], "interval_s": 3600}
    with in_process(["fm@production", "fm:2"], registry=registry, token=TOKEN) as (client, _s):
        same = _start(client, 1, **slow)
        first = _start(client, 2, **slow)
        second = _start(client, 3, **slow)
        load = client.post("/v1/admin/models", headers=AUTH, json={"ref": "fm:3", "name": "fm3"})
        assert load.status_code == 201, load.text
        ambiguous = client.post("/v1/predict", files={"file": image})
    assert first.status_code == 201, first.text
    assert same.status_code == 409 and "already the stable version" in same.json()["error"]
    assert second.status_code == 409 and "already has a rollout" in second.json()["error"]
    assert ambiguous.status_code == 409
    assert "fm, fm3" in ambiguous.json()["error"]


def test_two_versions_given_at_start_stay_addressable_after_an_old_rollout(
    registry: str,
) -> None:
    """A rollout of fm that was rolled back long ago does not unload the fm:2 asked for."""
    with open_registry(registry, create=False) as store:
        old = db.start_rollout(store, "fm", stable_version=1, canary_version=2, config={},
                               first_weight=5.0, actor="test")  # fmt: skip
        db.update_rollout(store, old, changes={"state": "rolled_back", "canary_weight": 0.0},
                          event=("rollback", {}), actor="test")  # fmt: skip

    async def serve_both() -> list[str]:
        metrics = ServerMetrics()
        pool = ModelPool(PoolSettings(registry=registry, threads=1, warmup_batches=0), metrics)
        loop = RolloutLoop(pool, metrics, RolloutRouter(pool, metrics), registry=registry,
                           drain_s=0.0)  # fmt: skip
        try:
            await pool.load("fm:1")
            await pool.load("fm:2")
            await loop.sync("fm")
            await asyncio.gather(*loop._tasks)  # an unload it scheduled, if any
            return [s.version for s in pool.all()]
        finally:
            loop.close()
            await pool.close()

    assert asyncio.run(serve_both()) == ["1", "2"]


def test_the_first_load_of_weights_says_it_made_the_onnx_file_once(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A weights version is exported for ONNX Runtime on its first load: the log says where
    the seconds went, and the next load, finding the file cached, does not repeat it."""
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))

    async def load_once() -> float:
        pool = ModelPool(PoolSettings(registry=registry, threads=1, warmup_batches=0),
                         ServerMetrics())  # fmt: skip
        try:
            return (await pool.load("fm:1")).loaded.one_time_seconds
        finally:
            await pool.close()

    caplog.set_level("INFO", logger="resnetkit.serve")
    first = asyncio.run(load_once())
    second = asyncio.run(load_once())
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded fm:1")]
    assert first > 0 and second == 0
    assert len(messages) == 2
    assert "making its ONNX Runtime file from the weights once" in messages[0]
    assert str(tmp_path / "cache") in messages[0]
    assert "once" not in messages[1]
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))
