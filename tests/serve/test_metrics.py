"""ServerMetrics (serve/metrics.py): the metric contract, exposition, unloading, snapshot."""

from __future__ import annotations

import prometheus_client
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from resnetkit.errors import ConfigError
from resnetkit.serve.batcher import BatchStats
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.telemetry import (
    BATCH_SIZE_BUCKETS,
    CONFIDENCE_BUCKETS,
    LATENCY_BUCKETS_S,
    METRICS,
)

# The contract alert rules and dashboards are generated from (resnetkit.telemetry): read, not
# copied, so this test holds the server to the one definition.
CONTRACT: dict[str, tuple[str, set[str]]] = {m.name: (m.kind, set(m.labels)) for m in METRICS}


def exercise(metrics: ServerMetrics, model: str = "fashion", version: str | int = 3) -> None:
    """Touch every metric once, as a server that served and rolled out would."""
    metrics.model_loaded(model, version, load_s=1.25, queue_capacity=256, baseline_accuracy=0.93)
    metrics.set_cold_start(2.5)
    metrics.observe_request(model, version, "/v1/predict", 200, 0.012)
    metrics.observe_batch(model, version, BatchStats(3, 2, (0.001, 0.004), 0.02, 0.0, False))
    metrics.set_queue(model, version, 5, 256)
    metrics.observe_rejection(model, version, "queue_full")
    metrics.observe_prediction(model, version, "sneaker", 0.87)
    metrics.observe_feedback(model, version, correct=True)
    metrics.retract_feedback(model, version, correct=True)
    metrics.observe_model_error(model, version, "non_finite")
    metrics.set_drift(model, version, "ks", statistic=0.2, p_value=0.01, detected=True)
    metrics.observe_ood(model, version, 1.4, flagged=True)
    metrics.set_registry_up(False, "history")
    metrics.set_rollout(model, canary_weight=0.1, step=1)
    metrics.set_rollout_check(model, "error_rate", value=0.001, passed=True)
    metrics.rollout_finished(model, "promoted")
    metrics.set_rollout(model, canary_weight=0.05, step=1)  # the next rollout begins
    metrics.set_rollout_check(model, "agreement", value=0.99, passed=True)
    with metrics.track_inflight():
        pass


def families(metrics: ServerMetrics) -> dict[str, prometheus_client.Metric]:
    body, _ = metrics.render()
    parsed = text_string_to_metric_families(body.decode("utf-8"))
    return {f.name + ("_total" if f.type == "counter" else ""): f for f in parsed}


def samples_named(metrics: ServerMetrics, name: str) -> list[Sample]:
    return [s for f in families(metrics).values() for s in f.samples if s.name == name]


def test_every_contract_name_is_exposed_with_its_type_once_a_model_is_registered() -> None:
    metrics = ServerMetrics()
    metrics.model_loaded("fashion", 3, load_s=1.0, queue_capacity=64)
    exposed = families(metrics)
    for name, (kind, _) in CONTRACT.items():
        assert name in exposed, f"{name} missing from /metrics"
        assert exposed[name].type == kind, name


def test_nothing_is_exposed_outside_the_contract_and_help_texts_match() -> None:
    metrics = ServerMetrics()
    exercise(metrics)
    exposed = families(metrics)
    # prometheus_client adds a *_created gauge beside each counter and histogram.
    assert {n for n in exposed if not n.endswith("_created")} == set(CONTRACT)
    for spec in METRICS:
        assert exposed[spec.name].documentation == spec.help, spec.name


def test_prediction_log_drops_are_read_at_scrape() -> None:
    metrics = ServerMetrics()
    counts = {("image", "write_error"): 0}
    metrics.watch_prediction_log(lambda: counts)
    counts[("image", "write_error")] = 3
    samples = samples_named(metrics, "resnetkit_prediction_log_dropped_total")
    values = {(s.labels["what"], s.labels["reason"]): s.value for s in samples}
    assert values[("image", "write_error")] == 3 and values[("record", "queue_full")] == 0


