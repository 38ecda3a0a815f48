"""Service-level objectives for a resnetkit server, and the Prometheus rules that watch them.

Three parts, each plain data:

* :data:`SERVER_METRICS` — the metrics contract of :mod:`resnetkit.telemetry`: every series
  the server exports (name, type, labels, help, buckets), and the label values the rules
  match on. Rules and
  dashboards are checked against it, so a renamed metric fails a test instead of leaving
  a silent panel.
* :class:`SLOConfig` — the objectives, loaded from TOML by :func:`load_slo`
  (``configs/monitor/slo.toml`` documents the defaults, which are also the dataclass
  defaults).
* :func:`generate_rules` — Prometheus recording and alerting rules: the multiwindow,
  multi-burn-rate alerts of the Google SRE workbook (chapter "Alerting on SLOs") for
  availability and latency, plus model-quality, drift, rollout, saturation and readiness
  alerts. Every alert carries a ``severity`` label (``page`` or ``ticket``) and ``summary``,
  ``description`` and ``runbook_url`` annotations.

Several replicas are scraped, so SLO ratios are summed over versions and replicas and kept
per ``model``. Grafana dashboards built on the same config, and :func:`metrics_used`, which
checks rules and dashboards against the contract, are in :mod:`resnetkit.monitor.dashboards`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import yaml

from resnetkit.config import from_dict, load_toml
from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write
from resnetkit.telemetry import (
    BATCH_SIZE_BUCKETS,
    CONFIDENCE_BUCKETS,
    DRIFT_DETECTORS,
    FEEDBACK_OUTCOMES,
    LATENCY_BUCKETS_S,
    METRICS,
    REJECTION_REASONS,
    ROLLOUT_OUTCOMES,
    MetricSpec,
)

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BURN_RATE_ALERTS",
    "CONFIDENCE_BUCKETS",
    "DRIFT_DETECTORS",
    "FEEDBACK_OUTCOMES",
    "LATENCY_BUCKETS_S",
    "REJECT_REASONS",
    "ROLLOUT_OUTCOMES",
    "RUNBOOK_PATH",
    "SERVER_METRICS",
    "AvailabilityObjective",
    "BurnRateAlert",
    "DriftObjective",
    "LatencyObjective",
    "MetricSpec",
    "QualityObjective",
    "ReadinessObjective",
    "SLOConfig",
    "SaturationObjective",
    "alert_names",
    "feedback_rule_names",
    "generate_rules",
    "load_slo",
    "ratio_rule_name",
    "runbook_url",
    "write_rules",
]

# --- The metrics contract (resnetkit.telemetry; re-exported under the names rules use) ---

SERVER_METRICS: tuple[MetricSpec, ...] = METRICS
REJECT_REASONS = REJECTION_REASONS

# --- The SLO file --------------------------------------------------------------------------

# Prometheus wants the units largest first, each at most once: "1h30m", not "30m1h".
_DURATION = re.compile(r"(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
_DURATION_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _duration_s(key: str, text: str) -> float:
    """Seconds in a Prometheus duration such as ``"5m"`` or ``"1h30m"``."""
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise ConfigError(f"{key}: expected a Prometheus duration like '5m' or '30d', got {text!r}")
    seconds = sum(int(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ConfigError(f"{key}: the duration must be positive, got {text!r}")
    return seconds


def _check_fraction(key: str, value: float, *, closed: bool = False) -> None:
    if not (0 < value < 1 or (closed and value == 1)):
        bounds = "in (0, 1]" if closed else "strictly between 0 and 1"
        raise ConfigError(f"{key}: expected a fraction {bounds} (e.g. 0.999), got {value!r}")


@dataclasses.dataclass(frozen=True)
class AvailabilityObjective:
    """Fraction of responses that must not be 5xx."""

    objective: float = 0.999

    def __post_init__(self) -> None:
        _check_fraction("availability.objective", self.objective)


@dataclasses.dataclass(frozen=True)
class LatencyObjective:
    """Fraction of requests that must finish within ``threshold_s`` (a histogram bucket)."""

    objective: float = 0.95
    threshold_s: float = 0.2

    def __post_init__(self) -> None:
        _check_fraction("latency.objective", self.objective)
        if self.threshold_s not in LATENCY_BUCKETS_S:
            buckets = ", ".join(f"{b:g}" for b in LATENCY_BUCKETS_S)
            raise ConfigError(
                f"latency.threshold_s: {self.threshold_s!r} is not a bucket of "
                f"resnetkit_request_duration_seconds; choose one of {buckets}"
            )


@dataclasses.dataclass(frozen=True)
class QualityObjective:
    """Feedback accuracy must stay within ``max_drop_points`` of the version's baseline."""

    max_drop_points: float = 2.0
    min_feedback: int = 50
    feedback_window: str = "1h"

    def __post_init__(self) -> None:
        if not 0 < self.max_drop_points < 100:
            raise ConfigError(
                f"quality.max_drop_points: expected percentage points in (0, 100), "
                f"got {self.max_drop_points!r}"
            )
        if self.min_feedback < 1:
            raise ConfigError(f"quality.min_feedback: expected >= 1, got {self.min_feedback!r}")
        _duration_s("quality.feedback_window", self.feedback_window)


