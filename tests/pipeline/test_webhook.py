"""The drift webhook: a real Alertmanager (Debian's prometheus-alertmanager) notifying the
service over a real socket, and the service's rules in-process on real export folders.

The pipeline itself is replaced by a runner that reads the export it is given and writes a
pipeline.json: the pipeline has its own tests; here the subject is when runs start.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from resnetkit.errors import ConfigError
from resnetkit.pipeline.webhook import (
    DRIFT_ALERT,
    RetrainService,
    WebhookSettings,
    create_webhook_app,
)
from tests.data.test_feedback import write_log
from tests.serve.server import free_port

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
TOKEN = "webhook-test-token"
WAIT_S = 60.0


class Runner:
    """Stands in for the pipeline: checks the export it gets, records the call, and can be
    held inside a run (``gate``) to test that runs never overlap."""

    def __init__(self, outcome: str = "promoted") -> None:
        self.outcome = outcome
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feedback_dir: Path, out_dir: Path) -> dict[str, Any]:
        manifest = json.loads((feedback_dir / "manifest.json").read_text())
        self.calls.append(manifest["samples"]["exported"])
        assert self.gate.wait(WAIT_S)
        out_dir.mkdir(parents=True)
        (out_dir / "pipeline.json").write_text(json.dumps({"outcome": self.outcome}))
        blessed = self.outcome in ("promoted", "blessed", "rolled_back")
        return {
            "outcome": self.outcome, "pipeline_json": str(out_dir / "pipeline.json"),
            "candidate": f"fm:{len(self.calls) + 1}", "baseline": "fm:1", "blessed": blessed,
        }  # fmt: skip


def _payload(status: str = "firing", name: str = DRIFT_ALERT, fp: str = "a1") -> dict[str, Any]:
    alert = {
        "status": status, "labels": {"alertname": name, "model": "fm", "version": "1"},
        "annotations": {}, "startsAt": "2026-01-01T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "", "fingerprint": fp,
    }  # fmt: skip
    return {
        "version": "4", "receiver": "retrain", "status": status, "alerts": [alert],
        "groupKey": f'{{}}:{{alertname="{name}"}}', "truncatedAlerts": 0, "groupLabels": {},
        "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
    }  # fmt: skip


def _counter(service: RetrainService, name: str, **labels: str) -> float:
    for sample in service.registry.collect():
        for s in sample.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def labelled_log(tmp_path: Path) -> Path:
    return write_log(tmp_path / "logs", [(f"r{i}", i, i % 3) for i in range(6)])


def _service(
    log: Path, out: Path, runner: Runner, clock: Callable[[], float] = time.time, **kw: Any
) -> RetrainService:
    settings = WebhookSettings(prediction_log=log, out=out, **{"min_new_labels": 1, **kw})
    return RetrainService(settings, runner, clock=clock)


def test_the_alert_it_takes_is_the_drift_alert_monitor_rules_writes() -> None:
    from resnetkit.monitor.slo import alert_names, generate_rules

    rules = generate_rules()
    assert DRIFT_ALERT in alert_names(rules)
    (drift,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == DRIFT_ALERT]
    assert "resnetkit_drift_detected" in drift["expr"]


def test_one_run_per_cooldown_and_never_two_at_once(labelled_log: Path, tmp_path: Path) -> None:
    now = [1000.0]
    runner = Runner()
    service = _service(labelled_log, tmp_path / "out", runner, lambda: now[0], cooldown_s=600)
    runner.gate.clear()
    assert service.notify(_payload())[0] == 202
    assert service.notify(_payload())[1]["reason"] == "busy"  # still running
    runner.gate.set()
    assert service.wait_idle(WAIT_S)
    assert service.notify(_payload())[1]["reason"] == "duplicate"  # Alertmanager's repeat
    assert service.notify(_payload(fp="b2"))[1]["reason"] == "cooldown"  # another model's
    now[0] += 600  # the cooldown is over, the drift persists, but no label is new
    assert service.notify(_payload())[0] == 202
    assert service.wait_idle(WAIT_S)
    assert service.runs()[0]["outcome"] == "not_enough_data"
    write_log(labelled_log.parent, [("new1", 0, 1), ("new2", 1, 2)], t0=datetime.now(timezone.utc))
    assert service.notify(_payload())[0] == 202  # not_enough_data gave the cooldown back
    assert service.wait_idle(WAIT_S)
    runs = service.runs()
    assert [r["outcome"] for r in runs] == ["promoted", "not_enough_data", "promoted"]
    assert runner.calls == [6, 8]
    assert runs[0]["labels"] == {"total": 8, "new": 2}
    assert Path(runs[0]["pipeline_json"]).is_file()
    assert runs[0]["feedback"]["samples"] == {"exported": 8, "train": 6, "holdout": 2}
    assert _counter(service, "resnetkit_pipeline_runs_total", outcome="promoted") == 2
    # A restart keeps the runs, and with them the cooldown.
    again = _service(labelled_log, tmp_path / "out", runner, lambda: now[0], cooldown_s=600)
    assert [r["id"] for r in again.runs()] == [r["id"] for r in runs]
    assert again.notify(_payload(fp="c3"))[1]["reason"] == "cooldown"
    service.close()
    again.close()


def test_too_few_new_labels_runs_no_pipeline_and_keeps_no_cooldown(
    labelled_log: Path, tmp_path: Path
) -> None:
    runner = Runner()
    service = _service(labelled_log, tmp_path / "out", runner, min_new_labels=7, cooldown_s=600)
    for _ in range(2):  # not_enough_data gives the cooldown back: the repeat tries again
        assert service.notify(_payload())[0] == 202
        assert service.wait_idle(WAIT_S)
    runs = service.runs()
    assert [r["outcome"] for r in runs] == ["not_enough_data"] * 2
    assert runs[0]["labels"] == {"total": 6, "new": 6}
    assert "--min-new-labels" in runs[0]["error"] and runner.calls == []
    assert not (tmp_path / "out" / runs[0]["id"] / "feedback").exists()
    service.close()


def test_a_run_that_fails_is_recorded_and_the_worker_goes_on(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "predictions.jsonl"
    service = _service(missing, tmp_path / "out", Runner(), cooldown_s=600)
    for _ in range(2):  # a failed run gives the cooldown back: the repeat tries again
        assert service.notify(_payload())[0] == 202
        assert service.wait_idle(WAIT_S)
    run = service.runs()[0]
    assert run["outcome"] == "failed" and "not found" in run["error"]
    assert _counter(service, "resnetkit_pipeline_runs_total", outcome="failed") == 2
    service.close()


def test_bad_payloads_and_settings_are_refused_and_counted(
    labelled_log: Path, tmp_path: Path
) -> None:
    service = _service(labelled_log, tmp_path / "out", Runner(), token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_webhook_app(service)) as client:
        assert client.post("/v1/alerts", json=_payload()).status_code == 401
        bodies: list[Any] = [b"{not json", b"[]", json.dumps({"version": "3"}).encode()]
        bodies.append(json.dumps({**_payload(), "alerts": [{"labels": "x"}]}).encode())
        for body in bodies:
            answer = client.post("/v1/alerts", content=body, headers=auth)
            assert answer.status_code == 400 and answer.json()["reason"] == "malformed"
        other = client.post("/v1/alerts", json=_payload(name="ResNetKitHighLatency"), headers=auth)
        assert other.json()["reason"] == "other_alert"
        assert client.get("/v1/pipelines").json() == {"runs": []}
        assert client.get("/healthz").status_code == 200
        text = client.get("/metrics").text
    refusals = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "resnetkit_pipeline_webhook_refusals_total"
    }
    assert refusals["malformed"] == 4 and refusals["unauthorized"] == 1
    assert refusals["other_alert"] == 1 and refusals["cooldown"] == 0
    with pytest.raises(ConfigError, match="--min-new-labels"):
        WebhookSettings(prediction_log=labelled_log, out=tmp_path / "o", min_new_labels=0)
    service.close()


def test_the_runs_page_and_each_runs_pipeline_json_are_served(
    labelled_log: Path, tmp_path: Path
) -> None:
    runner = Runner()
    service = _service(labelled_log, tmp_path / "out", runner, cooldown_s=0)
    assert service.notify(_payload())[0] == 202
    assert service.wait_idle(WAIT_S)
    (run,) = service.runs()
    with TestClient(create_webhook_app(service)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        # Self-contained: no asset or script from anywhere else, data read from the API.
        assert "http://" not in page.text and "https://" not in page.text
        assert "src=" not in page.text and 'fetch("v1/pipelines"' in page.text
        answer = client.get(f"/v1/pipelines/{run['id']}/pipeline.json")
        assert answer.status_code == 200 and answer.json() == {"outcome": "promoted"}
        for bad in ("nope", f"{run['id']}x", "..%2F..%2Fruns.json"):
            missing = client.get(f"/v1/pipelines/{bad}/pipeline.json")
            assert missing.status_code == 404, bad
        assert (
            "no pipeline.json for run 'nope'"
            in client.get("/v1/pipelines/nope/pipeline.json").json()["error"]
        )
        text = client.get("/metrics").text
    finished = datetime.fromisoformat(run["finished"].replace("Z", "+00:00")).timestamp()
    last = {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "resnetkit_pipeline_last_run_timestamp_seconds"
    }
    assert last == {"promoted": pytest.approx(finished, abs=1e-3)}
    Path(run["pipeline_json"]).unlink()  # a folder cleaned by hand: 404, not a 500
    assert service.pipeline_json(run["id"]) is None
    service.close()
    # A restart reads the last run's time back from runs.json.
    again = _service(labelled_log, tmp_path / "out", runner)
    last_again = again.last_run.labels("promoted")._value.get()
    assert last_again == pytest.approx(finished, abs=1e-3)
    again.close()


# -- through a real Alertmanager ---------------------------------------------------------


@contextlib.contextmanager
def _webhook_server(service: RetrainService) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_webhook_app(service), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started, "the webhook server")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


@contextlib.contextmanager
def _alertmanager(webhook_url: str, folder: Path) -> Iterator[str]:
    assert ALERTMANAGER, "apt-get install prometheus-alertmanager"
    folder.mkdir()
    (folder / "token").write_text(TOKEN)
    # Tiny intervals: the first notification at once, then a repeat about every second.
    config = {
        "route": {
            "receiver": "retrain", "group_by": ["alertname"], "group_wait": "100ms",
            "group_interval": "300ms", "repeat_interval": "1s",
        },
        "receivers": [{"name": "retrain", "webhook_configs": [{
            "url": f"{webhook_url}/v1/alerts", "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": str(folder / "token")}},
        }]}],
    }  # fmt: skip
    (folder / "alertmanager.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        ALERTMANAGER, f"--config.file={folder / 'alertmanager.yml'}",
        f"--storage.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]  # fmt: skip
    with (folder / "alertmanager.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _ready(url) or proc.poll() is not None, "Alertmanager")
        assert proc.poll() is None, (folder / "alertmanager.log").read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(WAIT_S)


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    return False


def _fire(am: str, name: str, *, resolved: bool = False) -> None:
    """Post an alert as Prometheus does (``/api/v2/alerts``, re-sent while it holds)."""
    now = datetime.now(timezone.utc)
    alert: dict[str, Any] = {
        "labels": {"alertname": name, "model": "fm", "version": "1", "severity": "ticket"},
        "annotations": {"summary": "fm v1: input drift detected"},
        "startsAt": (now - timedelta(minutes=5)).isoformat(),
        "generatorURL": "http://prometheus.invalid/graph",
    }
    if resolved:
        alert["endsAt"] = now.isoformat()
    answer = httpx.post(f"{am}/api/v2/alerts", json=[alert], timeout=10)
    assert answer.status_code == 200, answer.text


@pytest.mark.slow
def test_a_real_alertmanager_starts_one_run_despite_repeats_and_nothing_when_resolved(
    labelled_log: Path, tmp_path: Path
) -> None:
    runner = Runner()
    service = _service(labelled_log, tmp_path / "out", runner, cooldown_s=3600, token=TOKEN)
    with _webhook_server(service) as hook, _alertmanager(hook, tmp_path / "am") as am:
        _fire(am, "ResNetKitHighLatency")
        _wait_for(lambda: _counter(service, "resnetkit_pipeline_webhook_refusals_total",
                                   reason="other_alert") >= 1, "the other alert")  # fmt: skip
        _fire(am, DRIFT_ALERT)
        _wait_for(lambda: bool(service.runs()), "the run")
        # Alertmanager repeats the firing notification: each repeat is a refused duplicate.
        for _ in range(5):
            _fire(am, DRIFT_ALERT)  # Prometheus re-sends a held alert too
        _wait_for(lambda: _counter(service, "resnetkit_pipeline_webhook_refusals_total",
                                   reason="duplicate") >= 2, "two repeats")  # fmt: skip
        _fire(am, DRIFT_ALERT, resolved=True)
        _wait_for(lambda: _counter(service, "resnetkit_pipeline_webhook_refusals_total",
                                   reason="resolved") >= 1, "the resolution")  # fmt: skip
        assert service.wait_idle(WAIT_S)
        runs = httpx.get(f"{hook}/v1/pipelines").json()["runs"]
    assert len(runs) == 1 and runs[0]["outcome"] == "promoted"
    assert runs[0]["trigger"]["labels"][0]["model"] == "fm"
    assert runner.calls == [6]
    assert (
        _counter(service, "resnetkit_pipeline_webhook_refusals_total", reason="unauthorized") == 0
    )
    service.close()


def test_pipeline_serve_refuses_bad_flags_in_one_line(
    labelled_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resnetkit.cli.main import main

    base = ["pipeline", "serve", "--name", "fm", "--log", str(labelled_log)]
    (tmp_path / "empty.token").write_text("\n")
    cases = [
        (["--out", str(tmp_path / "o"), "--min-new-labels", "0"], "--min-new-labels"),
        (["--out", str(tmp_path / "o"), "--cooldown-s", "-1"], "--cooldown-s"),
        (["--out", str(tmp_path / "o"), "--port", "70000"], "--port"),
        (["--out", str(tmp_path / "o"), "--token-file", str(tmp_path / "none")], "--token-file"),
        (["--out", str(tmp_path / "o"), "--token-file", str(tmp_path / "empty.token")], "empty"),
        (["--out", str(labelled_log)], "is a file"),
    ]
    for argv, message in cases:
        assert main([*base, *argv]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


# -- the runs page in a real browser -----------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "pipeline-runs.png"


@pytest.mark.slow
def test_the_runs_page_shows_new_runs_without_a_reload_in_a_real_browser(
    labelled_log: Path, tmp_path: Path
) -> None:
    """Debian's chromium opens ``/``: the runs appear as the service records them, each with
    its outcome, candidate and blessing, the link shows pipeline.json, and the page logs
    nothing to the console (a script or style the CSP blocked would).

    ``RESNETKIT_UPDATE_SCREENSHOT=1`` writes the screenshot to ``docs/pipeline-runs.png``."""
    import os

    from playwright import sync_api

    assert CHROMIUM.is_file(), f"no chromium at {CHROMIUM}: run `make system-deps`"
    first = _service(labelled_log, tmp_path / "out", Runner(), min_new_labels=100)
    assert first.notify(_payload())[0] == 202 and first.wait_idle(WAIT_S)
    first.close()  # not_enough_data, recorded in runs.json
    runner = Runner()
    service = _service(labelled_log, tmp_path / "out", runner, cooldown_s=3600)
    problems: list[str] = []
    with _webhook_server(service) as hook, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 420})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.set_default_timeout(WAIT_S * 1000)
        page.goto(f"{hook}/")
        page.wait_for_selector("#runs tr")
        assert "not_enough_data" in page.inner_text("#runs tr:first-child")
        assert "--min-new-labels" in page.inner_text("#runs tr:first-child .error")
        assert service.notify(_payload(fp="b2"))[0] == 202  # while the page is open
        assert service.wait_idle(WAIT_S)
        page.wait_for_selector("#runs tr:nth-child(2)")
        cells = page.eval_on_selector_all("#runs tr:first-child td", "c => c.map(e => e.innerText)")
        assert cells[1:6] == [f"{DRIFT_ALERT} · fm v1", "promoted", "fm:2", "fm:1", "yes"]
        assert cells[6] == "6 / 6" and cells[7] == "5 / 1"  # labels new/total, train/holdout
        assert "last run: promoted" in page.inner_text("#summary")
        assert page.inner_text("#status").startswith("updated")
        if os.environ.get("RESNETKIT_UPDATE_SCREENSHOT") == "1":
            page.screenshot(path=SCREENSHOT, full_page=True)
        page.click("#runs tr:first-child a")
        assert json.loads(page.inner_text("body")) == {"outcome": "promoted"}
        browser.close()
    assert problems == []
    service.close()
