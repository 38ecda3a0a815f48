"""Game day: the rollout loop through a registry outage. While the registry cannot be read
or written no rollout is decided, and the time it was away does not count against a
step's progress deadline: a canary is never rolled back for data the outage kept away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from resnetkit.errors import RegistryUnavailable
from resnetkit.registry import open_registry
from resnetkit.registry import rollouts as db
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.pool import ModelPool, PoolSettings
from resnetkit.serve.rollout import RolloutConfig, StepStats, Verdict
from resnetkit.serve.rollout_loop import RolloutLoop
from resnetkit.serve.router import RolloutRouter
from tests.registry.rundirs import make_run_dir

DEADLINE_S = 1.0
INCONCLUSIVE = Verdict("inconclusive", (), "too few requests")


@pytest.fixture
def rollout(tmp_path: Path) -> tuple[str, db.RolloutRecord, RolloutConfig]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    cfg = RolloutConfig.from_mapping({"progress_deadline_s": DEADLINE_S, "interval_s": 0.1})
    with open_registry(url, tmp_path / "artifacts") as store:
        for seed in (0, 1):
            store.register(make_run_dir(tmp_path / f"run{seed}", seed=seed), "fmnist")
        record = db.start_rollout(
            store, "fmnist", stable_version=1, canary_version=2, config=cfg.to_dict(),
            first_weight=cfg.weight(0), actor="game day",
        )  # fmt: skip
    return url, record, cfg


def _controller(url: str) -> RolloutLoop:
    metrics = ServerMetrics()
    pool = ModelPool(PoolSettings(registry=url), metrics)
    return RolloutLoop(pool, metrics, RolloutRouter(pool, metrics), registry=url)


def _state(url: str) -> str:
    with open_registry(url, create=False) as store:
        latest = db.latest_rollout(store, "fmnist")
    assert latest is not None
    return latest.state


def test_an_outage_does_not_count_against_the_progress_deadline(
    rollout: tuple[str, db.RolloutRecord, RolloutConfig],
) -> None:
    url, record, cfg = rollout
    controller = _controller(url)
    controller._registry_failed("rollout", RegistryUnavailable("registry database gone"))
    assert controller.registry_down
    assert "resnetkit_registry_up 0.0" in controller.metrics.render()[0].decode()
    time.sleep(DEADLINE_S * 1.5)  # the registry stays away past the step's deadline
    controller._registry_ok()
    assert not controller.registry_down
    asyncio.run(controller._act("fmnist", record, cfg, INCONCLUSIVE, StepStats()))
    assert _state(url) == "progressing"  # not rolled back on data the outage kept away
    controller.close()

    # Without the outage the same wait is a missed deadline: the rollout is rolled back.
    other = _controller(url)
    asyncio.run(other._act("fmnist", record, cfg, INCONCLUSIVE, StepStats()))
    assert _state(url) == "rolled_back"
    other.close()
