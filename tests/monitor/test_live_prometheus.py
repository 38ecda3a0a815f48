"""The generated dashboards and rules against a live server and a real Prometheus.

The other monitor tests hold rules and dashboards to the metrics contract on paper
(:data:`~resnetkit.monitor.slo.SERVER_METRICS`) and to promtool. Here a real ``resnetkit
serve`` process answers real Fashion-MNIST traffic: every metric a panel or rule reads must
be in its live ``/metrics``, and a real Prometheus (Debian's ``prometheus``, on loopback)
scrapes it every second, evaluates the generated rules, and answers every panel's query.

The served run directory is the shared briefly trained one, completed as ``resnetkit train``
leaves it: a test accuracy in ``summary.json`` (the baseline the accuracy alert compares
with) and a drift reference (what live drift detection compares with).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from resnetkit.cli.main import main as cli_main
from resnetkit.contract import read_summary, write_summary
from resnetkit.data import load_dataset, normalize
from resnetkit.evaluate import predict_embeddings
from resnetkit.models import load_model
from resnetkit.monitor.dashboards import PIPELINE_SERVICE_METRICS, generate_dashboards, metrics_used
from resnetkit.monitor.slo import (
    BURN_RATE_ALERTS,
    DRIFT_DETECTORS,
    SERVER_METRICS,
    feedback_rule_names,
    generate_rules,
    load_slo,
)
from resnetkit.train.rundir import write_drift_reference
from tests.export.rundir import trained_run_dir
from tests.serve.server import ServerProcess, free_port, png, serving, terminate

pytestmark = pytest.mark.slow

MODEL = "fashion"  # the served run directory's name, so the model's name
TOKEN = "live-prometheus-admin-token"
REFERENCE_IMAGES = 1000  # held-out test images: drift reference and baseline accuracy
TRAFFIC_IMAGES = 200  # further test images, sent as PNG
TRAFFIC_S = 16.0
TRAFFIC_MAX_S = 45.0
MIN_ANSWERED = 150  # enough for a live drift test (100) and the accuracy alert (50)
FAULT_ERROR_RATE = 0.25  # injected 5xx share in the second half of the traffic
SCRAPE = "1s"
READY_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 6000
PNG = {"Content-Type": "image/png"}
SPECS = {m.name: m for m in SERVER_METRICS}

# Series that appear only once their feature runs, so a few requests cannot show them.
# Each must still be in the contract, and the Prometheus tests below watch the drift ones
# appear once their traffic fills a drift window.
EXPORTED_ON_USE = {
    # Published by the first live drift test, which waits for a window of min_window (20)
    # answers and then every_requests (100) answers or every_s (30 s): more than a few posts.
    "resnetkit_drift_statistic",
    "resnetkit_drift_p_value",
    "resnetkit_drift_detected",
    # Rollouts run on registry models (state in the registry database); a model served from
    # a run directory never rolls out, so these need a registry, a canary and its analysis.
    "resnetkit_rollout_canary_weight",
    "resnetkit_rollout_mirrored_share",
    "resnetkit_rollout_step",
    "resnetkit_rollout_check_value",
    "resnetkit_rollout_check_passed",
    "resnetkit_rollouts_total",
    # Counted only when a registry call fails.
    "resnetkit_registry_errors_total",
    # Only for versions that carry an out-of-distribution detector.
    "resnetkit_ood_score",
    "resnetkit_ood_flagged_total",
}
ROLLOUT_METRICS = {name for name in EXPORTED_ON_USE if name.startswith("resnetkit_rollout")}
# Series this server has none of: no registry call fails, the model has no OOD detector.
NEVER_HERE = ROLLOUT_METRICS | {
    "resnetkit_registry_errors_total",
    "resnetkit_ood_score",
    "resnetkit_ood_flagged_total",
}
# Grafana's variables in panel queries, as a dashboard showing every model sends them.
GRAFANA_VARIABLES = {"$model": ".*", "$__rate_interval": "1m"}


# --- The served model and the server -----------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run with a test accuracy and a drift reference, as training
    writes them (the shared run directory has neither, and other tests read it)."""
    run = tmp_path_factory.mktemp("live") / MODEL
    shutil.copytree(trained_run_dir(str(tmp_path_factory.getbasetemp())), run)
    model, card = load_model(run)
    held_out = load_dataset("fashion-mnist", "test", limit=REFERENCE_IMAGES)
    embeddings, probabilities = predict_embeddings(model, held_out.images, card.spec())
    write_drift_reference(
        run,
        {"embeddings": embeddings, "probabilities": probabilities, "labels": held_out.labels},
    )
    accuracy = float((probabilities.argmax(dim=1) == held_out.labels).float().mean())
    write_summary(run, {**read_summary(run), "test_accuracy": accuracy})
    return run


