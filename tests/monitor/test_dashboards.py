"""Grafana dashboards: structure, the metrics contract, valid PromQL, runbook references."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from resnetkit.monitor.dashboards import (
    DASHBOARD_NAMES,
    PIPELINE_SERVICE_METRICS,
    generate_dashboards,
    metrics_used,
    panel_titles,
    recording_rules_used,
    write_dashboards,
)
from resnetkit.monitor.slo import SERVER_METRICS, LatencyObjective, SLOConfig, generate_rules

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = {m.name for m in SERVER_METRICS}


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return generate_dashboards()


def _targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for panel in dashboard["panels"] for t in panel["targets"]]


def test_three_dashboards_with_datasource_and_model_variables(dashboards) -> None:
    assert tuple(dashboards) == DASHBOARD_NAMES == ("executive", "on-call", "debug")
    for name, dashboard in dashboards.items():
        assert dashboard["uid"] == f"resnetkit-{name}"
        assert dashboard["schemaVersion"] == 39
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        model = variables["model"]
        assert model["query"]["query"] == "label_values(resnetkit_requests_total, model)"
        assert model["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def test_every_query_is_filtered_by_the_model_variable(dashboards) -> None:
    for dashboard in dashboards.values():
        for target in _targets(dashboard):
            metrics = metrics_used(target)
            per_process = {  # the contract's series without a model label
                *(m.name for m in SERVER_METRICS if "model" not in m.labels),
                *PIPELINE_SERVICE_METRICS,
            }
            if metrics <= per_process:
                continue  # per-process series without a model label
            assert 'model=~"$model"' in target["expr"], target["expr"]


def test_each_dashboard_shows_what_its_audience_needs(dashboards) -> None:
    executive, on_call, debug = (set(panel_titles(dashboards[n])) for n in DASHBOARD_NAMES)
    assert {
        "Accuracy on feedback",
        "p95 latency",
        "Availability error budget left (30d)",
        "Version adoption",
    } <= executive
    assert {
        "Latency p95 and p99",
        "Error ratio",
        "Saturation (queue depth / capacity)",
        "In-flight requests",
        "Deploys and rollbacks",
        "Model ready",
        "Last pipeline run",
        "Pipeline runs by outcome",
    } <= on_call
    assert {
        "Drift statistic per detector",
        "Drift p-value per detector",
        "Batch size distribution",
        "Queue wait vs inference time",
        "Prediction mix per class",
        "Prediction confidence",
    } <= debug


def test_dashboards_read_only_contract_metrics_and_show_all_of_them(dashboards) -> None:
    used = {name: metrics_used(d) for name, d in dashboards.items()}
    known = CONTRACT | PIPELINE_SERVICE_METRICS
    for name, metrics in used.items():
        assert metrics <= known, f"{name} reads {sorted(metrics - known)}"
    assert set().union(*used.values()) == known


def test_the_pipeline_panels_read_what_pipeline_serve_exports(tmp_path: Path, dashboards) -> None:
    from resnetkit.pipeline.webhook import RetrainService, WebhookSettings

    settings = WebhookSettings(prediction_log=tmp_path / "log.jsonl", out=tmp_path / "out")
    service = RetrainService(settings, lambda feedback, out: {"outcome": "promoted"})
    exported = {  # family names as PromQL reads them (a counter's series end in _total)
        family.name + ("_total" if family.type == "counter" else "")
        for family in service.registry.collect()
    }
    service.close()
    assert exported >= PIPELINE_SERVICE_METRICS
    on_call = metrics_used(dashboards["on-call"])
    assert on_call >= PIPELINE_SERVICE_METRICS
    (last,) = [p for p in dashboards["on-call"]["panels"] if p["title"] == "Last pipeline run"]
    assert last["targets"][0]["instant"] and last["fieldConfig"]["defaults"]["unit"] == (
        "dateTimeFromNow"
    )


def test_recorded_series_on_dashboards_come_from_the_rules(dashboards) -> None:
    recorded = {
        r["record"] for g in generate_rules()["groups"] for r in g["rules"] if "record" in r
    }
    for dashboard in dashboards.values():
        assert recording_rules_used(dashboard) <= recorded


def test_panels_tile_the_grid_without_overlap(dashboards) -> None:
    for dashboard in dashboards.values():
        cells: set[tuple[int, int]] = set()
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, panel["title"]
            xs, ys = range(pos["x"], pos["x"] + pos["w"]), range(pos["y"], pos["y"] + pos["h"])
            area = {(x, y) for x in xs for y in ys}
            assert not area & cells, f"{panel['title']} overlaps another panel"
            cells |= area


def test_the_slo_sets_the_thresholds_drawn(dashboards) -> None:
    slo = SLOConfig(latency=LatencyObjective(objective=0.99, threshold_s=0.5))
    executive = generate_dashboards(slo)["executive"]
    p95 = next(p for p in executive["panels"] if p["title"] == "p95 latency")
    steps = p95["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 0.5
    budget = next(p for p in executive["panels"] if p["title"].startswith("Latency error budget"))
    assert budget["targets"][0]["expr"].endswith("/ 0.01")


def test_write_dashboards_writes_one_json_file_each(tmp_path: Path, dashboards) -> None:
    paths = write_dashboards(None, tmp_path / "grafana")
    assert [p.name for p in paths] == ["executive.json", "on-call.json", "debug.json"]
    for path in paths:
        assert json.loads(path.read_text(encoding="utf-8")) == dashboards[path.stem]


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path, dashboards) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `apt-get install prometheus`")
    exprs = [t["expr"] for d in dashboards.values() for t in _targets(d)]
    exprs += [
        a["expr"] for d in dashboards.values() for a in d["annotations"]["list"] if "expr" in a
    ]
    # Grafana fills in its variables before Prometheus sees a query.
    rules = [
        {"record": f"check:expr_{i}:value", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(exprs)
    ]
    (tmp_path / "exprs.yml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", "exprs.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runbooks_point_at_panels_that_exist(dashboards) -> None:
    text = (ROOT / "docs" / "runbooks.md").read_text(encoding="utf-8")
    refs = re.findall(r"`(executive|on-call|debug) › ([^`]+)`", text)
    assert len(refs) > 20
    for dashboard, title in refs:
        assert title in panel_titles(dashboards[dashboard]), f"{dashboard} › {title}"


@pytest.mark.parametrize(
    ("expr", "metrics"),
    [
        (
            "histogram_quantile(0.95, sum by (le, model) "
            '(rate(resnetkit_request_duration_seconds_bucket{model=~"$model"}[$__rate_interval])))',
            {"resnetkit_request_duration_seconds"},
        ),
        (
            'sum(rate(resnetkit_requests_total{code=~"5.."}[5m])) by (model)\n'
            "/ ignoring (code) group_left sum without (code) (rate(resnetkit_requests_total[5m]))",
            {"resnetkit_requests_total"},
        ),
        (
            'x_total unless x_total offset 15m or label_replace(up, "dst", "$1", "src", "(.*)")',
            {"x_total", "up"},
        ),
        ("resnetkit:feedback:increase1h >= bool 50 and on (model) vector(1)", set()),
        (
            "rate(resnetkit_batch_size_sum[1m]) / rate(resnetkit_batch_size_count[1m])",
            {"resnetkit_batch_size"},
        ),
        ("max_over_time(resnetkit_queue_depth[10m:1m]) > 0.8", {"resnetkit_queue_depth"}),
    ],
)
def test_metrics_used_reads_metric_names_out_of_promql(expr: str, metrics: set[str]) -> None:
    assert metrics_used({"expr": expr}) == metrics


def test_metrics_used_reads_template_variables_and_recorded_series() -> None:
    dashboard = {
        "templating": {"list": [{"definition": "label_values(resnetkit_model_ready, version)"}]},
        "panels": [{"targets": [{"expr": "1 - resnetkit:availability_errors:ratio_rate30d"}]}],
    }
    assert metrics_used(dashboard) == {"resnetkit_model_ready"}
    assert recording_rules_used(dashboard) == {"resnetkit:availability_errors:ratio_rate30d"}
