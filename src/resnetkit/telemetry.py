"""The metrics contract: every series the server exports, written once.

Names, types, labels, help and buckets of each metric family, and the label values that alert
rules match on. :class:`resnetkit.serve.metrics.ServerMetrics` builds its collectors from
:data:`METRICS`; :mod:`resnetkit.monitor.slo` writes rules and :mod:`resnetkit.monitor.dashboards`
writes panels against it; the tests compare a live ``/metrics`` with it. A renamed metric or a
changed label fails a test instead of leaving a silent alert or an empty panel.

This is a base module: it imports nothing of resnetkit but the errors.

Two notes on labels:

* ``requests_total{code}`` is an HTTP status for every protocol: a gRPC call is counted under
  ``route="grpc:<Method>"`` with the HTTP status of the error table its status code came from
  (200 for OK), so the availability SLO covers both protocols with one ratio.
* ``model``/``version`` are the served name and version (``3``, or ``sha-<12 hex>`` for a file
  outside the registry); ``-`` where a request never reached a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONFIDENCE_BUCKETS",
    "DRIFT_DETECTORS",
    "FEEDBACK_OUTCOMES",
    "LATENCY_BUCKETS_S",
    "LOG_DROP_REASONS",
    "LOOP_LAG_BUCKETS_S",
    "METRICS",
    "METRICS_BY_NAME",
    "MODEL_ERROR_REASONS",
    "OOD_SCORE_BUCKETS",
    "PREFIX",
    "REJECTION_REASONS",
    "ROLLOUT_OUTCOMES",
    "MetricSpec",
    "metric",
]

PREFIX = "resnetkit_"

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LOOP_LAG_BUCKETS_S: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))

# Label values the rules rely on; the server uses exactly these.
REJECTION_REASONS = ("queue_full", "deadline", "invalid")
FEEDBACK_OUTCOMES = ("correct", "incorrect")
MODEL_ERROR_REASONS = ("non_finite", "failed")
ROLLOUT_OUTCOMES = ("promoted", "rolled_back", "aborted")
DRIFT_DETECTORS = ("ks_pca", "mmd", "chi2_class", "ks_confidence", "combined")
LOG_DROP_REASONS = ("queue_full", "write_error")
# The served OOD score is the detector's raw score over its calibrated threshold: 1.0 is the
# threshold whatever the model and method, so one set of buckets fits every version.
OOD_SCORE_BUCKETS: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric family (a histogram also exports ``_bucket``, ``_sum`` and ``_count``).

    Attributes:
        name: the full name, ``resnetkit_...``.
        kind: ``counter``, ``gauge`` or ``histogram``.
        labels: label names, in order.
        help: the ``# HELP`` text.
        buckets: a histogram's upper bounds (without ``+Inf``).
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()


_MV = ("model", "version")


def _m(
    name: str, kind: str, labels: tuple[str, ...], help_text: str, buckets: tuple[float, ...] = ()
) -> MetricSpec:
    if kind == "histogram" and not buckets:
        buckets = LATENCY_BUCKETS_S
    return MetricSpec(PREFIX + name, kind, labels, help_text, buckets)


METRICS: tuple[MetricSpec, ...] = (
    # Traffic
    _m("requests_total", "counter", (*_MV, "route", "code"),
       "Requests answered, by route and status code."),
    _m("request_duration_seconds", "histogram", (*_MV, "route"), "End-to-end request latency."),
    _m("queue_wait_seconds", "histogram", _MV, "Time a request waited in the batch queue."),
    _m("inference_duration_seconds", "histogram", _MV, "Time of one batched forward pass."),
    _m("batch_size", "histogram", _MV, "Samples per forward pass.", BATCH_SIZE_BUCKETS),
    _m("queue_depth", "gauge", _MV, "Samples waiting in the batch queue."),
    _m("queue_capacity", "gauge", _MV, "Samples the batch queue holds at most."),
    _m("inflight_requests", "gauge", (), "Requests being served."),
    _m("rejected_total", "counter", (*_MV, "reason"),
       "Requests refused: queue_full, deadline or invalid."),
    _m("model_errors_total", "counter", (*_MV, "reason"),
       "Forward passes that failed on the server's side: non_finite outputs or failed."),
    # Lifecycle
    _m("model_ready", "gauge", _MV, "1 when the version serves requests, else 0."),
    _m("model_load_seconds", "gauge", _MV, "Seconds it took to load and warm the version."),
    _m("cold_start_seconds", "gauge", (), "Seconds from process start to the first ready model."),
    _m("event_loop_lag_seconds", "histogram", (),
       "How late the server's event loop ran a 100 ms heartbeat (every request waits that long).",
       LOOP_LAG_BUCKETS_S),
    _m("event_loop_stalls_total", "counter", (),
       "Times the event loop ran nothing for over a second; each is logged with where it was."),
    # Quality
    _m("predictions_total", "counter", (*_MV, "label"), "Top-1 predictions, by label."),
    _m("prediction_confidence", "histogram", _MV, "Top-1 probability of each prediction.",
       CONFIDENCE_BUCKETS),
    _m("feedback_total", "counter", (*_MV, "outcome"),
       "Ground-truth feedback: correct or incorrect."),
    _m("feedback_retracted_total", "counter", (*_MV, "outcome"),
       "Feedback replaced by a different label for the same request, by its old outcome."),
    _m("model_baseline_accuracy", "gauge", _MV, "Test accuracy recorded at registration."),
    _m("drift_statistic", "gauge", (*_MV, "detector"), "Latest drift test statistic."),
    _m("drift_p_value", "gauge", (*_MV, "detector"), "Latest drift test p-value."),
    _m("drift_detected", "gauge", (*_MV, "detector"), "1 when the detector flags drift, else 0."),
    _m("ood_score", "histogram", _MV,
       "Out-of-distribution score of each sample, over the calibrated threshold (>1 flagged).",
       OOD_SCORE_BUCKETS),
    _m("ood_flagged_total", "counter", _MV,
       "Samples whose out-of-distribution score passed the calibrated threshold."),
    # Dependencies
    _m("registry_up", "gauge", (),
       "1 when the last call to the model registry succeeded, 0 when it failed or timed out."),
    _m("registry_errors_total", "counter", ("operation",),
       "Calls to the model registry that failed or timed out, by operation."),
    # Rollouts
    _m("rollout_canary_weight", "gauge", ("model",),
       "Share of answers given by the canary (0 in shadow mode)."),
    _m("rollout_mirrored_share", "gauge", ("model",),
       "Share of stable's requests also run on the canary in the background."),
    _m("rollout_step", "gauge", ("model",), "Current step of the canary rollout."),
    _m("rollout_check_value", "gauge", ("model", "check"), "Latest value of a rollout check."),
    _m("rollout_check_passed", "gauge", ("model", "check"), "1 when the check passed, else 0."),
    _m("rollouts_total", "counter", ("model", "outcome"),
       "Finished rollouts: promoted, rolled_back or aborted."),
    # Logs
    _m("prediction_log_dropped_total", "counter", ("what", "reason"),
       "Prediction-log records, logged images and feedback labels dropped: queue_full or "
       "write_error."),
)  # fmt: skip

METRICS_BY_NAME: Mapping[str, MetricSpec] = MappingProxyType({m.name: m for m in METRICS})


def metric(name: str) -> MetricSpec:
    """The spec of ``name`` (with or without the ``resnetkit_`` prefix).

    Raises:
        KeyError: no metric of that name is in the contract.
    """
    full = name if name.startswith(PREFIX) else PREFIX + name
    return METRICS_BY_NAME[full]
