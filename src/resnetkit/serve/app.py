"""The ASGI application: resnetkit's routes over the model pool, Starlette under uvicorn.

Routes (the OpenAPI document at ``/openapi.json`` lists them all):

* ``POST /v1/models/{name}/predict`` and ``POST /v1/predict`` (one served model): one image as
  the body (JPEG, PNG, WebP, BMP, GIF or TIFF: ``validation.IMAGE_TYPES``) or as the ``file``
  field of a form; top-``k`` labels.
* KServe V2 / Open Inference Protocol: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
  ``GET /v2/models/{name}[/versions/{v}]``, ``.../ready``, ``POST .../infer`` (JSON or the
  binary tensor extension), via :mod:`resnetkit.serve.protocol_v2`.
* ``GET /metrics`` (Prometheus), ``/healthz`` (the process answers), ``/readyz`` (every model
  loaded and warmed up).
* Management, bearer token required (:mod:`resnetkit.serve.auth`): ``GET/POST
  /v1/admin/models``, ``DELETE /v1/admin/models/{name}[/versions/{v}]``.

Decoding and preprocessing run in a thread pool (Pillow releases the GIL), forward passes on
the pool's inference thread through each model's batcher; the event loop only moves bytes,
and a watchdog (:mod:`resnetkit.serve.watchdog`) measures how late it runs and logs where it
was when it stalls.

The OpenAPI document is the contract (``openapi.py``): every status a route can answer is
declared with the ``{"error": string}`` body, and a wrong method answers 405 with ``Allow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles

from resnetkit import __version__
from resnetkit.errors import (
    DeadlineExceeded,
    InvalidInput,
    QueueFull,
    RegistryUnavailable,
    ResNetKitError,
)
from resnetkit.registry import validate_name
from resnetkit.serve import protocol_v2 as v2
from resnetkit.serve.auth import admin_only
from resnetkit.serve.http import AccessLog, error_response, read_json
from resnetkit.serve.inference import (
    alias_history,
    explain_image,
    infer,
    predict_image,
    v2_metadata,
)
from resnetkit.serve.jsonsafe import FiniteJSONResponse
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.openapi import IMAGE_BODY, TIMEOUT_NOTE, V2_BODY, document
from resnetkit.serve.pool import ModelPool, ServedModel
from resnetkit.serve.rollout_api import add_rollout_routes
from resnetkit.serve.routes import Api, Query
from resnetkit.serve.state import HttpSettings, ServerState
from resnetkit.serve.watchdog import LoopWatchdog

__all__ = ["HttpSettings", "ServerState", "create_app"]  # the state is re-exported

log = logging.getLogger("resnetkit.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(state: ServerState, *, body_timeout_s: float | None = None) -> Starlette:
    """The application serving ``state``'s pool.

    Args:
        state: the server's state.
        body_timeout_s: the most seconds a request body may take to arrive after its
            headers (a 408 after that); None: unbounded.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state.app_started_monotonic = time.monotonic()
        if state.grpc is not None:
            try:
                await state.grpc.start()
            except ResNetKitError as exc:
                _startup_failed(state, str(exc))
        loading = asyncio.create_task(_load_initial(state))
        following = asyncio.create_task(state.rollouts.run()) if state.rollouts else None
        watchdog = LoopWatchdog(state.metrics.observe_loop_lag, state.metrics.count_loop_stall)
        watching = asyncio.create_task(watchdog.run())
        try:
            yield
        finally:
            for task in (loading, following, watching, *state.background):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if state.grpc is not None:
                await state.grpc.stop()
            if state.rollouts is not None:
                await asyncio.to_thread(state.rollouts.close)
            await state.pool.close()
            if state.predlog is not None:
                state.predlog.close()
            if state.decode_pool is not None:
                state.decode_pool.shutdown(wait=False, cancel_futures=True)

    api = Api()  # JSON answers are FiniteJSONResponse: NaN or infinity never reach a 500
    _add_health_routes(api, state)
    _add_v1_routes(api, state)
    _add_v2_routes(api, state)
    _add_admin_routes(api, state)
    add_rollout_routes(api, state)
    description = (
        "ResNet inference: image predictions, the KServe V2 protocol, metrics. "
        f'{TIMEOUT_NOTE} Errors are {{"error": message}}.'
    )

    @functools.cache  # built on first use: no cost to the cold start
    def openapi() -> dict[str, Any]:
        return document(api, title="resnetkit", version=__version__, text=description)

    async def openapi_json(_: Request) -> Response:
        return FiniteJSONResponse(openapi())

    async def dashboard(_: Request) -> Response:
        """The web dashboard: static files shipped in the package, no build step."""
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    routes = [
        *api.routes(),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    _add_error_handlers(app, state.metrics)
    app.add_middleware(AccessLog, metrics=state.metrics, body_timeout_s=body_timeout_s)
    return app


async def _load_initial(state: ServerState) -> None:
    for ref in state.initial_refs:
        try:
            await state.pool.load(ref)
        except ResNetKitError as exc:
            _startup_failed(state, f"cannot serve {ref}: {exc}")
            return
    now = time.monotonic()
    cold_start = now - state.started_monotonic
    state.metrics.set_cold_start(cold_start)
    served = state.pool.all()
    imports = (state.app_started_monotonic or now) - state.started_monotonic
    warm = sum(s.warmup_seconds for s in served)
    load = sum(s.load_seconds for s in served) - warm
    log.info(
        "ready: %d model(s), cold start %.2f s (imports %.2f s, load %.2f s, warm-up %.2f s)",
        len(served), cold_start, imports, load, warm,
    )  # fmt: skip


def _startup_failed(state: ServerState, message: str) -> None:
    if state.failed is None:
        state.failed = message
        log.error(message)
    if state.on_startup_failure is not None:
        state.on_startup_failure(message)


_REJECTIONS = (
    (QueueFull, "queue_full"),
    (DeadlineExceeded, "deadline"),
    (InvalidInput, "invalid"),
)


#: The status recorded for a request whose client disconnected before it was answered.
CLIENT_CLOSED_REQUEST = 499


def _add_error_handlers(app: Starlette, metrics: ServerMetrics) -> None:
    async def _known(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ResNetKitError)
        model, version = (
            getattr(request.state, "model", None),
            getattr(request.state, "version", None),
        )
        reason = next((r for cls, r in _REJECTIONS if isinstance(exc, cls)), None)
        if model is not None and version is not None and reason is not None:
            metrics.observe_rejection(model, version, reason)
        response = error_response(exc)
        if response.status_code == 500:  # not backpressure (503) or deadlines (504): metrics
            log.warning("request failed: %s", exc)
        return response

    async def _http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route of the path only; RFC
            # 9110 asks for every method the resource takes (GET and POST /v1/admin/models).
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=headers
        )

    async def _gone(_: Request, _exc: Exception) -> Response:
        # The client hung up mid-upload: nobody reads this answer, and it is no server error.
        # 499 is nginx's "client closed request", so metrics and access log tell it apart.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def _unexpected(_: Request, exc: Exception) -> Response:
        # Starlette re-raises it after this answer, and uvicorn logs the traceback once.
        return JSONResponse({"error": "internal error"}, status_code=500)

    app.add_exception_handler(ResNetKitError, _known)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_exception_handler(Exception, _unexpected)