@dataclasses.dataclass(frozen=True)
class TrafficImages:
    """Fashion-MNIST test images the drift reference did not see."""

    pngs: list[bytes]
    labels: list[int]
    pixels: np.ndarray  # uint8 (N, 28, 28)


@pytest.fixture(scope="module")
def images() -> TrafficImages:
    test = load_dataset("fashion-mnist", "test", limit=REFERENCE_IMAGES + TRAFFIC_IMAGES)
    pixels = test.images[REFERENCE_IMAGES:, 0].numpy()
    labels = [int(y) for y in test.labels[REFERENCE_IMAGES:]]
    return TrafficImages([png(p) for p in pixels], labels, pixels)


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("live-server")
    (folder / "token").write_text(TOKEN + "\n")
    args = [str(run_dir), "--threads", "1", "--admin-token-file", str(folder / "token")]
    with serving(args, folder / "server.log") as srv:
        yield srv


def _v2_body(run_dir: Path, pixels: np.ndarray) -> dict[str, Any]:
    """A KServe V2 JSON request: one image, normalised as the model's card says."""
    _, card = load_model(run_dir)
    x = normalize(torch.from_numpy(pixels)[None, None], card.spec())  # (1, 1, 28, 28)
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    return {"inputs": [{**tensor, "data": x.flatten().tolist()}]}