@dataclasses.dataclass(frozen=True)
class _PendingAlert:
    """An alert whose condition must hold for ``fire_after`` before it fires."""

    SECTION: ClassVar[str] = ""
    fire_after: str = "5m"

    def __post_init__(self) -> None:
        _duration_s(f"{self.SECTION}.fire_after", self.fire_after)


@dataclasses.dataclass(frozen=True)
class DriftObjective(_PendingAlert):
    """Alert when the combined drift detector has flagged drift for ``fire_after``."""

    SECTION: ClassVar[str] = "drift"
    fire_after: str = "15m"


@dataclasses.dataclass(frozen=True)
class ReadinessObjective(_PendingAlert):
    """Alert when a loaded version has not been ready for ``fire_after``."""

    SECTION: ClassVar[str] = "readiness"
    fire_after: str = "2m"


@dataclasses.dataclass(frozen=True)
class SaturationObjective(_PendingAlert):
    """Alert when a batcher queue is fuller than ``max_queue_fill`` for ``fire_after``."""

    SECTION: ClassVar[str] = "saturation"
    max_queue_fill: float = 0.8
    fire_after: str = "5m"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction("saturation.max_queue_fill", self.max_queue_fill, closed=True)


@dataclasses.dataclass(frozen=True)
class SLOConfig:
    """Every objective, the error-budget window, and where the runbooks live."""

    window: str = "30d"
    runbook_base_url: str = ""  # "" keeps links relative to the repository root
    availability: AvailabilityObjective = dataclasses.field(default_factory=AvailabilityObjective)
    latency: LatencyObjective = dataclasses.field(default_factory=LatencyObjective)
    quality: QualityObjective = dataclasses.field(default_factory=QualityObjective)
    drift: DriftObjective = dataclasses.field(default_factory=DriftObjective)
    saturation: SaturationObjective = dataclasses.field(default_factory=SaturationObjective)
    readiness: ReadinessObjective = dataclasses.field(default_factory=ReadinessObjective)

    def __post_init__(self) -> None:
        _duration_s("window", self.window)


