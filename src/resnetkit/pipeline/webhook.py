"""Drift-triggered retraining: Alertmanager's webhook in, one pipeline run per cooldown out.

``resnetkit pipeline serve`` runs :func:`create_webhook_app` under uvicorn, beside (never
inside) the model server. Alertmanager's ``webhook_config`` POSTs its version-4 payload
(``receiver``, ``status``, ``alerts[]`` with ``labels``, ``annotations``, ``startsAt``,
``fingerprint``, ``groupKey``, ...) to ``POST /v1/alerts``. :class:`RetrainService` decides:

* a body that is not a version-4 payload: 400, counted as ``malformed``;
* no *firing* alert named :data:`DRIFT_ALERT` (the rule ``resnetkit monitor rules`` writes):
  200 and ``accepted: false``, counted as ``resolved`` or ``other_alert``;
* a run still going, or one started less than ``cooldown_s`` ago: 200, ``busy`` /
  ``cooldown`` (``duplicate`` when it is the very alert that started that run). However often
  Alertmanager repeats a notification, one run per cooldown starts;
* else a run starts in the one worker thread: export the labelled production images
  (:func:`~resnetkit.data.feedback.export_feedback`) into a fresh folder; fewer than
  ``min_new_labels`` labelled since the last run ends it as ``not_enough_data`` (and gives
  the cooldown back, so the next repeat tries again); otherwise the pipeline runs on them. A
  run that fails (an error, a crash) gives the cooldown back too; it is counted as ``failed``.

Every refusal is logged and counted in ``resnetkit_pipeline_webhook_refusals_total{reason}``;
every run's outcome in ``resnetkit_pipeline_runs_total{outcome}`` (this service's own
Prometheus registry, at ``GET /metrics``), and the time the last run of each outcome
ended in ``resnetkit_pipeline_last_run_timestamp_seconds{outcome}``. ``GET /v1/pipelines``
lists the runs, newest first; they are kept in ``OUT/runs.json`` (written atomically), so a
restart keeps the cooldown. ``GET /v1/pipelines/<id>/pipeline.json`` is a run's own
``pipeline.json``; ``GET /`` a page listing the runs (:mod:`resnetkit.pipeline.runs_page`).
``GET /healthz`` answers 200.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from resnetkit.data.feedback import export_feedback, labelled_samples
from resnetkit.errors import ConfigError, ResNetKitError
from resnetkit.fileio import atomic_write, check_output_dir
from resnetkit.pipeline.runs_page import CONTENT_SECURITY_POLICY, RUNS_PAGE

__all__ = [
    "DRIFT_ALERT",
    "OUTCOMES",
    "REFUSALS",
    "PipelineRunner",
    "RetrainService",
    "WebhookSettings",
    "create_webhook_app",
    "pipeline_runner",
]

logger = logging.getLogger(__name__)

#: The alert of ``resnetkit monitor rules`` (monitor/slo.py) that starts a retraining.
DRIFT_ALERT = "ResNetKitDriftDetected"
#: A run's outcome: the pipeline's own word, or why it never ran the pipeline.
OUTCOMES = (
    "promoted", "blessed", "not_blessed", "rolled_back", "aborted", "timeout",
    "not_enough_data", "failed",
)  # fmt: skip
#: Why a notification started nothing.
REFUSALS = (
    "malformed", "unauthorized", "resolved", "other_alert", "duplicate", "cooldown", "busy",
)  # fmt: skip
#: Outcomes that give the cooldown back: the pipeline did not run, or broke before its end
#: (a transient error must not block retraining for a whole cooldown).
_NO_COOLDOWN = (None, "not_enough_data", "failed")
RUNS_FILE = "runs.json"
MAX_BODY_BYTES = 1024 * 1024
_KEPT_RUNS = 1000

#: ``(feedback_dir, out_dir) -> {"outcome": ..., "pipeline_json": path, ...}``: one pipeline
#: run on an export-feedback folder, its files in ``out_dir``.
PipelineRunner = Callable[[Path, Path], dict[str, Any]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """What the webhook service needs; every default is ``resnetkit pipeline serve``'s.

    Attributes:
        prediction_log: the model server's ``--prediction-log`` (served with --log-images).
        out: the service's folder: ``runs.json`` and one folder per run.
        cooldown_s: at most one run starts within this many seconds.
        min_new_labels: labelled images newer than the last run needed to run the pipeline.
        holdout: the newest share of the export kept for the gate.
        token: the bearer token Alertmanager must send (``http_config.authorization``);
            None accepts any caller (bind to loopback then).
    """

    prediction_log: Path
    out: Path
    cooldown_s: float = 3600.0
    min_new_labels: int = 100
    holdout: float = 0.2
    token: str | None = None

    def __post_init__(self) -> None:
        if self.cooldown_s < 0:
            raise ConfigError(f"--cooldown-s must be 0 or more, got {self.cooldown_s:g}")
        if self.min_new_labels < 1:
            raise ConfigError(f"--min-new-labels must be at least 1, got {self.min_new_labels}")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"--holdout must be in [0, 1), got {self.holdout:g}")


class _Refused(Exception):
    def __init__(self, reason: str, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.reason, self.status = reason, status


class RetrainService:
    """Accepts drift alerts and runs the pipeline in one worker thread, one per cooldown.

    Args:
        settings: thresholds and folders.
        runner: runs the pipeline on an export folder (:func:`pipeline_runner` in the CLI).
        clock: seconds, monotonic in production; the tests' cooldown is real seconds too.
    """

    def __init__(
        self,
        settings: WebhookSettings,
        runner: PipelineRunner,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.clock = clock
        self.out = check_output_dir(settings.out, what="--out")
        self.out.mkdir(parents=True, exist_ok=True)
        self.registry = CollectorRegistry()
        self.runs_total = Counter(
            "resnetkit_pipeline_runs", "Pipeline runs by outcome.", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.refusals_total = Counter(
            "resnetkit_pipeline_webhook_refusals",
            "Alertmanager notifications that started no run, by reason.", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.running = Gauge(
            "resnetkit_pipeline_running", "1 while a pipeline run is going.",
            registry=self.registry,
        )  # fmt: skip
        self.last_run = Gauge(
            "resnetkit_pipeline_last_run_timestamp_seconds",
            "Unix time the last pipeline run of each outcome ended.", ["outcome"],
            registry=self.registry,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self.runs_total.labels(outcome)
        for reason in REFUSALS:
            self.refusals_total.labels(reason)
        self._lock = threading.Condition()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline-run")
        self._runs: list[dict[str, Any]] = self._load_runs()
        for run in reversed(self._runs):  # oldest first: the newest of each outcome wins
            self._mark_finished(run)

    # -- the webhook --------------------------------------------------------------------

    def notify(self, payload: Any) -> tuple[int, dict[str, Any]]:
        """Handle one Alertmanager notification; ``(HTTP status, JSON body)``."""
        try:
            alerts = _drift_alerts(payload)
            run = self._reserve(payload, alerts)
        except _Refused as refused:
            return self.refuse(refused.reason, str(refused), refused.status)
        self._worker.submit(self._run, run)
        logger.info("pipeline run %s started by %s", run["id"], run["trigger"]["fingerprints"])
        return 202, {"accepted": True, "run": run["id"]}

    def refuse(self, reason: str, message: str, status: int = 200) -> tuple[int, dict[str, Any]]:
        """Count and log a notification that starts nothing."""
        self.refusals_total.labels(reason).inc()
        logger.warning("alert refused (%s): %s", reason, message)
        body: dict[str, Any] = {"accepted": False, "reason": reason, "detail": message}
        if status >= 400:
            body = {"error": message, "reason": reason}
        return status, body

    def _reserve(self, payload: dict[str, Any], alerts: list[dict[str, Any]]) -> dict[str, Any]:
        """The new run's record, or why none starts (atomically: two callers, one run)."""
        keys = sorted(f"{a.get('fingerprint', '')}@{a.get('startsAt', '')}" for a in alerts)
        now = self.clock()
        with self._lock:
            last = next((r for r in self._runs if r["outcome"] not in _NO_COOLDOWN), None)
            if any(r["finished"] is None for r in self._runs):
                raise _Refused("busy", "a pipeline run is still going")
            if last is not None and now - last["started_s"] < self.settings.cooldown_s:
                reason = "duplicate" if last["trigger"]["keys"] == keys else "cooldown"
                wait_s = self.settings.cooldown_s - (now - last["started_s"])
                raise _Refused(reason, f"run {last['id']} started {now - last['started_s']:.0f} s "
                               f"ago; the next may start in {wait_s:.0f} s")  # fmt: skip
            run = {
                "id": f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
                "trigger": {
                    "alertname": DRIFT_ALERT,
                    "group_key": payload.get("groupKey"),
                    "fingerprints": [a.get("fingerprint") for a in alerts],
                    "labels": [a.get("labels", {}) for a in alerts],
                    "starts_at": min(str(a.get("startsAt", "")) for a in alerts),
                    "keys": keys,
                },
                "started": _now_iso(),
                "started_s": now,
                "finished": None,
                "outcome": None,
                "pipeline_json": None,
            }
            self._runs.insert(0, run)
            del self._runs[_KEPT_RUNS:]
            self._save_runs()
        return run

    # -- the worker thread --------------------------------------------------------------

    def _run(self, run: dict[str, Any]) -> None:
        self.running.set(1)
        folder = self.out / run["id"]
        try:
            result = self._run_steps(run, folder)
        except ResNetKitError as exc:
            result = {"outcome": "failed", "error": str(exc)}
        except Exception as exc:  # a bug must end the run, not the worker
            logger.exception("pipeline run %s failed", run["id"])
            result = {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}
        outcome = str(result.get("outcome"))
        if outcome not in OUTCOMES:
            result = {**result, "outcome": "failed", "error": f"unknown outcome {outcome!r}"}
        self.runs_total.labels(result["outcome"]).inc()
        self.running.set(0)
        with self._lock:
            run.update(result, finished=_now_iso())
            self._save_runs()
            self._mark_finished(run)
            self._lock.notify_all()
        logger.info("pipeline run %s: %s", run["id"], run["outcome"])

    def _run_steps(self, run: dict[str, Any], folder: Path) -> dict[str, Any]:
        since = self._last_export_time()
        samples, _ = labelled_samples(self.settings.prediction_log)
        new = sum(1 for s in samples if since is None or s.labelled_at > since)
        run["labels"] = {"total": len(samples), "new": new}
        if new < self.settings.min_new_labels:
            return {
                "outcome": "not_enough_data",
                "error": f"{new} new labelled images; the pipeline needs "
                f"{self.settings.min_new_labels} (--min-new-labels)",
            }
        export = export_feedback(
            self.settings.prediction_log, folder / "feedback", holdout=self.settings.holdout
        )
        run["feedback"] = {"dir": str(export.out), "samples": export.manifest["samples"]}
        run["exported_at"] = _now_iso()
        return self.runner(export.out, folder / "pipeline")

    def _last_export_time(self) -> datetime | None:
        with self._lock:
            times = [r["exported_at"] for r in self._runs if r.get("exported_at")]
        return (
            max(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times) if times else None
        )

    # -- state --------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first (copies)."""
        with self._lock:
            return [{k: v for k, v in r.items() if k != "started_s"} for r in self._runs]

    def pipeline_json(self, run_id: str) -> dict[str, Any] | None:
        """The ``pipeline.json`` a run wrote, None for an unknown run or one without it.

        Only paths this service recorded are read: the id is looked up, never joined."""
        with self._lock:
            path = next((r.get("pipeline_json") for r in self._runs if r["id"] == run_id), None)
        if not path:
            return None
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _mark_finished(self, run: dict[str, Any]) -> None:
        finished = run.get("finished")
        if finished and run.get("outcome") in OUTCOMES:
            ended = datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
            self.last_run.labels(run["outcome"]).set(ended.timestamp())

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is going; False if one still is after ``timeout_s``."""
        with self._lock:
            return self._lock.wait_for(
                lambda: all(r["finished"] is not None for r in self._runs), timeout_s
            )

    def close(self) -> None:
        """Let a running pipeline finish, then stop the worker."""
        self._worker.shutdown(wait=True)

    def _load_runs(self) -> list[dict[str, Any]]:
        path = self.out / RUNS_FILE
        if not path.is_file():
            return []
        try:
            runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not this service's run list ({exc}); move it") from exc
        for run in runs:
            if run.get("finished") is None:  # this process died during it
                run.update(outcome="failed", error="interrupted", finished=_now_iso())
        return list(runs)

    def _save_runs(self) -> None:
        text = json.dumps({"runs": self._runs}, indent=2, default=str) + "\n"
        atomic_write(self.out / RUNS_FILE, lambda p: p.write_text(text, encoding="utf-8"))


def _drift_alerts(payload: Any) -> list[dict[str, Any]]:
    """The firing drift alerts of a version-4 payload; refusals for anything else."""
    if not isinstance(payload, dict) or str(payload.get("version")) != "4":
        raise _Refused("malformed", "not an Alertmanager webhook payload (version 4)", 400)
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not all(
        isinstance(a, dict) and isinstance(a.get("labels"), dict) for a in alerts
    ):
        raise _Refused("malformed", '"alerts" must be a list of alerts with "labels"', 400)
    ours = [a for a in alerts if a["labels"].get("alertname") == DRIFT_ALERT]
    if not ours:
        names = sorted({str(a["labels"].get("alertname")) for a in alerts})
        raise _Refused("other_alert", f"not {DRIFT_ALERT}: {', '.join(names) or 'no alerts'}")
    firing = [a for a in ours if a.get("status") == "firing"]
    if not firing:
        raise _Refused("resolved", f"{DRIFT_ALERT} is resolved")
    return firing


def create_webhook_app(service: RetrainService) -> Starlette:
    """The HTTP face of ``service``: ``POST /v1/alerts``, ``GET /v1/pipelines``,
    ``GET /v1/pipelines/<id>/pipeline.json``, ``GET /`` (the runs page), ``GET /metrics``,
    ``GET /healthz``."""

    async def alerts(request: Request) -> Response:
        token = service.settings.token
        if token is not None and not _bearer_ok(request, token):
            status, body = service.refuse("unauthorized", "a valid bearer token is required", 401)
            return JSONResponse(body, status, headers={"WWW-Authenticate": "Bearer"})
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            status, body = service.refuse("malformed", f"body over {MAX_BODY_BYTES} bytes", 413)
            return JSONResponse(body, status)
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            status, body = service.refuse("malformed", "the body is not JSON", 400)
            return JSONResponse(body, status)
        status, body = service.notify(payload)
        return JSONResponse(body, status)

    async def pipelines(request: Request) -> Response:
        return JSONResponse({"runs": service.runs()})

    async def pipeline_json(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        data = service.pipeline_json(run_id)
        if data is None:
            return JSONResponse({"error": f"no pipeline.json for run {run_id!r}"}, 404)
        return JSONResponse(data)

    async def page(request: Request) -> Response:
        headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}
        return HTMLResponse(RUNS_PAGE, headers=headers)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask; no icon, and no 404 in their console

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/alerts", alerts, methods=["POST"]),
            Route("/", page, methods=["GET"]),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Route("/v1/pipelines", pipelines, methods=["GET"]),
            Route("/v1/pipelines/{run_id}/pipeline.json", pipeline_json, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def pipeline_runner(
    config_path: Path | None,
    *,
    name: str,
    server: str | None,
    admin_token: str | None = None,
) -> PipelineRunner:
    """A :data:`PipelineRunner` over :func:`resnetkit.pipeline.run_pipeline`: the pipeline
    file (read now, so a bad one fails at start-up) with ``[data] feedback`` set to each
    run's export.

    Raises:
        ConfigError: the pipeline file is invalid.
    """
    from resnetkit.pipeline import load_pipeline_config, run_pipeline

    config = load_pipeline_config(config_path)

    def run(feedback_dir: Path, out_dir: Path) -> dict[str, Any]:
        data = dataclasses.replace(config.data, feedback=str(feedback_dir.resolve()))
        result = run_pipeline(
            dataclasses.replace(config, data=data), name=name, server=server,
            out_dir=out_dir.resolve(), admin_token=admin_token,
            progress=lambda step, message: logger.info("%s: %s", step, message),
        )  # fmt: skip
        return {
            "outcome": result.outcome,
            "pipeline_json": str(Path(result.out_dir) / "pipeline.json"),
            "candidate": result.candidate,
            "baseline": result.baseline,
            "blessed": result.blessed,
        }

    return run


def _bearer_ok(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
