"""Three real ``resnetkit serve`` replicas behind HAProxy, as a Deployment behind a Service.

The process boundary is the subject: SIGTERM and SIGKILL of real server processes while a
real proxy balances real requests. The harness is ``bench/replicas.py``'s, which measures
the same at a larger scale.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.replicas import (
    MODEL_NAME,
    Cluster,
    Load,
    cluster,
    desired_replicas,
    failures,
    fashion_pngs,
    haproxy_available,
    hpa_target,
    register_model,
)

from resnetkit.export import load_model_ref
from tests.export.rundir import trained_run_dir

needs_haproxy = pytest.mark.skipif(
    not haproxy_available(),
    reason="haproxy is not installed (apt-get install haproxy, or make system-deps)",
)

REPLICAS = 3
CONCURRENCY = 4


def test_the_hpa_formula_uses_the_manifests_target_and_kubernetes_tolerance() -> None:
    target = hpa_target()
    assert target == 8.0  # deploy/base/horizontalpodautoscaler.yaml
    assert desired_replicas(1, 0.0, target, 3) == 1  # never below one
    assert desired_replicas(1, 17.0, target, 3) == 3  # ceil(17 / 8)
    assert desired_replicas(1, 100.0, target, 3) == 3  # never above the maximum
    assert desired_replicas(2, 8.5, target, 10) == 2  # within 10% of the target: no change
    assert desired_replicas(2, 9.0, target, 10) == 3  # ceil(2 * 9 / 8)


@pytest.fixture(scope="module")
def serve_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``serve`` arguments for a small ONNX model registered in one shared SQLite registry."""
    run = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    work = tmp_path_factory.mktemp("replicas")
    registry = f"sqlite:///{work / 'registry.db'}"
    register_model(load_model_ref(run).onnx_path(), registry, work / "register.log")
    return [f"{MODEL_NAME}@production", "--registry", registry, "--threads", "1"]


@pytest.fixture
def service(serve_args: list[str], tmp_path: Path) -> Iterator[Cluster]:
    with cluster(serve_args, REPLICAS, tmp_path) as c:
        yield c


@pytest.mark.slow
@needs_haproxy
def test_rolling_update_under_load_fails_no_request(service: Cluster) -> None:
    old_pids = [r.proc.pid for r in service.replicas if r.proc is not None]
    with Load(service.proxy.url, fashion_pngs(16), CONCURRENCY) as load:
        load.wait_more(20)
        started = time.monotonic()
        steps = service.rolling_update()
        finished = time.monotonic()
        load.wait_more(20)
    assert [s["exit_status"] for s in steps] == [0] * REPLICAS  # each old one drained cleanly
    assert not {r.proc.pid for r in service.replicas if r.proc is not None} & set(old_pids)
    during = [o for o in load.outcomes if started <= o.sent_s <= finished]
    assert len(during) > REPLICAS * CONCURRENCY  # traffic flowed throughout the update
    assert failures(load.outcomes) == []


@pytest.mark.slow
@needs_haproxy
def test_sigkill_of_one_replica_loses_at_most_its_requests_in_flight(service: Cluster) -> None:
    victim = service.replicas[0]
    with Load(service.proxy.url, fashion_pngs(16), CONCURRENCY) as load:
        load.wait_more(20)
        killed = time.monotonic()
        victim.signal(signal.SIGKILL)
        assert victim.wait_exit() == -signal.SIGKILL
        service.proxy.wait_state(victim.port, "DOWN")
        load.wait_more(40)
    service.replicas.remove(victim)
    failed = failures(load.outcomes)
    assert all(o.sent_s < killed for o in failed)  # only requests it may have held
    assert len(failed) <= CONCURRENCY
    assert len([o for o in load.outcomes if o.sent_s > killed and o.ok]) >= 40
