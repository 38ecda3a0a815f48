"""KServe V2 inference over gRPC (``inference.GRPCInferenceService``), beside the REST routes.

The gRPC half of the Open Inference Protocol, served by ``grpc.aio`` on the server's own event
loop and sharing everything with REST: the model pool, each version's batcher and compute
slot, the rollout router, metrics and the prediction log. This module only decodes and
encodes:

* a ``ModelInferRequest`` becomes what the REST binary-extension form holds (the inference
  document, each input's ``binary_data_size`` in its parameters, and the raw bytes, uncopied)
  and is checked by :func:`resnetkit.serve.protocol_v2.parse_infer_document`, the same checks
  REST's JSON goes through, so both protocols accept and refuse exactly the same tensors with
  the same messages;
* the decoded batch goes through :func:`resnetkit.serve.inference.infer_tensor`, the one
  protocol-free request path;
* outputs go back as ``raw_output_contents`` (Triton's habit; every V2 client reads them),
  classification results as BYTES.

Errors use the HTTP table of :mod:`resnetkit.serve.http` (:func:`status_for`) and map its
status to a gRPC code (:data:`GRPC_CODE_FOR_STATUS`): 400/415 INVALID_ARGUMENT, 413
RESOURCE_EXHAUSTED, 404 NOT_FOUND, 409 FAILED_PRECONDITION, 401 UNAUTHENTICATED, 403
PERMISSION_DENIED, 503 UNAVAILABLE (backpressure: RESOURCE_EXHAUSTED with a ``retry-after``
trailer), 504 DEADLINE_EXCEEDED, 507 (no space to write) RESOURCE_EXHAUSTED, anything else
INTERNAL. Message size limits equal the REST body limit, so a request too big for one protocol
is too big for the other.

The messages are built from the compiled descriptor ``proto/grpc_predict_v2.desc`` in a private
descriptor pool (no generated ``_pb2`` modules), so a process may also import a client library
that registers the same ``inference.*`` names (``tritonclient.grpc`` does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from resnetkit import __version__
from resnetkit.errors import ConfigError, InvalidInput, QueueFull, ResNetKitError
from resnetkit.serve import protocol_v2 as v2
from resnetkit.serve.http import status_for
from resnetkit.serve.inference import (
    OODRejected,
    decode_v2,
    infer_tensor,
    ood_parameters,
    route_request,
    v2_metadata,
)
from resnetkit.serve.state import ServerState

__all__ = [
    "GRPC_CODE_FOR_STATUS",
    "SERVICE",
    "GrpcServer",
    "Messages",
    "ModelInferCall",
    "grpc_code_for",
    "messages",
    "read_model_infer",
    "to_grpc_response",
    "to_infer_document",
]

log = logging.getLogger("resnetkit.serve")

DESCRIPTOR_PATH = Path(__file__).resolve().parent / "proto" / "grpc_predict_v2.desc"
SERVICE = "inference.GRPCInferenceService"

#: HTTP status of :data:`resnetkit.serve.http.ERROR_STATUS` → gRPC status code.
GRPC_CODE_FOR_STATUS: Mapping[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

# Typed contents field per datatype, and the numpy type its values are checked against.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_NUMPY_TYPE = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclasses.dataclass(frozen=True)
class Messages:
    """The protocol's message classes, by their names in the ``.proto``."""

    classes: Mapping[str, type[Any]]

    def __getattr__(self, name: str) -> type[Any]:
        try:
            return self.classes[name]
        except KeyError:
            raise AttributeError(name) from None


