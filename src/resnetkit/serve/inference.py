"""Answering a request: decode, route (stable or canary), batch, measure, log, watch drift.

The routes in :mod:`resnetkit.serve.app` parse HTTP; everything a prediction does after that
is here, the same for ``/v1`` images, KServe V2 tensors (REST) and the gRPC layer, which all
go through :func:`infer_tensor` (or, for ``/v1``, through the same two steps it is made of:
:func:`_answer` then :func:`_record`). During a rollout the router picks the version that
answers, may shadow the request to the canary (in the background, never delaying the answer),
and counts each version's answers, errors and latency.

Every forward pass is checked: an output with NaN or infinity (a diverged or corrupt model) is
a :class:`~resnetkit.errors.ModelOutputError`, counted against the version that produced it.
During a rollout a request whose canary run fails on the server's side (status 500 or more:
never a client error, never a shadowed run, which answers nobody) runs once more on stable
within the same deadline: a broken canary costs its users latency, not errors, while the
analysis counts the failure and rolls it back.

Every protocol writes the prediction log and is scored by feedback: one record per sample.
A request of one sample is known by its request id (``X-Request-Id``, the ``request_id`` of a
``/v1`` answer) and, for V2, by the ``id`` its body carried (the ``id`` of the answer, which
is the request id when the body had none); sample ``i`` of a larger V2 batch by
``<id>:<i>`` for either id. ``POST /v1/feedback`` takes any of them.

A version with an out-of-distribution detector scores every sample in its forward pass (the
``ood_score`` output, 1.0 the threshold); :func:`_record` counts each score and flag in the
metrics and the prediction log, and with ``--ood-action reject`` a request with a flagged
sample is answered 422 (gRPC ``INVALID_ARGUMENT``) with its scores, after it is recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from resnetkit.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelOutputError,
    NotReady,
    QueueFull,
    ResNetKitError,
    ServeError,
)
from resnetkit.onnxio import EMBEDDING_NAME, INPUT_NAME
from resnetkit.serve import protocol_v2 as v2
from resnetkit.serve.batcher import Reservation
from resnetkit.serve.http import read_body, request_id, status_for, upload_from
from resnetkit.serve.jsonsafe import FiniteJSONResponse
from resnetkit.serve.pool import OOD_SCORE, PROBABILITIES, ServedModel
from resnetkit.serve.predlog import PredictionRecord
from resnetkit.serve.router import Route
from resnetkit.serve.state import ServerState
from resnetkit.serve.validation import decode_image, image_to_model_input

__all__ = [
    "OODRejected",
    "Outputs",
    "alias_history",
    "decode_v2",
    "explain_image",
    "infer",
    "infer_tensor",
    "predict_image",
    "route_request",
    "sample_ids",
    "v2_metadata",
]

Outputs = dict[str, np.ndarray]
_LOG_TOP_K = 5  # classes a V2 sample's prediction-log record keeps


class OODRejected(InvalidInput):
    """A request with an out-of-distribution sample, refused under ``--ood-action reject``.

    The routes answer it 422 with :meth:`body`; gRPC as ``INVALID_ARGUMENT``. It is raised
    only after the request is recorded (metrics, prediction log), so refusals are counted.
    """

    def __init__(self, served: ServedModel, scores: np.ndarray, request_id: str) -> None:
        flagged = scores > 1.0
        worst = float(scores.max())
        method = served.ood.method if served.ood is not None else "?"
        super().__init__(
            f"input is out of distribution for {served.name}:{served.version}: OOD score "
            f"{worst:.3g} > 1.0 ({method}, {int(flagged.sum())} of {len(scores)} samples); "
            "this server rejects such inputs (--ood-action reject)"
        )
        self.served, self.scores, self.flagged, self.request_id = (
            served,
            scores,
            flagged,
            request_id,
        )
        self.method = method

    def body(self) -> dict[str, Any]:
        """The 422 answer: the error, the model, and every sample's score and flag."""
        ood: dict[str, Any] = {"method": self.method}
        if len(self.scores) == 1:
            ood.update(score=float(self.scores[0]), flagged=bool(self.flagged[0]))
        else:
            ood.update(scores=self.scores.tolist(), flagged=self.flagged.tolist())
        return {
            "error": str(self),
            "model": self.served.name,
            "version": self.served.version,
            "request_id": self.request_id,
            "ood": ood,
        }

    def response(self) -> FiniteJSONResponse:
        """The 422 response, with ``X-Model-Version``."""
        return FiniteJSONResponse(
            self.body(), status_code=422, headers={"X-Model-Version": self.served.version}
        )


