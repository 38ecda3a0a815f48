"""Canary rollouts with real trained models, real servers on loopback and real traffic.

The models are small Fashion-MNIST ResNets trained for a few seconds (about 75% accurate), so
two good runs of the same recipe agree on about 80-85% of images, not the 95% of a fully
trained pair: the rollout file here asks for 70% agreement. Bad canaries: random weights,
shuffled labels (both: agreement collapses), infinite weights (every output NaN), and faults
injected into a good version through the admin API (every request fails; 300 ms more
latency). A canary that fails a request is retried on stable: no client sees an error.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from resnetkit.contract import write_summary
from resnetkit.data import load_dataset
from resnetkit.models import create_model, load_model, save_model
from resnetkit.registry import RegistrationOptions, open_registry
from resnetkit.registry.migrations import rollout_leases
from tests.export.rundir import trained_run_dir
from tests.registry.conftest import PostgresServer, postgres_server  # noqa: F401
from tests.serve.server import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "rollout-admin-token"
INTERVAL_S = 2.0
ROLLOUT = {
    "steps": [20, 60, 100],
    "interval_s": INTERVAL_S,
    "failure_limit": 2,
    "min_requests": 8,
    "mirror_fraction": 0.5,
    "progress_deadline_s": 60,
    # Two small runs of one recipe agree on about 70-80% of test images; random weights and
    # shuffled labels on about 10%.
    "checks": {"min_agreement": 0.5, "min_compared": 8, "max_confidence_shift": 0.2},
}


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    test = load_dataset("fashion-mnist", "test", limit=200)
    return [_png(p) for p in test.images[:, 0].numpy()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = str(tmp_path_factory.getbasetemp())
    good = trained_run_dir(base)
    _model, card = load_model(good)
    random_dir = Path(base) / "run-random"
    untrained = create_model(card.arch, **card.kwargs)
    save_model(untrained, random_dir, arch=card.arch, kwargs=card.kwargs, labels=card.labels,
               preprocessing=card.preprocessing)  # fmt: skip
    write_summary(random_dir, {"dataset": {"name": "fashion-mnist"}})
    return {
        "good": good,
        "good2": trained_run_dir(base, seed=1),
        "random": random_dir,
        "shuffled": trained_run_dir(base, seed=2, shuffle_labels=True),
        "non_finite": _non_finite_copy(good, Path(base) / "run-non-finite"),
    }


def _non_finite_copy(run: Path, out: Path) -> Path:
    """The trained run with an infinite classifier bias: logits inf, probabilities NaN."""
    shutil.copytree(run, out, dirs_exist_ok=True)
    weights = load_file(str(out / "model.safetensors"))
    weights["fc.bias"] = torch.full_like(weights["fc.bias"], float("inf"))
    save_file(weights, str(out / "model.safetensors"))
    return out


def _register(url: str, artifacts: Path, runs: dict[str, Path]) -> None:
    """fm:1 good (production), fm:2 another good run, fm:3 random, fm:4 shuffled labels,
    fm:5 non-finite outputs."""
    with open_registry(url, artifacts) as store:
        store.register(runs["good"], "fm", RegistrationOptions(aliases=("production",)))
        for key in ("good2", "random", "shuffled", "non_finite"):
            store.register(runs[key], "fm")


@pytest.fixture
def registry(tmp_path: Path, runs: dict[str, Path]) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    _register(url, tmp_path / "artifacts", runs)
    return {"RESNETKIT_REGISTRY": url, "RESNETKIT_ARTIFACTS": str(tmp_path / "artifacts")}


def _server(tmp_path: Path, env: dict[str, str], tag: str = "a") -> ServerProcess:
    (tmp_path / "token").write_text(TOKEN)
    args = ["fm@production", "--admin-token-file", str(tmp_path / "token"), "--threads", "1",
            "--rollout-poll-s", "0.25"]  # fmt: skip
    server = ServerProcess(args, tmp_path / f"server-{tag}.log", env)
    server.wait_ready()
    return server


class Traffic:
    """Real clients posting images at a steady pace from a background thread; every response
    is counted by status and by the version that answered."""

    def __init__(self, urls: list[str], images: list[bytes], concurrency: int = 4) -> None:
        self.urls, self.images, self.concurrency = urls, images, concurrency
        self.counts: collections.Counter[tuple[int, str]] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        i = worker
        while not self._stop.is_set():
            url = self.urls[i % len(self.urls)]
            try:
                answer = await client.post(
                    f"{url}/v1/models/fm/predict", files={"file": self.images[i % len(self.images)]}
                )
                self.counts[(answer.status_code, answer.headers.get("x-model-version", "-"))] += 1
            except httpx.HTTPError:
                self.counts[(0, "connection")] += 1
                await asyncio.sleep(0.05)
            i += self.concurrency

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(self._worker(client, w) for w in range(self.concurrency)))

    def by_version(self, status: int) -> dict[str, int]:
        return {v: n for (s, v), n in self.counts.items() if s == status}


def _admin(server: ServerProcess, method: str, path: str, body: Any = None) -> dict[str, Any]:
    answer = httpx.request(method, server.url + path, json=body, timeout=60,
                           headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert answer.status_code < 300, answer.text
    return dict(answer.json())


def _rollout(server: ServerProcess) -> dict[str, Any]:
    return dict(httpx.get(f"{server.url}/v1/rollouts/fm", timeout=30).json())


def _wait(predicate: Any, timeout_s: float, what: str, server: ServerProcess) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"{what} not within {timeout_s} s; rollout: {_rollout(server)}")


def _canary_ready(server: ServerProcess, version: str) -> bool:
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]
    return any(m["version"] == version and m["ready"] for m in models)


def test_a_good_canary_is_promoted_through_every_step(
    tmp_path: Path, registry: dict[str, str], images: list[bytes]
) -> None:
    server = _server(tmp_path, registry)
    try:
        with Traffic([server.url], images) as traffic:
            _admin(server, "POST", "/v1/admin/rollouts", {"model": "fm", "canary": 2, **ROLLOUT})
            _wait(lambda: _rollout(server)["state"] != "progressing", 120, "a verdict", server)
        done = _rollout(server)
        assert done["state"] == "promoted", f"{done}"
        kinds = [e["kind"] for e in done["events"]]
        assert kinds.count("step") == 2 and kinds[-1] == "promote"
        assert set(traffic.by_version(200)) >= {"1", "2"} and not traffic.by_version(500)
    finally:
        assert server.stop() == 0
    with open_registry(registry["RESNETKIT_REGISTRY"], registry["RESNETKIT_ARTIFACTS"]) as store:
        last = store.history("fm", "production")[-1]
        assert (last.from_version, last.to_version) == (1, 2)
        assert "passed every step" in last.reason and "top1_agreement" in last.reason


@pytest.mark.parametrize(
    ("case", "canary", "fault", "failing_check"),
    [
        ("random weights", 3, None, "top1_agreement"),
        ("non-finite outputs", 5, None, "error_rate"),
        ("shuffled labels", 4, None, "top1_agreement"),
        ("raises on every request", 2, {"error_rate": 1.0}, "error_rate"),
        ("300 ms slower", 2, {"delay_ms": 300}, "p95_latency_ms"),
    ],
)
def test_a_bad_canary_is_rolled_back_within_three_intervals(
    tmp_path: Path,
    registry: dict[str, str],
    images: list[bytes],
    case: str,
    canary: int,
    fault: dict[str, float] | None,
    failing_check: str,
) -> None:
    server = _server(tmp_path, registry)
    try:
        with Traffic([server.url], images) as traffic:
            _admin(
                server, "POST", "/v1/admin/rollouts", {"model": "fm", "canary": canary, **ROLLOUT}
            )
            bad_since = _wait(lambda: _canary_ready(server, str(canary)), 120, "the canary", server)
            if fault is not None:
                _admin(server, "PUT", f"/v1/admin/faults/fm/{canary}", fault)
                bad_since = time.monotonic()
            done_at = _wait(lambda: _rollout(server)["state"] != "progressing", 60, case, server)
            time.sleep(1.0)  # traffic after the rollback: it must all succeed, from stable
            after = collections.Counter(traffic.counts)
        done = _rollout(server)
        assert done["state"] == "rolled_back", done
        assert failing_check in done["reason"]
        assert done_at - bad_since <= 3 * INTERVAL_S + 2.0, (done_at - bad_since, done)
        rollback = next(e for e in done["events"] if e["kind"] == "rollback")
        assert any(c["name"] == failing_check and c["passed"] is False
                   for c in rollback["detail"]["checks"])  # fmt: skip
        # A canary that fails a request is retried on stable: no request fails at all.
        failed = {k: n for k, n in after.items() if k[0] != 200}
        assert not failed, failed
    finally:
        assert server.stop() == 0
    with open_registry(registry["RESNETKIT_REGISTRY"], registry["RESNETKIT_ARTIFACTS"]) as store:
        assert store.resolve("fm@production").version == 1  # the alias did not move


def test_a_restarted_server_resumes_the_rollout_at_its_step(
    tmp_path: Path, registry: dict[str, str], images: list[bytes]
) -> None:
    server = _server(tmp_path, registry)
    slow = {**ROLLOUT, "interval_s": 3600.0}  # stays at its first step
    _admin(server, "POST", "/v1/admin/rollouts", {"model": "fm", "canary": 2, **slow})
    _wait(lambda: _canary_ready(server, "2"), 120, "the canary", server)
    before = _rollout(server)
    assert server.stop() == 0
    again = _server(tmp_path, registry, tag="b")
    try:
        _wait(lambda: _canary_ready(again, "2"), 120, "the canary after restart", again)
        resumed = _rollout(again)
        assert (resumed["state"], resumed["step"], resumed["id"]) == (
            "progressing",
            before["step"],
            before["id"],
        )
        with Traffic([again.url], images) as traffic:
            _wait(lambda: "2" in traffic.by_version(200), 30, "canary traffic", again)
    finally:
        again.stop()


def test_a_canary_that_cannot_be_loaded_is_rolled_back_with_the_reason(
    tmp_path: Path, registry: dict[str, str], runs: dict[str, Path]
) -> None:
    # Weights no other test has loaded (so no cached checkout hides the broken file).
    _model, card = load_model(runs["good"])
    torch.manual_seed(int(time.time()))
    fresh = create_model(card.arch, **card.kwargs)
    save_model(fresh, tmp_path / "fresh", arch=card.arch, kwargs=card.kwargs,
               labels=card.labels, preprocessing=card.preprocessing)  # fmt: skip
    with open_registry(registry["RESNETKIT_REGISTRY"], registry["RESNETKIT_ARTIFACTS"]) as store:
        info = store.register(tmp_path / "fresh", "fm")
        weights = next(a for a in info.artifacts if a.filename == "model.safetensors")
        path = store.artifacts.path_for(weights.digest)
    server = _server(tmp_path, registry)
    try:
        os.chmod(path, 0o644)
        path.write_bytes(b"corrupted on disk")  # the version exists; its file is now broken
        _admin(server, "POST", "/v1/admin/rollouts",
               {"model": "fm", "canary": info.version, **ROLLOUT})  # fmt: skip
        _wait(lambda: _rollout(server)["state"] != "progressing", 60, "a rollback", server)
        done = _rollout(server)
        assert done["state"] == "rolled_back" and "cannot be loaded" in done["reason"]
    finally:
        server.stop()


def _lease_holder(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.select(rollout_leases.c.holder)).scalar_one())
    finally:
        engine.dispose()


def test_two_replicas_follow_one_rollout_and_one_finishes_it_when_the_other_is_killed(
    tmp_path: Path,
    runs: dict[str, Path],
    images: list[bytes],
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    url = postgres_server.create_database()
    env = {"RESNETKIT_REGISTRY": url, "RESNETKIT_ARTIFACTS": str(tmp_path / "artifacts")}
    _register(url, tmp_path / "artifacts", runs)
    first, second = _server(tmp_path, env, "a"), _server(tmp_path, env, "b")
    try:
        with Traffic([first.url, second.url], images) as traffic:
            # What is tested is the hand-over, not the checks: half the traffic goes to the
            # killed replica, so windows fill slowly on a loaded machine and latency is noisy.
            slow_steps = {
                **ROLLOUT, "steps": [20, 40, 60, 80, 100], "progress_deadline_s": 240,
                "checks": {**ROLLOUT["checks"], "max_latency_ratio": 3.0, "latency_slack_ms": 200},
            }  # fmt: skip
            _admin(first, "POST", "/v1/admin/rollouts", {"model": "fm", "canary": 2, **slow_steps})
            _wait(lambda: _canary_ready(first, "2") and _canary_ready(second, "2"), 120,
                  "the canary on both replicas", first)  # fmt: skip
            _wait(lambda: _rollout(first)["step"] >= 1, 60, "a first step", first)
            holder = _lease_holder(url)
            leader, other = (first, second) if f"-{first.proc.pid}-" in holder else (second, first)
            assert f"-{leader.proc.pid}-" in holder
            leader.proc.send_signal(signal.SIGKILL)
            leader.proc.wait(30)
            _wait(lambda: _rollout(other)["state"] != "progressing", 300, "the survivor", other)
            served_by = {v for (s, v) in traffic.counts if s == 200}
        done = _rollout(other)
        assert done["state"] == "promoted", f"{done}"
        assert f"-{other.proc.pid}-" in done["events"][-1]["actor"]
        assert {"1", "2"} <= served_by
    finally:
        first.stop()
        second.stop()
