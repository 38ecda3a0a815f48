"""The HTTP contract: the OpenAPI document, methods, names, image types and the size policy.

Everything here runs in-process (Starlette's TestClient over a real trained model); the
schemathesis run against a real server is in ``test_app.py``.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resnetkit.errors import ConfigError
from resnetkit.registry import validate_name
from resnetkit.serve.openapi import NAME_PATTERN
from tests.export.rundir import trained_run_dir
from tests.serve.server import in_process, png

TOKEN = "openapi-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "run-resnet8"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def client(run_dir: Path) -> Iterator[Any]:
    with in_process([str(run_dir)], token=TOKEN) as (test_client, _):
        yield test_client


@pytest.fixture(scope="module")
def shirt() -> np.ndarray:
    """A 28x28 grey image with a bright square: something for the model to look at."""
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 8:20] = 200
    return pixels


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


# --- The document ---------------------------------------------------------------------------


def test_every_error_a_route_answers_is_declared_with_the_error_body(client: Any) -> None:
    doc = client.get("/openapi.json").json()
    error_ref = {"type": "object", "properties": {"error": {"type": "string"}}}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            # FastAPI's validation 422 is dropped; ours: an unloadable model, an OOD rejection
            ood = path.endswith(("/predict", "/infer"))
            assert "422" not in responses or path == "/v1/admin/models" or ood, (method, path)
            for status, answer in responses.items():
                if int(status) >= 400 and "ready" not in path:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema["properties"] == error_ref["properties"], (method, path, status)
            if "/admin/" in path:
                assert {"401", "403"} <= set(responses), (method, path)
                assert operation["security"] == [{"adminToken": []}]
            if path.endswith(("/predict", "/infer", "/explain")):
                assert {"400", "404", "413", "415", "503", "504"} <= set(responses), path
                assert "--timeout-ms" in operation["description"]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in metrics and "application/json" not in metrics


def test_json_bodies_the_routes_read_themselves_are_declared(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    feedback = paths["/v1/feedback"]["post"]["requestBody"]
    schema = feedback["content"]["application/json"]["schema"]
    assert feedback["required"] and schema["required"] == ["request_id", "label"]
    load = paths["/v1/admin/models"]["post"]["requestBody"]["content"]["application/json"]
    assert load["schema"]["properties"]["name"]["pattern"] == NAME_PATTERN


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(alphabet="aZ09_-./ \x00é", max_size=12)
    | st.from_regex(NAME_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 128)
)
def test_the_documented_name_pattern_is_the_registry_rule(name: str) -> None:
    try:
        validate_name(name)
        valid = True
    except ConfigError:
        valid = False
    assert valid == (re.search(NAME_PATTERN, name) is not None and len(name) <= 128), name


def test_a_wrong_method_answers_405_with_every_method_of_the_resource(client: Any) -> None:
    answer = client.request("PUT", "/v1/admin/models", headers=AUTH)
    assert answer.status_code == 405 and answer.json() == {"error": "Method Not Allowed"}
    assert answer.headers["allow"] == "GET, POST"
    assert client.request("TRACE", "/v2/models/x/ready").headers["allow"] == "GET"


# --- Names, messages --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fm/slash", "a..b", ".hidden", "with space", ""])
def test_admin_loads_only_names_the_registry_would_take(
    client: Any, run_dir: Path, name: str
) -> None:
    answer = client.post("/v1/admin/models", json={"ref": str(run_dir), "name": name}, headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert "letters, digits, '-', '_' or '.'" in answer.json()["error"]
    assert [m["name"] for m in client.get("/v1/models").json()["models"]] == [MODEL]


@pytest.mark.parametrize("path", ["/v1/feedback", "/v1/admin/models"])
def test_an_empty_json_body_asks_for_json_not_an_image(client: Any, path: str) -> None:
    answer = client.post(path, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json() == {"error": "empty request body: send a JSON object"}


# --- Image types: the bytes decide -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [
        ("image/jpg", "JPEG"),
        ("image/pjpeg", "JPEG"),
        ("image/x-png", "PNG"),
        ("image/x-ms-bmp", "BMP"),
        ("application/octet-stream", "PNG"),
        ("image/tiff", "TIFF"),
        ("image/jpeg", "PNG"),  # a PNG saved as .jpg
    ],
)
def test_an_image_is_taken_under_any_image_type_its_bytes_decide(
    client: Any, shirt: np.ndarray, content_type: str, fmt: str
) -> None:
    body = _encoded(shirt, fmt)
    raw = client.post("/v1/predict", content=body, headers={"Content-Type": content_type})
    assert raw.status_code == 200, raw.text
    form = client.post("/v1/predict", files={"file": ("photo.jpg", body, content_type)})
    assert form.status_code == 200, form.text
    assert form.json()["predictions"][0]["label"] == raw.json()["predictions"][0]["label"]


def test_a_form_part_declared_as_text_is_still_read_by_its_bytes(
    client: Any, shirt: np.ndarray
) -> None:
    answer = client.post("/v1/predict", files={"file": ("shirt.txt", png(shirt), "text/plain")})
    assert answer.status_code == 200, answer.text
    refused = client.post("/v1/predict", content=png(shirt), headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415


# --- One size policy --------------------------------------------------------------------------


def test_a_v2_pixel_tensor_is_taken_as_the_same_png_is_on_v1(client: Any) -> None:
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    tensor = {"name": "input", "datatype": "UINT8", "shape": [1, 512, 512, 3]}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": photo.size}}]})
    v2 = client.post(
        f"/v2/models/{MODEL}/infer",
        content=header.encode() + photo.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert v2.status_code == 200, v2.text
    v1 = client.post("/v1/predict?k=10", content=png(photo), headers={"Content-Type": "image/png"})
    assert v1.status_code == 200, v1.text
    probabilities = next(o for o in v2.json()["outputs"] if o["name"] == "probabilities")
    by_index = {p["index"]: p["probability"] for p in v1.json()["predictions"]}
    assert np.allclose(probabilities["data"], [by_index[i] for i in range(10)], atol=1e-6)


def test_both_protocols_refuse_an_image_over_the_pixel_limit_in_the_same_words(
    client: Any,
) -> None:
    tensor = {"name": "input", "datatype": "UINT8", "shape": [1, 7000, 6000, 1], "data": []}
    v2 = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
    assert v2.status_code == 413
    assert "over this server's limit of 40000000 pixels per image" in v2.json()["error"]
    header = struct.pack(">IIBBBBB", 6000, 7000, 8, 0, 0, 0, 0)  # a header, and no pixels
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b"")
    v1 = client.post("/v1/predict", content=bomb, headers={"Content-Type": "image/png"})
    assert v1.status_code == 413, v1.text
    assert "over this server's limit of 40000000 pixels per image" in v1.json()["error"]


# --- Grad-CAM: the class as the CLI takes it -----------------------------------------------------


def test_explain_takes_a_class_label_as_the_cli_does(client: Any, shirt: np.ndarray) -> None:
    labels = client.get("/v1/models").json()["models"][0]["labels"]
    url = f"/v1/models/{MODEL}/explain?format=json&class="
    headers = {"Content-Type": "image/png"}
    by_label = client.post(url + "Coat", content=png(shirt), headers=headers)
    assert by_label.status_code == 200, by_label.text
    assert by_label.json()["class"] == labels.index("Coat")
    by_index = client.post(url + "3", content=png(shirt), headers=headers)
    assert by_index.json()["class"] == 3
    unknown = client.post(url + "Hat", content=png(shirt), headers=headers)
    assert unknown.status_code == 400 and "neither an index nor a label" in unknown.json()["error"]


def test_an_error_quoting_a_lone_surrogate_is_still_a_4xx(client: Any) -> None:
    # JSON "\ud8cc" decodes to a lone surrogate, which UTF-8 cannot encode: once a 500.
    body = b'{"ref": "&/\\ud8ccb"}'
    answer = client.post("/v1/admin/models", content=body, headers=AUTH)
    assert answer.status_code == 400, answer.text
    assert "\\ud8cc" in answer.json()["error"]