def _check_ood(state: ServerState, served: ServedModel, outputs: Outputs, rid: str) -> None:
    """Refuse a request with a flagged sample when the server rejects OOD inputs.

    Raises:
        OODRejected: ``--ood-action reject`` and a sample's score is above 1.0.
    """
    scores = outputs.get(OOD_SCORE)
    if state.http.ood_action == "reject" and scores is not None and bool((scores > 1.0).any()):
        raise OODRejected(served, np.asarray(scores, dtype=np.float64), rid)


def ood_answer(served: ServedModel, outputs: Outputs, row: int = 0) -> dict[str, Any] | None:
    """``{"score", "flagged", "method"}`` of sample ``row``, or None without a detector."""
    scores = outputs.get(OOD_SCORE)
    if scores is None or served.ood is None:
        return None
    score = float(scores[row])
    return {"score": score, "flagged": score > 1.0, "method": served.ood.method}


def route_request(
    state: ServerState, name: str | None, headers: Mapping[str, str], version: str | None = None
) -> Route:
    """The version that answers a request for ``name`` (the one served model for None);
    an explicit ``version`` bypasses the rollout router."""
    if name is None:
        name = state.pool.only().name
    if version is not None:
        return Route(state.pool.get(name, version))
    if state.router is None:
        return Route(state.pool.get(name))
    return state.router.route(name, headers)


def _deadline_s(start: float, budget_s: float) -> float:
    """Seconds left of a request's time budget (counted from its ``start``)."""
    return max(0.0, budget_s - (time.perf_counter() - start))


def _budget_s(state: ServerState, start: float, deadline_s: float | None = None) -> float:
    """A request's time budget from its start: the server's timeout, or less if the client's
    own deadline (``deadline_s`` from now) ends sooner."""
    budget_s = state.http.timeout_ms / 1000
    if deadline_s is not None:
        budget_s = min(budget_s, time.perf_counter() - start + max(0.0, deadline_s))
    return budget_s


def _tag(request: Request, served: ServedModel) -> None:
    """Name the model and version for the access log and the request metrics."""
    request.state.model = served.name
    request.state.version = served.version