def test_every_contract_metric_carries_exactly_its_labels() -> None:
    metrics = ServerMetrics()
    exercise(metrics)
    exposed = families(metrics)
    for name, (_, labels) in CONTRACT.items():
        series = [s for s in exposed[name].samples if not s.name.endswith("_created")]
        assert series, f"{name} has no series after exercise()"
        for sample in series:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)


@pytest.mark.parametrize(
    ("name", "buckets"), [(m.name, m.buckets) for m in METRICS if m.kind == "histogram"]
)
def test_histograms_have_the_contract_buckets(name: str, buckets: tuple[float, ...]) -> None:
    metrics = ServerMetrics()
    exercise(metrics)
    bounds = {float(s.labels["le"]) for s in samples_named(metrics, f"{name}_bucket")}
    assert bounds == {*map(float, buckets), float("inf")}


def test_the_contract_buckets_are_the_documented_values() -> None:
    assert LATENCY_BUCKETS_S == (
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2.5, 5, 10
    )  # fmt: skip
    assert BATCH_SIZE_BUCKETS == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert pytest.approx(CONFIDENCE_BUCKETS) == [i / 10 for i in range(1, 11)]


def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    metrics = ServerMetrics()
    exercise(metrics)
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    names = {f.name for f in parse_openmetrics(body.decode("utf-8"))}
    assert {"resnetkit_requests", "resnetkit_batch_size"} <= names
    _, plain = metrics.render(None)
    assert plain.startswith("text/plain")


def test_label_values_with_quotes_backslashes_and_newlines_round_trip() -> None:
    metrics = ServerMetrics()
    model, label = 'ev"il\nmo\\del', 'a "quoted"\\label\nwith newline'
    metrics.model_loaded(model, "1", load_s=0.5, queue_capacity=8)
    metrics.observe_prediction(model, "1", label, 0.5)
    (sample,) = samples_named(metrics, "resnetkit_predictions_total")
    assert (sample.labels["model"], sample.labels["label"], sample.value) == (model, label, 1.0)


def test_unloading_a_version_removes_its_series_and_keeps_the_others() -> None:
    metrics = ServerMetrics()
    exercise(metrics, "fashion", 3)
    exercise(metrics, "fashion", 4)
    metrics.model_unloaded("fashion", 3)
    for family in families(metrics).values():
        versions = {s.labels.get("version") for s in family.samples} - {None}
        assert "3" not in versions, family.name
    assert samples_named(metrics, "resnetkit_model_ready")[0].labels["version"] == "4"
    assert [m["version"] for m in metrics.snapshot()["models"]] == ["4"]


def test_two_instances_share_no_state_and_leave_the_global_registry_alone() -> None:
    first, second = ServerMetrics(), ServerMetrics()
    exercise(first)
    assert first.snapshot()["models"] and not second.snapshot()["models"]
    assert samples_named(second, "resnetkit_requests_total") == []
    global_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("resnetkit") for name in global_names)


def test_a_batch_records_its_size_inference_time_and_each_request_wait() -> None:
    metrics = ServerMetrics()
    metrics.model_loaded("fashion", 1, load_s=1.0, queue_capacity=64)
    stats = BatchStats(6, 3, (0.001, 0.002, 0.003), 0.05, 0.0, False)
    metrics.observe_batch("fashion", 1, stats)
    count = {s.name: s.value for s in families(metrics)["resnetkit_queue_wait_seconds"].samples}
    assert count["resnetkit_queue_wait_seconds_count"] == 3
    assert count["resnetkit_queue_wait_seconds_sum"] == pytest.approx(0.006)
    assert metrics.snapshot()["models"][0]["batch_sizes"]["8"] == 1


