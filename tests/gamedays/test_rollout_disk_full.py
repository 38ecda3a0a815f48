"""Game day: the registry's disk fills up in the middle of a rollout, end to end.

A server follows a canary rollout whose state lives in a SQLite registry on a small tmpfs.
When the disk is full the rollout's state cannot be saved: the loop pauses (no step, no
promotion, no rollback, however long it lasts and however much traffic comes), shows it
(``resnetkit_registry_up`` 0, the failed operation counted, ``/v1/stats``, one warning
naming the full disk), keeps answering every request, and resumes when space returns.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from resnetkit.registry import open_registry
from resnetkit.registry import rollouts as db
from resnetkit.serve.rollout import RolloutConfig
from tests.gamedays.conftest import fill, tmpfs
from tests.registry.rundirs import make_run_dir
from tests.serve.server import in_process, png

# Two steps a second apart; a step that sees no verdict for 4 s is rolled back. The checks
# let two differently seeded (untrained) versions pass: this test is about saving state.
ROLLOUT = {
    "steps": [50, 100], "interval_s": 1.0, "progress_deadline_s": 4.0, "min_requests": 3,
    "mirror_fraction": 1.0,
    "checks": {"min_agreement": 0.0, "max_confidence_shift": 1.0, "max_latency_ratio": 1000.0},
}  # fmt: skip
OUTAGE_S = 6.0  # longer than the progress deadline and several analysis intervals
WAIT_S = 60.0  # a bound on every wait, for a loaded CI machine


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


def _latest(url: str) -> db.RolloutRecord:
    with open_registry(url, create=False) as store:
        record = db.latest_rollout(store, "fmnist")
    assert record is not None
    return record


@pytest.mark.slow
def test_a_rollout_whose_state_cannot_be_saved_pauses_and_resumes_when_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image = png(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
    # Room for the WAL to reach its checkpoint size (1,000 pages) once space returns.
    with tmpfs(tmp_path / "disk", 16 * 1024) as disk:
        url = f"sqlite:///{disk / 'registry.db'}"
        with open_registry(url, tmp_path / "artifacts") as store:  # artifacts elsewhere
            for seed in (0, 1):
                store.register(make_run_dir(tmp_path / f"run{seed}", seed=seed), "fmnist")
            store.set_alias("fmnist", "prod", 1, reason="game day")
        with in_process(["fmnist@prod"], registry=url) as (client, _):

            def predict() -> None:
                answer = client.post(
                    "/v1/models/fmnist/predict", content=image,
                    headers={"content-type": "image/png"},
                )  # fmt: skip
                assert answer.status_code == 200, answer.text

            def registry_up() -> bool:
                return bool(client.get("/v1/stats").json()["registry"]["up"])

            cfg = RolloutConfig.from_mapping(ROLLOUT)
            with open_registry(url, create=False) as store:  # the server follows it from now
                db.start_rollout(
                    store, "fmnist", stable_version=1, canary_version=2, config=cfg.to_dict(),
                    first_weight=cfg.weight(0), actor="game day",
                )  # fmt: skip
            caplog.set_level(logging.WARNING, logger="resnetkit.serve")
            fill(disk)
            _wait_for("the registry shown down", lambda: not registry_up())
            metrics = client.get("/metrics").text
            assert "resnetkit_registry_up 0.0" in metrics
            assert 'resnetkit_registry_errors_total{operation="rollout"}' in metrics
            paused = [r.getMessage() for r in caplog.records if "rollouts paused" in r.message]
            # SQLite says "database or disk is full", or "disk I/O error" when the full disk
            # hits its shared-memory or WAL file first.
            assert len(paused) == 1 and re.search("disk is full|disk I/O", paused[0]), paused

            end = time.monotonic() + OUTAGE_S
            while time.monotonic() < end:  # traffic that a running loop would act on
                predict()
            assert not registry_up()

            back = db.utc_now()
            (disk / ".filler").unlink()  # space returns
            _wait_for("the registry shown up again", registry_up)

            def finished() -> bool:
                predict()
                return not _latest(url).active

            _wait_for("the rollout finished", finished)
            after = _latest(url)
            assert after.state == "promoted", after.reason  # not rolled back for the outage
            with open_registry(url, create=False) as store:
                events = db.list_rollout_events(store, after.id)
            assert [e.kind for e in events] == ["start", "step", "promote"]
            # Nothing was decided while the disk was full: both decisions came after.
            assert all(e.created_at > back for e in events[1:]), events
            resumed = [r.getMessage() for r in caplog.records if "rollouts resume" in r.message]
            assert len(resumed) == 1
