"""Routes for rollouts, feedback and fault injection.

Read-only (no token): ``GET /v1/rollouts`` (the latest rollout of every served registry
model, for the dashboard) and ``GET /v1/rollouts/{name}`` (with its audit log);
``POST /v1/feedback`` (``{"request_id", "label"}``: the true label of an answered request; the
id is a ``/v1`` answer's ``request_id`` (its ``X-Request-Id``), or a V2 request's ``id`` as
sent or as answered; one label per request: a repeat is not counted again, another label
replaces the first and the answer says so). With a prediction log, every accepted label (a
replacement too) is also appended to the feedback log beside it (:mod:`.feedbacklog`) before
the answer, which says ``"logged"``; a failed write is counted, not an error.
Management (bearer token): ``POST /v1/admin/rollouts`` (start), ``POST
/v1/admin/rollouts/{name}/promote|abort``, ``PUT|DELETE /v1/admin/faults/{name}/{version}``
(inject latency or errors into one version: chaos testing, and how the rollback tests make
a bad canary).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from resnetkit.errors import InvalidInput, ModelNotServed
from resnetkit.serve.auth import ADMIN_ACTOR, admin_only
from resnetkit.serve.feedbacklog import FeedbackLog
from resnetkit.serve.http import read_json
from resnetkit.serve.jsonsafe import FiniteJSONResponse
from resnetkit.serve.rollout import RolloutConfig
from resnetkit.serve.rollout_loop import RolloutLoop
from resnetkit.serve.router import Fault, RolloutRouter
from resnetkit.serve.routes import Api
from resnetkit.serve.state import ServerState

__all__ = ["add_rollout_routes"]

_START_KEYS = ("model", "canary", "actor")


def _canary_version(name: str, canary: Any) -> int:
    """``3`` or ``"fashion:3"`` (the name must match) to a version number."""
    canary = _integral(canary)
    text = str(canary)
    if ":" in text:
        model, _, text = text.partition(":")
        if model != name:
            raise InvalidInput(f"canary {canary!r} is a version of {model!r}, not of {name!r}")
    if isinstance(canary, bool) or not text.isdigit() or int(text) < 1:
        raise InvalidInput(f'"canary" must be a version number or "{name}:N", got {canary!r}')
    return int(text)


def _integral(value: Any) -> Any:
    """A JSON number with no fraction as an int (JSON Schema's integers include ``5.0``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _feedback_log(state: ServerState) -> FeedbackLog | None:
    """The feedback log beside the prediction log, its losses exported with the log's."""
    predlog = state.predlog
    if predlog is None:
        return None
    labels_log = FeedbackLog(predlog.path)
    state.metrics.watch_prediction_log(
        lambda: {**predlog.drop_counts(), **labels_log.drop_counts()}
    )
    return labels_log


def _without_rollouts() -> ModelNotServed:
    return ModelNotServed("this server was started without rollouts")


def rollouts_of(state: ServerState) -> RolloutLoop:
    """The server's rollout control loop; a served-without-rollouts server has none (404)."""
    if state.rollouts is None:
        raise _without_rollouts()
    return state.rollouts


def router_of(state: ServerState) -> RolloutRouter:
    """The server's rollout router (feedback lives there); 404 without one."""
    if state.router is None:
        raise _without_rollouts()
    return state.router


async def _log_label(state: ServerState, labels_log: FeedbackLog, rid: str, label: int) -> bool:
    """Append an accepted label to the feedback log in a worker thread; whether it was."""
    name, version = router_of(state).answered_by(rid)
    label_name = state.pool.get(name).labels[label]
    return await asyncio.to_thread(labels_log.append, rid, label, label_name, name, version)


def add_rollout_routes(app: Api, state: ServerState) -> None:
    """Register the rollout, feedback and fault routes."""

    def loop() -> RolloutLoop:
        return rollouts_of(state)

    admin = admin_only(lambda: state.auth)
    labels_log = _feedback_log(state)

    @app.get("/v1/rollouts", tags=["rollouts"], response_class=FiniteJSONResponse)
    async def rollouts() -> dict[str, Any]:
        """The latest rollout of every served registry model (read-only)."""
        found = []
        for name in list(state.pool.models):
            if any(s.loaded.identity.version is not None for s in state.pool.models[name].values()):
                try:
                    found.append(await loop().describe(name))
                except ModelNotServed:
                    continue
        return {"rollouts": [{k: v for k, v in r.items() if k != "events"} for r in found]}

    @app.get("/v1/rollouts/{name}", tags=["rollouts"], response_class=FiniteJSONResponse)
    async def rollout(name: str) -> dict[str, Any]:
        """The latest rollout of ``name`` with its audit log (read-only)."""
        state.pool.get(name)
        return await loop().describe(name)

    @app.post(
        "/v1/admin/rollouts", tags=["rollouts"], response_class=FiniteJSONResponse,
        status_code=201, dependencies=admin,
    )  # fmt: skip
    async def start(request: Request) -> dict[str, Any]:
        """Start a rollout: ``{"model", "canary": V, ...rollout file keys}`` (token required)."""
        payload = await read_json(request, state.http.max_body_bytes)
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidInput('"model" must name a served model')
        cfg = RolloutConfig.from_mapping({k: v for k, v in payload.items() if k not in _START_KEYS})
        who = str(payload.get("actor") or ADMIN_ACTOR)[:200]
        record = await loop().start(name, _canary_version(name, payload.get("canary")), cfg, who)
        return await loop().describe(record.name)

    @app.post(
        "/v1/admin/rollouts/{name}/promote", tags=["rollouts"], response_class=FiniteJSONResponse,
        dependencies=admin,
    )  # fmt: skip
    async def promote(name: str) -> dict[str, Any]:
        """Promote the canary now (token required)."""
        await loop().decide(name, "promoted", ADMIN_ACTOR)
        return await loop().describe(name)

    @app.post(
        "/v1/admin/rollouts/{name}/abort", tags=["rollouts"], response_class=FiniteJSONResponse,
        dependencies=admin,
    )  # fmt: skip
    async def abort(name: str) -> dict[str, Any]:
        """Stop the rollout and send every request to stable (token required)."""
        await loop().decide(name, "aborted", ADMIN_ACTOR)
        return await loop().describe(name)

    @app.post("/v1/feedback", tags=["rollouts"], response_class=FiniteJSONResponse)
    async def feedback(request: Request) -> dict[str, Any]:
        """The true label of an answered request: ``{"request_id", "label"}``.

        ``request_id``: a ``/v1`` answer's ``request_id``, or a V2 request's ``id`` (as sent,
        or as answered); ``<id>:<i>`` for sample ``i`` of a V2 batch. One label per request:
        the same again answers ``"repeated": true`` and counts nothing; a different one
        replaces the first in every count and answers ``"replaced"`` (its class index).
        """
        payload = await read_json(request, state.http.max_body_bytes)
        rid, label = payload.get("request_id"), _integral(payload.get("label"))
        if not isinstance(rid, str) or not isinstance(label, (str, int)):
            raise InvalidInput('body needs "request_id" (string) and "label" (index or name)')
        answer = router_of(state).feedback(rid, label)
        if labels_log is not None and not answer.get("repeated"):
            answer["logged"] = await _log_label(state, labels_log, rid, int(answer["label"]))
        return answer

    @app.put(
        "/v1/admin/faults/{name}/{version}", tags=["admin"], response_class=FiniteJSONResponse,
        dependencies=admin,
    )  # fmt: skip
    async def inject(request: Request, name: str, version: str) -> dict[str, Any]:
        """Inject ``{"delay_ms", "error_rate"}`` into one version (token required)."""
        payload = await read_json(request, state.http.max_body_bytes)
        served = state.pool.get(name, version)
        try:
            served.fault = Fault(
                delay_ms=float(payload.get("delay_ms", 0)),
                error_rate=float(payload.get("error_rate", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"delay_ms and error_rate must be numbers: {exc}") from exc
        return {"model": name, "version": version, "fault": vars(served.fault)}

    @app.delete(
        "/v1/admin/faults/{name}/{version}", tags=["admin"], response_class=FiniteJSONResponse,
        dependencies=admin,
    )  # fmt: skip
    async def clear(name: str, version: str) -> dict[str, Any]:
        """Remove an injected fault (token required)."""
        state.pool.get(name, version).fault = None
        return {"model": name, "version": version, "fault": None}
