"""Prometheus metrics of one server process, in a registry of its own.

:class:`ServerMetrics` owns a :class:`prometheus_client.CollectorRegistry` (never the global
default one), so two servers in one process, or two tests, never share a series. Every
collector is built from the metrics contract, :data:`resnetkit.telemetry.METRICS` (names,
types, labels, help, buckets), which the alert rules, the dashboards and the tests read too;
this module adds only the ways to update them.

Notes on their meaning (the contract lists them all):

- ``resnetkit_model_errors_total{reason}``: forward passes of the version that failed on the
  server's side (``non_finite``: NaN or infinity in its outputs). Counted even when the request
  was then answered by stable (a failed canary run is retried there), so a broken version
  shows here, not in 5xx answers.
- ``resnetkit_feedback_total{outcome}``: one label per request id; a label replaced by a
  different one is counted in ``resnetkit_feedback_retracted_total`` (the live count of an
  outcome is ``feedback_total - feedback_retracted_total``).
- ``resnetkit_rollout_canary_weight``: share of answers given by the canary (0 in shadow
  mode); ``resnetkit_rollout_mirrored_share``: share of stable's requests also run on the
  canary in the background (1 in shadow mode).
- ``resnetkit_prediction_log_dropped_total{what,reason}``: records and images the prediction
  log dropped (``queue_full`` or ``write_error``, a full disk say), read from the log at scrape.

:meth:`ServerMetrics.render` writes the Prometheus text format, or OpenMetrics when the
scraper's ``Accept`` header asks for it; :meth:`ServerMetrics.snapshot` gives the dashboard
a few plain numbers per model version as JSON-ready dicts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from resnetkit.errors import ConfigError
from resnetkit.serve.batcher import BatchStats
from resnetkit.telemetry import (
    BATCH_SIZE_BUCKETS,
    CONFIDENCE_BUCKETS,
    FEEDBACK_OUTCOMES,
    LATENCY_BUCKETS_S,
    LOG_DROP_REASONS,
    METRICS,
    MODEL_ERROR_REASONS,
    REJECTION_REASONS,
    ROLLOUT_OUTCOMES,
    MetricSpec,
)
from resnetkit.telemetry import metric as metric_spec

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONFIDENCE_BUCKETS",
    "FEEDBACK_OUTCOMES",
    "LATENCY_BUCKETS_S",
    "MODEL_ERROR_REASONS",
    "REJECTION_REASONS",
    "ROLLOUT_OUTCOMES",
    "ModelSnapshot",
    "RegistrySnapshot",
    "ServerMetrics",
    "Snapshot",
    "quantile_from_buckets",
]

_MV = ("model", "version")
# Counted elsewhere and read when scraped (:class:`_LogDrops`), not kept here.
_READ_AT_SCRAPE = frozenset({"resnetkit_prediction_log_dropped_total"})
Version = str | int


class ModelSnapshot(TypedDict):
    """One model version as the dashboard sees it (all plain numbers, JSON-ready)."""

    model: str
    version: str
    ready: bool
    requests: int  # answered requests, every route and code
    errors: int  # answered with a 5xx code (including 503 queue full and 504 deadline)
    client_errors: int  # answered with a 4xx code
    p50_s: float | None  # request latency estimated from the histogram buckets; None: no data
    p95_s: float | None
    latency_buckets: list[list[float | str | int]]  # cumulative [bound, count]; "+Inf" last
    batch_sizes: dict[str, int]  # bucket upper bound ("1", ..., "+Inf") -> batches in it
    queue_depth: int
    queue_capacity: int


class Snapshot(TypedDict):
    """What :meth:`ServerMetrics.snapshot` returns."""

    models: list[ModelSnapshot]
    inflight_requests: int
    cold_start_s: float | None
    registry: RegistrySnapshot


class RegistrySnapshot(TypedDict):
    """The registry database as this process last found it."""

    up: bool
    errors: int  # failed calls since start, every operation


class ServerMetrics:
    """Every metric the server exports, in a registry owned by this instance.

    The app calls the ``observe_*``/``set_*`` methods; ``/metrics`` returns :meth:`render`.
    Label values are passed as given (versions may be ints) and escaped by the exposition.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # (metric, label names) of every metric labelled by model and version, for unloading.
        self._per_version: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []
        self._log_counts: Callable[[], dict[tuple[str, str], int]] | None = None
        c = {spec.name: self._make(spec) for spec in METRICS if spec.name not in _READ_AT_SCRAPE}
        # Traffic
        self._requests = c["resnetkit_requests_total"]
        self._request_s = c["resnetkit_request_duration_seconds"]
        self._queue_wait_s = c["resnetkit_queue_wait_seconds"]
        self._inference_s = c["resnetkit_inference_duration_seconds"]
        self._batch_size = c["resnetkit_batch_size"]
        self._queue_depth = c["resnetkit_queue_depth"]
        self._queue_capacity = c["resnetkit_queue_capacity"]
        self._inflight = c["resnetkit_inflight_requests"]
        self._rejected = c["resnetkit_rejected_total"]
        self._model_errors = c["resnetkit_model_errors_total"]
        # Lifecycle
        self._ready = c["resnetkit_model_ready"]
        self._load_s = c["resnetkit_model_load_seconds"]
        self._cold_start_s = c["resnetkit_cold_start_seconds"]
        self._loop_lag_s = c["resnetkit_event_loop_lag_seconds"]
        self._loop_stalls = c["resnetkit_event_loop_stalls_total"]
        # Quality
        self._predictions = c["resnetkit_predictions_total"]
        self._confidence = c["resnetkit_prediction_confidence"]
        self._feedback = c["resnetkit_feedback_total"]
        self._feedback_retracted = c["resnetkit_feedback_retracted_total"]
        self._baseline_accuracy = c["resnetkit_model_baseline_accuracy"]
        self._drift_statistic = c["resnetkit_drift_statistic"]
        self._drift_p_value = c["resnetkit_drift_p_value"]
        self._drift_detected = c["resnetkit_drift_detected"]
        self._ood_score = c["resnetkit_ood_score"]
        self._ood_flagged = c["resnetkit_ood_flagged_total"]
        # Dependencies
        self._registry_up = c["resnetkit_registry_up"]
        self._registry_errors = c["resnetkit_registry_errors_total"]
        self._registry_up.set(1)  # until a call fails
        # Rollouts
        self._canary_weight = c["resnetkit_rollout_canary_weight"]
        self._mirrored_share = c["resnetkit_rollout_mirrored_share"]
        self._rollout_step = c["resnetkit_rollout_step"]
        self._check_value = c["resnetkit_rollout_check_value"]
        self._check_passed = c["resnetkit_rollout_check_passed"]
        self._rollouts = c["resnetkit_rollouts_total"]
        self.registry.register(_LogDrops(self))

    def _make(self, spec: MetricSpec) -> Any:
        """The collector of one metric of the contract (:mod:`resnetkit.telemetry`)."""
        kind = {"counter": Counter, "gauge": Gauge}.get(spec.kind)
        name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
        if kind is not None:
            collector = kind(name, spec.help, spec.labels, registry=self.registry)
        else:
            collector = Histogram(
                name, spec.help, spec.labels, buckets=spec.buckets, registry=self.registry
            )
        if set(_MV) <= set(spec.labels):
            self._per_version.append((collector, spec.labels))
        return collector

    def watch_prediction_log(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        """Export the prediction log's dropped samples, read at each scrape.

        Args:
            counts: returns ``{(what, reason): count}``, ``what`` ``record`` or ``image``,
                ``reason`` one of :data:`~resnetkit.telemetry.LOG_DROP_REASONS`.
        """
        self._log_counts = counts

    # -- traffic ---------------------------------------------------------------------------

    def observe_request(
        self, model: str, version: Version, route: str, code: int | str, seconds: float
    ) -> None:
        """Count one answered request and its end-to-end latency."""
        self._requests.labels(model, version, route, code).inc()
        self._request_s.labels(model, version, route).observe(seconds)

    def observe_batch(self, model: str, version: Version, stats: BatchStats) -> None:
        """Record one forward pass: its size, its inference time, each request's queue wait."""
        self._batch_size.labels(model, version).observe(stats.batch_size)
        self._inference_s.labels(model, version).observe(stats.inference_s)
        wait = self._queue_wait_s.labels(model, version)
        for seconds in stats.queue_wait_s:
            wait.observe(seconds)

    def set_queue(self, model: str, version: Version, depth: int, capacity: int) -> None:
        """Set the queue depth and capacity of a version's batcher (in samples)."""
        self._queue_depth.labels(model, version).set(depth)
        self._queue_capacity.labels(model, version).set(capacity)

    def observe_rejection(self, model: str, version: Version, reason: str) -> None:
        """Count a refused request; ``reason`` is one of :data:`REJECTION_REASONS`."""
        _check_choice("reason", reason, REJECTION_REASONS)
        self._rejected.labels(model, version, reason).inc()

    @contextmanager
    def track_inflight(self) -> Iterator[None]:
        """Count the requests inside this block in ``resnetkit_inflight_requests``."""
        self._inflight.inc()
        try:
            yield
        finally:
            self._inflight.dec()

    # -- model lifecycle -------------------------------------------------------------------

    def model_loaded(
        self,
        model: str,
        version: Version,
        *,
        load_s: float,
        queue_capacity: int,
        ready: bool = True,
        baseline_accuracy: float | None = None,
    ) -> None:
        """Register a loaded version: its load time, readiness and zeroed counters.

        The rejection and feedback counters start at 0 for every reason and outcome, so
        ``rate()`` sees the first event and every series exists from the start.
        """
        self._load_s.labels(model, version).set(load_s)
        self.set_ready(model, version, ready)
        self.set_queue(model, version, 0, queue_capacity)
        if baseline_accuracy is not None:
            self._baseline_accuracy.labels(model, version).set(baseline_accuracy)
        for reason in REJECTION_REASONS:
            self._rejected.labels(model, version, reason)
        for outcome in FEEDBACK_OUTCOMES:
            self._feedback.labels(model, version, outcome)
            self._feedback_retracted.labels(model, version, outcome)
        for reason in MODEL_ERROR_REASONS:
            self._model_errors.labels(model, version, reason)

    def set_ready(self, model: str, version: Version, ready: bool) -> None:
        """Mark a version ready (1) or not (0), e.g. while it warms up."""
        self._ready.labels(model, version).set(1 if ready else 0)

    def model_unloaded(self, model: str, version: Version) -> None:
        """Remove every series of this model version, so an unloaded model disappears."""
        wanted = {"model": str(model), "version": str(version)}
        for metric, labels in self._per_version:
            for values in _label_sets(metric, labels, wanted):
                metric.remove(*values)

    def observe_loop_lag(self, seconds: float) -> None:
        """How late the event loop ran its heartbeat (:mod:`resnetkit.serve.watchdog`)."""
        self._loop_lag_s.observe(seconds)

    def count_loop_stall(self) -> None:
        """One stall of the event loop (called from the watchdog's thread)."""
        self._loop_stalls.inc()

    def set_cold_start(self, seconds: float) -> None:
        """Set the seconds from process start until the first model was ready."""
        self._cold_start_s.set(seconds)

    # -- prediction quality and drift -------------------------------------------------------

    def observe_prediction(
        self, model: str, version: Version, label: str, confidence: float
    ) -> None:
        """Count one top-1 prediction and its probability."""
        self._predictions.labels(model, version, label).inc()
        self._confidence.labels(model, version).observe(confidence)

    def observe_feedback(self, model: str, version: Version, correct: bool) -> None:
        """Count ground-truth feedback on a prediction."""
        self._feedback.labels(model, version, "correct" if correct else "incorrect").inc()

    def retract_feedback(self, model: str, version: Version, correct: bool) -> None:
        """Count an earlier feedback outcome that a different label for its request replaced
        (counters only rise: the live count is ``feedback_total - feedback_retracted_total``)."""
        self._feedback_retracted.labels(model, version, "correct" if correct else "incorrect").inc()

    def observe_model_error(self, model: str, version: Version, reason: str) -> None:
        """Count a forward pass of the version that failed on the server's side.

        Args:
            reason: one of :data:`MODEL_ERROR_REASONS`.
        """
        _check_choice("reason", reason, MODEL_ERROR_REASONS)
        self._model_errors.labels(model, version, reason).inc()

    def set_baseline_accuracy(self, model: str, version: Version, accuracy: float) -> None:
        """Set the accuracy the version reached offline, to compare live feedback against."""
        self._baseline_accuracy.labels(model, version).set(accuracy)

    def set_drift(
        self,
        model: str,
        version: Version,
        detector: str,
        *,
        statistic: float,
        p_value: float,
        detected: bool,
    ) -> None:
        """Publish the latest result of one drift detector."""
        self._drift_statistic.labels(model, version, detector).set(statistic)
        self._drift_p_value.labels(model, version, detector).set(p_value)
        self._drift_detected.labels(model, version, detector).set(1 if detected else 0)

    def observe_ood(self, model: str, version: Version, score: float, flagged: bool) -> None:
        """Record one sample's out-of-distribution score (over its threshold) and flag."""
        self._ood_score.labels(model, version).observe(score)
        if flagged:
            self._ood_flagged.labels(model, version).inc()

    # -- dependencies ----------------------------------------------------------------------

    def set_registry_up(self, up: bool, operation: str | None = None) -> None:
        """Record the outcome of a call to the registry; a failure names its ``operation``
        (``history``, ``rollout_state``, ...) in ``registry_errors_total``."""
        self._registry_up.set(1 if up else 0)
        if not up and operation is not None:
            self._registry_errors.labels(operation).inc()

    # -- rollouts --------------------------------------------------------------------------

    def set_rollout(
        self, model: str, *, canary_weight: float, step: int, mirrored_share: float = 0.0
    ) -> None:
        """Publish the canary's share of answers and of mirrored requests (0 to 1) and the step."""
        self._canary_weight.labels(model).set(canary_weight)
        self._mirrored_share.labels(model).set(mirrored_share)
        self._rollout_step.labels(model).set(step)

    def set_rollout_check(self, model: str, check: str, *, value: float, passed: bool) -> None:
        """Publish the latest value of one rollout check (error rate, p95, agreement...)."""
        self._check_value.labels(model, check).set(value)
        self._check_passed.labels(model, check).set(1 if passed else 0)

    def rollout_finished(self, model: str, outcome: str) -> None:
        """Count a finished rollout, set the canary weight to 0, drop its step and checks.

        Args:
            outcome: one of :data:`ROLLOUT_OUTCOMES`.
        """
        _check_choice("outcome", outcome, ROLLOUT_OUTCOMES)
        self._rollouts.labels(model, outcome).inc()
        self._canary_weight.labels(model).set(0)
        self._mirrored_share.labels(model).set(0)
        self._rollout_step.remove(model)
        for metric in (self._check_value, self._check_passed):
            for values in _label_sets(metric, ("model", "check"), {"model": model}):
                metric.remove(*values)

    # -- output ----------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Expose every metric for a scrape.

        Args:
            accept: the request's ``Accept`` header; OpenMetrics when it asks for
                ``application/openmetrics-text``, else the Prometheus text format.

        Returns:
            The body and its ``Content-Type``.
        """
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def snapshot(self) -> Snapshot:
        """Plain numbers for the dashboard: per model version, and for the process.

        Latency quantiles are estimated from the histogram buckets the way PromQL's
        ``histogram_quantile`` does (linear within a bucket), over every route.
        """
        versions = self._versions()
        models = [self._model_snapshot(model, version) for model, version in sorted(versions)]
        cold = _values(self._cold_start_s, ())
        return {
            "models": models,
            "inflight_requests": int(_values(self._inflight, ()).get((), 0.0)),
            "cold_start_s": cold.get(()) or None,
            "registry": {
                "up": _values(self._registry_up, ()).get((), 1.0) == 1.0,
                "errors": int(sum(_values(self._registry_errors, ("operation",)).values())),
            },
        }

    def _versions(self) -> set[tuple[str, str]]:
        """Every (model, version) that is registered or has answered a request."""
        keys = [*_values(self._ready, _MV), *_values(self._requests, (*_MV, "route", "code"))]
        return {(key[0], key[1]) for key in keys}

    def _model_snapshot(self, model: str, version: str) -> ModelSnapshot:
        codes: dict[str, float] = defaultdict(float)
        for (m, v, _route, code), count in _values(self._requests, (*_MV, "route", "code")).items():
            if (m, v) == (model, version):
                codes[code] += count
        latency = _buckets(self._request_s, {"model": model, "version": version})
        batches = _buckets(self._batch_size, {"model": model, "version": version})
        key = (model, version)
        return {
            "model": model,
            "version": version,
            "ready": _values(self._ready, _MV).get(key, 0.0) == 1.0,
            "requests": int(sum(codes.values())),
            "errors": int(sum(n for c, n in codes.items() if _code_class(c) == 5)),
            "client_errors": int(sum(n for c, n in codes.items() if _code_class(c) == 4)),
            "p50_s": quantile_from_buckets(0.5, latency),
            "p95_s": quantile_from_buckets(0.95, latency),
            # Cumulative (bound, count) pairs: a poller takes differences between two polls
            # for quantiles over its own window ("+Inf" as text, JSON has no infinity).
            "latency_buckets": [["+Inf" if math.isinf(b) else b, int(c)] for b, c in latency],
            "batch_sizes": _per_bucket(batches),
            "queue_depth": int(_values(self._queue_depth, _MV).get(key, 0.0)),
            "queue_capacity": int(_values(self._queue_capacity, _MV).get(key, 0.0)),
        }


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{what} {value!r} is not one of {', '.join(choices)}")


def _label_sets(
    metric: MetricWrapperBase, labels: tuple[str, ...], wanted: dict[str, str]
) -> set[tuple[str, ...]]:
    """The label values of ``metric``'s series whose labels include ``wanted``."""
    found: set[tuple[str, ...]] = set()
    for family in metric.collect():
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in wanted.items()):
                found.add(tuple(sample.labels[name] for name in labels))
    return found


