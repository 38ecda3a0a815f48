"""HTTP plumbing shared by the routes: bounded bodies, multipart uploads, errors, access log.

* :func:`read_body` refuses a body over the limit from its ``Content-Length`` before reading
  a byte, and stops reading a chunked body as soon as it passes the limit.
* :func:`upload_from` takes the image of a ``POST``: a raw body of an image type (the one table
  is :data:`~resnetkit.serve.validation.IMAGE_TYPES`; the bytes decide the format), or the
  ``file`` field of a ``multipart/form-data`` form, whose declared type is not trusted.
* :data:`ERROR_STATUS` is the one table from exception class to HTTP status (Starlette's
  habit); :func:`error_response` answers every error as ``{"error": "..."}``.
* :class:`AccessLog` is a pure ASGI middleware: a request id (``X-Request-Id``, honoured when
  the client sends a sane one), the in-flight gauge, request metrics by route template, one
  JSON log line per request, and the body deadline: a body still arriving ``body_timeout_s``
  after its headers is a :class:`~resnetkit.errors.RequestTimeout` (408), so a client that
  sends a byte a second holds no slot for long (uvicorn has no such bound of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse

from resnetkit.errors import (
    CheckpointError,
    ConfigError,
    Conflict,
    DataError,
    DeadlineExceeded,
    InvalidInput,
    MissingDependency,
    NotFound,
    NotReady,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    RegistryError,
    RegistryUnavailable,
    RequestTimeout,
    ResNetKitError,
    ServeError,
    StorageFull,
    Unauthenticated,
    UnsupportedMediaType,
)
from resnetkit.serve.auth import WWW_AUTHENTICATE
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.validation import IMAGE_TYPES, is_upload_type, read_limited

__all__ = [
    "ERROR_STATUS",
    "AccessLog",
    "Upload",
    "error_response",
    "read_body",
    "read_json",
    "request_id",
    "status_for",
    "upload_from",
]

log = logging.getLogger("resnetkit.serve")
access_log = logging.getLogger("resnetkit.access")

#: Exception class → HTTP status; the first entry the error is an instance of wins.
ERROR_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (PayloadTooLarge, 413),
    (UnsupportedMediaType, 415),
    (RequestTimeout, 408),
    (InvalidInput, 400),
    (NotFound, 404),
    (Conflict, 409),
    (NotReady, 503),
    (QueueFull, 503),
    (DeadlineExceeded, 504),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (ConfigError, 400),
    (DataError, 400),
    (CheckpointError, 422),
    (RegistryUnavailable, 503),
    (RegistryError, 404),
    (MissingDependency, 501),
    (StorageFull, 507),
    (ServeError, 500),
    (ResNetKitError, 500),
)
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_UPLOAD_FIELD = "file"


def status_for(exc: BaseException) -> int:
    """The HTTP status of an error (500 for anything not in :data:`ERROR_STATUS`)."""
    return next((status for cls, status in ERROR_STATUS if isinstance(exc, cls)), 500)


def error_response(exc: BaseException, status: int | None = None) -> JSONResponse:
    """``{"error": message}`` with the status of the table, and the headers it calls for."""
    code = status if status is not None else status_for(exc)
    message = str(exc) if code < 500 or isinstance(exc, ResNetKitError) else "internal error"
    # A message may quote what the client sent, lone surrogates included (JSON's "\ud8cc"
    # decodes to one); UTF-8 cannot encode them, and the answer would become a 500.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    headers = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if isinstance(exc, NotReady):
        headers["Retry-After"] = "1"
    if isinstance(exc, RegistryUnavailable):
        headers["Retry-After"] = "5"
    if isinstance(exc, RequestTimeout):
        headers["Connection"] = "close"  # the rest of a slow body is not waited for
    if code == 401:
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return JSONResponse({"error": message}, status_code=code, headers=headers)


def request_id(request: Request) -> str:
    """The id the access-log middleware gave this request."""
    return str(request.scope.get("state", {}).get("request_id", "")) or uuid.uuid4().hex


async def read_body(
    request: Request, max_bytes: int, *, expected: str = "an image or a V2 inference request"
) -> bytes:
    """The request body, refused (413) past ``max_bytes`` without reading it all.

    Args:
        request: the request.
        max_bytes: the most bytes the body may have.
        expected: what the route takes, for the message about an empty body.

    Raises:
        PayloadTooLarge: the declared or the actual length is over the limit.
        InvalidInput: an empty body, or a Content-Length that is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput(f"Content-Length {declared[:20]!r} is not a number")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(
                f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,}"
            )
    body = await read_limited(request.stream(), max_bytes)
    if not body:
        raise InvalidInput(f"empty request body: send {expected}")
    return body


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """A request body that must be a JSON object.

    Raises:
        InvalidInput: not JSON, or not an object.
        PayloadTooLarge: over ``max_bytes``.
    """
    body = await read_body(request, max_bytes, expected="a JSON object")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInput(f"the body must be a JSON object: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object")
    return payload