def load_slo(path: str | os.PathLike[str] | None = None) -> SLOConfig:
    """Read an SLO file; ``None`` gives the defaults (those of ``configs/monitor/slo.toml``).

    Raises:
        ConfigError: naming the file and the key that is missing, unknown or out of range.
    """
    if path is None:
        return SLOConfig()
    data = load_toml(path)
    try:
        return from_dict(SLOConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# --- Rules -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BurnRateAlert:
    """One pair of windows of the multiwindow, multi-burn-rate recipe."""

    name: str  # suffix of the alert name
    severity: str
    long_window: str
    short_window: str
    burn_rate: float  # multiple of the rate that spends the budget exactly over the window


# The SRE workbook's thresholds for a 30-day window: 2% of the budget spent in 1 hour,
# 5% in 6 hours (pages), 10% in 3 days (ticket).
BURN_RATE_ALERTS: tuple[BurnRateAlert, ...] = (
    BurnRateAlert("FastBurn", "page", "1h", "5m", 14.4),
    BurnRateAlert("SlowBurn", "page", "6h", "30m", 6.0),
    BurnRateAlert("SteadyBurn", "ticket", "3d", "6h", 1.0),
)
_RATIO_WINDOWS = ("5m", "30m", "1h", "6h", "3d")
_ROLLBACK_LOOKBACK = "15m"
RUNBOOK_PATH = "docs/runbooks.md"


def _num(value: float) -> str:
    """A float as PromQL text, without binary noise (``1 - 0.999`` prints ``0.001``)."""
    return f"{value:.10g}"


def _le_matcher(threshold_s: float) -> str:
    # Python clients write integral bounds as "1.0", Go clients (and Prometheus 3) as "1".
    if float(threshold_s).is_integer():
        return f'le=~"{int(threshold_s)}(\\\\.0)?"'
    return f'le="{_num(threshold_s)}"'


def _human(seconds: float) -> str:
    days, rest = divmod(round(seconds / 3600), 24)
    return " ".join(p for p in (f"{days}d" if days else "", f"{rest}h" if rest else "") if p)


def runbook_url(slo: SLOConfig, alert: str) -> str:
    """Where the runbook section of ``alert`` is: ``docs/runbooks.md#<lower-case name>``."""
    base = slo.runbook_base_url.rstrip("/")
    return f"{base + '/' if base else ''}{RUNBOOK_PATH}#{alert.lower()}"


def ratio_rule_name(slo_name: str, window: str) -> str:
    """The recording rule of the error ratio of ``slo_name`` over ``window``."""
    return f"resnetkit:{slo_name}_errors:ratio_rate{window}"


def _availability_ratio(window: str) -> str:
    total = f"sum by (model) (rate(resnetkit_requests_total[{window}]))"
    # `or 0 * total` keeps the ratio at 0, not absent, while no 5xx series exists yet.
    return (
        "(\n"
        f'  sum by (model) (rate(resnetkit_requests_total{{code=~"5.."}}[{window}]))\n'
        f"  or\n  0 * {total}\n)\n/\n{total}"
    )


def _latency_ratio(window: str, threshold_s: float) -> str:
    name = "resnetkit_request_duration_seconds"
    return (
        "1 - (\n"
        f"  sum by (model) (rate({name}_bucket{{{_le_matcher(threshold_s)}}}[{window}]))\n"
        f"  /\n  sum by (model) (rate({name}_count[{window}]))\n)"
    )


def _alert(
    slo: SLOConfig,
    name: str,
    expr: str,
    severity: str,
    text: tuple[str, str],
    *,
    fire_after: str = "",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An alerting rule with the labels and annotations every alert carries.

    Args:
        text: the ``summary`` and ``description`` annotations (Go templates).
    """
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if fire_after:
        rule["for"] = fire_after
    rule["labels"] = {"severity": severity, **(labels or {})}
    rule["annotations"] = {
        "summary": text[0],
        "description": text[1],
        "runbook_url": runbook_url(slo, name),
    }
    return rule


def _burn_alerts(slo: SLOConfig, slo_name: str, objective: float, what: str) -> list[dict]:
    budget = 1 - objective
    window_s = _duration_s("window", slo.window)
    alerts = []
    for burn in BURN_RATE_ALERTS:
        limit = f"({_num(burn.burn_rate)} * {_num(budget)})"
        expr = (
            f"{ratio_rule_name(slo_name, burn.long_window)} > {limit}\n"
            f"and\n{ratio_rule_name(slo_name, burn.short_window)} > {limit}"
        )
        summary = (
            f"{{{{ $labels.model }}}}: {slo_name} error budget burning at over "
            f"{_num(burn.burn_rate)}x the sustainable rate"
        )
        description = (
            f"{{{{ $value | humanizePercentage }}}} of requests {what} over the last "
            f"{burn.long_window} (and over {burn.short_window}); the objective allows "
            f"{_num(budget * 100)}%. At this rate the {slo.window} error budget is gone in "
            f"{_human(window_s / burn.burn_rate)}."
        )
        name = f"ResNetKit{slo_name.capitalize()}{burn.name}"
        alerts.append(
            _alert(slo, name, expr, burn.severity, (summary, description), labels={"slo": slo_name})
        )
    return alerts


def _slo_group(slo: SLOConfig, slo_name: str) -> dict[str, Any]:
    windows = (*_RATIO_WINDOWS, slo.window) if slo.window not in _RATIO_WINDOWS else _RATIO_WINDOWS
    if slo_name == "availability":
        objective, what = slo.availability.objective, "failed with a 5xx status"
        records = [(w, _availability_ratio(w)) for w in windows]
    else:
        objective = slo.latency.objective
        what = f"took longer than {_num(slo.latency.threshold_s)}s"
        records = [(w, _latency_ratio(w, slo.latency.threshold_s)) for w in windows]
    rules: list[dict[str, Any]] = [
        {"record": ratio_rule_name(slo_name, w), "expr": expr} for w, expr in records
    ]
    rules += _burn_alerts(slo, slo_name, objective, what)
    return {"name": f"resnetkit-{slo_name}", "rules": rules}


def feedback_rule_names(slo: SLOConfig) -> tuple[str, str]:
    """The recorded feedback accuracy and labelled-request count over the feedback window."""
    w = slo.quality.feedback_window
    return f"resnetkit:feedback_accuracy:ratio_rate{w}", f"resnetkit:feedback:increase{w}"


def _feedback_records(slo: SLOConfig) -> list[dict[str, Any]]:
    w = slo.quality.feedback_window
    accuracy, labelled = feedback_rule_names(slo)
    total = _live_feedback("rate", w, "")
    correct = _live_feedback("rate", w, '{outcome="correct"}')
    ratio = f"(\n  {correct}\n  or\n  0 * {total}\n)\n/\n{total}"
    return [
        {"record": accuracy, "expr": ratio},
        {"record": labelled, "expr": _live_feedback("increase", w, "")},
    ]


def _live_feedback(fn: str, window: str, selector: str) -> str:
    """Feedback still standing: labels given minus labels replaced by another one (one label
    per request id; a replica that never saw a replacement has no retracted series)."""
    given = f"sum by (model, version) ({fn}(resnetkit_feedback_total{selector}[{window}]))"
    taken = (
        f"sum by (model, version) ({fn}(resnetkit_feedback_retracted_total{selector}[{window}]))"
    )
    return f"({given} - ({taken} or 0 * {given}))"


def _accuracy_alert(slo: SLOConfig) -> dict[str, Any]:
    q = slo.quality
    accuracy, labelled = feedback_rule_names(slo)
    baseline = "max by (model, version) (resnetkit_model_baseline_accuracy)"
    expr = (
        f"{accuracy}\n  < on (model, version)\n  ({baseline} - {_num(q.max_drop_points / 100)})"
        f"\nand on (model, version)\n  {labelled} >= {q.min_feedback}"
    )
    summary = "{{ $labels.model }} v{{ $labels.version }}: accuracy on feedback below baseline"
    description = (
        f"Accuracy on labelled feedback over the last {q.feedback_window} is "
        f"{{{{ $value | humanizePercentage }}}}, more than {_num(q.max_drop_points)} points "
        f"below the version's baseline test accuracy (at least {q.min_feedback} labelled "
        "requests)."
    )
    return _alert(slo, "ResNetKitAccuracyBelowBaseline", expr, "ticket", (summary, description))


def _drift_alert(slo: SLOConfig) -> dict[str, Any]:
    expr = 'max by (model, version) (resnetkit_drift_detected{detector="combined"}) == 1'
    summary = "{{ $labels.model }} v{{ $labels.version }}: input drift detected"
    description = (
        "The combined drift detector has flagged the live inputs as drifted from the "
        f"training reference for {slo.drift.fire_after}."
    )
    return _alert(
        slo,
        "ResNetKitDriftDetected",
        expr,
        "ticket",
        (summary, description),
        fire_after=slo.drift.fire_after,
    )


def _quality_group(slo: SLOConfig) -> dict[str, Any]:
    rules = [*_feedback_records(slo), _accuracy_alert(slo), _drift_alert(slo)]
    return {"name": "resnetkit-quality", "rules": rules}


def _saturation_alert(slo: SLOConfig) -> dict[str, Any]:
    sat = slo.saturation
    expr = (
        f"resnetkit_queue_depth / resnetkit_queue_capacity > {_num(sat.max_queue_fill)}\n"
        "and\nresnetkit_queue_capacity > 0"
    )
    summary = (
        "{{ $labels.model }} v{{ $labels.version }} on {{ $labels.instance }}: queue "
        "{{ $value | humanizePercentage }} full"
    )
    description = (
        f"The batcher queue has been more than {_num(sat.max_queue_fill * 100)}% full for "
        f"{sat.fire_after}; new requests will soon be rejected with 503."
    )
    return _alert(
        slo, "ResNetKitQueueSaturated", expr, "ticket", (summary, description),
        fire_after=sat.fire_after,
    )  # fmt: skip


def _not_ready_alert(slo: SLOConfig) -> dict[str, Any]:
    wait = slo.readiness.fire_after
    summary = "{{ $labels.model }} v{{ $labels.version }} not ready on {{ $labels.instance }}"
    description = (
        f"The version has reported not ready for {wait}; this replica answers its requests "
        "with 503."
    )
    return _alert(
        slo, "ResNetKitModelNotReady", "resnetkit_model_ready == 0", "page",
        (summary, description), fire_after=wait,
    )  # fmt: skip


def _rollback_alert(slo: SLOConfig) -> dict[str, Any]:
    back, lookback = 'resnetkit_rollouts_total{outcome="rolled_back"}', _ROLLBACK_LOOKBACK
    # A counter series that appears with its first rollback has no earlier sample, so
    # increase() alone would miss it: a series younger than the lookback counts as it stands.
    expr = (
        f"sum by (model) (\n  ({back} unless {back} offset {lookback})\n"
        f"  or\n  increase({back}[{lookback}])\n) > 0"
    )
    summary = "{{ $labels.model }}: canary rolled back"
    description = (
        f"A canary rollout of {{{{ $labels.model }}}} failed its analysis in the last "
        f"{lookback} and the alias was moved back to the stable version."
    )
    return _alert(slo, "ResNetKitCanaryRolledBack", expr, "ticket", (summary, description))


def _serving_group(slo: SLOConfig) -> dict[str, Any]:
    rules = [_saturation_alert(slo), _not_ready_alert(slo), _rollback_alert(slo)]
    return {"name": "resnetkit-serving", "rules": rules}


def generate_rules(slo: SLOConfig | None = None) -> dict[str, Any]:
    """Prometheus recording and alerting rules for ``slo`` (defaults when ``None``).

    Returns:
        The rule file as plain data: ``{"groups": [...]}``, ready for YAML.
    """
    slo = slo or SLOConfig()
    return {
        "groups": [
            _slo_group(slo, "availability"),
            _slo_group(slo, "latency"),
            _quality_group(slo),
            _serving_group(slo),
        ]
    }


class _RulesDumper(yaml.SafeDumper):
    """Writes multi-line PromQL as literal blocks, so the file reads like hand-written rules."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RulesDumper.add_representer(str, _str_representer)


def write_rules(slo: SLOConfig | None, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the rules of :func:`generate_rules` to ``path`` as YAML (atomically).

    Returns:
        The rules written.
    """
    rules = generate_rules(slo)
    text = "# Generated by `resnetkit monitor rules` from the SLO file; do not edit by hand.\n"
    text += yaml.dump(rules, Dumper=_RulesDumper, sort_keys=False, width=120)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return rules


def alert_names(rules: Mapping[str, Any]) -> list[str]:
    """The alert names in a rule file, in file order."""
    return [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
