"""Canary analysis: the rollout file, what a replica measures, and the verdict of a window.

A rollout file (TOML; every key optional, defaults below) says how a canary goes live::

    steps = [5, 25, 50, 100]     # canary share of traffic, percent, one step per passed window
    interval_s = 30              # one analysis per interval
    failure_limit = 2            # failed analyses before the rollback
    progress_deadline_s = 600    # a step without enough traffic this long: roll back
    min_requests = 20            # canary and stable samples a window needs to be judged
    shadow = false               # true: every request also runs on the canary; stable answers
    mirror_fraction = 0.2        # split mode: share of stable's requests also run on the canary
    sticky_header = ""           # e.g. "X-User-Id": one user always gets the same version
    alias = "production"         # moved to the canary on promotion

    [checks]
    max_error_rate = 0.05            # canary errors / requests, at most ...
    max_error_rate_increase = 0.01   # ... and at most stable's + this
    max_latency_ratio = 1.5          # canary p95 <= stable p95 * ratio + slack
    latency_slack_ms = 25
    min_agreement = 0.9              # top-1 agreement on requests both versions answered
    min_compared = 10
    max_confidence_shift = 0.1       # |mean top-1 probability, canary - stable|
    max_accuracy_drop = 0.02         # feedback accuracy: canary >= stable - this
    min_feedback = 20                # labelled requests per version before accuracy counts

Each replica counts, per step, for each role (stable, canary): requests, errors, a latency
histogram of the model's answer time, the sum of top-1 probabilities, and feedback; and the
agreement of the two versions' top-1 on requests both answered (shadowed or mirrored). The
analysing replica sums every replica's counts, takes the window since its last verdict, and
:func:`analyse` judges it: ``pass``, ``fail`` (naming each failed check with its value and
threshold) or ``inconclusive`` (too little traffic).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnetkit.config import from_dict, load_toml, to_dict
from resnetkit.errors import ConfigError
from resnetkit.serve.metrics import LATENCY_BUCKETS_S, quantile_from_buckets

__all__ = [
    "ROLES",
    "CheckResult",
    "RolloutChecks",
    "RolloutConfig",
    "StepStats",
    "Verdict",
    "analyse",
    "load_rollout_config",
]

ROLES = ("stable", "canary")


@dataclasses.dataclass(frozen=True)
class RolloutChecks:
    """Thresholds of the analysis; see the module docstring."""

    max_error_rate: float = 0.05
    max_error_rate_increase: float = 0.01
    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 25.0
    min_agreement: float = 0.9
    min_compared: int = 10
    max_confidence_shift: float = 0.1
    max_accuracy_drop: float = 0.02
    min_feedback: int = 20

    def __post_init__(self) -> None:
        for name in ("max_error_rate", "max_error_rate_increase", "min_agreement"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"checks.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_latency_ratio < 1 or self.latency_slack_ms < 0:
            raise ConfigError("checks.max_latency_ratio must be >= 1 and latency_slack_ms >= 0")
        if min(self.min_compared, self.min_feedback) < 1:
            raise ConfigError("checks.min_compared and checks.min_feedback must be >= 1")
        if not 0 <= self.max_confidence_shift <= 1 or not 0 <= self.max_accuracy_drop <= 1:
            raise ConfigError("checks.max_confidence_shift and max_accuracy_drop are in [0, 1]")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How a rollout proceeds; see the module docstring for each key."""

    steps: tuple[int, ...] = (5, 25, 50, 100)
    interval_s: float = 30.0
    failure_limit: int = 2
    progress_deadline_s: float = 600.0
    min_requests: int = 20
    shadow: bool = False
    mirror_fraction: float = 0.2
    sticky_header: str = ""
    alias: str = "production"
    checks: RolloutChecks = dataclasses.field(default_factory=RolloutChecks)

    def __post_init__(self) -> None:
        steps = list(self.steps)
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ConfigError(f"steps must rise strictly within (0, 100] percent, got {steps}")
        if self.interval_s <= 0 or self.progress_deadline_s <= 0:
            raise ConfigError("interval_s and progress_deadline_s must be positive")
        if self.failure_limit < 1 or self.min_requests < 1:
            raise ConfigError("failure_limit and min_requests must be at least 1")
        if not 0 <= self.mirror_fraction <= 1:
            raise ConfigError(f"mirror_fraction must be in [0, 1], got {self.mirror_fraction}")

    def weight(self, step: int) -> float:
        """The canary's share of traffic at ``step``, in percent."""
        return float(self.steps[step])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for the registry and the API)."""
        return to_dict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RolloutConfig:
        """Validate plain data (a TOML table, a request body).

        Raises:
            ConfigError: an unknown key or a value out of range, naming it.
        """
        return from_dict(cls, data)


def load_rollout_config(path: str | Path | None) -> RolloutConfig:
    """A rollout file (TOML), or the defaults for None.

    Raises:
        ConfigError: the file is missing, not TOML, or holds a wrong key or value.
    """
    if path is None:
        return RolloutConfig()
    try:
        return RolloutConfig.from_mapping(load_toml(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


@dataclasses.dataclass
class RoleStats:
    """What one version did in a step, on one replica or summed over several."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = dataclasses.field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1)
    )
    confidence_sum: float = 0.0
    confidence_n: int = 0
    feedback_correct: int = 0
    feedback_total: int = 0

    def record(self, ok: bool, latency_s: float, confidence: float | None) -> None:
        """Count one answer (or error) and its latency."""
        self.requests += 1
        self.errors += 0 if ok else 1
        index = next((i for i, b in enumerate(LATENCY_BUCKETS_S) if latency_s <= b), -1)
        self.latency[index] += 1
        if confidence is not None:
            self.confidence_sum += confidence
            self.confidence_n += 1

    def p95_ms(self) -> float | None:
        """The 95th percentile latency in ms, from the histogram (None without data)."""
        bounds = [*LATENCY_BUCKETS_S, math.inf]
        cumulative, total = [], 0
        for bound, count in zip(bounds, self.latency, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        value = quantile_from_buckets(0.95, cumulative)
        return None if value is None else value * 1000

    def combine(self, other: RoleStats, sign: int = 1) -> RoleStats:
        """``self + other`` (or ``self - other`` with ``sign=-1``), field by field."""
        return RoleStats(
            requests=self.requests + sign * other.requests,
            errors=self.errors + sign * other.errors,
            latency=[a + sign * b for a, b in zip(self.latency, other.latency, strict=True)],
            confidence_sum=self.confidence_sum + sign * other.confidence_sum,
            confidence_n=self.confidence_n + sign * other.confidence_n,
            feedback_correct=self.feedback_correct + sign * other.feedback_correct,
            feedback_total=self.feedback_total + sign * other.feedback_total,
        )


@dataclasses.dataclass
class StepStats:
    """Both versions' counts in one step, and their agreement on shared requests."""

    stable: RoleStats = dataclasses.field(default_factory=RoleStats)
    canary: RoleStats = dataclasses.field(default_factory=RoleStats)
    agree: int = 0
    compared: int = 0

    def role(self, name: str) -> RoleStats:
        """The counts of ``stable`` or ``canary``."""
        return self.canary if name == "canary" else self.stable

    def combine(self, other: StepStats, sign: int = 1) -> StepStats:
        """Field-by-field sum (or difference)."""
        return StepStats(
            stable=self.stable.combine(other.stable, sign),
            canary=self.canary.combine(other.canary, sign),
            agree=self.agree + sign * other.agree,
            compared=self.compared + sign * other.compared,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the registry."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepStats:
        """Back from :meth:`to_dict`."""
        return cls(
            stable=RoleStats(**data["stable"]),
            canary=RoleStats(**data["canary"]),
            agree=int(data["agree"]),
            compared=int(data["compared"]),
        )

    @classmethod
    def total(cls, parts: Sequence[StepStats]) -> StepStats:
        """The sum over replicas."""
        out = cls()
        for part in parts:
            out = out.combine(part)
        return out


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One check of one window: its value, threshold and verdict (None: not enough data)."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the API and the audit log."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one analysis window."""

    outcome: str  # "pass", "fail" or "inconclusive"
    checks: tuple[CheckResult, ...]
    reason: str

    @property
    def failed(self) -> list[CheckResult]:
        """The checks that failed."""
        return [c for c in self.checks if c.passed is False]


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _error_check(w: StepStats, c: RolloutChecks) -> CheckResult:
    canary, stable = w.canary, w.stable
    value = _rate(canary.errors, canary.requests)
    limit = min(c.max_error_rate, _rate(stable.errors, stable.requests) + c.max_error_rate_increase)
    detail = (
        f"canary {canary.errors}/{canary.requests} errors, stable {stable.errors}/{stable.requests}"
    )
    return CheckResult("error_rate", value, limit, value <= limit, detail)


def _latency_check(w: StepStats, c: RolloutChecks) -> CheckResult:
    canary, stable = w.canary.p95_ms(), w.stable.p95_ms()
    if canary is None or stable is None:
        return CheckResult("p95_latency_ms", canary, None, None, "no answers to time")
    limit = stable * c.max_latency_ratio + c.latency_slack_ms
    detail = f"canary p95 {canary:.1f} ms, stable p95 {stable:.1f} ms"
    return CheckResult("p95_latency_ms", canary, limit, canary <= limit, detail)


def _agreement_check(w: StepStats, c: RolloutChecks) -> CheckResult:
    if w.compared < c.min_compared:
        detail = f"{w.compared} requests answered by both (need {c.min_compared})"
        return CheckResult("top1_agreement", None, c.min_agreement, None, detail)
    value = w.agree / w.compared
    detail = f"{w.agree} of {w.compared} shared requests got the same top-1"
    return CheckResult("top1_agreement", value, c.min_agreement, value >= c.min_agreement, detail)


def _confidence_check(w: StepStats, c: RolloutChecks) -> CheckResult:
    canary, stable = w.canary, w.stable
    if not canary.confidence_n or not stable.confidence_n:
        return CheckResult("confidence_shift", None, c.max_confidence_shift, None, "no answers")
    mean_c = canary.confidence_sum / canary.confidence_n
    mean_s = stable.confidence_sum / stable.confidence_n
    value = abs(mean_c - mean_s)
    detail = f"mean top-1 probability: canary {mean_c:.3f}, stable {mean_s:.3f}"
    return CheckResult(
        "confidence_shift", value, c.max_confidence_shift, value <= c.max_confidence_shift, detail
    )


def _accuracy_check(w: StepStats, c: RolloutChecks) -> CheckResult:
    canary, stable = w.canary, w.stable
    if min(canary.feedback_total, stable.feedback_total) < c.min_feedback:
        detail = (
            f"labelled requests: canary {canary.feedback_total}, stable "
            f"{stable.feedback_total} (need {c.min_feedback} each)"
        )
        return CheckResult("feedback_accuracy", None, None, None, detail)
    acc_c = canary.feedback_correct / canary.feedback_total
    acc_s = stable.feedback_correct / stable.feedback_total
    detail = f"feedback accuracy: canary {acc_c:.3f}, stable {acc_s:.3f}"
    limit = acc_s - c.max_accuracy_drop
    return CheckResult("feedback_accuracy", acc_c, limit, acc_c >= limit, detail)


def analyse(window: StepStats, config: RolloutConfig) -> Verdict:
    """Judge one window of a step: pass, fail (with every failed check) or inconclusive."""
    need = config.min_requests
    if window.canary.requests < need or window.stable.requests < need:
        reason = (
            f"too little traffic: canary {window.canary.requests}, stable "
            f"{window.stable.requests} requests in the window (need {need} each)"
        )
        return Verdict("inconclusive", (), reason)
    checks = tuple(
        check(window, config.checks)
        for check in (
            _error_check, _latency_check, _agreement_check, _confidence_check, _accuracy_check
        )
    )  # fmt: skip
    failed = [c for c in checks if c.passed is False]
    if not failed:
        return Verdict("pass", checks, "every check passed")
    reason = "; ".join(
        f"{c.name} {c.value:.4g} against threshold {c.threshold:.4g} ({c.detail})"
        for c in failed
        if c.value is not None and c.threshold is not None
    )
    return Verdict("fail", checks, reason)
