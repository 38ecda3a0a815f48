"""The OpenAPI document of the server: what every route takes and every status it answers.

The route table (:class:`resnetkit.serve.routes.Api`) writes the paths, parameters and success
responses; :func:`document` completes them with what the table cannot see, because the routes
read their bodies themselves (bounded, see :mod:`resnetkit.serve.http`):

* request bodies: images (:data:`IMAGE_BODY`), V2 inference (:data:`V2_BODY`) and the JSON
  objects of the management, rollout and feedback routes (:data:`JSON_BODIES`);
* every error status a route can answer, each with the ``{"error": string}`` body of
  :func:`resnetkit.serve.http.error_response`, chosen by what the route does
  (:func:`_error_statuses`); a bad query parameter answers 400;
* content types that are not JSON: ``/metrics`` (Prometheus text or OpenMetrics), a Grad-CAM
  PNG, V2 binary tensors;
* the bearer token of the management routes as a security scheme.

``schemathesis run URL/openapi.json --checks all`` holds the server to this document (the
test is in ``tests/serve/test_openapi.py``).
"""

from __future__ import annotations

from typing import Any

from resnetkit.serve.routes import Api
from resnetkit.serve.validation import IMAGE_TYPES, SIZE_POLICY

__all__ = ["IMAGE_BODY", "JSON_BODIES", "TIMEOUT_NOTE", "V2_BODY", "document"]

#: What ``--timeout-ms`` bounds, for the route descriptions.
TIMEOUT_NOTE = (
    "--timeout-ms bounds how long a request may wait for its forward pass: one still queued "
    "at its deadline answers 504 and is never computed; a forward pass already running is "
    "not interrupted (it is one batch, bounded by --max-batch-size)."
)

_BINARY = {"type": "string", "format": "binary"}
# Only the types a generic client can make a file of are listed as raw bodies; every image/*
# type is taken (the bytes decide), as the description says.
_RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")

IMAGE_BODY: dict[str, Any] = {
    "description": (
        "One image: the body, under any image/* type or application/octet-stream (the bytes "
        f"decide: {', '.join(IMAGE_TYPES)}), or the field 'file' of a multipart form. "
        f"Sizes: {SIZE_POLICY}."
    ),
    "content": {
        **{media: {"schema": _BINARY} for media in _RAW_IMAGE_TYPES},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]},
            "encoding": {"file": {"contentType": ", ".join(_RAW_IMAGE_TYPES)}},
        },
    },
    "required": True,
}
# The protocol's request input: name, shape and datatype always; ``data`` unless the binary
# extension carries the tensor (``parameters.binary_data_size``).
_V2_INPUT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string"},
        "parameters": {"type": "object"},
        "data": {},
    },
}
V2_BODY: dict[str, Any] = {
    "description": (
        "A KServe V2 inference request: one input, FP32 [N, C, H, W] normalised or UINT8 "
        f"[N, H, W, 1 or 3] pixels; JSON, or binary tensors after the JSON header. {SIZE_POLICY}."
    ),
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "inputs": {"type": "array", "items": _V2_INPUT, "minItems": 1},
                    "outputs": {"type": "array", "items": {"type": "object"}},
                    "parameters": {"type": "object"},
                },
            }
        },
        "application/octet-stream": {"schema": _BINARY},
    },
    "required": True,
}


