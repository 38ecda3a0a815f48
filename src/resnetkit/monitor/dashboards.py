"""Grafana dashboards for a resnetkit server, and which metrics a PromQL text reads.

:func:`generate_dashboards` builds three dashboards from an SLO config (schema version 39,
for Grafana 10 and later), each with a ``${datasource}`` Prometheus variable and a ``model``
variable (``label_values(resnetkit_requests_total, model)``):

* ``executive`` — availability and error budget left over the SLO window, p95 latency,
  accuracy on feedback against the baseline, version adoption.
* ``on-call`` — p95/p99 latency, error ratio and burn rates, saturation, rejections,
  in-flight requests, rollouts (canary weight, checks, outcomes), readiness, and the
  retraining pipeline's runs (``resnetkit pipeline serve``'s own ``/metrics``, scraped as a
  job of its own: :data:`PIPELINE_SERVICE_METRICS`).
* ``debug`` — drift statistic and p-value per detector, batch sizes, queue wait against
  inference time, the predicted-class mix and prediction confidence.

Panels read the recording rules of :func:`~resnetkit.monitor.slo.generate_rules` where one
exists, so a dashboard and an alert agree on what "error ratio" means.
:func:`metrics_used` lists the server metrics a dashboard or rule file reads, so tests
can hold both to the contract :data:`~resnetkit.monitor.slo.SERVER_METRICS`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from resnetkit.fileio import atomic_write
from resnetkit.monitor.slo import (
    SERVER_METRICS,
    SLOConfig,
    feedback_rule_names,
    ratio_rule_name,
)

__all__ = [
    "DASHBOARD_NAMES",
    "PIPELINE_SERVICE_METRICS",
    "SCHEMA_VERSION",
    "generate_dashboards",
    "metrics_used",
    "panel_titles",
    "recording_rules_used",
    "write_dashboards",
]

SCHEMA_VERSION = 39
DASHBOARD_NAMES = ("executive", "on-call", "debug")
_DS = {"type": "prometheus", "uid": "${datasource}"}
_M = 'model=~"$model"'
_RATE = "[$__rate_interval]"
_GRID_WIDTH = 24
#: The series of ``resnetkit pipeline serve`` (resnetkit.pipeline.webhook) the panels read:
#: not the model server's contract, one process per pipeline, no ``model`` label. The tests
#: compare them with a live service's registry.
PIPELINE_SERVICE_METRICS = frozenset(
    {
        "resnetkit_pipeline_runs_total",
        "resnetkit_pipeline_last_run_timestamp_seconds",
        "resnetkit_pipeline_running",
        "resnetkit_pipeline_webhook_refusals_total",
    }
)

Thresholds = Sequence[tuple[float | None, str]]


# --- Building blocks ----------------------------------------------------------------------


def _panel(
    title: str,
    targets: Sequence[tuple[str, str]],
    *,
    kind: str = "timeseries",
    unit: str = "short",
    width: int = 12,
    description: str = "",
    thresholds: Thresholds = (),
    custom: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One panel; ``targets`` are ``(PromQL, legend)`` pairs. Layout is filled in later."""
    steps = [{"value": v, "color": c} for v, c in thresholds or ((None, "green"),)]
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": {"mode": "absolute", "steps": steps},
        "custom": dict(custom or {}),
    }
    if thresholds and kind == "timeseries":
        defaults["custom"].setdefault("thresholdsStyle", {"mode": "dashed"})
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": _DS,
        "gridPos": {"h": 4 if kind == "stat" else 8, "w": width, "x": 0, "y": 0},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": _DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": dict(options or {}),
    }


def _heatmap(title: str, metric: str, unit: str, description: str) -> dict[str, Any]:
    """A heatmap of a histogram's buckets, as Prometheus reports them (no re-bucketing)."""
    expr = _sum("le", f"{metric}_bucket", "increase")
    panel = _panel(title, [(expr, "{{le}}")], kind="heatmap", unit=unit, description=description)
    panel["targets"][0]["format"] = "heatmap"
    panel["options"] = {
        "calculate": False,
        "yAxis": {"unit": unit},
        "color": {"mode": "scheme", "scheme": "Oranges"},
        "cellGap": 1,
    }
    return panel