@functools.cache
def messages() -> Messages:
    """The message classes of ``inference.*``, built once in a private descriptor pool."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_PATH.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    names = [m.name for f in files.file for m in f.message_type]
    return Messages(
        {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{n}"))
         for n in names}
    )  # fmt: skip


def grpc_code_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC code of an error: its HTTP status from the one table, translated."""
    if isinstance(exc, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED  # backpressure: retry, with the hint
    return GRPC_CODE_FOR_STATUS.get(status_for(exc), grpc.StatusCode.INTERNAL)


# --- Decoding ------------------------------------------------------------------------------


def _parameter_value(param: Any) -> Any:
    which = param.WhichOneof("parameter_choice")
    return None if which is None else getattr(param, which)


def _parameters(params: Any) -> dict[str, Any]:
    return {key: _parameter_value(value) for key, value in params.items()}


def _contents_bytes(tensor: Any, where: str) -> bytes:
    """An input's typed ``contents`` as the raw little-endian bytes of the binary form."""
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        return b""  # the parser names the unknown datatype
    values = getattr(tensor.contents, field)
    if tensor.datatype == "BYTES":
        return b"".join(len(v).to_bytes(4, "little") + v for v in values)
    kind = _NUMPY_TYPE[tensor.datatype]
    wide = np.asarray(values, dtype=np.float64 if kind in (np.float32, np.float64) else None)
    if wide.size and np.issubdtype(kind, np.integer):
        info = np.iinfo(kind)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(
                f"{where}.contents.{field} holds values out of range for {tensor.datatype} "
                f"[{info.min}, {info.max}]"
            )
    with np.errstate(over="ignore"):
        return np.asarray(wide, dtype=np.dtype(kind).newbyteorder("<")).tobytes()


_RAW_INPUT_CONTENTS = 7  # ModelInferRequest's field number (repeated bytes)


class ModelInferCall(NamedTuple):
    """A received ``ModelInferRequest``: the message without its ``raw_input_contents``, and
    those as views into the received bytes (in order)."""

    message: Any
    raw: list[memoryview]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]  # IndexError past the end: a truncated message
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _split_raw_contents(data: bytes) -> tuple[bytes, list[memoryview]]:
    """The message's bytes without field 7, and each field-7 entry as a view of ``data``.

    Only the top level is walked (a handful of fields), so the raw tensors, nearly all of the
    message, are neither parsed nor copied: upb's parse copies every bytes field into its arena
    and reading ``raw_input_contents[i]`` copies it again, two fresh megabyte-sized buffers per
    request whose page faults cost more than the rest of the protocol.

    Raises:
        ValueError, IndexError: not a well-formed message (the caller parses it the standard
            way, which gives protobuf's own error).
    """
    view, end = memoryview(data), len(data)
    kept: list[memoryview] = []
    raw: list[memoryview] = []
    pos = run = 0  # run: where the current stretch of kept fields began
    while pos < end:
        field_start = pos
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 2:  # length-delimited
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("field runs past the end")
            if tag >> 3 == _RAW_INPUT_CONTENTS:
                kept.append(view[run:field_start])
                raw.append(view[pos : pos + length])
                run = pos + length
            pos += length
        elif wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("field runs past the end")
    if not raw:
        return data, raw
    kept.append(view[run:end])
    return b"".join(kept), raw


def read_model_infer(data: bytes) -> ModelInferCall:
    """Parse a serialized ``ModelInferRequest`` (the gRPC request deserializer), leaving the
    raw input tensors where they arrived.

    Raises:
        google.protobuf.message.DecodeError: not a ``ModelInferRequest``.
    """
    cls = messages().ModelInferRequest
    try:
        rest, raw = _split_raw_contents(data)
    except (ValueError, IndexError):
        message = cls.FromString(data)  # protobuf's verdict and message on malformed bytes
        return ModelInferCall(message, [memoryview(b) for b in message.raw_input_contents])
    return ModelInferCall(cls.FromString(rest), raw)