class Upload:
    """An uploaded file: its bytes and the content type its sender declared (None for a form
    part: browsers set it from the file name, so only the bytes are trusted)."""

    def __init__(self, data: bytes, content_type: str | None) -> None:
        self.data = data
        self.content_type = content_type


def upload_from(body: bytes, content_type: str | None) -> Upload:
    """The image in a request body: raw ``image/*`` or the ``file`` field of a form.

    Raises:
        UnsupportedMediaType: a content type that cannot carry an image (``text/plain``).
        InvalidInput: a malformed form, or one without a ``file`` field.
    """
    kind, params = parse_options_header(content_type or "")
    kind_text = kind.decode("latin-1").lower()
    if kind_text == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise InvalidInput("multipart/form-data without a boundary")
        return _form_file(body, boundary)
    if kind_text and is_upload_type(kind_text):
        return Upload(body, kind_text)
    canonical = ", ".join(types[0] for types in IMAGE_TYPES.values())
    raise UnsupportedMediaType(
        f"content type {kind_text or 'none'!r} is not an image: send the image as the body "
        f"({canonical} or application/octet-stream) or as the field 'file' of "
        "multipart/form-data"
    )


def _form_file(body: bytes, boundary: bytes) -> Upload:
    parts: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    field: list[bytes] = []
    value: list[bytes] = []

    def on_part_begin() -> None:
        current.clear()
        current.update(headers={}, data=[])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.append(data[start:end])

    def on_header_end() -> None:
        name = b"".join(field).decode("latin-1").lower()
        current["headers"][name] = b"".join(value).decode("latin-1")
        field.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append(dict(current))

    callbacks: Any = {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end,
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own error types
        raise InvalidInput(f"malformed multipart/form-data body: {exc}") from exc
    for part in parts:
        _, params = parse_options_header(part["headers"].get("content-disposition", ""))
        if params.get(b"name", b"").decode("latin-1") == _UPLOAD_FIELD:
            return Upload(b"".join(part["data"]), None)
    raise InvalidInput(f"the form has no field {_UPLOAD_FIELD!r}: upload the image as 'file'")


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


_UNTRACKED_PREFIXES = ("/metrics", "/healthz", "/readyz", "/static")


def _bounded_receive(receive: Receive, timeout_s: float) -> Receive:
    """``receive`` whose body messages must all arrive within ``timeout_s`` of now; after
    the last one it waits unbounded (for a disconnect, as streaming responses do)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    body_done = False

    async def bounded() -> MutableMapping[str, Any]:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {timeout_s:g} s of its headers; "
                "send it at once"
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return bounded


class AccessLog:
    """ASGI middleware: request id, in-flight gauge, request metrics, a JSON access line.

    Routes put ``model`` and ``version`` into ``scope["state"]`` when they know them; a
    request that never reached a model is counted under model ``"-"``, so clients cannot
    create new metric series by naming models that do not exist.
    """

    def __init__(
        self, app: ASGIApp, metrics: ServerMetrics, body_timeout_s: float | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = [500]

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                headers = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                version = state.get("version")
                if version and not any(k.lower() == b"x-model-version" for k, _ in headers):
                    # Errors too say which version answered (a canary's, during a rollout).
                    headers.append((b"x-model-version", str(version).encode()))
                message["headers"] = headers
            await send(message)

        # Scrapes and probes are not traffic: they would keep the in-flight gauge above zero.
        probe = str(scope.get("path", "")).startswith(_UNTRACKED_PREFIXES)
        if self.body_timeout_s is not None:
            receive = _bounded_receive(receive, self.body_timeout_s)
        with contextlib.nullcontext() if probe else self.metrics.track_inflight():
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._record(scope, state, status[0], time.perf_counter() - start)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        model, version = state.get("model", "-"), state.get("version", "-")
        if not template.startswith(_UNTRACKED_PREFIXES):
            self.metrics.observe_request(model, version, template, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "request_id": state["request_id"],
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "route": template,
                        "status": status,
                        "model": model,
                        "version": version,
                        "latency_ms": round(seconds * 1000, 3),
                    }
                )
            )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