def _state(title: str, expr: str, legend: str, zero: str, one: str) -> dict[str, Any]:
    """A state timeline of a 0/1 gauge; ``zero`` and ``one`` are ``"text:colour"``."""
    panel = _panel(title, [(expr, legend)], kind="state-timeline", unit="none")
    options = {}
    for index, (value, spec) in enumerate((("0", zero), ("1", one))):
        text, color = spec.split(":")
        options[value] = {"text": text, "color": color, "index": index}
    panel["fieldConfig"]["defaults"]["mappings"] = [{"type": "value", "options": options}]
    return panel


def _sum(labels: str, series: str, fn: str = "rate", window: str = _RATE) -> str:
    """``sum by (labels) (fn(series{model=~"$model"}[window]))``."""
    return f"sum by ({labels}) ({fn}({series}{{{_M}}}{window}))"


def _gauge(agg: str, labels: str, metric: str) -> str:
    """``agg by (labels) (metric{model=~"$model"})``: one line per series, replicas merged."""
    return f"{agg} by ({labels}) ({metric}{{{_M}}})"


def _mean(histogram: str) -> str:
    return f"{_sum('model', histogram + '_sum')}\n/ {_sum('model', histogram + '_count')}"


def _quantile(q: float, metric: str, by: str = "model") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{_M}}}{_RATE})))"


