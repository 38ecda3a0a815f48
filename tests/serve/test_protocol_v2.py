"""KServe V2 parsing and encoding, checked against the real tritonclient and the spec's examples."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnetkit.data import PreprocessingSpec
from resnetkit.errors import ConfigError, InvalidInput, PayloadTooLarge
from resnetkit.serve.protocol_v2 import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    OutputTensor,
    check_outputs,
    classify,
    datatype_of,
    encode_infer_response,
    parse_header_length,
    parse_infer_request,
    prepare_model_input,
    resolve_outputs,
    server_metadata,
)
from resnetkit.serve.validation import image_to_model_input

Client = triton.InferenceServerClient
MAX = 1_000_000
GRAY = PreprocessingSpec(size=(28, 28), channels=1, mean=(0.286,), std=(0.353,))
RGB = PreprocessingSpec(size=(32, 32), channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
LABELS = ["T-shirt", "Trouser", "Pullover", "Dress"]

# One array per datatype, with each type's edge values.
ARRAYS: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([0, 1, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 0, 127], dtype=np.int8),
    "INT16": np.array([-(2**15), 2**15 - 1], dtype=np.int16),
    "INT32": np.arange(-6, 6, dtype=np.int32).reshape(2, 3, 2),
    "INT64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "FP16": np.array([0.5, -65504.0, 1e-3], dtype=np.float16),
    "FP32": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4),
    "FP64": np.array([np.pi, -1e300, 5e-324]),
    "BYTES": np.array([b"cat", b"", "héllo wörld".encode()], dtype=object),
}


def client_body(
    arrays: dict[str, np.ndarray],
    *,
    binary: bool,
    outputs: list[Any] | None = None,
    **kwargs: Any,
) -> tuple[bytes, int | None]:
    """The body and Inference-Header-Content-Length exactly as tritonclient sends them."""
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), datatype_of(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return Client.generate_request_body(inputs, outputs=outputs, **kwargs)


def parse(
    doc: dict[str, Any], *, max_elements: int = MAX, max_pixels: int = 40_000_000
) -> InferRequest:
    return parse_infer_request(
        json.dumps(doc).encode(), None, max_elements=max_elements, max_pixels=max_pixels
    )


def client_result(body: bytes, headers: dict[str, str]) -> Any:
    length = headers.get(HEADER_LENGTH)
    return Client.parse_response_body(body, header_length=None if length is None else int(length))


def one_input(datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": shape, "data": data}]}


# --- Requests from the real client ---------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips_from_tritonclient(binary: bool) -> None:
    body, header_length = client_body(ARRAYS, binary=binary, request_id="req-7")
    assert (header_length is not None) == binary
    request = parse_infer_request(body, header_length, max_elements=MAX)
    assert request.id == "req-7"
    assert [t.name for t in request.inputs] == list(ARRAYS)
    for tensor, (datatype, array) in zip(request.inputs, ARRAYS.items(), strict=True):
        assert tensor.datatype == datatype and tensor.shape == array.shape
        assert tensor.data.dtype == np.dtype(object if datatype == "BYTES" else array.dtype)
        np.testing.assert_array_equal(tensor.data, array)
        assert not tensor.data.flags.writeable


def test_client_requested_outputs_and_parameters_are_parsed() -> None:
    outputs = [
        triton.InferRequestedOutput("output", binary_data=False, class_count=3),
        triton.InferRequestedOutput("embedding"),
    ]
    body, length = client_body(
        {"FP32": ARRAYS["FP32"]}, binary=True, outputs=outputs, parameters={"tag": "a"}
    )
    request = parse_infer_request(body, length, max_elements=MAX)
    assert [(o.name, o.binary_data, o.classification) for o in request.outputs] == [
        ("output", False, 3),
        ("embedding", True, 0),
    ]
    assert dict(request.parameters) == {"tag": "a"} and not request.binary_data_output
    # With no outputs named, the client asks for everything as binary data.
    body, length = client_body({"FP32": ARRAYS["FP32"]}, binary=False)
    request = parse_infer_request(body, length, max_elements=MAX)
    assert request.outputs == () and request.binary_data_output


# --- Hand-written requests from the spec ------------------------------------------------------


def test_spec_json_example_with_flat_and_nested_data() -> None:
    flat = {
        "id": "42",
        "inputs": [{"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "output0"}],
    }
    nested = json.loads(json.dumps(flat))
    nested["inputs"][0]["data"] = [[1, 2], [3, 4]]
    for doc in (flat, nested):
        request = parse(doc)
        assert request.id == "42" and request.outputs[0].name == "output0"
        np.testing.assert_array_equal(request.inputs[0].data, [[1, 2], [3, 4]])
        assert request.inputs[0].data.dtype == np.uint32


def test_spec_example_with_one_bool_for_shape_3_is_refused() -> None:
    # The REST spec's own example sends "data": [true] for shape [3]; that is one element short.
    doc = {"inputs": [{"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True]}]}
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\.data has 1 elements but shape \[3\]"):
        parse(doc)


def test_binary_extension_example_is_parsed() -> None:
    header = json.dumps(
        {
            "model_name": "mymodel",
            "inputs": [
                {
                    "name": "input0",
                    "shape": [2, 2],
                    "datatype": "UINT32",
                    "parameters": {"binary_data_size": 16},
                },
                {
                    "name": "input1",
                    "shape": [3],
                    "datatype": "BOOL",
                    "parameters": {"binary_data_size": 3},
                },
            ],
            "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    data = np.array([1, 2, 3, 4], dtype="<u4").tobytes() + bytes([1, 0, 1])
    request = parse_infer_request(header + data, len(header), max_elements=MAX)
    np.testing.assert_array_equal(request.inputs[0].data, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(request.inputs[1].data, [True, False, True])
    assert request.outputs[0].binary_data is True


def test_binary_bytes_elements_are_length_prefixed() -> None:
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"xyz"))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "shape": [3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    request = parse_infer_request(header + raw, len(header), max_elements=MAX)
    assert request.inputs[0].data.tolist() == [b"ab", b"", b"xyz"]


def test_json_nan_from_the_client_is_parsed_and_the_model_input_refuses_it() -> None:
    pixels = np.zeros((1, 1, 28, 28), dtype=np.float32)
    pixels[0, 0, 3, 4] = np.nan
    body, length = client_body({"input": pixels}, binary=False)
    request = parse_infer_request(body, length, max_elements=MAX)
    assert np.isnan(request.inputs[0].data[0, 0, 3, 4])
    with pytest.raises(InvalidInput, match=r"inputs\[0\]\.data holds NaN or infinite"):
        prepare_model_input(request, GRAY, max_batch_size=8)


# --- Every bad request names its field --------------------------------------------------------

GOOD_INPUT = {"name": "input", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}


def _input(**changes: Any) -> dict[str, Any]:
    item = {**GOOD_INPUT, **changes}
    return {"inputs": [{k: v for k, v in item.items() if v is not ...}]}


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "must be a JSON object"),
    ("id not a string", {**_input(), "id": 5}, "id must be a string"),
    ("no inputs", {"outputs": []}, "inputs must be a non-empty"),
    ("empty inputs", {"inputs": []}, "inputs must be a non-empty"),
    ("input not an object", {"inputs": [3]}, r"inputs\[0\] must be a JSON object"),
    ("missing name", _input(name=...), r"inputs\[0\]\.name is missing"),
    ("empty name", _input(name=""), r"inputs\[0\]\.name must be a non-empty string"),
    ("missing datatype", _input(datatype=...), r"inputs\[0\]\.datatype is missing"),
    ("unknown datatype", _input(datatype="FLOAT32"), r"inputs\[0\]\.datatype 'FLOAT32' is not"),
    ("lowercase datatype", _input(datatype="fp32"), r"inputs\[0\]\.datatype 'fp32'"),
    ("bf16", _input(datatype="BF16"), r"inputs\[0\]\.datatype 'BF16'"),
    ("missing shape", _input(shape=...), r"inputs\[0\]\.shape is missing"),
    ("shape not a list", _input(shape=2), r"inputs\[0\]\.shape must be a JSON array"),
    ("negative dim", _input(shape=[-1]), r"inputs\[0\]\.shape\[0\] must be a non-negative"),
    ("float dim", _input(shape=[2.0]), r"inputs\[0\]\.shape\[0\] must be a non-negative"),
    ("bool dim", _input(shape=[True, 2]), r"inputs\[0\]\.shape\[0\] must be a non-negative"),
    ("too many dims", _input(shape=[1] * 17), r"inputs\[0\]\.shape has 17 dimensions"),
    ("missing data", _input(data=...), r"inputs\[0\]\.data is missing"),
    ("data not a list", _input(data="1,2"), r"inputs\[0\]\.data must be a JSON array"),
    ("too few data", _input(data=[1.0]), r"inputs\[0\]\.data has 1 elements but shape \[2\]"),
    ("too much data", _input(data=[1, 2, 3]), r"inputs\[0\]\.data has 3 elements"),
    ("ragged nesting", _input(shape=[2, 2], data=[[1, 2], [3]]), r"inputs\[0\]\.data is nested"),
    ("wrong nesting", _input(shape=[4], data=[[1, 2], [3, 4]]), r"inputs\[0\]\.data is nested"),
    ("string in FP32", _input(data=[1.0, "2"]), r"inputs\[0\]\.data: element 1 must be a number"),
    ("bool in FP32", _input(data=[True, 2.0]), r"inputs\[0\]\.data: element 0 must be a number"),
    ("null in FP32", _input(data=[None, 2.0]), r"inputs\[0\]\.data: element 0 must be a number"),
    ("FP16 overflow", _input(datatype="FP16", data=[1.0, 1e6]), r"inputs\[0\]\.data: element 1"),
    ("huge int for FP32", _input(data=[1, 10**400]), r"inputs\[0\]\.data holds an integer"),
    ("float in INT32", _input(datatype="INT32", data=[1, 2.5]), r"element 1 must be an integer"),
    ("UINT8 overflow", _input(datatype="UINT8", data=[1, 256]), r"element 1 \(256\) is out of"),
    ("negative UINT64", _input(datatype="UINT64", data=[-1, 0]), r"element 0 \(-1\) is out of"),
    ("int in BOOL", _input(datatype="BOOL", data=[1, 0]), r"element 0 must be true or false"),
    ("number in BYTES", _input(datatype="BYTES", data=["a", 1]), r"element 1 must be a string"),
    ("lone surrogate", _input(datatype="BYTES", data=["a", "\ud800"]), r"not valid Unicode"),
    ("duplicate input", {"inputs": [GOOD_INPUT, GOOD_INPUT]}, r"inputs\[1\]\.name 'input' repeats"),
    ("params not object", _input(parameters=[1]), r"inputs\[0\]\.parameters must be a JSON obj"),
    ("nested param", _input(parameters={"a": {}}), r"inputs\[0\]\.parameters\.a must be a str"),
    ("shared memory", _input(parameters={"shared_memory_region": "r"}), r"no shared memory"),
    ("size and data", _input(parameters={"binary_data_size": 8}), r"both data and parameters"),
    ("size negative", _input(data=..., parameters={"binary_data_size": -8}), r"binary_data_size"),
    ("size without header", _input(data=..., parameters={"binary_data_size": 8}), r"no Inference"),
    ("request params", {**_input(), "parameters": {"binary_data_output": 1}}, r"binary_data_out"),
    ("outputs not list", {**_input(), "outputs": {"name": "x"}}, r"outputs must be a JSON array"),
    ("output no name", {**_input(), "outputs": [{}]}, r"outputs\[0\]\.name is missing"),
    ("output twice", {**_input(), "outputs": [{"name": "o"}, {"name": "o"}]}, r"outputs\[1\]"),
    (
        "classification -1",
        {**_input(), "outputs": [{"name": "o", "parameters": {"classification": -1}}]},
        r"outputs\[0\]\.parameters\.classification",
    ),
    (
        "classification 1.5",
        {**_input(), "outputs": [{"name": "o", "parameters": {"classification": 1.5}}]},
        r"classification must be",
    ),
    (
        "binary_data 1",
        {**_input(), "outputs": [{"name": "o", "parameters": {"binary_data": 1}}]},
        r"outputs\[0\]\.parameters\.binary_data must",
    ),
]


@pytest.mark.parametrize(
    ("doc", "message"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_json_request_names_the_field(doc: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse(doc)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"{inputs: []}", "not valid JSON: Expecting property name"),
        (b'{"inputs": [}', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "cannot be read as JSON"),
        (b'{"inputs": [], "inputs": []}', "repeats the key 'inputs'"),
        (b'{"a": 1} trailing binary', "Extra data.*needs the Inference-Header-Content-Length"),
    ],
)
def test_malformed_json_is_invalid_input(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(body, None, max_elements=MAX)


def test_element_count_over_the_limit_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge, match=r"inputs\[0\]\.shape \[1000, 1001\] is over"):
        parse(_input(shape=[1000, 1001], data=[]), max_elements=1_000_000)
    with pytest.raises(PayloadTooLarge, match=r"inputs\[0\]\.shape"):
        parse(_input(shape=[0, 2**70], data=[]))
    assert parse(_input(shape=[0, 5], data=[]), max_elements=5).inputs[0].data.shape == (0, 5)
    assert parse(_input(shape=[2, 3], data=[0] * 6), max_elements=6).inputs[0].shape == (2, 3)
    with pytest.raises(ConfigError):
        parse(_input(), max_elements=0)


def _binary_request() -> tuple[bytes, int]:
    body, length = client_body({"a": ARRAYS["INT32"], "b": ARRAYS["BYTES"]}, binary=True)
    assert length is not None
    return body, length


def test_header_length_that_lies_is_invalid_input() -> None:
    body, length = _binary_request()
    with pytest.raises(InvalidInput, match=f"{HEADER_LENGTH} is {len(body) + 1} but the body"):
        parse_infer_request(body, len(body) + 1, max_elements=MAX)
    with pytest.raises(InvalidInput, match="raw binary request"):
        parse_infer_request(body, 0, max_elements=MAX)
    with pytest.raises(InvalidInput, match="not valid JSON"):
        parse_infer_request(body, length - 1, max_elements=MAX)
    with pytest.raises(InvalidInput, match=r"not valid JSON|not UTF-8"):
        parse_infer_request(body, length + 3, max_elements=MAX)


def test_binary_sizes_that_do_not_add_up_are_invalid_input() -> None:
    body, length = _binary_request()
    with pytest.raises(InvalidInput, match="5 bytes after the JSON header belong to no input"):
        parse_infer_request(body + b"extra", length, max_elements=MAX)
    with pytest.raises(InvalidInput, match=r"inputs\[1\]\.parameters\.binary_data_size is \d+ but"):
        parse_infer_request(body[:-2], length, max_elements=MAX)
    header = json.loads(body[:length])
    header["inputs"][0]["parameters"]["binary_data_size"] -= 4
    header["inputs"][1]["parameters"]["binary_data_size"] += 4
    new_header = json.dumps(header).encode()
    with pytest.raises(
        InvalidInput, match=r"inputs\[0\]\.parameters\.binary_data_size is 44 bytes"
    ):
        parse_infer_request(new_header + body[length:], len(new_header), max_elements=MAX)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack("<I", 9) + b"abc" + bytes(4), r"element 0 claims 9 bytes but only 7"),
        (struct.pack("<I", 1) + b"a" + bytes(3), r"inputs\[0\]: BYTES element 1 has no room"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"zz", r"its 2 BYTES elements take"),
        (b"\x00" * 6, r"too few for 2 BYTES"),
    ],
)
def test_bad_binary_bytes_elements_are_invalid_input(raw: bytes, message: str) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    with pytest.raises(InvalidInput, match=message):
        parse_infer_request(header + raw, len(header), max_elements=MAX)


def test_binary_bool_bytes_must_be_zero_or_one() -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "b",
                    "shape": [3],
                    "datatype": "BOOL",
                    "parameters": {"binary_data_size": 3},
                }
            ]
        }
    ).encode()
    with pytest.raises(InvalidInput, match=r"inputs\[0\]: BOOL element 2 is the byte 7"):
        parse_infer_request(header + bytes([1, 0, 7]), len(header), max_elements=MAX)


@pytest.mark.parametrize(("value", "parsed"), [(None, None), ("0", 0), (" 120 ", 120)])
def test_header_length_header_is_parsed(value: str | None, parsed: int | None) -> None:
    assert parse_header_length(value) == parsed


@pytest.mark.parametrize("value", ["", "-1", "12a", "1e3", "+5", "1" * 30, "١٢"])
def test_bad_header_length_header_is_invalid_input(value: str) -> None:
    with pytest.raises(InvalidInput, match=HEADER_LENGTH):
        parse_header_length(value)


# --- Responses read by the real client -------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_response_is_read_by_tritonclient(binary: bool) -> None:
    outputs = [OutputTensor(name.lower(), array) for name, array in ARRAYS.items()]
    body, headers = encode_infer_response("fashion", "3", "req-1", outputs, binary=binary)
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    assert (HEADER_LENGTH in headers) == binary
    result = client_result(body, headers)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "fashion",
        "3",
        "req-1",
    )
    for name, array in ARRAYS.items():
        got = result.as_numpy(name.lower())
        assert result.get_output(name.lower())["datatype"] == name
        if name == "BYTES" and not binary:  # JSON strings come back as str
            got = np.array([s.encode() for s in got.ravel()], dtype=object)
        assert got.shape == array.shape
        np.testing.assert_array_equal(got, array)


def test_binary_can_be_chosen_per_output_and_json_only_has_no_header_length() -> None:
    scores = OutputTensor("output", ARRAYS["FP32"])
    ids = OutputTensor("ids", ARRAYS["INT64"])
    body, headers = encode_infer_response("m", None, None, [scores, ids], binary={"ids"})
    result = client_result(body, headers)
    response = result.get_response()
    assert "model_version" not in response and "id" not in response
    assert "data" in response["outputs"][0] and response["outputs"][1]["parameters"] == {
        "binary_data_size": 16
    }
    np.testing.assert_array_equal(result.as_numpy("ids"), ARRAYS["INT64"])
    body, headers = encode_infer_response("m", "1", "x", [scores], binary=False)
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body)["outputs"][0]["data"] == ARRAYS["FP32"].ravel().tolist()


def test_non_finite_json_outputs_are_written_as_python_json_does() -> None:
    # Not strict JSON (the spec has no way to say NaN); Python's json, hence tritonclient, reads it.
    output = OutputTensor("output", np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32))
    body, headers = encode_infer_response("m", None, None, [output])
    assert b"[NaN,Infinity,-Infinity,1.0]" in body
    np.testing.assert_array_equal(client_result(body, headers).as_numpy("output"), output.data)


def test_non_utf8_bytes_output_as_json_is_refused_with_a_hint() -> None:
    output = OutputTensor("raw", np.array([b"\xff\xfe"], dtype=object))
    with pytest.raises(InvalidInput, match="binary_data = true"):
        encode_infer_response("m", None, None, [output])
    body, headers = encode_infer_response("m", None, None, [output], binary=True)
    assert client_result(body, headers).as_numpy("raw").tolist() == [b"\xff\xfe"]


# --- Classification ---------------------------------------------------------------------------


def test_classification_matches_the_spec_example() -> None:
    scores = np.array([1.1, 3.3, 0.5, 2.4], dtype=np.float32)
    assert classify(scores, 2).tolist() == [b"3.3:1", b"2.4:3"]
    labels = [f"index_{i}_label" for i in range(4)]
    assert classify(scores, 2, labels).tolist() == [b"3.3:1:index_1_label", b"2.4:3:index_3_label"]


def test_classification_is_per_batch_row_with_ties_to_the_lower_index_and_nan_last() -> None:
    scores = np.array([[0.1, 0.7, 0.2, 0.0], [0.5, np.nan, 0.5, 0.25]], dtype=np.float32)
    assert classify(scores, 3, LABELS).tolist() == [
        [b"0.7:1:Trouser", b"0.2:2:Pullover", b"0.1:0:T-shirt"],
        [b"0.5:0:T-shirt", b"0.5:2:Pullover", b"0.25:3:Dress"],
    ]
    assert classify(scores, 50).shape == (2, 4)  # k is capped at the number of classes
    assert classify(np.array([[3, 9, 1]], dtype=np.uint8), 1).tolist() == [[b"9:1"]]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_round_trip_through_tritonclient(binary: bool) -> None:
    pixels = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    requested = [triton.InferRequestedOutput("output", binary_data=binary, class_count=2)]
    body, length = client_body({"input": pixels}, binary=True, outputs=requested, request_id="c")
    request = parse_infer_request(body, length, max_elements=MAX)
    logits = np.array([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 0.25, 4.5]], dtype=np.float32)
    outputs, binary_names = resolve_outputs(request, {"output": logits}, labels=LABELS)
    body, headers = encode_infer_response("fashion", "1", request.id, outputs, binary=binary_names)
    result = client_result(body, headers)
    assert result.get_output("output")["datatype"] == "BYTES"
    got = [
        [s if isinstance(s, bytes) else s.encode() for s in row]
        for row in result.as_numpy("output")
    ]
    assert got == [[b"2.0:1:Trouser", b"0.5:3:Dress"], [b"4.5:3:Dress", b"3.0:0:T-shirt"]]


def test_outputs_are_resolved_by_name_and_binary_default() -> None:
    produced = {"output": np.zeros((1, 4), np.float32), "embedding": np.ones((1, 8), np.float32)}
    doc = {
        **_input(),
        "parameters": {"binary_data_output": True},
        "outputs": [
            {"name": "embedding"},
            {"name": "output", "parameters": {"binary_data": False}},
        ],
    }
    outputs, binary = resolve_outputs(parse(doc), produced)
    assert [o.name for o in outputs] == ["embedding", "output"] and binary == {"embedding"}
    everything, binary = resolve_outputs(parse(_input()), produced)
    assert [o.name for o in everything] == ["output", "embedding"] and binary == set()
    unknown = parse({**_input(), "outputs": [{"name": "probs"}]})
    with pytest.raises(InvalidInput, match=r"outputs\[0\]\.name 'probs' is not an output"):
        check_outputs(unknown, produced)
    with pytest.raises(InvalidInput, match=r"outputs\[0\]\.name 'probs'"):
        resolve_outputs(unknown, produced)
    strings = {"output": np.array([[b"a"]], dtype=object)}
    wants_top = parse(
        {**_input(), "outputs": [{"name": "output", "parameters": {"classification": 1}}]}
    )
    with pytest.raises(InvalidInput, match=r"classification needs a numeric output"):
        resolve_outputs(wants_top, strings)


# --- Metadata and errors ----------------------------------------------------------------------


def test_server_metadata_follows_the_spec() -> None:
    meta = server_metadata(version="0.1.0")
    assert meta == {
        "name": "resnetkit",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification"],
    }


def test_datatype_of_covers_every_protocol_type() -> None:
    assert {datatype_of(a.dtype) for a in ARRAYS.values()} == set(DATATYPES)
    assert datatype_of(np.array(["a"]).dtype) == "BYTES"
    with pytest.raises(ValueError, match="complex"):
        datatype_of(np.dtype(np.complex64))


# --- Model input ------------------------------------------------------------------------------


def _request_for(array: np.ndarray, name: str = "input") -> InferRequest:
    body, length = client_body({name: array}, binary=True)
    return parse_infer_request(body, length, max_elements=10**7)


def test_normalised_fp32_input_is_used_as_sent() -> None:
    batch = np.random.default_rng(1).standard_normal((3, 1, 28, 28), dtype=np.float32)
    prepared = prepare_model_input(_request_for(batch), GRAY, max_batch_size=8)
    assert prepared.dtype == np.float32 and prepared.flags.writeable
    np.testing.assert_array_equal(prepared, batch)


def test_uint8_pixels_are_preprocessed_like_an_uploaded_image() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photos = [skimage_data.astronaut(), skimage_data.chelsea()[:300, :300]]
    batch = np.stack([np.asarray(Image.fromarray(p).resize((300, 300))) for p in photos])
    prepared = prepare_model_input(_request_for(batch), RGB, max_batch_size=4)
    assert prepared.shape == (2, 3, 32, 32)
    for row, pixels in zip(prepared, batch, strict=True):
        np.testing.assert_array_equal(row, image_to_model_input(Image.fromarray(pixels), RGB))
    gray = skimage_data.camera()[None, :, :, None]  # (1, 512, 512, 1) into a 3-channel model
    from_gray = prepare_model_input(_request_for(gray), RGB, max_batch_size=4)
    expected = image_to_model_input(Image.fromarray(gray[0, :, :, 0]), RGB)
    np.testing.assert_array_equal(from_gray[0], expected)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((1, 3, 28, 28), np.float32), r"inputs\[0\]\.shape \[1, 3, 28, 28\] does not"),
        (np.zeros((1, 28, 28), np.float32), r"inputs\[0\]\.shape \[1, 28, 28\]"),
        (np.zeros((1, 28, 28, 2), np.uint8), r"inputs\[0\]\.shape \[1, 28, 28, 2\]"),
        (np.zeros((1, 1, 28, 28), np.float64), r"inputs\[0\]\.datatype is FP64"),
        (np.zeros((0, 1, 28, 28), np.float32), r"inputs\[0\]\.shape: batch size 0"),
        (np.zeros((9, 1, 28, 28), np.float32), r"batch size 9 must be between 1 and 8"),
        (np.full((1, 1, 28, 28), np.inf, np.float32), r"inputs\[0\]\.data holds NaN or infinite"),
    ],
)
def test_model_input_that_does_not_fit_names_the_field(array: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        prepare_model_input(_request_for(array), GRAY, max_batch_size=8)


def test_pixel_tensors_follow_the_size_policy_of_uploaded_images() -> None:
    # 512x512x3 is far over the 784 * 8 elements of an FP32 batch, but it is one image
    # within the per-image pixel limit, as the same picture sent to /v1 as a PNG would be.
    photo = np.random.default_rng(0).integers(0, 256, (1, 512, 512, 3), dtype=np.uint8)
    body, length = client_body({"input": photo}, binary=True)
    request = parse_infer_request(body, length, max_elements=8 * 784)
    prepared = prepare_model_input(request, GRAY, max_batch_size=8)
    expected = image_to_model_input(Image.fromarray(photo[0]), GRAY)
    np.testing.assert_array_equal(prepared[0], expected)
    # Over the limit: the same words as for a /v1 file (validation.check_image_size).
    big = {"name": "input", "datatype": "UINT8", "shape": [1, 6000, 7000, 3], "data": []}
    with pytest.raises(PayloadTooLarge, match="6000 = 42000000 pixels, over this server's limi"):
        parse({"inputs": [big]})
    with pytest.raises(PayloadTooLarge, match="over this server's limit of 100 pixels per image"):
        parse({"inputs": [{**big, "shape": [1, 10, 11, 1]}]}, max_pixels=100)
    with pytest.raises(InvalidInput, match="it has no pixels"):
        parse({"inputs": [{**big, "shape": [1, 0, 2, 1]}]})


def test_model_takes_exactly_one_input_and_says_which_came() -> None:
    pixels = np.zeros((1, 1, 28, 28), np.float32)
    body, length = client_body({"image": pixels, "mask": pixels}, binary=True)
    request = parse_infer_request(body, length, max_elements=MAX)
    with pytest.raises(
        InvalidInput, match=r"exactly one input \('input'\), got 2: 'image', 'mask'"
    ):
        prepare_model_input(request, GRAY, max_batch_size=8)
    assert prepare_model_input(_request_for(pixels, "x"), GRAY, max_batch_size=1).shape[0] == 1


# --- Property: no bytes make the parser fail any other way ------------------------------------


def _parse_or_invalid(body: bytes, header_length: int | None) -> None:
    try:
        request = parse_infer_request(body, header_length, max_elements=10_000)
    except InvalidInput:
        return
    for tensor in request.inputs:
        assert tensor.data.shape == tensor.shape


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300), header_length=st.none() | st.integers(-5, 400))
def test_random_bytes_parse_or_raise_invalid_input(body: bytes, header_length: int | None) -> None:
    _parse_or_invalid(body, header_length)


VALID_BODIES = [
    client_body(ARRAYS, binary=True, request_id="r"),
    client_body(ARRAYS, binary=False),
    client_body(
        {"input": np.zeros((1, 1, 4, 4), np.float32)},
        binary=True,
        outputs=[triton.InferRequestedOutput("output", class_count=2)],
    ),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    choice=st.sampled_from(VALID_BODIES),
    edits=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 3000),
    length_change=st.integers(-8, 8),
)
def test_damaged_client_bodies_parse_or_raise_invalid_input(
    choice: tuple[bytes, int | None], edits: list[tuple[int, int]], cut: int, length_change: int
) -> None:
    body, length = bytearray(choice[0]), choice[1]
    for position, value in edits:
        if position < len(body):
            body[position] = value
    header_length = None if length is None else length + length_change
    _parse_or_invalid(bytes(body[:cut]) if cut < len(body) else bytes(body), header_length)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(path_choice=st.integers(0, 10**6), replacement=JSON_VALUES)
def test_json_requests_with_one_value_replaced_parse_or_raise_invalid_input(
    path_choice: int, replacement: Any
) -> None:
    # Replace one value, anywhere in a valid request, by arbitrary JSON.
    doc = json.loads(VALID_BODIES[1][0])
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            slots.append((node, key))
            if isinstance(value, dict | list):
                walk(value)

    walk(doc)
    node, key = slots[path_choice % len(slots)]
    node[key] = replacement
    _parse_or_invalid(json.dumps(doc).encode(), None)