def to_infer_document(
    request: Any, raw: list[memoryview] | None = None
) -> tuple[dict[str, Any], memoryview | None]:
    """A ``ModelInferRequest`` as the V2 inference document and its binary data: what the REST
    binary-extension form holds (a JSON header naming each input's ``binary_data_size``, then
    the bytes), without writing the JSON or copying a single raw input.

    ``raw``: the raw input contents when they were split off the message
    (:func:`read_model_infer`); by default the message's own.

    Raises:
        InvalidInput: raw and typed contents mixed, or a raw entry count that does not
            match the inputs.
    """
    if raw is None:
        raw = list(request.raw_input_contents)
    if raw and any(t.HasField("contents") for t in request.inputs):
        raise InvalidInput(
            "raw_input_contents is set, so no input may also carry contents; send each tensor once"
        )
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in the order of inputs"
        )
    chunks, inputs = [], []
    for i, tensor in enumerate(request.inputs):
        chunk = raw[i] if raw else _contents_bytes(tensor, f"inputs[{i}]")
        chunks.append(chunk)
        parameters = _parameters(tensor.parameters)
        parameters["binary_data_size"] = len(chunk)
        inputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": parameters,
            }
        )
    doc: dict[str, Any] = {"inputs": inputs, "parameters": _parameters(request.parameters)}
    if request.id:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [
            {"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs
        ]
    binary = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return doc, memoryview(binary) if chunks else None


# --- Encoding ------------------------------------------------------------------------------


def to_grpc_response(
    model_name: str,
    model_version: str,
    request_id: str,
    outputs: list[v2.OutputTensor],
    parameters: Mapping[str, v2.ParamValue] | None = None,
) -> Any:
    """A ``ModelInferResponse`` with every output as ``raw_output_contents`` (the binary
    extension's layout) and the response's ``parameters`` (bool, int or string values)."""
    response = messages().ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id
    )
    for out in outputs:
        response.outputs.add(name=out.name, datatype=out.datatype, shape=out.data.shape)
        response.raw_output_contents.append(v2.tensor_bytes(out.data, out.datatype))
    for key, value in (parameters or {}).items():
        _set_parameter(response.parameters[key], value)
    return response


def _set_parameter(param: Any, value: v2.ParamValue) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    else:
        param.string_param = str(value)


# --- The service ---------------------------------------------------------------------------


