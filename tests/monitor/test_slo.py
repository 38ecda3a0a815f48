"""SLO file, metrics contract and Prometheus rules, checked by promtool where it counts.

The alerting behaviour is tested by ``promtool test rules`` on the unit-test files in
``tests/monitor/promtool/``: each names ``rules.yml`` beside it, so the test copies it into
a temp folder and writes the generated rules there. promtool compares annotations
verbatim, so that copy of the rules leaves annotations out; the full file (annotations
included) goes through ``promtool check rules``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from resnetkit.errors import ConfigError
from resnetkit.monitor.dashboards import metrics_used, recording_rules_used
from resnetkit.monitor.slo import (
    LATENCY_BUCKETS_S,
    SERVER_METRICS,
    LatencyObjective,
    SLOConfig,
    alert_names,
    generate_rules,
    load_slo,
    runbook_url,
    write_rules,
)

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL_TESTS = sorted((Path(__file__).parent / "promtool").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` (Debian/Ubuntu) or put "
            "the promtool binary from https://prometheus.io/download/ on PATH"
        )
    return path


def _run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def _rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in rules["groups"] for r in g["rules"]]


def _alert(rules: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in _rules(rules) if r.get("alert") == name)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "slo.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- The SLO file -----------------------------------------------------------------------------


def test_the_documented_slo_file_holds_the_code_defaults() -> None:
    assert load_slo(ROOT / "configs" / "monitor" / "slo.toml") == SLOConfig() == load_slo(None)
    slo = SLOConfig()
    assert (slo.availability.objective, slo.latency.objective, slo.latency.threshold_s) == (
        0.999,
        0.95,
        0.2,
    )
    assert (slo.window, slo.drift.fire_after, slo.readiness.fire_after) == ("30d", "15m", "2m")
    assert (slo.saturation.max_queue_fill, slo.saturation.fire_after) == (0.8, "5m")
    assert (slo.quality.max_drop_points, slo.quality.min_feedback) == (2.0, 50)


def test_a_partial_slo_file_keeps_the_other_defaults(tmp_path: Path) -> None:
    slo = load_slo(_write(tmp_path, '[latency]\nthreshold_s = 1\n[drift]\nfire_after = "1h"\n'))
    assert slo.latency == LatencyObjective(objective=0.95, threshold_s=1.0)
    assert slo.drift.fire_after == "1h"
    assert slo.availability == SLOConfig().availability


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[latency]\nthreshold_s = 0.3\n", "latency.threshold_s"),
        ("[latency]\ntreshold_s = 0.2\n", "treshold_s"),
        ("[availability]\nobjective = 99.9\n", "availability.objective"),
        ('[availability]\nobjective = "high"\n', "availability.objective"),
        ('window = "a month"\n', "window"),
        ('[saturation]\nfire_after = "0m"\n', "saturation.fire_after"),
        ("[saturation]\nmax_queue_fill = 1.5\n", "saturation.max_queue_fill"),
        ("[quality]\nmin_feedback = 0\n", "quality.min_feedback"),
        ("[quality]\nmax_drop_points = 0.0\n", "quality.max_drop_points"),
        ('[quality]\nfeedback_window = "1 hour"\n', "quality.feedback_window"),
        ("[readiness]\nfire_after = 2\n", "readiness.fire_after"),
        ("burn_rates = [1, 2]\n", "burn_rates"),
    ],
)
def test_a_bad_slo_file_is_a_config_error_naming_the_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_slo(path)
    assert str(path) in str(exc.value) and key in str(exc.value)


def test_a_latency_threshold_off_the_buckets_lists_the_buckets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_slo(_write(tmp_path, "[latency]\nthreshold_s = 0.3\n"))
    listed = str(exc.value).split("choose one of ")[1]
    assert [float(b) for b in listed.split(", ")] == list(LATENCY_BUCKETS_S)


def test_a_missing_or_broken_slo_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_slo(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_slo(_write(tmp_path, "window = \n"))


def test_slo_sections_cannot_be_built_invalid_in_code_either() -> None:
    with pytest.raises(ConfigError, match=r"latency\.threshold_s"):
        LatencyObjective(threshold_s=0.15)
    with pytest.raises(ConfigError, match="window"):
        SLOConfig(window="forever")


# --- The metrics contract -------------------------------------------------------------------


def test_the_contract_lists_each_metric_once_with_a_kind_and_labels() -> None:
    names = [m.name for m in SERVER_METRICS]
    assert len(names) == len(set(names)) == 34
    for metric in SERVER_METRICS:
        assert re.fullmatch(r"resnetkit_[a-z_]+", metric.name), metric.name
        assert metric.kind in {"counter", "gauge", "histogram"}, metric.name
        assert metric.name.endswith("_total") == (metric.kind == "counter"), metric.name
        assert bool(metric.buckets) == (metric.kind == "histogram"), metric.name
        assert list(metric.buckets) == sorted(metric.buckets), metric.name
        assert metric.help, metric.name
    by_name = {m.name: m for m in SERVER_METRICS}
    assert by_name["resnetkit_request_duration_seconds"].buckets == LATENCY_BUCKETS_S
    assert by_name["resnetkit_requests_total"].labels == ("model", "version", "route", "code")
    assert by_name["resnetkit_batch_size"].buckets[-1] == 256
    assert by_name["resnetkit_prediction_confidence"].buckets[-1] == 1.0
    assert by_name["resnetkit_inflight_requests"].labels == ()


# --- Rules ------------------------------------------------------------------------------------


def test_the_burn_rate_alerts_follow_the_sre_workbook() -> None:
    rules = generate_rules()
    expected = {
        "FastBurn": ("page", "14.4", "1h", "5m"),
        "SlowBurn": ("page", "6", "6h", "30m"),
        "SteadyBurn": ("ticket", "1", "3d", "6h"),
    }
    for slo_name, budget in (("availability", "0.001"), ("latency", "0.05")):
        for suffix, (severity, rate, long_w, short_w) in expected.items():
            alert = _alert(rules, f"ResNetKit{slo_name.capitalize()}{suffix}")
            assert alert["labels"] == {"severity": severity, "slo": slo_name}
            limit = f"> ({rate} * {budget})"
            assert alert["expr"] == (
                f"resnetkit:{slo_name}_errors:ratio_rate{long_w} {limit}\n"
                f"and\nresnetkit:{slo_name}_errors:ratio_rate{short_w} {limit}"
            )
            assert "for" not in alert  # the short window, not a delay, prevents flapping


def test_error_ratios_are_recorded_per_window_and_summed_per_model() -> None:
    records = {r["record"]: r["expr"] for r in _rules(generate_rules()) if "record" in r}
    for slo_name in ("availability", "latency"):
        for window in ("5m", "30m", "1h", "6h", "3d", "30d"):
            expr = records[f"resnetkit:{slo_name}_errors:ratio_rate{window}"]
            assert f"[{window}]" in expr
            # several replicas and versions per model: every sum keeps `model` alone
            assert set(re.findall(r"sum by \(([^)]*)\)", expr)) == {"model"}
    assert 'code=~"5.."' in records["resnetkit:availability_errors:ratio_rate5m"]
    assert 'le="0.2"' in records["resnetkit:latency_errors:ratio_rate5m"]
    assert all(re.fullmatch(r"resnetkit:[a-z_]+:[a-z_]+\w*", name) for name in records)


def test_an_integral_latency_threshold_matches_python_and_go_bucket_labels() -> None:
    slo = dataclasses.replace(SLOConfig(), latency=LatencyObjective(threshold_s=1.0))
    expr = next(
        r["expr"]
        for r in _rules(generate_rules(slo))
        if r.get("record") == "resnetkit:latency_errors:ratio_rate5m"
    )
    assert 'le=~"1(\\\\.0)?"' in expr  # PromQL text; the regex is 1(\.0)?, so "1" or "1.0"


def test_the_objectives_of_the_slo_reach_the_rules() -> None:
    slo = SLOConfig(
        window="28d",
        availability=dataclasses.replace(SLOConfig().availability, objective=0.99),
        saturation=dataclasses.replace(SLOConfig().saturation, max_queue_fill=0.5),
    )
    rules = generate_rules(slo)
    assert "> (14.4 * 0.01)" in _alert(rules, "ResNetKitAvailabilityFastBurn")["expr"]
    assert "> 0.5" in _alert(rules, "ResNetKitQueueSaturated")["expr"]
    assert (
        "28d error budget"
        in _alert(rules, "ResNetKitLatencySlowBurn")["annotations"]["description"]
    )
    assert "resnetkit:availability_errors:ratio_rate28d" in recording_rules_used(
        {"expr": "resnetkit:availability_errors:ratio_rate28d"}
    )
    assert any(r.get("record", "").endswith("ratio_rate28d") for r in _rules(rules))


def test_the_model_alerts_fire_on_their_conditions_as_specified() -> None:
    rules = generate_rules()
    drift = _alert(rules, "ResNetKitDriftDetected")
    assert 'detector="combined"' in drift["expr"] and drift["for"] == "15m"
    assert _alert(rules, "ResNetKitModelNotReady")["for"] == "2m"
    saturated = _alert(rules, "ResNetKitQueueSaturated")
    assert "> 0.8" in saturated["expr"] and saturated["for"] == "5m"
    accuracy = _alert(rules, "ResNetKitAccuracyBelowBaseline")["expr"]
    assert "- 0.02)" in accuracy and ">= 50" in accuracy
    assert 'outcome="rolled_back"' in _alert(rules, "ResNetKitCanaryRolledBack")["expr"]


def test_every_alert_carries_severity_summary_description_and_a_runbook_section() -> None:
    headings = re.findall(r"^## (\S+)$", RUNBOOKS.read_text(encoding="utf-8"), re.MULTILINE)
    anchors = {h.lower() for h in headings}
    rules = generate_rules()
    names = alert_names(rules)
    assert len(names) == len(set(names)) == 11
    for rule in _rules(rules):
        if "alert" not in rule:
            continue
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, rule["alert"]
        assert notes["summary"] and notes["description"]
        path, anchor = notes["runbook_url"].split("#")
        assert path == "docs/runbooks.md" and anchor in anchors, rule["alert"]
    assert set(headings) - set(names) == set(), "a runbook section without an alert"


def test_the_runbook_base_url_is_configurable() -> None:
    slo = SLOConfig(runbook_base_url="https://github.com/acme/resnetkit/blob/main/")
    assert runbook_url(slo, "ResNetKitModelNotReady") == (
        "https://github.com/acme/resnetkit/blob/main/docs/runbooks.md#resnetkitmodelnotready"
    )
    rules = generate_rules(slo)
    assert all(
        r["annotations"]["runbook_url"].startswith("https://github.com/acme/")
        for r in _rules(rules)
        if "alert" in r
    )


def test_rules_read_only_metrics_of_the_contract() -> None:
    rules = generate_rules()
    contract = {m.name for m in SERVER_METRICS}
    assert metrics_used(rules) <= contract
    assert {"resnetkit_requests_total", "resnetkit_request_duration_seconds"} <= metrics_used(rules)
    recorded = {r["record"] for r in _rules(rules) if "record" in r}
    assert recording_rules_used(rules) <= recorded


def test_write_rules_writes_the_generated_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "rules.yml"
    written = write_rules(None, path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Generated by `resnetkit monitor rules`")
    assert yaml.safe_load(text) == written == generate_rules()
    assert "expr: |-\n" in text  # multi-line PromQL as literal blocks, readable in review


# --- promtool ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slo",
    [
        SLOConfig(),
        SLOConfig(
            window="4w",
            latency=LatencyObjective(objective=0.99, threshold_s=1.0),
            runbook_base_url="https://example.com/resnetkit",
        ),
    ],
    ids=["defaults", "custom"],
)
def test_promtool_accepts_the_generated_rules(tmp_path: Path, slo: SLOConfig) -> None:
    write_rules(slo, tmp_path / "rules.yml")
    result = _run_promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 25 rules found" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(tmp_path: Path, test_file: Path) -> None:
    rules = generate_rules()
    for rule in _rules(rules):
        rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    shutil.copy(test_file, tmp_path / test_file.name)
    result = _run_promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_promtool_tests_cover_every_alert() -> None:
    tested = {
        case["alertname"]
        for path in PROMTOOL_TESTS
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(alert_names(generate_rules())) == tested