def _values(metric: MetricWrapperBase, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """The main sample of each series of a counter or gauge, by label values."""
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        main = family.name + ("_total" if family.type == "counter" else "")
        for sample in family.samples:
            if sample.name == main:
                out[tuple(sample.labels[name] for name in labels)] = sample.value
    return out


def _buckets(histogram: Histogram, wanted: dict[str, str]) -> list[tuple[float, float]]:
    """Cumulative ``(upper bound, count)`` of the matching series, summed, by bound."""
    counts: dict[float, float] = defaultdict(float)
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket") and all(
                sample.labels.get(k) == v for k, v in wanted.items()
            ):
                counts[float(sample.labels["le"])] += sample.value
    return sorted(counts.items())


def quantile_from_buckets(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Estimate the ``q`` quantile from cumulative buckets, like ``histogram_quantile``."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):  # in the overflow bucket: the largest finite bound
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def _per_bucket(buckets: list[tuple[float, float]]) -> dict[str, int]:
    """Cumulative buckets to counts per bucket, keyed by the bound as text."""
    out: dict[str, int] = {}
    previous = 0.0
    for bound, count in buckets:
        out["+Inf" if math.isinf(bound) else f"{bound:g}"] = int(count - previous)
        previous = count
    return out


def _code_class(code: str) -> int | None:
    """5 for "503", 4 for "404"; None for a code that is not an HTTP status."""
    return int(code) // 100 if code.isdigit() and len(code) == 3 else None


class _LogDrops:
    """``resnetkit_prediction_log_dropped_total{what,reason}``, read from the log at scrape."""

    def __init__(self, owner: ServerMetrics) -> None:
        self.owner = owner
        self.spec = metric_spec("prediction_log_dropped_total")

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            self.spec.name.removesuffix("_total"), self.spec.help, labels=self.spec.labels
        )
        counts = self.owner._log_counts() if self.owner._log_counts is not None else {}
        for what in ("record", "image", "feedback"):
            for reason in LOG_DROP_REASONS:
                family.add_metric([what, reason], counts.get((what, reason), 0))
        yield family