def _json_body(
    properties: dict[str, Any], required: list[str], text: str, *, closed: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if closed:
        schema["additionalProperties"] = False
    content = {"application/json": {"schema": schema}}
    return {"description": text, "content": content, "required": True}


#: ``registry.validate_name``'s rule as a JSON Schema pattern (no lookahead, which fuzzers
#: cannot draw from): a letter, digit or ``_``, then letters, digits, ``-``, ``_``, and dots
#: never two in a row. ``tests/serve/test_openapi.py`` holds the two to the same names.
NAME_PATTERN = r"^[A-Za-z0-9_](\.?[A-Za-z0-9_-])*\.?$"
_NAME = {"type": "string", "pattern": NAME_PATTERN, "maxLength": 128}
_NAME_BODY = NAME_PATTERN.strip("^$")
# A registry reference with a version or an alias; a bare name (the latest version) and a
# path on the server are taken too, as the description says, but a pattern cannot tell a
# name from a path ending in .onnx.
_REF = {
    "type": "string",
    "pattern": f"^{_NAME_BODY}(:[1-9][0-9]{{0,8}}|@{_NAME_BODY})$",
    "maxLength": 128,
}
_LABEL = {"oneOf": [{"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0}]}

#: The JSON bodies of the routes that read a JSON object themselves, by (method, path).
#: Extra keys are ignored, except by a rollout start (they are rollout settings).
JSON_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/admin/models"): _json_body(
        {"ref": _REF, "name": _NAME},
        ["ref"],
        'A registry reference ("fashion:3", "fashion@prod", or "fashion" for the latest '
        "version) or a path on the server (a run directory or an .onnx file), and optionally "
        "the name to serve it under (the registry's rule for model names: 1-128 letters, "
        "digits, '-', '_' or '.', starting with a letter, digit or '_', without '..').",
    ),
    ("post", "/v1/feedback"): _json_body(
        {"request_id": {"type": "string", "minLength": 1, "maxLength": 128}, "label": _LABEL},
        ["request_id", "label"],
        "The true label (index or name) of an answered request, by the id the client sent "
        "(X-Request-Id, or the V2 body's id) or the one the server returned.",
    ),
    ("post", "/v1/admin/rollouts"): _json_body(
        {
            "model": _NAME,
            "canary": {"type": "integer", "minimum": 1, "maximum": 10**9},
            "actor": {"type": "string", "maxLength": 200},
        },
        ["model", "canary"],
        'The served model and the canary version (N, or "model:N"). The keys of a rollout '
        "file (steps, interval_s, shadow, ...) may be added and are checked as in the file; "
        "the schema leaves them out, as their ranges are the file's (docs: rollout files).",
        closed=True,
    ),
    ("put", "/v1/admin/faults/{name}/{version}"): _json_body(
        {
            "delay_ms": {"type": "number", "minimum": 0},
            "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
        },
        [],
        "The latency and the share of errors to inject into one version.",
    ),
}

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_REASONS = {
    400: "Bad request: the message says what is wrong",
    401: "No or malformed Authorization header",
    408: "The body did not arrive within --body-timeout-s (the connection is closed)",
    403: "Management disabled, or a wrong token",
    404: "No such model, version or resource",
    409: "In conflict with the server's state",
    413: "Over the size policy",
    415: "Not an image this server takes",
    422: "A model that cannot be loaded, or an out-of-distribution input (--ood-action reject)",
    500: "The model failed (non-finite output, an injected fault)",
    501: "Needs PyTorch, which this install lacks (Grad-CAM; exporting torch weights)",
    503: "Not ready, the queue is full, or the registry is unreachable (Retry-After)",
    504: "The deadline (--timeout-ms) passed before the forward pass",
    507: "No space left to write (a full disk)",
}
_INFERENCE = ("/predict", "/infer", "/explain")
# Probes whose 4xx/5xx body is their state, not an error object.
_STATE_ANSWERS = {
    ("get", "/readyz"): 503,
    ("get", "/v2/health/ready"): 400,
    ("get", "/v2/models/{name}/ready"): 400,
    ("get", "/v2/models/{name}/versions/{version}/ready"): 400,
}


def _error_statuses(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses a route can answer, from what it does."""
    statuses = {400} if operation.get("parameters") or "requestBody" in operation else set()
    if "{" in path or path.startswith(("/v1/predict", "/v1/rollouts", "/v1/feedback")):
        statuses.add(404)  # a model that is not served, or a server without rollouts
    if "requestBody" in operation:
        statuses |= {400, 408, 413}
    if path.endswith(_INFERENCE):
        statuses |= {409, 415, 500, 503, 504}
    if path.endswith(("/predict", "/infer")):
        statuses.add(422)  # --ood-action reject
    if path.endswith("/history"):
        statuses.add(503)  # the registry database is unreachable
    if "/admin/" in path:
        statuses |= {401, 403, 404}
        if method != "get":
            statuses |= {503, 507}  # the registry unreachable; no space for its files
    if method != "get" and ("/rollouts" in path or path.startswith("/v1/feedback")):
        statuses.add(409)
    if path.endswith("/explain") or (method, path) == ("post", "/v1/admin/models"):
        statuses.add(501)  # the torch-free install: Grad-CAM, or exporting torch weights
    if (method, path) == ("post", "/v1/admin/models"):
        statuses |= {404, 409, 422, 503}
    return statuses


def _complete(method: str, path: str, operation: dict[str, Any]) -> None:
    body = JSON_BODIES.get((method, path))
    if body is not None:
        operation["requestBody"] = body
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status in sorted(_error_statuses(method, path, operation)):
        content = {"application/json": {"schema": _ERROR_SCHEMA}}
        responses.setdefault(str(status), {"description": _REASONS[status], "content": content})
    state_status = _STATE_ANSWERS.get((method, path))
    if state_status is not None:
        responses[str(state_status)] = {
            "description": "Not ready: the same body as the 200 answer",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    if "/admin/" in path:
        operation["security"] = [{"adminToken": []}]
    if path.endswith(_INFERENCE):
        operation["description"] = f"{operation.get('description', '')}\n\n{TIMEOUT_NOTE}".strip()


def _special_content(paths: dict[str, Any]) -> None:
    text = {"schema": {"type": "string"}}
    paths["/metrics"]["get"]["responses"]["200"]["content"] = {
        "text/plain": text,
        "application/openmetrics-text": text,
    }
    explain = paths["/v1/models/{name}/explain"]["post"]["responses"]["200"]
    explain["content"] = {"image/png": {"schema": _BINARY}, "application/json": {"schema": {}}}
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        answer = paths[path]["post"]["responses"]["200"]
        answer["content"] = {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": _BINARY},
        }


def document(api: Api, *, title: str, version: str, text: str) -> dict[str, Any]:
    """The OpenAPI document of ``api``'s routes, completed."""
    schema: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": text},
        "paths": api.openapi_paths(),
    }
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            _complete(method, path, operation)
    _special_content(schema["paths"])
    schema["components"] = {
        "securitySchemes": {
            "adminToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "The admin token (--admin-token-file or RESNETKIT_ADMIN_TOKEN).",
            }
        }
    }
    return schema