def _live_series(url: str) -> dict[str, list[set[str]]]:
    """Sample name -> the label names of each of its series, from a live ``/metrics``."""
    text = httpx.get(f"{url}/metrics", timeout=HTTP_TIMEOUT_S).text
    series: dict[str, list[set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(set(sample.labels) - {"le"})
    return series


def _sample_names(metric: str) -> tuple[str, ...]:
    """The sample names a family exports: a counter's ``_total``, a histogram's three."""
    if SPECS[metric].kind == "histogram":
        return tuple(f"{metric}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return (metric,)


def _missing(metric: str, series: dict[str, list[set[str]]]) -> list[str]:
    """What is wrong with ``metric`` on the live server: absent samples or other labels."""
    problems = []
    for name in _sample_names(metric):
        if not series.get(name):
            problems.append(f"{name}: no series")  # a HELP/TYPE line alone gives no data
        for labels in series.get(name, []):
            if labels != set(SPECS[metric].labels):
                problems.append(f"{name}: labels {sorted(labels)}")
    return problems


def test_every_dashboard_panel_queries_only_metrics_the_server_exports(
    server: ServerProcess, run_dir: Path, images: TrafficImages
) -> None:
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
        for image in images.pngs[:5]:
            assert client.post("/v1/predict", content=image, headers=PNG).status_code == 200
        v2 = client.post(f"/v2/models/{MODEL}/infer", json=_v2_body(run_dir, images.pixels[0]))
        assert v2.status_code == 200, v2.text
        bad = client.post("/v1/predict", content=b"not an image", headers=PNG)
        assert bad.status_code == 400, bad.text
    series = _live_series(server.url)
    readers = {**generate_dashboards(), "rules": generate_rules()}
    problems = []
    for source, obj in readers.items():
        for metric in sorted(metrics_used(obj)):
            if metric in PIPELINE_SERVICE_METRICS:
                continue  # `pipeline serve` exports them; test_dashboards.py reads them live
            if metric in EXPORTED_ON_USE:
                assert metric in SPECS, f"{source} reads {metric}, not in the contract"
            else:
                problems += [f"{source}: {p}" for p in _missing(metric, series)]
    assert not problems, "\n".join(problems) + f"\n\nserver log:\n{server.log()}"
    # The list above stays honest: every entry is read by some dashboard or rule.
    assert set().union(*map(metrics_used, readers.values())) >= EXPORTED_ON_USE


# --- A real Prometheus ---------------------------------------------------------------------


class PrometheusProcess:
    """``prometheus`` on loopback with its own storage; its output is kept in a log file."""

    def __init__(self, folder: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: `apt-get install prometheus` (Debian)")
        config = {
            "global": {
                "scrape_interval": SCRAPE,
                "scrape_timeout": SCRAPE,
                "evaluation_interval": SCRAPE,
            },
            "rule_files": ["rules.yml"],  # relative to the configuration file
            "scrape_configs": [
                {"job_name": "resnetkit", "static_configs": [{"targets": [target]}]}
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = folder / "prometheus.log"
        self._log = self.log_path.open("w")
        # No Alertmanager, remote write or service discovery: nothing leaves loopback.
        cmd = [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        """Poll ``/-/ready`` until 200 (bounded)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {READY_TIMEOUT_S} s")

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer (an assertion error names the failure)."""
        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=HTTP_TIMEOUT_S)
        body = answer.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` now."""
        return list(self.api("query", query=promql)["result"])

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``)."""
        terminate(self.proc, timeout_s)
        self._log.close()


@dataclasses.dataclass
class Traffic:
    """What the client saw, to compare with what Prometheus recorded."""

    answered: int = 0
    server_errors: int = 0
    feedback: int = 0
    correct: int = 0


@dataclasses.dataclass
class Scraped:
    """A server that took real traffic, and the Prometheus that watched it."""

    server: ServerProcess
    prometheus: PrometheusProcess
    rules: dict[str, Any]
    traffic: Traffic


@contextlib.contextmanager
def explained(server: ServerProcess, prometheus: PrometheusProcess) -> Iterator[None]:
    """Re-raise a failure with both logs attached."""
    try:
        yield
    except (AssertionError, RuntimeError, httpx.HTTPError) as exc:
        tail = LOG_TAIL_CHARS
        logs = (
            f"--- server log ---\n{server.log()[-tail:]}\n"
            f"--- prometheus log ---\n{prometheus.log()[-tail:]}"
        )
        raise AssertionError(f"{exc}\n\n{logs}") from exc


def _predict_with_feedback(
    client: httpx.Client, image: bytes, label: int, seen: Traffic
) -> str | None:
    """One prediction, then its true label as feedback; the version that answered, or None
    for a 5xx."""
    answer = client.post("/v1/predict", content=image, headers=PNG)
    if answer.status_code >= 500:
        seen.server_errors += 1
        return None
    assert answer.status_code == 200, answer.text
    seen.answered += 1
    body = answer.json()
    scored = client.post("/v1/feedback", json={"request_id": body["request_id"], "label": label})
    assert scored.status_code == 200, scored.text
    seen.feedback += 1
    seen.correct += int(scored.json()["correct"]["served"])
    return str(body["version"])


def _send_traffic(server: ServerProcess, images: TrafficImages) -> Traffic:
    """Predictions with feedback for ``TRAFFIC_S`` (longer, within bounds, on a slow machine
    until ``MIN_ANSWERED``); in the second half an injected fault fails a share of them with
    a 500, so the availability ratios have errors to count."""
    seen = Traffic()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    fault_url = ""
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
        for i in itertools.count():
            elapsed = time.monotonic() - start
            enough = elapsed >= TRAFFIC_S and seen.answered >= MIN_ANSWERED
            if enough or elapsed >= TRAFFIC_MAX_S:
                break
            n = i % len(images.pngs)
            version = _predict_with_feedback(client, images.pngs[n], images.labels[n], seen)
            if not fault_url and version is not None and elapsed > TRAFFIC_S / 2:
                fault_url = f"/v1/admin/faults/{MODEL}/{version}"
                fault = {"error_rate": FAULT_ERROR_RATE}
                assert client.put(fault_url, json=fault, headers=auth).status_code == 200
        if fault_url:
            assert client.delete(fault_url, headers=auth).status_code == 200
    return seen


def _settle(prometheus: PrometheusProcess, traffic: Traffic) -> None:
    """Wait (bounded) until the rules have been evaluated on the last of the traffic."""
    recorded = f'resnetkit:feedback:increase1h{{model="{MODEL}"}}'
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(float(r["value"][1]) >= traffic.feedback for r in prometheus.query(recorded)):
            return
        time.sleep(0.5)
    raise AssertionError(f"{recorded} never reached the {traffic.feedback} feedback sent")


def _wait_target_up(prometheus: PrometheusProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if prometheus.query('up{job="resnetkit"} == 1'):
            return
        time.sleep(0.2)
    raise AssertionError("the server's scrape target never came up")


@pytest.fixture(scope="module")
def scraped(
    server: ServerProcess, images: TrafficImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    """Prometheus scraping the server (rules from the CLI) through ~16 s of real traffic."""
    folder = tmp_path_factory.mktemp("prometheus")
    assert cli_main(["monitor", "rules", "-o", str(folder / "rules.yml")]) == 0
    rules = yaml.safe_load((folder / "rules.yml").read_text(encoding="utf-8"))
    prometheus = PrometheusProcess(folder, server.url.removeprefix("http://"))
    try:
        with explained(server, prometheus):
            prometheus.wait_ready()
            _wait_target_up(prometheus)
            traffic = _send_traffic(server, images)
            _settle(prometheus, traffic)
        yield Scraped(server, prometheus, rules, traffic)
    finally:
        prometheus.stop()


def _one_value(prometheus: PrometheusProcess, promql: str) -> float:
    result = prometheus.query(promql)
    assert len(result) == 1, f"{promql}: expected one series, got {result}"
    return float(result[0]["value"][1])


def _check_targets_and_raw_series(live: Scraped) -> None:
    targets = live.prometheus.api("targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets
    assert targets[0]["scrapeUrl"] == f"{live.server.url}/metrics", targets
    assert targets[0]["lastError"] == "", targets
    answered = live.prometheus.query(f'resnetkit_requests_total{{model="{MODEL}",code="200"}}')
    assert {r["metric"]["route"] for r in answered} >= {"/v1/predict"}, answered
    # The drift gauges, "exported on use" above: this much traffic fills a drift window,
    # and the detectors are those the rules and the contract name.
    drift = live.prometheus.query(f'resnetkit_drift_detected{{model="{MODEL}"}}')
    assert {r["metric"]["detector"] for r in drift} == set(DRIFT_DETECTORS), drift


def _check_rule_groups(live: Scraped) -> None:
    groups = live.prometheus.api("rules")["groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in live.rules["groups"]]
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
            assert not rule.get("lastError"), rule


def _check_recorded_values(live: Scraped) -> None:
    records = [r["record"] for g in live.rules["groups"] for r in g["rules"] if "record" in r]
    values = {name: _one_value(live.prometheus, f'{name}{{model="{MODEL}"}}') for name in records}
    for name, value in values.items():
        assert math.isfinite(value) and value >= 0, f"{name} = {value}"
    seen = live.traffic
    errors = seen.server_errors / (seen.answered + seen.server_errors)
    assert seen.server_errors > 0 and seen.feedback >= MIN_ANSWERED, seen
    # Every window holds all the traffic, so the error ratios and the feedback accuracy are
    # what the client saw; rate() extrapolates each series by up to a scrape interval,
    # hence the tolerances. No request took 0.2 s or more, but a slow machine may make some.
    for name, value in values.items():
        if name.startswith("resnetkit:availability_errors:"):
            assert value == pytest.approx(errors, abs=0.05), f"{name} = {value}, saw {errors}"
        elif name.startswith("resnetkit:latency_errors:"):
            assert value <= 1, f"{name} = {value}"
    accuracy, labelled = feedback_rule_names(load_slo(None))
    assert values[accuracy] == pytest.approx(seen.correct / seen.feedback, abs=0.05), seen
    assert seen.feedback <= values[labelled] <= 1.25 * seen.feedback, seen


def _check_availability_alerts_fire(live: Scraped) -> None:
    # Over 10% of requests failed: every burn-rate window is past its threshold, and these
    # alerts have no `for`, so they fire at once.
    firing = {
        a["labels"]["alertname"]
        for a in live.prometheus.api("alerts")["alerts"]
        if a["state"] == "firing" and a["labels"].get("model") == MODEL
    }
    burns = {f"ResNetKitAvailability{burn.name}" for burn in BURN_RATE_ALERTS}
    assert burns <= firing, f"firing: {sorted(firing)}"


def test_a_real_prometheus_scrapes_the_server_and_the_rules_produce_values(
    scraped: Scraped,
) -> None:
    with explained(scraped.server, scraped.prometheus):
        _check_targets_and_raw_series(scraped)
        _check_rule_groups(scraped)
        _check_recorded_values(scraped)
        _check_availability_alerts_fire(scraped)


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with Grafana's variables filled in) of every target."""
    queries = []
    for name, dashboard in generate_dashboards().items():
        targets = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
        targets += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
        for title, expr in targets:
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((name, title, expr))
    return queries


def test_every_panel_query_returns_data_from_the_real_prometheus(scraped: Scraped) -> None:
    empty = []
    with explained(scraped.server, scraped.prometheus):
        # The dashboards' model variable, label_values(resnetkit_requests_total, model).
        match = {"match[]": "resnetkit_requests_total"}
        assert MODEL in scraped.prometheus.api("label/model/values", **match)
        for dashboard, title, expr in _panel_queries():
            assert "$" not in expr, f"{dashboard} / {title}: a variable left in {expr}"
            result = scraped.prometheus.query(expr)  # fails on a query Prometheus rejects
            # Rollout panels stay empty: a model served from a run directory never rolls out;
            # so do pipeline panels: `pipeline serve` is not scraped here (the game day bench
            # checks them against its own Prometheus).
            never = NEVER_HERE | PIPELINE_SERVICE_METRICS
            if not result and not metrics_used({"expr": expr}) & never:
                empty.append(f"{dashboard} / {title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
