"""The rollout step against a real server: a blessed candidate's canary is started through
the admin API, watched under real traffic and promoted; a not-blessed one never reaches it."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from resnetkit.data import load_dataset
from resnetkit.pipeline import PipelineConfig, run_pipeline
from resnetkit.pipeline.config import DataSection, GateSection, RolloutSection
from resnetkit.registry import RegistrationOptions, open_registry
from tests.export.rundir import trained_run_dir
from tests.serve.test_rollout import ROLLOUT, TOKEN, Traffic, _png, _server

pytestmark = pytest.mark.slow


def test_a_blessed_candidate_is_promoted_on_the_server_and_a_bad_one_never_reaches_it(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = str(tmp_path_factory.getbasetemp())
    good, shuffled = trained_run_dir(base), trained_run_dir(base, seed=2, shuffle_labels=True)
    url, artifacts = f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts"
    with open_registry(url, artifacts) as store:
        store.register(good, "fm", RegistrationOptions(aliases=("production",)))
    retrained = shutil.copytree(good, tmp_path / "retrained")  # production's equal: blessed
    canary = {**ROLLOUT, "steps": [50, 100], "interval_s": 1.0}
    config = PipelineConfig(
        registry=url, data=DataSection(eval_limit=500),
        gate=GateSection(min_accuracy=0.6, bootstrap_samples=200),
        rollout=RolloutSection(timeout_s=120, poll_s=0.2, canary=canary),
    )  # fmt: skip
    env = {"RESNETKIT_REGISTRY": url, "RESNETKIT_ARTIFACTS": str(artifacts)}
    images = [_png(p) for p in load_dataset("fashion-mnist", "test", limit=64).images[:, 0].numpy()]
    server = _server(tmp_path, env)
    try:
        bad = run_pipeline(config, name="fm", candidate=str(shuffled), server=server.url,
                           admin_token=TOKEN, out_dir=tmp_path / "bad")  # fmt: skip
        assert bad.outcome == "not_blessed" and bad.rollout["state"] == "not_started"
        assert httpx.get(f"{server.url}/v1/rollouts/fm", timeout=30).status_code == 404
        traffic, started = Traffic([server.url], images), []

        def traffic_from_the_rollout(step: str, message: str) -> None:
            if (step, message) == ("rollout", "started"):
                started.append(traffic.__enter__())  # the canary is judged on live requests

        try:
            result = run_pipeline(config, name="fm", candidate=str(retrained), server=server.url,
                                  admin_token=TOKEN, out_dir=tmp_path / "good",
                                  progress=traffic_from_the_rollout)  # fmt: skip
        finally:
            if started:
                traffic.__exit__()
    finally:
        server.stop()
    assert not traffic.by_version(500) and set(traffic.by_version(200)) >= {"1", "3"}
    assert result.blessed and result.candidate == "fm:3", result.rollout
    assert result.outcome == "promoted" and result.rollout["stable_version"] == 1
    with open_registry(url) as store:
        assert store.resolve("fm@production").version == 3
        assert store.resolve("fm@candidate").version == 3
        assert store.resolve("fm:2").aliases == ()  # the shuffled one: registered, no alias
