"""KServe V2 over gRPC: the real ``tritonclient.grpc`` against a real server, REST parity,
error codes from the one error table, and a fuzz of ModelInfer messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from resnetkit.data import load_dataset
from resnetkit.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    ModelNotServed,
    NotReady,
    PayloadTooLarge,
    QueueFull,
    ServeError,
)
from resnetkit.serve.grpc_v2 import (
    DESCRIPTOR_PATH,
    SERVICE,
    grpc_code_for,
    messages,
    read_model_infer,
    to_grpc_response,
    to_infer_document,
)
from resnetkit.serve.protocol_v2 import OutputTensor, parse_infer_document
from tests.export.rundir import trained_run_dir
from tests.serve.server import ServerProcess, free_port, png, serving

MODEL = "run-resnet8"
MAX_BODY = 1_000_000


# --- In-process: the translation layer ------------------------------------------------------


def test_committed_descriptor_matches_the_proto() -> None:
    pytest.importorskip("grpc_tools")
    import runpy

    from google.protobuf import descriptor_pb2

    script = Path(__file__).resolve().parents[2] / "scripts" / "gen_grpc.py"
    compile_descriptor = runpy.run_path(str(script))["compile_descriptor"]
    committed = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_PATH.read_bytes())
    fresh = descriptor_pb2.FileDescriptorSet.FromString(compile_descriptor())
    assert committed == fresh, "run: python scripts/gen_grpc.py"


def test_our_messages_are_wire_compatible_with_tritonclient() -> None:
    from tritonclient.grpc import service_pb2

    pixels = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    given_input = tgrpc.InferInput("input", list(pixels.shape), "UINT8")
    given_input.set_data_from_numpy(pixels)
    theirs = service_pb2.ModelInferRequest(
        model_name="m",
        id="req-1",
        inputs=[given_input._get_tensor()],
        raw_input_contents=[given_input._get_content()],
        outputs=[tgrpc.InferRequestedOutput("logits", class_count=2)._get_tensor()],
    )
    ours = messages().ModelInferRequest.FromString(theirs.SerializeToString())
    parsed = parse_infer_document(*to_infer_document(ours), max_elements=1000)
    assert parsed.id == "req-1" and parsed.outputs[0].classification == 2
    assert (parsed.inputs[0].data == pixels).all()


def test_typed_contents_are_read_like_raw_contents() -> None:
    m = messages()
    values = [0.5, -1.25, 3.0, 7.5]
    typed = m.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(values)
    raw = m.ModelInferRequest(model_name="m")
    raw.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    raw.raw_input_contents.append(np.array(values, dtype="<f4").tobytes())
    a = parse_infer_document(*to_infer_document(typed), max_elements=100)
    b = parse_infer_document(*to_infer_document(raw), max_elements=100)
    assert (a.inputs[0].data == b.inputs[0].data).all()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: r.raw_input_contents.extend([b"", b""]), "raw_input_contents has 2 entries"),
        (lambda r: r.raw_input_contents.append(b"\0" * 7), "needs 8"),
        (lambda r: r.inputs[0].contents.uint_contents.extend([256, 1]), "out of range"),
    ],
)
def test_bad_messages_are_invalid_input(build: Any, message: str) -> None:
    request = messages().ModelInferRequest(model_name="m")
    datatype = "UINT8" if "out of range" in message else "FP32"
    request.inputs.add(name="input", datatype=datatype, shape=[1, 2])
    build(request)
    with pytest.raises(InvalidInput, match=message):
        parse_infer_document(*to_infer_document(request), max_elements=100)


def _joined(call: Any) -> Any:
    """The message read_model_infer split, with its raw contents put back."""
    whole = messages().ModelInferRequest()
    whole.CopyFrom(call.message)
    whole.raw_input_contents.extend(bytes(view) for view in call.raw)
    return whole


@settings(max_examples=200, deadline=None)
@given(request=st.deferred(lambda: _infer_requests()), raw_first=st.booleans())
def test_raw_contents_are_split_off_without_changing_the_message(
    request: Any, raw_first: bool
) -> None:
    m = messages()
    only_raw = m.ModelInferRequest(raw_input_contents=request.raw_input_contents)
    rest = m.ModelInferRequest()
    rest.CopyFrom(request)
    del rest.raw_input_contents[:]
    # Fields may come in any order on the wire; a parser must take them as protobuf does.
    parts = [only_raw.SerializeToString(), rest.SerializeToString()]
    data = b"".join(parts if raw_first else parts[::-1])
    call = read_model_infer(data)
    assert not call.message.raw_input_contents
    assert [bytes(v) for v in call.raw] == list(request.raw_input_contents)
    assert _joined(call) == m.ModelInferRequest.FromString(data) == request
    assert _document_or_error(call.message, call.raw) == _document_or_error(request, None)


def _document_or_error(request: Any, raw: Any) -> Any:
    try:
        doc, binary = to_infer_document(request, raw)
    except InvalidInput as exc:
        return str(exc)
    return doc, None if binary is None else bytes(binary)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64) | st.builds(bytes.__add__, st.just(b":\x05"), st.binary()))
def test_malformed_bytes_are_read_as_protobuf_reads_them(data: bytes) -> None:
    try:
        expected = messages().ModelInferRequest.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            read_model_infer(data)
        return
    assert _joined(read_model_infer(data)) == expected


def test_responses_carry_raw_outputs_tritonclient_reads() -> None:
    from tritonclient.grpc import service_pb2

    scores = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    labels = np.array([[b"1:b", b"2:c"]], dtype=object)
    ours = to_grpc_response(
        "m", "3", "id-9", [OutputTensor("probabilities", scores), OutputTensor("top", labels)]
    )
    result = tgrpc.InferResult(service_pb2.ModelInferResponse.FromString(ours.SerializeToString()))
    assert (result.as_numpy("probabilities") == scores).all()
    assert result.as_numpy("top").tolist() == [[b"1:b", b"2:c"]]
    assert result.get_response().model_version == "3"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (PayloadTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ModelNotServed("x"), grpc.StatusCode.NOT_FOUND),
        (Conflict("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (QueueFull("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (NotReady("x"), grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (ServeError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_codes_come_from_the_http_error_table(exc: Exception, code: grpc.StatusCode) -> None:
    assert grpc_code_for(exc) == code


# --- A real server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("grpc-server")
    grpc_port = free_port()
    args = [str(run_dir), "--threads", "1", "--grpc-port", str(grpc_port), "--max-body-bytes",
            str(MAX_BODY)]  # fmt: skip
    with serving(args, folder / "server.log") as srv:
        srv.grpc_url = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    test = load_dataset("fashion-mnist", "test", limit=8)
    return test.images[:, 0].numpy()  # (8, 28, 28) uint8


def _grpc_client(server: ServerProcess) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(server.grpc_url)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_health_and_metadata_through_tritonclient(server: ServerProcess) -> None:
    client = _grpc_client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    meta = client.get_server_metadata()
    assert meta.name == "resnetkit" and "classification" in meta.extensions
    model = client.get_model_metadata(MODEL, as_json=True)
    rest = httpx.get(f"{server.url}/v2/models/{MODEL}").json()
    assert model["name"] == MODEL and model["versions"] == rest["versions"]
    assert [i["shape"] for i in model["inputs"]] == [[str(d) for d in rest["inputs"][0]["shape"]]]
    assert {o["name"] for o in model["outputs"]} == {o["name"] for o in rest["outputs"]}


@pytest.mark.slow
def test_one_image_gives_the_same_answer_through_every_protocol(
    server: ServerProcess, pixels: np.ndarray
) -> None:
    image = pixels[0]
    v1 = httpx.post(
        f"{server.url}/v1/predict?k=10", content=png(image), headers={"Content-Type": "image/png"}
    ).json()
    from_v1 = np.zeros(10)
    for p in v1["predictions"]:
        from_v1[p["index"]] = p["probability"]
    tensor = {"name": "input", "datatype": "UINT8", "shape": [1, 28, 28, 1]}
    as_json = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        json={"inputs": [{**tensor, "data": image.reshape(-1).tolist()}],
              "outputs": [{"name": "probabilities"}]},
    ).json()  # fmt: skip
    from_json = np.array(as_json["outputs"][0]["data"])
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": 784}}],
         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    binary = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=header + image.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    offset = int(binary.headers["inference-header-content-length"])
    from_binary = np.frombuffer(binary.content[offset:], "<f4")
    given_input = tgrpc.InferInput("input", [1, 28, 28, 1], "UINT8")
    given_input.set_data_from_numpy(image[None, :, :, None])
    result = _grpc_client(server).infer(
        MODEL, [given_input], outputs=[tgrpc.InferRequestedOutput("probabilities")]
    )
    from_grpc = result.as_numpy("probabilities")[0]
    answers = [from_v1, from_json, from_binary, from_grpc]
    assert len({int(a.argmax()) for a in answers}) == 1
    for other in answers[1:]:
        assert np.abs(other - from_grpc).max() <= 1e-6


@pytest.mark.slow
def test_batches_and_classification_through_tritonclient(
    server: ServerProcess, pixels: np.ndarray
) -> None:
    given_input = tgrpc.InferInput("input", [8, 28, 28, 1], "UINT8")
    given_input.set_data_from_numpy(pixels[..., None])
    wanted = [
        tgrpc.InferRequestedOutput("probabilities"),
        tgrpc.InferRequestedOutput("logits", class_count=3),
    ]
    result = _grpc_client(server).infer(MODEL, [given_input], outputs=wanted, request_id="abc")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (8, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    top = result.as_numpy("logits")
    assert top.shape == (8, 3)
    assert [int(row[0].decode().split(":")[1]) for row in top] == list(probabilities.argmax(1))
    assert result.get_response().id == "abc"


@pytest.mark.slow
def test_bad_requests_get_the_matching_status_codes(server: ServerProcess) -> None:
    client = _grpc_client(server)

    def infer(
        datatype: str, shape: list[int], raw: bytes, model: str = MODEL, version: str = ""
    ) -> None:
        request = messages().ModelInferRequest(model_name=model, model_version=version)
        request.inputs.add(name="input", datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        _raw_call(server, "ModelInfer", request)

    ok = np.zeros((1, 28, 28, 1), np.uint8).tobytes()
    big = b"\0" * 1_470_000  # over the 1 MB message limit, as REST's body limit
    expected = [
        (lambda: infer("UINT8", [1, 28, 28, 1], ok, model="nope"), grpc.StatusCode.NOT_FOUND),
        (lambda: infer("UINT8", [1, 28, 28, 1], ok, version="999"), grpc.StatusCode.NOT_FOUND),
        (lambda: infer("INT64", [1, 28, 28, 1], ok), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: infer("UINT8", [1, 28, 28, 1], ok[:-1]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: infer("UINT8", [1, 28, 28], ok), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: infer("UINT8", [1, 100000, 100000, 3], ok), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (lambda: infer("UINT8", [1, 700, 700, 3], big), grpc.StatusCode.RESOURCE_EXHAUSTED),
        # Bytes that are no ModelInferRequest at all: REST's 400 for a body it cannot parse.
        (
            lambda: _raw_call(server, "ModelInfer", b"\xff\xff\xff"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (lambda: _raw_call(server, "ModelInfer", b":\x05ab"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in expected:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == code, caught.value.details()
    with pytest.raises(InferenceServerException):
        client.is_model_ready("nope")
    assert client.is_server_ready()  # none of it hurt the server


def _raw_call(server: ServerProcess, method: str, request: Any, timeout_s: float = 30) -> Any:
    m = messages()
    response_type = getattr(m, method.replace("ModelInfer", "ModelInferResponse"))
    with grpc.insecure_channel(server.grpc_url) as channel:  # type: ignore[attr-defined]
        call = channel.unary_unary(
            f"/{SERVICE}/{method}",
            # bytes go as they are: a client that sends no valid message at all
            request_serializer=lambda msg: (
                msg if isinstance(msg, bytes) else msg.SerializeToString()
            ),
            response_deserializer=response_type.FromString,
        )
        return call(request, timeout=timeout_s)


_DATATYPES = ["UINT8", "FP32", "FP16", "INT64", "BYTES", "BOOL", "FP64", "INT8", "", "NOPE"]


@st.composite
def _infer_requests(draw: st.DrawFn) -> Any:
    m = messages()
    request = m.ModelInferRequest(
        model_name=draw(st.sampled_from([MODEL, MODEL, "", "x/y"])),
        model_version=draw(st.sampled_from(["", "", "1", "sha-0"])),
        id=draw(st.text(max_size=8)),
    )
    for _ in range(draw(st.integers(0, 2))):
        shape = draw(st.lists(st.integers(-2, 40), max_size=5))
        request.inputs.add(
            name=draw(st.sampled_from(["input", "x", ""])),
            datatype=draw(st.sampled_from(_DATATYPES)),
            shape=shape,
        )
        if draw(st.booleans()):
            request.raw_input_contents.append(draw(st.binary(max_size=4000)))
    if draw(st.booleans()):
        out = request.outputs.add(name=draw(st.sampled_from(["probabilities", "logits", "no"])))
        out.parameters["classification"].int64_param = draw(st.integers(-3, 20))
    return request


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=_infer_requests())
@pytest.mark.slow
def test_random_model_infer_messages_never_break_the_server(
    server: ServerProcess, request: Any
) -> None:
    try:
        _raw_call(server, "ModelInfer", request)
    except grpc.RpcError as exc:
        assert exc.code() in {
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }, (exc.code(), exc.details())


@pytest.mark.slow
def test_server_still_serves_after_the_fuzz_and_counts_grpc_requests(
    server: ServerProcess, pixels: np.ndarray
) -> None:
    given_input = tgrpc.InferInput("input", [1, 28, 28, 1], "UINT8")
    given_input.set_data_from_numpy(pixels[:1, :, :, None])
    assert _grpc_client(server).infer(MODEL, [given_input]).as_numpy("probabilities") is not None
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'route="grpc:ModelInfer"' in metrics


@pytest.mark.slow
def test_grpc_port_in_use_is_one_error_line(run_dir: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "resnetkit.cli.main", "serve", str(run_dir),
             "--grpc-port", str(port), "--port", str(free_port())],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip() == (
        f"error: --grpc-port {port} on 127.0.0.1 is in use (another server?): stop it or "
        "choose another --grpc-port"
    )