def _spawn(state: ServerState, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    state.background.add(task)
    task.add_done_callback(state.background.discard)


def check_finite(served: ServedModel, outputs: Outputs) -> None:
    """Refuse outputs with NaN or infinity: the model, not the request, is broken.

    Raises:
        ModelOutputError: naming the outputs that are not finite.
    """
    bad = [k for k, a in outputs.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if bad:
        raise ModelOutputError(
            f"{served.name}:{served.version} answered non-finite numbers (NaN or infinity) in "
            f"{', '.join(sorted(bad))}: the model is diverged or corrupt"
        )


def _count_failure(state: ServerState, served: ServedModel, exc: ResNetKitError) -> None:
    """Count a failed forward pass of ``served`` in the error metrics."""
    if isinstance(exc, (QueueFull, DeadlineExceeded, NotReady)):
        return  # backpressure, counted as a rejection where it is answered
    reason = "non_finite" if isinstance(exc, ModelOutputError) else "failed"
    state.metrics.observe_model_error(served.name, served.version, reason)


async def _run(
    state: ServerState,
    served: ServedModel,
    role: str | None,
    x: np.ndarray,
    deadline_s: float,
    reservation: Reservation | None = None,
) -> Outputs:
    """One forward pass through ``served``'s batcher, checked, counted for the analysis."""
    started = time.perf_counter()
    assert served.batcher is not None
    try:
        outputs = await served.batcher.submit(x, deadline_s=deadline_s, reservation=reservation)
        fault = served.fault
        if fault is not None:
            await asyncio.sleep(fault.delay_ms / 1000)
            if random.random() < fault.error_rate:
                raise ServeError(f"{served.name}:{served.version}: injected fault")
        check_finite(served, outputs)
    except ResNetKitError as exc:
        if status_for(exc) >= 500:
            _count_failure(state, served, exc)
            if state.router is not None:
                state.router.record(served.name, role, False, time.perf_counter() - started, None)
        raise
    if state.router is not None:
        confidence = float(outputs[PROBABILITIES].max(axis=1).mean())
        state.router.record(served.name, role, True, time.perf_counter() - started, confidence)
    return outputs


async def _shadow(
    state: ServerState, route: Route, x: np.ndarray, answered: Outputs, keys: list[list[str]]
) -> None:
    """Run the request on the other version too and compare (its errors count against it;
    the client already has its answer)."""
    assert route.shadow is not None and state.router is not None
    other, role = route.shadow, route.shadow_role
    try:
        outputs = await _run(state, other, role, x, state.http.timeout_ms / 1000)
    except ResNetKitError:
        return
    mine = answered[PROBABILITIES].argmax(axis=1).tolist()
    theirs = outputs[PROBABILITIES].argmax(axis=1).tolist()
    for ids, top1, other_top1 in zip(keys, mine, theirs, strict=True):
        tops = {route.role: int(top1), role: int(other_top1)}
        state.router.compare(other.name, tops["stable"], tops["canary"])
        state.router.remember(ids, other.name, role, other.version, tops[role])


async def _answer(
    state: ServerState,
    route: Route,
    x: np.ndarray,
    *,
    start: float,
    budget_s: float,
    headers: Mapping[str, str],
    reservation: Reservation | None = None,
) -> tuple[Route, Outputs]:
    """Run the request on the routed version; the route that answered, and its outputs.

    A version taken out of a rollout between routing and running (a rollback or promotion
    unloading it) is not the client's problem: the request is routed again. A canary that
    fails on the server's side (already counted against it by :func:`_run`) is not either:
    stable answers, once, within what is left of the deadline.
    """
    try:
        deadline_s = _deadline_s(start, budget_s)
        return route, await _run(state, route.primary, route.role, x, deadline_s, reservation)
    except NotReady:
        if route.role is None:
            raise
        route = route_request(state, route.primary.name, headers)
    except ResNetKitError as exc:
        if route.role != "canary" or status_for(exc) < 500:
            raise
        route = Route(state.pool.get(route.primary.name), "stable")
    return route, await _run(state, route.primary, route.role, x, _deadline_s(start, budget_s))


def sample_ids(ids: Sequence[str | None], batch: int) -> list[list[str]]:
    """The ids each sample of a request is known by: the request's own for one sample,
    ``<id>:<i>`` for sample ``i`` of a larger batch (None and repeated ids left out)."""
    unique = list(dict.fromkeys(i for i in ids if i))
    if batch == 1:
        return [unique]
    return [[f"{i}:{row}" for i in unique] for row in range(batch)]


@dataclasses.dataclass(frozen=True)
class _Upload:
    """The encoded image a ``/v1`` request sent, for the prediction log."""

    data: bytes
    content_type: str | None


def _record(
    state: ServerState,
    route: Route,
    x: np.ndarray,
    outputs: Outputs,
    keys: list[list[str]],
    *,
    latency_ms: float,
    log_k: int,
    upload: _Upload | None = None,
    pixels: np.ndarray | None = None,
) -> None:
    """Everything an answered request leaves behind: prediction metrics, OOD scores, the
    prediction log (one record per sample, with the sample's pixels for a V2 ``UINT8``
    batch), what feedback needs, the shadow run, the drift window."""
    served = route.primary
    probabilities = outputs[PROBABILITIES]
    embeddings = outputs.get(EMBEDDING_NAME)
    logged = state.predlog is not None and state.predlog.should_log(keys[0][0])
    for row, ids in enumerate(keys):
        top = int(probabilities[row].argmax())
        label, confidence = served.labels[top], float(probabilities[row, top])
        state.metrics.observe_prediction(served.name, served.version, label, confidence)
        ood = ood_answer(served, outputs, row)
        if ood is not None:
            state.metrics.observe_ood(served.name, served.version, ood["score"], ood["flagged"])
        if state.router is not None:
            state.router.remember(ids, served.name, route.role, served.version, top)
        if logged:
            _log(
                state, served, ids[0], probabilities[row], log_k, latency_ms,
                None if embeddings is None else embeddings[row], upload,
                None if pixels is None else pixels[row], ood,
            )  # fmt: skip
    if state.router is not None and route.shadow is not None:
        _spawn(state, _shadow(state, route, x, outputs, keys))
    _watch_drift(state, served, outputs)


def _log(
    state: ServerState,
    served: ServedModel,
    rid: str,
    probabilities: np.ndarray,
    k: int,
    latency_ms: float,
    embedding: np.ndarray | None,
    upload: _Upload | None,
    pixels: np.ndarray | None = None,
    ood: dict[str, Any] | None = None,
) -> None:
    assert state.predlog is not None
    top_k = [(p["label"], p["probability"]) for p in _top_k(probabilities, served.labels, k)]
    state.predlog.log(
        PredictionRecord(
            request_id=rid,
            model=served.name,
            version=served.version,
            top_k=top_k,
            confidence=top_k[0][1],
            latency_ms=latency_ms,
            embedding=None if embedding is None else embedding.tolist(),
            image=None if upload is None else upload.data,
            image_content_type=None if upload is None else upload.content_type,
            # Raw pixels only when they will be kept: the writer thread encodes the PNG.
            pixels=pixels if state.predlog.log_images else None,
            ood_score=None if ood is None else ood["score"],
            ood_flagged=None if ood is None else ood["flagged"],
            ood_method=None if ood is None else ood["method"],
        )
    )


def decode_v2(
    state: ServerState,
    served: ServedModel,
    body: bytes | tuple[dict[str, Any], memoryview | None],
    header_length: int | None = None,
) -> tuple[v2.InferRequest, np.ndarray]:
    """A KServe V2 request to the parsed request and the model's batch, under this server's
    limits. Every protocol's requests pass here: REST's as the body (JSON, or a JSON header of
    ``header_length`` bytes and binary data), gRPC's as the document its fields make and its
    raw contents.

    Raises:
        InvalidInput: anything wrong with the request; PayloadTooLarge: over a size limit.
    """
    assert served.batcher is not None
    max_batch = served.batcher.capacity
    max_elements = max_batch * int(np.prod(served.loaded.input_size))
    max_pixels = state.http.max_pixels
    if isinstance(body, tuple):
        doc, binary = body
        parsed = v2.parse_infer_document(
            doc, binary, max_elements=max_elements, max_pixels=max_pixels
        )
    else:
        parsed = v2.parse_infer_request(
            body, header_length, max_elements=max_elements, max_pixels=max_pixels
        )
    v2.check_outputs(parsed, served.outputs)
    return parsed, v2.prepare_model_input(parsed, served.loaded.spec, max_batch_size=max_batch)


async def infer_tensor(
    state: ServerState,
    name: str,
    version: str | None,
    x: np.ndarray,
    *,
    request_id: str,
    headers: Mapping[str, str],
    start: float,
    deadline_s: float | None = None,
    client_id: str | None = None,
    route: Route | None = None,
    reservation: Reservation | None = None,
    pixels: np.ndarray | None = None,
) -> tuple[Route, Outputs]:
    """Answer an already decoded batch, whatever the protocol: route, run, record.

    Routing (stable or canary; an explicit ``version`` bypasses the router), the checked
    forward pass (a failed canary run answered by stable), then every record: prediction
    metrics, the prediction log (one record per sample), feedback ids, the shadow run and
    the drift window. Protocols only decode before and encode after.

    Args:
        state: the server's state.
        name: the served model.
        version: one served version, or None for the routed one.
        x: ``(N, C, H, W)`` float32, preprocessed (normalised) as the model expects.
        request_id: the server's id of the request (logs, feedback).
        headers: the request's headers (a sticky rollout header is read from them).
        start: ``time.perf_counter()`` when the request arrived; the deadline runs from it.
        deadline_s: the client's own deadline, in seconds from now (a gRPC deadline), or
            None; the server's ``--timeout-ms`` applies either way, whichever ends first.
        client_id: the id the client gave the request (V2's ``id``), also usable for
            feedback; None if it gave none.
        route, reservation: a route already chosen, and places already reserved on its
            primary's batcher (the REST layer reserves before it reads a body).
        pixels: the request's raw ``uint8`` images ``(N, H, W, C)`` when it sent pixels (a
            V2 ``UINT8`` input): logged as PNG files with ``--log-images``.

    Returns:
        The route that answered (``route.primary`` is the version) and its outputs.

    Raises:
        ResNetKitError: as the request path (404 unknown model, 503 busy, 504 deadline,
            500 a model error).
        OODRejected: a flagged sample under ``--ood-action reject`` (after recording).
    """
    if route is None:
        route = route_request(state, name, headers, version)
    budget_s = _budget_s(state, start, deadline_s)
    route, outputs = await _answer(
        state, route, x, start=start, budget_s=budget_s, headers=headers, reservation=reservation
    )
    keys = sample_ids([request_id, client_id], len(x))
    latency_ms = (time.perf_counter() - start) * 1000
    _record(state, route, x, outputs, keys, latency_ms=latency_ms, log_k=_LOG_TOP_K, pixels=pixels)
    _check_ood(state, route.primary, outputs, client_id or request_id)
    return route, outputs


def _decode(data: bytes, content_type: str | None, served: ServedModel, max_pixels: int) -> Any:
    image = decode_image(data, content_type, max_pixels=max_pixels)
    return image_to_model_input(image, served.loaded.spec)


def _top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {"label": labels[i], "index": int(i), "probability": float(probabilities[i])} for i in order
    ]


async def predict_image(
    request: Request, state: ServerState, name: str | None, k: int
) -> FiniteJSONResponse:
    """``/v1`` prediction: one uploaded image, its top-``k`` classes."""
    start = time.perf_counter()
    route = route_request(state, name, request.headers)
    _tag(request, route.primary)
    assert route.primary.batcher is not None
    # Refused before reading and decoding when busy; once let in, its place is held.
    with route.primary.batcher.reserve(1) as reservation:
        body = await read_body(request, state.http.max_body_bytes)
        upload = upload_from(body, request.headers.get("content-type"))
        x = await asyncio.get_running_loop().run_in_executor(
            state.decoder(), _decode, upload.data, upload.content_type, route.primary,
            state.http.max_pixels,
        )  # fmt: skip
        x = x[None]
        route, outputs = await _answer(
            state, route, x, start=start, budget_s=_budget_s(state, start),
            headers=request.headers, reservation=reservation,
        )  # fmt: skip
    served = route.primary
    _tag(request, served)
    rid = request_id(request)
    latency_ms = (time.perf_counter() - start) * 1000
    _record(state, route, x, outputs, [[rid]], latency_ms=latency_ms, log_k=k,
            upload=_Upload(upload.data, upload.content_type))  # fmt: skip
    try:
        _check_ood(state, served, outputs, rid)
    except OODRejected as exc:
        return exc.response()
    answer = {
        "model": served.name,
        "version": served.version,
        "request_id": rid,
        "predictions": _top_k(outputs[PROBABILITIES][0], served.labels, k),
        "latency_ms": round(latency_ms, 3),
    }
    ood = ood_answer(served, outputs)
    if ood is not None:
        answer["ood"] = ood
    return FiniteJSONResponse(answer, headers={"X-Model-Version": served.version})


def _watch_drift(state: ServerState, served: ServedModel, outputs: Outputs) -> None:
    """Add a request's embeddings to the live drift window; test it off the request path."""
    if served.drift is None or EMBEDDING_NAME not in outputs:
        return
    if served.drift.add(outputs[EMBEDDING_NAME], outputs[PROBABILITIES]):
        _spawn(state, served.drift.evaluate_soon())


def alias_history(state: ServerState, served: ServedModel) -> list[dict[str, Any]]:
    """The registry's alias audit log of a served registry model ([] for a file)."""
    if served.loaded.identity.version is None:
        return []  # a file outside the registry has no aliases
    from resnetkit.registry import open_registry

    with open_registry(state.pool.settings.registry, create=False) as store:
        return [e.to_dict() for e in store.history(served.loaded.identity.name)]


async def explain_image(
    request: Request,
    state: ServerState,
    served: ServedModel,
    fmt: str,
    target: int | None,
    stage: str | None,
    method: str,
) -> Response:
    """Grad-CAM of one uploaded image: the overlay PNG, or JSON with the raw map."""
    _tag(request, served)
    if not served.loaded.has_weights:
        raise InvalidInput(
            f"{served.name}:{served.version} is an ONNX model without torch weights; Grad-CAM "
            "needs the weights version it was exported from"
        )
    if target is not None and target >= served.num_classes:
        raise InvalidInput(f"class {target} is out of range: the model has {served.num_classes}")
    body = await read_body(request, state.http.max_body_bytes)
    upload = upload_from(body, request.headers.get("content-type"))

    def work() -> tuple[Any, Any]:
        image = decode_image(upload.data, upload.content_type, max_pixels=state.http.max_pixels)
        x = image_to_model_input(image, served.loaded.spec)
        return image, served.explain(x, target=target, stage=stage, method=method)

    image, result = await asyncio.get_running_loop().run_in_executor(state.decoder(), work)
    check_finite(served, {PROBABILITIES: result.probabilities.cpu().numpy()})
    top = [{"label": served.labels[i], "index": i, "probability": p} for i, p in result.topk(5)[0]]
    explained = int(result.target_classes[0])
    if fmt == "json":
        return FiniteJSONResponse(
            {
                "model": served.name,
                "version": served.version,
                "stage": result.stage,
                "method": result.method,
                "class": explained,
                "top5": top,
                "map": result.maps[0].cpu().numpy().round(4).tolist(),
            }
        )
    from resnetkit.monitor.explain import overlay_png

    png = await asyncio.to_thread(
        overlay_png, np.asarray(image.convert("RGB")), result.maps[0].cpu().numpy()
    )
    headers = {"X-Model-Version": served.version, "X-Explained-Class": str(explained)}
    return Response(png, media_type="image/png", headers=headers)


def v2_metadata(served: list[ServedModel]) -> dict[str, Any]:
    """The body of ``GET /v2/models/{name}``: one input, the outputs, the loaded versions."""
    first = served[0]
    c, h, w = first.loaded.input_size
    outputs = [
        {"name": name, "datatype": "FP32", "shape": [-1, first.num_classes]}
        for name in first.outputs
        if name not in (EMBEDDING_NAME, OOD_SCORE)
    ]
    if EMBEDDING_NAME in first.outputs:
        outputs.append({"name": EMBEDDING_NAME, "datatype": "FP32", "shape": [-1, -1]})
    if OOD_SCORE in first.outputs:
        outputs.append({"name": OOD_SCORE, "datatype": "FP32", "shape": [-1]})
    ood = first.describe_ood()
    return {
        "name": first.name,
        "versions": [s.version for s in served],
        "platform": first.backend.name,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": outputs,
        # "ood_score" is an output only where there is a detector; this says which, or why not.
        "parameters": {
            "ood_detector": ood["method"] if ood["available"] else "none",
            "ood_note": ood.get("from") or ood.get("reason", ""),
        },
    }


def ood_parameters(outputs: Outputs) -> dict[str, Any]:
    """The V2 response parameters of a scored batch: ``ood_flagged`` ("true,false,...": one
    per sample) and ``ood_flagged_count``; empty without an ``ood_score`` output."""
    scores = outputs.get(OOD_SCORE)
    if scores is None:
        return {}
    flags = np.asarray(scores) > 1.0
    return {
        "ood_flagged": ",".join("true" if f else "false" for f in flags.tolist()),
        "ood_flagged_count": int(flags.sum()),
    }


async def infer(request: Request, state: ServerState, name: str, version: str | None) -> Response:
    """KServe V2 inference over REST: decode, :func:`infer_tensor`, encode."""
    start = time.perf_counter()
    route = route_request(state, name, request.headers, version)
    served = route.primary
    _tag(request, served)
    header_length = v2.parse_header_length(request.headers.get(v2.HEADER_LENGTH))
    assert served.batcher is not None
    # As /v1: one place held from before reading; a larger batch is checked when queued.
    with served.batcher.reserve(1) as reservation:
        body = await read_body(request, state.http.max_body_bytes)
        loop = asyncio.get_running_loop()
        parsed, x = await loop.run_in_executor(
            state.decoder(), decode_v2, state, served, body, header_length
        )
        rid = request_id(request)
        try:
            route, outputs = await infer_tensor(
                state, name, version, x, request_id=rid, headers=request.headers, start=start,
                client_id=parsed.id, route=route, reservation=reservation,
                pixels=v2.pixel_batch(parsed),
            )  # fmt: skip
        except OODRejected as exc:
            _tag(request, exc.served)
            return exc.response()
    served = route.primary
    _tag(request, served)
    tensors, binary = v2.resolve_outputs(parsed, outputs, labels=served.labels)
    # The answer's id: the client's, or the server's request id (both work for feedback).
    payload, headers = v2.encode_infer_response(
        served.name, served.version, parsed.id or rid, tensors, binary=binary,
        parameters=ood_parameters(outputs),
    )  # fmt: skip
    headers["X-Model-Version"] = served.version
    return Response(payload, headers=headers)