class _Service:
    """The six RPCs of ``GRPCInferenceService`` over one server's state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.m = messages()

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return self.m.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return self.m.ServerReadyResponse(ready=self.state.pool.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        served = self.state.pool.get(request.name, request.version or None)
        return self.m.ModelReadyResponse(ready=bool(served.ready))

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        doc = v2.server_metadata(version=__version__)
        return self.m.ServerMetadataResponse(**doc)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        pool = self.state.pool
        if request.version:
            doc = v2_metadata([pool.get(request.name, request.version)])
        else:
            pool.get(request.name)
            doc = v2_metadata(list(pool.models[request.name].values()))
        tensor = self.m.ModelMetadataResponse.TensorMetadata
        return self.m.ModelMetadataResponse(
            name=doc["name"],
            versions=[str(v) for v in doc["versions"]],
            platform=doc["platform"],
            inputs=[tensor(**t) for t in doc["inputs"]],
            outputs=[tensor(**t) for t in doc["outputs"]],
        )

    async def ModelInfer(self, call: ModelInferCall, context: Any) -> Any:
        start = time.perf_counter()
        request = call.message
        state, name, version = self.state, request.model_name, request.model_version or None
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        # As REST: route first, so the version that will answer decodes the tensors, and hold
        # one place on its batcher before decoding (a full queue refuses before any work).
        route = route_request(state, name, metadata, version)
        served = route.primary
        assert served.batcher is not None
        with served.batcher.reserve(1) as reservation:
            parsed, x = await asyncio.get_running_loop().run_in_executor(
                state.decoder(), decode_v2, state, served, to_infer_document(request, call.raw)
            )
            request_id = uuid.uuid4().hex
            route, outputs = await infer_tensor(
                state, name, version, x, request_id=request_id, headers=metadata, start=start,
                deadline_s=context.time_remaining(), client_id=request.id or None, route=route,
                reservation=reservation, pixels=v2.pixel_batch(parsed),
            )  # fmt: skip
        answered = route.primary
        tensors, _ = v2.resolve_outputs(parsed, outputs, labels=answered.labels)
        context.set_trailing_metadata((("x-model-version", answered.version),))
        # As over REST: the client's id, or the server's when it sent none (for feedback).
        return to_grpc_response(
            answered.name, answered.version, request.id or request_id, tensors,
            ood_parameters(outputs),
        )  # fmt: skip


def _unary(
    state: ServerState, method: str, call: Callable[[Any, Any], Awaitable[Any]]
) -> Callable[[Any, Any], Awaitable[Any]]:
    """Wrap an RPC: errors to status codes, and request metrics like the REST routes'."""
    route = f"grpc:{method}"

    async def handler(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        status, model, version = 200, "-", "-"
        if isinstance(request, ModelInferCall):
            model = request.message.model_name or "-"
        try:
            if isinstance(request, _Malformed):  # as REST's 400 for a body it cannot parse
                raise InvalidInput(f"not a valid {method}Request message: {request.detail}")
            with state.metrics.track_inflight():
                response = await call(request, context)
            version = getattr(response, "model_version", "") or version
            return response
        except ResNetKitError as exc:
            # A refused out-of-distribution input is REST's 422, INVALID_ARGUMENT here.
            status = 422 if isinstance(exc, OODRejected) else status_for(exc)
            trailers: tuple[tuple[str, str], ...] = ()
            if isinstance(exc, QueueFull):  # as REST's Retry-After header
                trailers = (("retry-after", str(max(1, round(exc.retry_after_s)))),)
            elif status >= 500:
                log.warning("gRPC %s failed: %s", method, exc)
            code = grpc.StatusCode.INVALID_ARGUMENT if status == 422 else grpc_code_for(exc)
            await context.abort(code, str(exc), trailing_metadata=trailers)
        except Exception:
            status = 500
            log.exception("gRPC %s: internal error", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if method == "ModelInfer":
                state.metrics.observe_request(
                    model, version, route, status, time.perf_counter() - started
                )

    return handler


class _Malformed(NamedTuple):
    """A request message protobuf could not parse, and why."""

    detail: str


def _tolerant(read: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that hands bytes protobuf cannot parse to the handler, to be
    refused as INVALID_ARGUMENT like any other bad input, instead of grpc answering UNKNOWN."""

    def parse(data: bytes) -> Any:
        try:
            return read(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return parse


def _handler(state: ServerState) -> grpc.GenericRpcHandler:
    service, m = _Service(state), messages()
    kinds = {
        "ServerLive": (m.ServerLiveRequest, service.ServerLive),
        "ServerReady": (m.ServerReadyRequest, service.ServerReady),
        "ModelReady": (m.ModelReadyRequest, service.ModelReady),
        "ServerMetadata": (m.ServerMetadataRequest, service.ServerMetadata),
        "ModelMetadata": (m.ModelMetadataRequest, service.ModelMetadata),
        "ModelInfer": (m.ModelInferRequest, service.ModelInfer),
    }
    readers: dict[str, Callable[[bytes], Any]] = {"ModelInfer": read_model_infer}
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            _unary(state, method, call),
            request_deserializer=_tolerant(readers.get(method, cls.FromString)),
            response_serializer=lambda msg: msg.SerializeToString(),
        )
        for method, (cls, call) in kinds.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class GrpcServer:
    """The gRPC listener of one server process; started and stopped with the app."""

    def __init__(self, state: ServerState, *, host: str, port: int) -> None:
        if not 0 <= port < 65536:
            raise ConfigError(f"--grpc-port must be 0..65535, got {port}")
        self.state, self.host, self.port = state, host, port
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and start serving; the port bound (useful with port 0).

        Raises:
            ConfigError: the address cannot be bound (the port is taken, or the host wrong).
        """
        limit = self.state.http.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((_handler(self.state),))
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if bound == 0:
            raise ConfigError(f"cannot listen for gRPC on {address}: the port is in use")
        await server.start()
        self._server, self.port = server, bound
        log.info("gRPC (KServe V2) on %s:%d", self.host, bound)
        return bound

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let calls in flight finish within ``grace_s``."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
