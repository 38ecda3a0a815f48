"""Answering a request: decode, route (stable or canary), batch, measure, log, watch drift.

The routes in :mod:`resnetkit.serve.app` parse HTTP; everything a prediction does after that
is here, the same for ``/v1`` images and KServe V2 tensors. During a rollout the router picks
the version that answers, may shadow the request to the canary (in the background, never
delaying the answer), and counts each version's answers, errors and latency.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from resnetkit.errors import InvalidInput, NotReady, ResNetKitError, ServeError
from resnetkit.onnxio import EMBEDDING_NAME, INPUT_NAME
from resnetkit.serve import protocol_v2 as v2
from resnetkit.serve.batcher import Reservation
from resnetkit.serve.http import read_body, request_id, status_for, upload_from
from resnetkit.serve.pool import PROBABILITIES, ServedModel
from resnetkit.serve.predlog import PredictionRecord
from resnetkit.serve.router import Route
from resnetkit.serve.state import ServerState
from resnetkit.serve.validation import decode_image, image_to_model_input

__all__ = ["alias_history", "explain_image", "infer", "predict_image", "v2_metadata"]

Outputs = dict[str, np.ndarray]


def _route(request: Request, state: ServerState, name: str | None) -> Route:
    """The version that answers a request for ``name`` (the one served model for None)."""
    if name is None:
        name = state.pool.only().name
    if state.router is None:
        return Route(state.pool.get(name))
    return state.router.route(name, request.headers)


def _deadline_s(state: ServerState, start: float) -> float:
    return max(0.0, state.http.timeout_ms / 1000 - (time.perf_counter() - start))


def _tag(request: Request, served: ServedModel) -> None:
    """Name the model and version for the access log and the request metrics."""
    request.state.model = served.name
    request.state.version = served.version


def _spawn(state: ServerState, work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    state.background.add(task)
    task.add_done_callback(state.background.discard)


async def _run(
    state: ServerState,
    served: ServedModel,
    role: str | None,
    x: np.ndarray,
    deadline_s: float,
    reservation: Reservation | None = None,
) -> Outputs:
    """One forward pass through ``served``'s batcher, counted for the rollout analysis."""
    started = time.perf_counter()
    assert served.batcher is not None
    try:
        outputs = await served.batcher.submit(x, deadline_s=deadline_s, reservation=reservation)
        fault = served.fault
        if fault is not None:
            await asyncio.sleep(fault.delay_ms / 1000)
            if random.random() < fault.error_rate:
                raise ServeError(f"{served.name}:{served.version}: injected fault")
    except ResNetKitError as exc:
        if state.router is not None and status_for(exc) >= 500:
            state.router.record(served.name, role, False, time.perf_counter() - started, None)
        raise
    if state.router is not None:
        confidence = float(outputs[PROBABILITIES].max(axis=1).mean())
        state.router.record(served.name, role, True, time.perf_counter() - started, confidence)
    return outputs


async def _shadow(
    state: ServerState, route: Route, x: np.ndarray, answered: Outputs, rid: str
) -> None:
    """Run the request on the other version too and compare (its errors count against it;
    the client already has its answer)."""
    assert route.shadow is not None and state.router is not None
    other, role = route.shadow, route.shadow_role
    try:
        outputs = await _run(state, other, role, x, state.http.timeout_ms / 1000)
    except ResNetKitError:
        return
    tops = {
        route.role: int(answered[PROBABILITIES][0].argmax()),
        role: int(outputs[PROBABILITIES][0].argmax()),
    }
    state.router.compare(other.name, tops["stable"], tops["canary"])
    state.router.remember(rid, other.name, role, other.version, tops[role])


