"""Prometheus metrics of one server process, in a registry of its own.

:class:`ServerMetrics` owns a :class:`prometheus_client.CollectorRegistry` (never the global
default one), so two servers in one process, or two tests, never share a series. The metric
names and labels below are a contract: alert rules and dashboards are generated from them.

Traffic (labels ``model, version`` unless noted):

- ``resnetkit_requests_total{route,code}`` counter; ``resnetkit_request_duration_seconds{route}``,
  ``resnetkit_queue_wait_seconds``, ``resnetkit_inference_duration_seconds`` histograms (buckets
  :data:`LATENCY_BUCKETS_S`); ``resnetkit_batch_size`` histogram (:data:`BATCH_SIZE_BUCKETS`)
- ``resnetkit_queue_depth``, ``resnetkit_queue_capacity`` gauges (samples);
  ``resnetkit_inflight_requests`` gauge (no labels)
- ``resnetkit_rejected_total{reason}`` counter, reason in :data:`REJECTION_REASONS`
- ``resnetkit_model_errors_total{reason}`` counter, reason in :data:`MODEL_ERROR_REASONS`:
  forward passes of the version that failed on the server's side (``non_finite``: NaN or
  infinity in its outputs). Counted even when the request was then answered by stable (a
  failed canary run is retried there), so a broken version shows here, not in 5xx answers.

Lifecycle: ``resnetkit_model_ready`` (0/1) and ``resnetkit_model_load_seconds`` gauges;
``resnetkit_cold_start_seconds`` gauge (no labels).

Quality: ``resnetkit_predictions_total{label}`` counter, ``resnetkit_prediction_confidence``
histogram (:data:`CONFIDENCE_BUCKETS`), ``resnetkit_feedback_total{outcome}`` counter (outcome in
:data:`FEEDBACK_OUTCOMES`; one label per request id), ``resnetkit_feedback_retracted_total
{outcome}`` counter (earlier labels replaced by a different one: the live count of an outcome
is ``feedback_total - feedback_retracted_total``), ``resnetkit_model_baseline_accuracy`` gauge;
``resnetkit_drift_statistic``, ``resnetkit_drift_p_value``, ``resnetkit_drift_detected`` gauges
``{detector}``.

Rollouts (labels ``model`` only): ``resnetkit_rollout_canary_weight`` (share of answers given by
the canary: 0 in shadow mode), ``resnetkit_rollout_mirrored_share`` (share of stable's requests
also run on the canary in the background: 1 in shadow mode), ``resnetkit_rollout_step``,
``resnetkit_rollout_check_value{check}``, ``resnetkit_rollout_check_passed{check}`` gauges;
``resnetkit_rollouts_total{outcome}`` counter, outcome in :data:`ROLLOUT_OUTCOMES`.

:meth:`ServerMetrics.render` writes the Prometheus text format, or OpenMetrics when the
scraper's ``Accept`` header asks for it; :meth:`ServerMetrics.snapshot` gives the dashboard
a few plain numbers per model version as JSON-ready dicts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from resnetkit.errors import ConfigError
from resnetkit.serve.batcher import BatchStats

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONFIDENCE_BUCKETS",
    "FEEDBACK_OUTCOMES",
    "LATENCY_BUCKETS_S",
    "MODEL_ERROR_REASONS",
    "REJECTION_REASONS",
    "ROLLOUT_OUTCOMES",
    "ModelSnapshot",
    "ServerMetrics",
    "Snapshot",
    "quantile_from_buckets",
]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
REJECTION_REASONS = ("queue_full", "deadline", "invalid")
FEEDBACK_OUTCOMES = ("correct", "incorrect")
MODEL_ERROR_REASONS = ("non_finite", "failed")
ROLLOUT_OUTCOMES = ("promoted", "rolled_back", "aborted")

_MV = ("model", "version")
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


class ServerMetrics:
    """Every metric the server exports, in a registry owned by this instance.

    The app calls the ``observe_*``/``set_*`` methods; ``/metrics`` returns :meth:`render`.
    Label values are passed as given (versions may be ints) and escaped by the exposition.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # (metric, label names) of every metric labelled by model and version, for unloading.
        self._per_version: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []
        self._define_traffic()
        self._define_lifecycle()
        self._define_quality()
        self._define_rollout()

    # -- definitions -----------------------------------------------------------------------

    def _counter(self, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        metric = Counter(name, doc, labels, registry=self.registry)
        self._track(metric, labels)
        return metric

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        metric = Gauge(name, doc, labels, registry=self.registry)
        self._track(metric, labels)
        return metric

    def _histogram(
        self, name: str, doc: str, labels: tuple[str, ...], buckets: Iterable[float]
    ) -> Histogram:
        metric = Histogram(name, doc, labels, buckets=tuple(buckets), registry=self.registry)
        self._track(metric, labels)
        return metric

    def _track(self, metric: MetricWrapperBase, labels: tuple[str, ...]) -> None:
        if set(_MV) <= set(labels):
            self._per_version.append((metric, labels))

    def _define_traffic(self) -> None:
        route = (*_MV, "route")
        self._requests = self._counter(
            "resnetkit_requests_total",
            "Requests answered, by route and status code.",
            (*route, "code"),
        )
        self._request_s = self._histogram(
            "resnetkit_request_duration_seconds",
            "End-to-end request latency.",
            route,
            LATENCY_BUCKETS_S,
        )
        self._queue_wait_s = self._histogram(
            "resnetkit_queue_wait_seconds",
            "Time a request waited in the batch queue.",
            _MV,
            LATENCY_BUCKETS_S,
        )
        self._inference_s = self._histogram(
            "resnetkit_inference_duration_seconds",
            "Time of one batched forward pass.",
            _MV,
            LATENCY_BUCKETS_S,
        )
        self._batch_size = self._histogram(
            "resnetkit_batch_size", "Samples per forward pass.", _MV, BATCH_SIZE_BUCKETS
        )
        self._queue_depth = self._gauge(
            "resnetkit_queue_depth", "Samples waiting in the batch queue.", _MV
        )
        self._queue_capacity = self._gauge(
            "resnetkit_queue_capacity", "Samples the batch queue holds at most.", _MV
        )
        self._inflight = self._gauge("resnetkit_inflight_requests", "Requests being served.")
        self._rejected = self._counter(
            "resnetkit_rejected_total",
            "Requests refused: queue_full, deadline or invalid.",
            (*_MV, "reason"),
        )
        self._model_errors = self._counter(
            "resnetkit_model_errors_total",
            "Forward passes that failed on the server's side: non_finite outputs or failed.",
            (*_MV, "reason"),
        )

    def _define_lifecycle(self) -> None:
        self._ready = self._gauge(
            "resnetkit_model_ready", "1 when the version serves requests, else 0.", _MV
        )
        self._load_s = self._gauge(
            "resnetkit_model_load_seconds", "Seconds it took to load and warm the version.", _MV
        )
        self._cold_start_s = self._gauge(
            "resnetkit_cold_start_seconds", "Seconds from process start to the first ready model."
        )

    def _define_quality(self) -> None:
        self._predictions = self._counter(
            "resnetkit_predictions_total", "Top-1 predictions, by label.", (*_MV, "label")
        )
        self._confidence = self._histogram(
            "resnetkit_prediction_confidence",
            "Top-1 probability of each prediction.",
            _MV,
            CONFIDENCE_BUCKETS,
        )
        self._feedback = self._counter(
            "resnetkit_feedback_total",
            "Ground-truth feedback: correct or incorrect.",
            (*_MV, "outcome"),
        )
        self._feedback_retracted = self._counter(
            "resnetkit_feedback_retracted_total",
            "Feedback replaced by a different label for the same request, by its old outcome.",
            (*_MV, "outcome"),
        )
        self._baseline_accuracy = self._gauge(
            "resnetkit_model_baseline_accuracy", "Test accuracy recorded at registration.", _MV
        )
        detector = (*_MV, "detector")
        self._drift_statistic = self._gauge(
            "resnetkit_drift_statistic", "Latest drift test statistic.", detector
        )
        self._drift_p_value = self._gauge(
            "resnetkit_drift_p_value", "Latest drift test p-value.", detector
        )
        self._drift_detected = self._gauge(
            "resnetkit_drift_detected", "1 when the detector flags drift, else 0.", detector
        )

    def _define_rollout(self) -> None:
        self._canary_weight = self._gauge(
            "resnetkit_rollout_canary_weight",
            "Share of answers given by the canary (0 in shadow mode).",
            ("model",),
        )
        self._mirrored_share = self._gauge(
            "resnetkit_rollout_mirrored_share",
            "Share of stable's requests also run on the canary in the background.",
            ("model",),
        )
        self._rollout_step = self._gauge(
            "resnetkit_rollout_step", "Current step of the canary rollout.", ("model",)
        )
        self._check_value = self._gauge(
            "resnetkit_rollout_check_value", "Latest value of a rollout check.", ("model", "check")
        )
        self._check_passed = self._gauge(
            "resnetkit_rollout_check_passed", "1 when the check passed, else 0.", ("model", "check")
        )
        self._rollouts = self._counter(
            "resnetkit_rollouts_total",
            "Finished rollouts: promoted, rolled_back or aborted.",
            ("model", "outcome"),
        )

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