def _layout(panels: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each panel an id and place it left to right, top to bottom, on the 24-wide grid."""
    x = y = row_height = 0
    placed = []
    for number, panel in enumerate(panels, start=1):
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + w > _GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        placed.append({"id": number, **panel, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
        x, row_height = x + w, max(row_height, h)
    return placed


def _templating() -> dict[str, Any]:
    query = "label_values(resnetkit_requests_total, model)"
    datasource = {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "refresh": 1,
    }
    model = {
        "type": "query",
        "name": "model",
        "label": "Model",
        "datasource": _DS,
        "definition": query,
        "query": {"query": query, "refId": "model"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "sort": 1,
    }
    return {"list": [datasource, model]}


def _annotations() -> dict[str, Any]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    rollouts = {
        "datasource": _DS,
        "enable": True,
        "expr": f"sum by (model, outcome) (changes(resnetkit_rollouts_total{{{_M}}}[2m])) > 0",
        "iconColor": "orange",
        "name": "Rollouts",
        "step": "1m",
        "titleFormat": "{{model}} rollout {{outcome}}",
    }
    pipeline_runs = {
        "datasource": _DS,
        "enable": True,
        "expr": "sum by (outcome) (changes(resnetkit_pipeline_runs_total[2m])) > 0",
        "iconColor": "purple",
        "name": "Pipeline runs",
        "step": "1m",
        "titleFormat": "retraining pipeline run: {{outcome}}",
    }
    return {"list": [builtin, rollouts, pipeline_runs]}


def _dashboard(
    name: str, title: str, description: str, time_from: str, panels: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "uid": f"resnetkit-{name}",
        "title": f"resnetkit / {title}",
        "description": description,
        "tags": ["resnetkit"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "1m",
        "time": {"from": time_from, "to": "now"},
        "templating": _templating(),
        "annotations": _annotations(),
        "links": [
            {
                "type": "dashboards",
                "title": "resnetkit",
                "tags": ["resnetkit"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "panels": _layout(panels),
    }


# --- The three dashboards -------------------------------------------------------------------


def _budget_left(slo: SLOConfig, slo_name: str, budget: float) -> str:
    return f"1 - {ratio_rule_name(slo_name, slo.window)}{{{_M}}} / {budget:.10g}"


def _recorded(slo_name: str, window: str) -> str:
    return f"{ratio_rule_name(slo_name, window)}{{{_M}}}"


def _executive(slo: SLOConfig) -> dict[str, Any]:
    a_budget, l_budget = 1 - slo.availability.objective, 1 - slo.latency.objective
    budget_steps: Thresholds = ((None, "red"), (0, "orange"), (0.25, "green"))
    accuracy, _ = feedback_rule_names(slo)
    baseline = _gauge("max", "model, version", "resnetkit_model_baseline_accuracy")
    adoption = (
        f"{_sum('model, version', 'resnetkit_requests_total')}\n"
        f"/ ignoring (version) group_left\n{_sum('model', 'resnetkit_requests_total')}"
    )
    mv, window = "{{model}} v{{version}}", slo.window
    stat: dict[str, Any] = {"kind": "stat", "unit": "percentunit", "width": 6}
    panels = [
        _panel(
            f"Availability ({window})",
            [(f"1 - {_recorded('availability', window)}", "{{model}}")],
            description=f"Share of non-5xx responses; objective {slo.availability.objective:g}.",
            **stat,
        ),
        _panel(
            f"Availability error budget left ({window})",
            [(_budget_left(slo, "availability", a_budget), "{{model}}")],
            thresholds=budget_steps,
            **stat,
        ),
        _panel(
            f"Latency error budget left ({window})",
            [(_budget_left(slo, "latency", l_budget), "{{model}}")],
            thresholds=budget_steps,
            **stat,
        ),
        _panel(
            "Requests per second",
            [(f"sum(rate(resnetkit_requests_total{{{_M}}}{_RATE}))", "all")],
            **{**stat, "unit": "reqps"},
        ),
        _panel(
            "Accuracy on feedback",
            [
                (f"{accuracy}{{{_M}}}", f"{mv} feedback"),
                (baseline, f"{mv} baseline"),
                (f"{baseline} - {slo.quality.max_drop_points / 100:.10g}", f"{mv} alert level"),
            ],
            unit="percentunit",
            description=f"Share of labelled feedback answered correctly over "
            f"{slo.quality.feedback_window}, against the version's test accuracy.",
        ),
        _panel(
            "p95 latency",
            [(_quantile(0.95, "resnetkit_request_duration_seconds"), "{{model}}")],
            unit="s",
            thresholds=((None, "green"), (slo.latency.threshold_s, "red")),
        ),
        _panel(
            f"Error budget left over time ({window})",
            [
                (_budget_left(slo, "availability", a_budget), "{{model}} availability"),
                (_budget_left(slo, "latency", l_budget), "{{model}} latency"),
            ],
            unit="percentunit",
            thresholds=((None, "red"), (0, "green")),
        ),
        _panel(
            "Version adoption",
            [(adoption, mv)],
            unit="percentunit",
            custom={"stacking": {"mode": "normal"}, "fillOpacity": 60},
            description="Share of each model's requests answered by each version.",
        ),
    ]
    about = "Objectives, error budgets, model quality and version adoption."
    return _dashboard("executive", "Executive", about, "now-7d", panels)


def _on_call_traffic(slo: SLOConfig) -> list[dict[str, Any]]:
    latency = "resnetkit_request_duration_seconds"
    a_budget, l_budget = 1 - slo.availability.objective, 1 - slo.latency.objective
    return [
        _panel(
            "Latency p95 and p99",
            [
                (_quantile(0.95, latency), "{{model}} p95"),
                (_quantile(0.99, latency), "{{model}} p99"),
            ],
            unit="s",
            thresholds=((None, "green"), (slo.latency.threshold_s, "red")),
        ),
        _panel(
            "Error ratio",
            [
                (_recorded("availability", "5m"), "{{model}} 5xx (5m)"),
                (_recorded("availability", "1h"), "{{model}} 5xx (1h)"),
            ],
            unit="percentunit",
            thresholds=((None, "green"), (round(14.4 * a_budget, 10), "red")),
            description="Share of 5xx responses; the dashed line is the fast-burn page level.",
        ),
        _panel(
            "Burn rate (1h)",
            [
                (f"{_recorded('availability', '1h')} / {a_budget:.10g}", "{{model}} availability"),
                (f"{_recorded('latency', '1h')} / {l_budget:.10g}", "{{model}} latency"),
            ],
            thresholds=((None, "green"), (6, "orange"), (14.4, "red")),
            description="At 1 the error budget lasts exactly the SLO window; pages at 6 and 14.4.",
        ),
        _panel(
            "Requests by status",
            [(_sum("model, code", "resnetkit_requests_total"), "{{model}} {{code}}")],
            unit="reqps",
        ),
    ]


def _on_call_capacity(slo: SLOConfig) -> list[dict[str, Any]]:
    saturation = (
        f"max by (model, version, instance) (\n  resnetkit_queue_depth{{{_M}}}\n"
        f"  / (resnetkit_queue_capacity{{{_M}}} > 0)\n)"
    )
    ready = _gauge("min", "model, version, instance", "resnetkit_model_ready")
    return [
        _panel(
            "Saturation (queue depth / capacity)",
            [(saturation, "{{model}} v{{version}} {{instance}}")],
            unit="percentunit",
            thresholds=((None, "green"), (slo.saturation.max_queue_fill, "red")),
        ),
        _panel(
            "Rejected requests",
            [(_sum("model, reason", "resnetkit_rejected_total"), "{{model}} {{reason}}")],
            unit="reqps",
        ),
        _panel(
            "In-flight requests",
            [("sum by (instance) (resnetkit_inflight_requests)", "{{instance}}")],
        ),
        _state(
            "Model ready",
            ready,
            "{{model}} v{{version}} {{instance}}",
            "not ready:red",
            "ready:green",
        ),
        _state(
            "Registry reachable",
            "min by (instance) (resnetkit_registry_up)",
            "{{instance}}",
            "unreachable:red",
            "reachable:green",
        ),
        _panel(
            "Registry errors",
            [
                (
                    "sum by (operation) (rate(resnetkit_registry_errors_total[$__rate_interval]))",
                    "{{operation}}",
                )
            ],
            unit="ops",
            description="Registry calls that failed or timed out. Loaded versions keep serving; "
            "rollouts pause until the registry answers again.",
        ),
    ]


def _on_call_rollouts() -> list[dict[str, Any]]:
    steps = {"lineInterpolation": "stepAfter"}
    finished = _sum("model, outcome", "resnetkit_rollouts_total", "increase", "[5m]") + " > 0"
    checks = _gauge("min", "model, check", "resnetkit_rollout_check_passed")
    return [
        _panel(
            "Canary traffic weight",
            [
                (_gauge("max", "model", "resnetkit_rollout_canary_weight"), "{{model}} answers"),
                (_gauge("max", "model", "resnetkit_rollout_mirrored_share"), "{{model}} mirrored"),
            ],
            unit="percentunit",
            custom=steps,
            description="Share of answers the canary gives, and of stable's requests also run "
            "on it in the background (shadow mode: 0 answers, 100% mirrored).",
        ),
        _panel(
            "Model errors (non-finite outputs, failed passes)",
            [
                (
                    _sum("model, version, reason", "resnetkit_model_errors_total"),
                    "{{model}} v{{version}} {{reason}}",
                )
            ],
            unit="ops",
            description="Forward passes that failed on the server's side. A canary's show here "
            "even though stable answered its requests.",
        ),
        _panel(
            "Rollout step",
            [(_gauge("max", "model", "resnetkit_rollout_step"), "{{model}}")],
            custom=steps,
        ),
        _panel(
            "Deploys and rollbacks",
            [(finished, "{{model}} {{outcome}}")],
            custom={"drawStyle": "bars", "fillOpacity": 80},
            description="Finished rollouts in 5 minutes: promoted, rolled_back or aborted.",
        ),
        _state("Rollout checks", checks, "{{model}} {{check}}", "failed:red", "passed:green"),
        _panel(
            "Rollout check values",
            [
                (
                    _gauge("max", "model, check", "resnetkit_rollout_check_value"),
                    "{{model}} {{check}}",
                )
            ],
            description="What the canary analysis measured at its last step, per check.",
        ),
    ]


def _on_call_pipeline() -> list[dict[str, Any]]:
    """The retraining pipeline (``resnetkit pipeline serve``): its runs and its refusals."""
    last = "topk(1, max by (outcome) (resnetkit_pipeline_last_run_timestamp_seconds)) * 1000"
    last_run = _panel(
        "Last pipeline run",
        [(last, "{{outcome}}")],
        kind="stat",
        unit="dateTimeFromNow",
        width=6,
        description="The outcome of the retraining pipeline's last run and when it ended.",
        options={
            "textMode": "value_and_name",
            "colorMode": "none",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )
    last_run["targets"][0]["instant"] = True  # the newest outcome now, not one per step
    running = _state(
        "Pipeline run in progress",
        "max(resnetkit_pipeline_running)",
        "pipeline",
        "idle:text",
        "running:blue",
    )
    running["gridPos"]["w"] = 18
    running["gridPos"]["h"] = 4
    bars = {"drawStyle": "bars", "fillOpacity": 80}
    return [
        last_run,
        running,
        _panel(
            "Pipeline runs by outcome",
            [(_any("outcome", "resnetkit_pipeline_runs_total"), "{{outcome}}")],
            custom=bars,
            description="Finished retraining runs in 5 minutes: promoted, blessed, "
            "not_blessed, rolled_back, aborted, timeout, not_enough_data or failed.",
        ),
        _panel(
            "Drift alerts that started no run",
            [(_any("reason", "resnetkit_pipeline_webhook_refusals_total"), "{{reason}}")],
            custom=bars,
            description="Alertmanager notifications the pipeline's webhook refused, by reason: "
            "repeats inside the cooldown (duplicate, cooldown), a run still going (busy), "
            "other or resolved alerts, bad payloads or tokens.",
        ),
    ]


def _any(labels: str, counter: str) -> str:
    """Counts of a per-process counter in 5 minutes, only where there were some."""
    return f"sum by ({labels}) (increase({counter}[5m])) > 0"


def _on_call(slo: SLOConfig) -> dict[str, Any]:
    panels = [
        *_on_call_traffic(slo), *_on_call_capacity(slo), *_on_call_rollouts(),
        *_on_call_pipeline(),
    ]  # fmt: skip
    about = "Is the service healthy now, and what changed?"
    return _dashboard("on-call", "On-call", about, "now-6h", panels)


def _debug_drift() -> list[dict[str, Any]]:
    legend = "{{model}} v{{version}} {{detector}}"
    labels = "model, version, detector"
    return [
        _panel(
            "Drift statistic per detector",
            [(_gauge("max", labels, "resnetkit_drift_statistic"), legend)],
        ),
        _panel(
            "Drift p-value per detector",
            [(_gauge("min", labels, "resnetkit_drift_p_value"), legend)],
            custom={"scaleDistribution": {"type": "log", "log": 10}},
            thresholds=((None, "red"), (0.05, "green")),
        ),
        _state(
            "Drift detected",
            _gauge("max", labels, "resnetkit_drift_detected"),
            legend,
            "no drift:green",
            "drift:red",
        ),
    ]


def _debug(slo: SLOConfig) -> dict[str, Any]:
    del slo  # the debug view shows raw signals, not objectives
    wait, infer = "resnetkit_queue_wait_seconds", "resnetkit_inference_duration_seconds"
    conf = "resnetkit_prediction_confidence"
    by_route = _quantile(0.95, "resnetkit_request_duration_seconds", "model, route")
    mv = "{{model}} v{{version}}"
    panels = [
        *_debug_drift(),
        _heatmap("Batch size distribution", "resnetkit_batch_size", "short", "Requests per pass."),
        _panel("Mean batch size", [(_mean("resnetkit_batch_size"), "{{model}}")]),
        _panel(
            "Queue wait vs inference time",
            [
                (_quantile(0.5, wait), "{{model}} queue wait p50"),
                (_quantile(0.95, wait), "{{model}} queue wait p95"),
                (_quantile(0.5, infer), "{{model}} inference p50"),
                (_quantile(0.95, infer), "{{model}} inference p95"),
            ],
            unit="s",
        ),
        _panel("p95 latency by route", [(by_route, "{{model}} {{route}}")], unit="s"),
        _panel(
            "Prediction mix per class",
            [(_sum("label", "resnetkit_predictions_total"), "{{label}}")],
            unit="percent",
            custom={"stacking": {"mode": "percent"}, "fillOpacity": 60},
            description="Share of each predicted top-1 class; a shift here is label drift.",
        ),
        _heatmap("Prediction confidence", conf, "percentunit", "Top-1 softmax probability."),
        _heatmap(
            "Out-of-distribution score",
            "resnetkit_ood_score",
            "short",
            "Each sample's OOD score over its calibrated threshold; above 1 is flagged.",
        ),
        _panel(
            "Out-of-distribution flags",
            [(_sum("model, version", "resnetkit_ood_flagged_total"), mv)],
            unit="ops",
            description="Samples flagged as unlike the training data (about 5% of "
            "in-distribution images are flagged by calibration).",
        ),
        _panel(
            "Labelled feedback",
            [
                (
                    _sum("model, version, outcome", "resnetkit_feedback_total"),
                    f"{mv} {{{{outcome}}}}",
                ),
                (
                    _sum("model, version, outcome", "resnetkit_feedback_retracted_total"),
                    f"{mv} {{{{outcome}}}} replaced",
                ),
            ],
            unit="reqps",
            description="Requests whose true label came back (one label per request; a label "
            "replaced by another counts as replaced); accuracy needs enough of them.",
        ),
        _panel(
            "Prediction log: dropped records and images",
            [
                (
                    "sum by (what, reason) (rate(resnetkit_prediction_log_dropped_total[5m]))",
                    "{{what}} {{reason}}",
                )
            ],
            unit="ops",
            description="Samples the prediction log could not keep: its queue was full, or "
            "writing failed (a full disk). Requests are answered regardless.",
        ),
        _panel(
            "Mean prediction confidence",
            [(_mean(conf), "{{model}}")],
            unit="percentunit",
        ),
        _panel(
            "Load and cold-start time",
            [
                (_gauge("max", "model, version", "resnetkit_model_load_seconds"), f"{mv} load"),
                ("max by (instance) (resnetkit_cold_start_seconds)", "{{instance}} cold start"),
            ],
            unit="s",
        ),
        _panel(
            "Event loop lag and stalls",
            [
                (
                    "histogram_quantile(0.99, sum by (instance, le) "
                    "(rate(resnetkit_event_loop_lag_seconds_bucket[$__rate_interval])))",
                    "{{instance}} p99 lag",
                ),
                (
                    "sum by (instance) (increase(resnetkit_event_loop_stalls_total[5m]))",
                    "{{instance}} stalls (5 min)",
                ),
            ],
            unit="s",
            description="How late the server's event loop runs (every request waits as long). "
            "A stall (over a second) is logged with the code the loop was in, or that the "
            "process was not scheduled.",
        ),
    ]
    about = "Drift, batching, timing and predictions, for a diagnosis."
    return _dashboard("debug", "Debug", about, "now-3h", panels)


def generate_dashboards(slo: SLOConfig | None = None) -> dict[str, dict[str, Any]]:
    """The Grafana dashboards for ``slo`` (defaults when ``None``), keyed by name.

    Returns:
        ``{"executive": ..., "on-call": ..., "debug": ...}``, each a dashboard JSON model.
    """
    slo = slo or SLOConfig()
    return {"executive": _executive(slo), "on-call": _on_call(slo), "debug": _debug(slo)}


def _text_writer(text: str) -> Callable[[Path], object]:
    return lambda tmp: tmp.write_text(text, encoding="utf-8")


def write_dashboards(slo: SLOConfig | None, directory: str | os.PathLike[str]) -> list[Path]:
    """Write each dashboard to ``directory/<name>.json`` (atomically).

    Returns:
        The files written.
    """
    written = []
    for name, dashboard in generate_dashboards(slo).items():
        path = Path(directory) / f"{name}.json"
        atomic_write(path, _text_writer(json.dumps(dashboard, indent=2) + "\n"))
        written.append(path)
    return written


def panel_titles(dashboard: Mapping[str, Any]) -> list[str]:
    """The titles of a dashboard's panels, in layout order."""
    return [panel["title"] for panel in dashboard["panels"]]


# --- Which metrics an expression reads -------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NOISE = re.compile(r"\{[^}]*\}|\[[^\]]*\]|\boffset\s+-?\w+|\$\{?\w+\}?")
# A name not continued by more name characters and not called like a function.
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {
    "and", "or", "unless", "bool", "inf", "nan", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right",
}  # fmt: skip
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)")
_HISTOGRAMS = {m.name for m in SERVER_METRICS if m.kind == "histogram"}