def _allowed_methods(app: Starlette, request: Request) -> list[str]:
    """Every method some route of ``request``'s path answers."""
    scope = {**request.scope, "method": "GET"}
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and isinstance(route_methods, set):
            methods |= route_methods
    return sorted(methods)


def _add_health_routes(app: Api, state: ServerState) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive and answering."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Every model loaded and warmed up (503 otherwise)."""
        ready = state.pool.ready
        body: dict[str, Any] = {"ready": ready, "models": _model_states(state)}
        if state.failed:
            body["error"] = state.failed
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: the text exposition format, or OpenMetrics when asked for."""
        body, content_type = state.metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)


def _model_states(state: ServerState) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "version": s.version, "ready": s.ready, "backend": s.backend.name}
        for s in state.pool.all()
    ]


# -- /v1: images --------------------------------------------------------------------------


def _add_v1_routes(app: Api, state: ServerState) -> None:
    k_query = Query(5, ge=1, le=state.http.max_top_k, description="how many classes to return")

    @app.post("/v1/models/{name}/predict", tags=["v1"], openapi_extra={"requestBody": IMAGE_BODY})
    async def predict(request: Request, name: str, k: int = k_query) -> JSONResponse:
        """Classify one image: the top-``k`` labels with their probabilities.

        The image is the body (any ``image/*`` type or ``application/octet-stream``: the bytes
        decide between JPEG, PNG, WebP, BMP, GIF and TIFF) or the ``file`` field of a form.
        """
        return await predict_image(request, state, name, k)

    @app.post("/v1/predict", tags=["v1"], openapi_extra={"requestBody": IMAGE_BODY})
    async def predict_only(request: Request, k: int = k_query) -> JSONResponse:
        """Classify one image with the one served model."""
        return await predict_image(request, state, None, k)

    @app.post("/v1/models/{name}/explain", tags=["v1"], openapi_extra={"requestBody": IMAGE_BODY})
    async def explain(
        request: Request,
        name: str,
        format: str = Query("png", pattern="^(png|json)$"),
        target: str | None = Query(
            None,
            alias="class",
            max_length=128,
            description="the class to explain: its index or its label (default: the top one)",
        ),
        stage: str | None = Query(None, max_length=64, description="stage, e.g. layer3"),
        method: str = Query("gradcam", pattern="^(gradcam|gradcam\\+\\+)$"),
    ) -> Response:
        """Grad-CAM of one image: the heat map over the image (PNG), or JSON with the map."""
        served = state.pool.get(name)
        index = None if target is None else _class_index(served, target)
        return await explain_image(request, state, served, format, index, stage, method)

    @app.get("/v1/models", tags=["v1"])
    async def models() -> dict[str, Any]:
        """The served models and versions (read-only)."""
        return {"models": [s.describe() for s in state.pool.all()]}

    @app.get("/v1/stats", tags=["v1"])
    async def stats() -> dict[str, Any]:
        """Counters and latency buckets per version, for the dashboard (read-only)."""
        return dict(state.metrics.snapshot())

    @app.get("/v1/models/{name}/history", tags=["v1"])
    async def history(name: str) -> dict[str, Any]:
        """The registry's alias history of a served registry model (read-only)."""
        served = state.pool.get(name)
        try:
            events = await asyncio.to_thread(alias_history, state, served)
        except RegistryUnavailable:
            state.metrics.set_registry_up(False, "history")
            raise
        if served.loaded.identity.version is not None:
            state.metrics.set_registry_up(True)
        return {"name": name, "events": events}


def _class_index(served: ServedModel, target: str) -> int:
    """``?class=``: an index, or a label as ``resnetkit explain --class`` takes it."""
    if target.isdigit():
        return int(target)
    if target in served.labels:
        return served.labels.index(target)
    raise InvalidInput(
        f"class {target[:64]!r} is neither an index nor a label of {served.name}; its labels "
        f"are {', '.join(served.labels[:20])}{' ...' if len(served.labels) > 20 else ''}"
    )


def _add_v2_routes(app: Api, state: ServerState) -> None:
    pool = state.pool

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        """Server name, version and protocol extensions."""
        return v2.server_metadata(version=__version__)

    @app.get("/v2/health/live", tags=["v2"])
    async def live() -> dict[str, bool]:
        """The server is alive."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready() -> JSONResponse:
        """Every model is ready (400 otherwise, as the protocol's 4xx means false)."""
        ok = pool.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    @app.get("/v2/models/{name}", tags=["v2"])
    async def metadata(request: Request, name: str) -> dict[str, Any]:
        """Inputs and outputs of a model, with its loaded versions."""
        pool.get(name)
        return v2_metadata(list(pool.models[name].values()))

    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"])
    async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
        """Inputs and outputs of one version."""
        return v2_metadata([pool.get(name, version)])

    @app.get("/v2/models/{name}/ready", tags=["v2"])
    async def model_ready(name: str) -> JSONResponse:
        """The model is loaded and warmed up (400 while not)."""
        return _ready_answer(pool, name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"])
    async def version_ready(name: str, version: str) -> JSONResponse:
        """The version is loaded and warmed up (400 while not)."""
        return _ready_answer(pool, name, version)

    @app.post("/v2/models/{name}/infer", tags=["v2"], openapi_extra={"requestBody": V2_BODY})
    async def v2_infer(request: Request, name: str) -> Response:
        """Inference: FP32 normalised NCHW or UINT8 NHWC pixels; JSON or binary tensors."""
        return await infer(request, state, name, None)

    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        tags=["v2"],
        openapi_extra={"requestBody": V2_BODY},
    )
    async def v2_infer_version(request: Request, name: str, version: str) -> Response:
        """Inference on one version."""
        return await infer(request, state, name, version)


def _ready_answer(pool: ModelPool, name: str, version: str | None) -> JSONResponse:
    versions = pool.models.get(name, {})
    if not versions or (version is not None and version not in versions):
        pool.get(name, version)  # raises ModelNotServed with what is served
    served = versions[version] if version is not None else next(iter(versions.values()))
    return JSONResponse(
        {"name": name, "version": served.version, "ready": served.ready},
        status_code=200 if served.ready else 400,
    )


# -- management ---------------------------------------------------------------------------


def _add_admin_routes(app: Api, state: ServerState) -> None:
    admin = admin_only(lambda: state.auth)

    @app.get("/v1/admin/models", tags=["admin"], dependencies=admin)
    async def list_models(request: Request) -> dict[str, Any]:
        """Every loaded version, with its backend and state (token required)."""
        return {"models": [s.describe() for s in state.pool.all()]}

    @app.post("/v1/admin/models", tags=["admin"], dependencies=admin, status_code=201)
    async def load_model(request: Request) -> dict[str, Any]:
        """Load a version: ``{"ref": "fashion:3", "name": "optional"}`` (token required)."""
        payload = await read_json(request, state.http.max_body_bytes)
        ref, name = payload.get("ref"), payload.get("name")
        if not isinstance(ref, str) or not ref:
            raise InvalidInput('body needs "ref": a registry reference or a path on the server')
        if name is not None:
            if not isinstance(name, str):
                raise InvalidInput('"name" must be a string')
            # Names become URL segments and metric labels: the registry's rule, so every
            # loaded model can be routed to, and unloaded.
            validate_name(name, kind='"name"')
        served = await state.pool.load(ref, name=name)
        return served.describe()

    @app.delete("/v1/admin/models/{name}", tags=["admin"], dependencies=admin)
    async def unload_model(request: Request, name: str) -> dict[str, Any]:
        """Unload every version of a model (token required)."""
        gone = await state.pool.unload(name)
        return {"unloaded": [{"name": s.name, "version": s.version} for s in gone]}

    @app.delete("/v1/admin/models/{name}/versions/{version}", tags=["admin"], dependencies=admin)
    async def unload_version(request: Request, name: str, version: str) -> dict[str, Any]:
        """Unload one version (token required)."""
        gone = await state.pool.unload(name, version)
        return {"unloaded": [{"name": s.name, "version": s.version} for s in gone]}