def test_snapshot_counts_requests_and_errors_and_estimates_latency_quantiles() -> None:
    metrics = ServerMetrics()
    metrics.model_loaded("fashion", 2, load_s=1.0, queue_capacity=128)
    for _ in range(90):
        metrics.observe_request("fashion", 2, "/v1/predict", 200, 0.004)  # in (0.0025, 0.005]
    for _ in range(10):
        metrics.observe_request("fashion", 2, "/v2/infer", 503, 0.7)  # in (0.5, 1]
    metrics.observe_request("fashion", 2, "/v1/predict", 400, 0.001)
    metrics.set_queue("fashion", 2, 7, 128)
    (snap,) = metrics.snapshot()["models"]
    assert (snap["requests"], snap["errors"], snap["client_errors"]) == (101, 10, 1)
    assert snap["p50_s"] is not None and 0.0025 <= snap["p50_s"] <= 0.005
    assert snap["p95_s"] is not None and 0.5 <= snap["p95_s"] <= 1.0
    assert (snap["queue_depth"], snap["queue_capacity"], snap["ready"]) == (7, 128, True)
    assert metrics.snapshot()["cold_start_s"] is None


def test_snapshot_of_a_version_without_traffic_has_no_quantiles() -> None:
    metrics = ServerMetrics()
    metrics.model_loaded("fashion", 1, load_s=1.0, queue_capacity=8, ready=False)
    (snap,) = metrics.snapshot()["models"]
    assert (snap["requests"], snap["p50_s"], snap["p95_s"], snap["ready"]) == (0, None, None, False)


def test_rejection_and_feedback_counters_start_at_zero_for_every_reason() -> None:
    metrics = ServerMetrics()
    metrics.model_loaded("fashion", 1, load_s=1.0, queue_capacity=8)
    rejected = {
        s.labels["reason"]: s.value for s in samples_named(metrics, "resnetkit_rejected_total")
    }
    assert rejected == {"queue_full": 0.0, "deadline": 0.0, "invalid": 0.0}
    feedback = {s.labels["outcome"] for s in samples_named(metrics, "resnetkit_feedback_total")}
    assert feedback == {"correct", "incorrect"}
    retracted = samples_named(metrics, "resnetkit_feedback_retracted_total")
    assert {s.labels["outcome"] for s in retracted} == {"correct", "incorrect"}
    errors = samples_named(metrics, "resnetkit_model_errors_total")
    assert {s.labels["reason"]: s.value for s in errors} == {"non_finite": 0.0, "failed": 0.0}


def test_a_model_error_reason_outside_the_contract_is_refused() -> None:
    with pytest.raises(ConfigError, match="non_finite"):
        ServerMetrics().observe_model_error("fashion", 1, "nan")


def test_a_finished_rollout_is_counted_and_its_checks_are_dropped() -> None:
    metrics = ServerMetrics()
    metrics.set_rollout("fashion", canary_weight=0.25, step=2)
    metrics.set_rollout_check("fashion", "p95_latency", value=0.12, passed=False)
    metrics.rollout_finished("fashion", "rolled_back")
    assert samples_named(metrics, "resnetkit_rollout_check_value") == []
    assert samples_named(metrics, "resnetkit_rollout_step") == []
    (weight,) = samples_named(metrics, "resnetkit_rollout_canary_weight")
    (done,) = samples_named(metrics, "resnetkit_rollouts_total")
    assert (weight.value, done.labels["outcome"], done.value) == (0.0, "rolled_back", 1.0)


def test_inflight_requests_count_while_inside_the_block() -> None:
    metrics = ServerMetrics()
    with metrics.track_inflight(), metrics.track_inflight():
        assert metrics.snapshot()["inflight_requests"] == 2
    assert metrics.snapshot()["inflight_requests"] == 0


@pytest.mark.parametrize("call", ["rejection", "rollout"])
def test_an_unknown_reason_or_outcome_is_refused(call: str) -> None:
    metrics = ServerMetrics()
    with pytest.raises(ConfigError, match="not one of"):
        if call == "rejection":
            metrics.observe_rejection("fashion", 1, "timeout")
        else:
            metrics.rollout_finished("fashion", "done")