async def _answer(
    request: Request,
    state: ServerState,
    route: Route,
    x: np.ndarray,
    start: float,
    reservation: Reservation | None = None,
) -> tuple[Route, Outputs]:
    """Run the request on the routed version; the route that answered, and its outputs.

    A version taken out of a rollout between routing and running (a rollback or promotion
    unloading it) is not the client's problem: the request is routed again.
    """
    try:
        deadline_s = _deadline_s(state, start)
        outputs = await _run(state, route.primary, route.role, x, deadline_s, reservation)
    except NotReady:
        if route.role is None:
            raise
        route = _route(request, state, route.primary.name)
        outputs = await _run(state, route.primary, route.role, x, _deadline_s(state, start))
    served = route.primary
    _tag(request, served)
    rid = request_id(request)
    if state.router is not None:
        top1 = int(outputs[PROBABILITIES][0].argmax())
        state.router.remember(rid, served.name, route.role, served.version, top1)
        if route.shadow is not None:
            _spawn(state, _shadow(state, route, x, outputs, rid))
    _watch_drift(state, served, outputs)
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
) -> JSONResponse:
    """``/v1`` prediction: one uploaded image, its top-``k`` classes."""
    start = time.perf_counter()
    route = _route(request, state, name)
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
        route, outputs = await _answer(request, state, route, x[None], start, reservation)
    served = route.primary
    predictions = _top_k(outputs[PROBABILITIES][0], served.labels, k)
    rid = request_id(request)
    latency_ms = (time.perf_counter() - start) * 1000
    _observe(state, served, rid, predictions, latency_ms, outputs.get(EMBEDDING_NAME))
    answer = {
        "model": served.name,
        "version": served.version,
        "request_id": rid,
        "predictions": predictions,
        "latency_ms": round(latency_ms, 3),
    }
    return JSONResponse(answer, headers={"X-Model-Version": served.version})


def _watch_drift(state: ServerState, served: ServedModel, outputs: Outputs) -> None:
    """Add a request's embeddings to the live drift window; test it off the request path."""
    if served.drift is None or EMBEDDING_NAME not in outputs:
        return
    if served.drift.add(outputs[EMBEDDING_NAME], outputs[PROBABILITIES]):
        _spawn(state, served.drift.evaluate_soon())


def _observe(
    state: ServerState,
    served: ServedModel,
    rid: str,
    predictions: list[dict[str, Any]],
    latency_ms: float,
    embedding: np.ndarray | None,
) -> None:
    top = predictions[0]
    state.metrics.observe_prediction(served.name, served.version, top["label"], top["probability"])
    if state.predlog is not None and state.predlog.should_log(rid):
        state.predlog.log(
            PredictionRecord(
                request_id=rid,
                model=served.name,
                version=served.version,
                top_k=[(p["label"], p["probability"]) for p in predictions],
                confidence=top["probability"],
                latency_ms=latency_ms,
                embedding=None if embedding is None else embedding[0].tolist(),
            )
        )


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
    top = [{"label": served.labels[i], "index": i, "probability": p} for i, p in result.topk(5)[0]]
    explained = int(result.target_classes[0])
    if fmt == "json":
        return JSONResponse(
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
        if name != EMBEDDING_NAME
    ]
    if EMBEDDING_NAME in first.outputs:
        outputs.append({"name": EMBEDDING_NAME, "datatype": "FP32", "shape": [-1, -1]})
    return {
        "name": first.name,
        "versions": [s.version for s in served],
        "platform": first.backend.name,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": outputs,
    }


async def infer(request: Request, state: ServerState, name: str, version: str | None) -> Response:
    """KServe V2 inference; an explicit version bypasses the rollout router."""
    start = time.perf_counter()
    route = Route(state.pool.get(name, version)) if version else _route(request, state, name)
    served = route.primary
    _tag(request, served)
    header_length = v2.parse_header_length(request.headers.get(v2.HEADER_LENGTH))
    assert served.batcher is not None
    max_batch = served.batcher.capacity

    def parse(body: bytes) -> tuple[v2.InferRequest, np.ndarray]:
        parsed = v2.parse_infer_request(
            body, header_length, max_elements=max_batch * int(np.prod(served.loaded.input_size))
        )
        v2.check_outputs(parsed, served.outputs)
        return parsed, v2.prepare_model_input(parsed, served.loaded.spec, max_batch_size=max_batch)

    # As /v1: one place held from before reading; a larger batch is checked when queued.
    with served.batcher.reserve(1) as reservation:
        body = await read_body(request, state.http.max_body_bytes)
        loop = asyncio.get_running_loop()
        parsed, x = await loop.run_in_executor(state.decoder(), parse, body)
        route, outputs = await _answer(request, state, route, x, start, reservation)
    served = route.primary
    tensors, binary = v2.resolve_outputs(parsed, outputs, labels=served.labels)
    payload, headers = v2.encode_infer_response(
        served.name, served.version, parsed.id, tensors, binary=binary
    )
    probabilities = outputs[PROBABILITIES]
    for row, index in enumerate(probabilities.argmax(axis=1).tolist()):
        label, confidence = served.labels[index], float(probabilities[row, index])
        state.metrics.observe_prediction(served.name, served.version, label, confidence)
    headers["X-Model-Version"] = served.version
    return Response(payload, headers=headers)