def _expressions(obj: Any) -> Iterator[str]:
    """Every PromQL text in a rule file or dashboard: ``expr`` values and query variables."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key in ("definition", "query") and isinstance(value, str):
                yield from _LABEL_VALUES.findall(value)
            else:
                yield from _expressions(value)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _expressions(item)


def _names_in(expr: str) -> set[str]:
    text = _NOISE.sub(" ", _LABEL_LIST.sub(" ", _STRING.sub(" ", expr)))
    return {name for name in _IDENT.findall(text) if name not in _KEYWORDS}


def _family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name.removesuffix(suffix) in _HISTOGRAMS:
            return name.removesuffix(suffix)
    return name


def metrics_used(obj: Any) -> set[str]:
    """The server metric families read by the PromQL expressions in ``obj``.

    ``obj`` is a rule file (:func:`~resnetkit.monitor.slo.generate_rules`), a dashboard, or
    any nesting of them. Histogram series (``_bucket``, ``_count``, ``_sum``) count as their
    family; recorded series (``resnetkit:...``) are not server metrics and are left out
    (:func:`recording_rules_used` lists them).
    """
    names = {n for expr in _expressions(obj) for n in _names_in(expr)}
    return {_family(n) for n in names if ":" not in n}


def recording_rules_used(obj: Any) -> set[str]:
    """The recorded series (names with a colon) read by the PromQL expressions in ``obj``."""
    return {n for expr in _expressions(obj) for n in _names_in(expr) if ":" in n}
