"""The KServe V2 / Open Inference Protocol over REST, as functions on bytes and arrays.

Covers the protocol's inference request and response JSON, Triton's binary tensor data
extension (``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data``,
``binary_data_output``) and its classification extension (``"classification": k`` on a
requested output returns BYTES strings ``"score:index[:label]"``). No HTTP framework here:
``serve.app`` passes the body and the header to :func:`parse_infer_request`, runs the model on
:func:`prepare_model_input`, and answers with :func:`encode_infer_response`. Every client
mistake is an :class:`~resnetkit.errors.InvalidInput` whose message names the field
(``inputs[0].shape``); nothing else escapes from parsing.

Where the spec leaves a choice:

* JSON tensor data may be flat or nested; nested data must follow the shape exactly.
* JSON values are not coerced: integer types take JSON integers in range, BOOL takes
  ``true``/``false``, FP types take numbers, BYTES takes strings (kept as UTF-8 ``bytes``).
* Unknown keys are ignored; duplicate JSON keys, duplicate input or output names, unknown
  datatypes (BF16 included: numpy has no such type) and shared-memory parameters are errors.
* A raw binary request (``Inference-Header-Content-Length: 0``) is refused: without the JSON
  header the server would have to guess the input's name, type and shape.
* JSON responses write NaN and infinities as ``NaN``/``Infinity``, as Python's json module does;
  a client that needs strict JSON asks for binary outputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from resnetkit.data import PreprocessingSpec
from resnetkit.errors import ConfigError, InvalidInput, PayloadTooLarge
from resnetkit.serve.validation import MAX_PIXELS, check_image_size, image_to_model_input

__all__ = [
    "DATATYPES",
    "EXTENSIONS",
    "HEADER_LENGTH",
    "INPUT_NAME",
    "InferRequest",
    "InputTensor",
    "OutputTensor",
    "RequestedOutput",
    "check_outputs",
    "classify",
    "datatype_of",
    "encode_infer_response",
    "parse_header_length",
    "parse_infer_document",
    "parse_infer_request",
    "pixel_batch",
    "prepare_model_input",
    "resolve_outputs",
    "server_metadata",
    "tensor_bytes",
]

ParamValue = str | int | float | bool

#: The HTTP header giving the length of the JSON part of a body with binary tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: What ``GET /v2`` lists: the Triton extensions this module implements.
EXTENSIONS = ("binary_tensor_data", "classification")
#: Information only, per the spec; ``app`` may name the backend instead (``onnx_onnxv1``).
INPUT_NAME = "input"
_MAX_DIMS = 16

# Little-endian, as the binary extension requires; BYTES elements are Python bytes objects.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(_DTYPES)
_SHARED_MEMORY_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_EMPTY: Mapping[str, ParamValue] = MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class InputTensor:
    """One input of a request.

    Attributes:
        name: the input's name.
        datatype: one of :data:`DATATYPES`.
        shape: the declared shape; ``data.shape`` equals it.
        data: a read-only array of the datatype's numpy type (BYTES: an object array of
            ``bytes``).
        parameters: the input's parameters as sent (e.g. ``binary_data_size``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Mapping[str, ParamValue] = dataclasses.field(default_factory=lambda: _EMPTY)


@dataclasses.dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for.

    Attributes:
        name: the output's name.
        binary_data: True/False as the output's ``binary_data`` parameter says; None when
            not given (then the request's ``binary_data_output`` decides).
        classification: top-k classes to return instead of the tensor; 0 for the tensor.
    """

    name: str
    binary_data: bool | None = None
    classification: int = 0


@dataclasses.dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: every field checked, every tensor decoded."""

    id: str | None
    inputs: tuple[InputTensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: Mapping[str, ParamValue] = dataclasses.field(default_factory=lambda: _EMPTY)

    @property
    def binary_data_output(self) -> bool:
        """Whether outputs without their own ``binary_data`` go back as binary data."""
        return self.parameters.get("binary_data_output") is True


@dataclasses.dataclass(frozen=True)
class OutputTensor:
    """One output of a response; ``datatype`` follows from the array's dtype."""

    name: str
    data: np.ndarray

    @property
    def datatype(self) -> str:
        return datatype_of(self.data.dtype)


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol datatype of a numpy dtype (object, bytes and str arrays are BYTES).

    Raises:
        ValueError: the dtype has no protocol datatype (complex, datetime, ...).
    """
    if dtype == np.bool_:
        return "BOOL"
    if dtype.kind in "OSU":
        return "BYTES"
    prefix = {"u": "UINT", "i": "INT", "f": "FP"}.get(dtype.kind)
    name = f"{prefix}{dtype.itemsize * 8}"
    if prefix is None or name not in _DTYPES:
        raise ValueError(f"numpy dtype {dtype} has no KServe V2 datatype")
    return name


# --- Parsing requests ---------------------------------------------------------------------


def parse_header_length(value: str | None) -> int | None:
    """Parse the ``Inference-Header-Content-Length`` header value (None when absent).

    Raises:
        InvalidInput: the value is not a non-negative decimal integer.
    """
    if value is None:
        return None
    text = value.strip()
    if not re.fullmatch(r"[0-9]{1,18}", text):
        raise InvalidInput(
            f"{HEADER_LENGTH} must be the byte length of the JSON header, got {_show(value)}"
        )
    return int(text)


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    *,
    max_elements: int,
    max_pixels: int = MAX_PIXELS,
) -> InferRequest:
    """Parse and check an inference request body.

    The size policy is that of ``/v1`` (:data:`resnetkit.serve.validation.SIZE_POLICY`): a
    UINT8 ``[N, H, W, 1 or 3]`` input is N images, each held to ``max_pixels`` pixels as an
    uploaded file is; any other input to ``max_elements`` elements.

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` header as a number, or None
            when absent (then the body is JSON only).
        max_elements: the most elements one input that is not a pixel batch may hold, and
            the most images in a pixel batch.
        max_pixels: the most pixels (width x height) of one image of a pixel batch.

    Raises:
        InvalidInput: anything wrong with the request, naming the field.
        PayloadTooLarge: an input over the size policy.
    """
    header, binary = _split_body(body, header_length)
    doc = _load_json(header, header_length is not None)
    return parse_infer_document(doc, binary, max_elements=max_elements, max_pixels=max_pixels)


def parse_infer_document(
    doc: Any,
    binary: memoryview | None,
    *,
    max_elements: int,
    max_pixels: int = MAX_PIXELS,
) -> InferRequest:
    """Check an inference request already split into its JSON document and its binary data.

    What :func:`parse_infer_request` does after reading the JSON, for a protocol whose
    messages are not JSON (gRPC builds ``doc`` from its fields, and ``binary`` is its raw
    contents, uncopied). The checks and their messages are the same.

    Raises:
        InvalidInput: anything wrong with the request, naming the field.
        PayloadTooLarge: an input over the size policy.
    """
    if max_elements < 1:
        raise ConfigError(f"max_elements must be at least 1, got {max_elements}")
    if not isinstance(doc, dict):
        raise InvalidInput(f"the inference request must be a JSON object, got {_kind(doc)}")
    request_id = doc.get("id")
    if "id" in doc and not isinstance(request_id, str):
        raise InvalidInput(f"id must be a string, got {_kind(request_id)}")
    parameters = _parameters(doc, "")
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise InvalidInput("parameters.binary_data_output must be true or false")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("inputs must be a non-empty JSON array of input tensors")
    return InferRequest(
        id=request_id,
        inputs=_parse_inputs(raw_inputs, binary, _Limits(max_elements, max_pixels)),
        outputs=_parse_outputs(doc),
        parameters=parameters,
    )


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes, memoryview | None]:
    if header_length is None:
        return body, None
    if header_length == 0:
        raise InvalidInput(
            f"{HEADER_LENGTH} is 0 (a raw binary request without a JSON header), which this "
            "server does not take; send the JSON inference header before the binary data"
        )
    if not 0 < header_length <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes; it must "
            "give the length of the JSON header at the start of the body"
        )
    return body[:header_length], memoryview(body)[header_length:]


def _load_json(header: bytes, has_header_length: bool) -> Any:
    hint = (
        ""
        if has_header_length
        else f"; a body with binary tensors after the JSON needs the {HEADER_LENGTH} header"
    )
    try:
        text = bytes(header).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the inference header is not UTF-8 text (byte {exc.start}){hint}"
        ) from exc
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the inference header is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}{hint}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # over-deep nesting, 4300-digit integers
        raise InvalidInput(f"the inference header cannot be read as JSON: {exc}") from exc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise InvalidInput(f"the inference header repeats the key {_show(key)} in an object")
        seen.add(key)
    return dict(pairs)


def _parameters(obj: dict[str, Any], where: str) -> Mapping[str, ParamValue]:
    if "parameters" not in obj:
        return _EMPTY
    field = _join(where, "parameters")
    raw = obj["parameters"]
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field} must be a JSON object, got {_kind(raw)}")
    for key, value in raw.items():
        if not isinstance(value, str | int | float):  # bool is an int
            raise InvalidInput(
                f"{field}.{key} must be a string, number or boolean, got {_kind(value)}"
            )
        if key in _SHARED_MEMORY_KEYS:
            raise InvalidInput(
                f"{field}.{key}: this server has no shared memory; send the tensor in the body"
            )
    return MappingProxyType(dict(raw))


@dataclasses.dataclass(frozen=True)
class _Limits:
    max_elements: int
    max_pixels: int


@dataclasses.dataclass(frozen=True)
class _InputHeader:
    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: Mapping[str, ParamValue]
    data: Any
    binary_size: int | None


def _parse_inputs(
    raw_inputs: list[Any], binary: memoryview | None, limits: _Limits
) -> tuple[InputTensor, ...]:
    headers = [_input_header(item, f"inputs[{i}]", limits) for i, item in enumerate(raw_inputs)]
    first: dict[str, int] = {}
    for i, header in enumerate(headers):
        if header.name in first:
            raise InvalidInput(
                f"inputs[{i}].name {_show(header.name)} repeats inputs[{first[header.name]}]; "
                "input names must be unique"
            )
        first[header.name] = i
    tensors, offset = [], 0
    for i, header in enumerate(headers):
        where = f"inputs[{i}]"
        if header.binary_size is None:
            data = _json_tensor(header.data, header.datatype, header.shape, f"{where}.data")
        else:
            size_field = f"{where}.parameters.binary_data_size"
            if binary is None:
                raise InvalidInput(
                    f"{size_field} is given but the request has no {HEADER_LENGTH} header, "
                    "so the body holds no binary data"
                )
            if offset + header.binary_size > len(binary):
                raise InvalidInput(
                    f"{size_field} is {header.binary_size} but only {len(binary) - offset} "
                    f"bytes of binary data are left for it; check {HEADER_LENGTH}"
                )
            chunk = binary[offset : offset + header.binary_size]
            data = _binary_tensor(chunk, header.datatype, header.shape, where)
            offset += header.binary_size
        tensors.append(
            InputTensor(header.name, header.datatype, header.shape, data, header.parameters)
        )
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes after the JSON header belong to no input: the "
            f"inputs' parameters.binary_data_size add up to {offset} of {len(binary)}; "
            f"check {HEADER_LENGTH}"
        )
    return tuple(tensors)


def _input_header(item: Any, where: str, limits: _Limits) -> _InputHeader:
    if not isinstance(item, dict):
        raise InvalidInput(
            f"{where} must be a JSON object with name, shape, datatype and data, got {_kind(item)}"
        )
    name = _required_str(item, "name", where)
    datatype = _required_str(item, "datatype", where)
    if datatype not in _DTYPES:
        raise InvalidInput(
            f"{where}.datatype {_show(datatype)} is not a datatype of the protocol; "
            f"expected one of {', '.join(DATATYPES)}"
        )
    shape = _parse_shape(item, where, datatype, limits)
    parameters = _parameters(item, where)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"{where}.parameters.binary_data_size must be a non-negative integer, "
                f"got {_show(size)}"
            )
        if "data" in item:
            raise InvalidInput(
                f"{where} has both data and parameters.binary_data_size; send the tensor once"
            )
    elif "data" not in item:
        raise InvalidInput(
            f"{where}.data is missing (and no parameters.binary_data_size says it is binary)"
        )
    return _InputHeader(name, datatype, shape, parameters, item.get("data"), size)


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise InvalidInput(f"{where}.{key} is missing")
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{where}.{key} must be a non-empty string, got {_show(value)}")
    return value


def _is_pixel_batch(datatype: str, shape: list[int]) -> bool:
    """UINT8 ``[N, H, W, 1 or 3]``: images, held to the size policy of uploaded files."""
    return datatype == "UINT8" and len(shape) == 4 and shape[3] in (1, 3)


def _parse_shape(
    item: dict[str, Any], where: str, datatype: str, limits: _Limits
) -> tuple[int, ...]:
    field = f"{where}.shape"
    if "shape" not in item:
        raise InvalidInput(f"{field} is missing")
    raw = item["shape"]
    if not isinstance(raw, list):
        raise InvalidInput(f"{field} must be a JSON array of non-negative integers")
    if len(raw) > _MAX_DIMS:
        raise InvalidInput(f"{field} has {len(raw)} dimensions; at most {_MAX_DIMS} are allowed")
    for j, dim in enumerate(raw):
        if type(dim) is not int or dim < 0:
            raise InvalidInput(f"{field}[{j}] must be a non-negative integer, got {_show(dim)}")
    max_elements = limits.max_elements
    if _is_pixel_batch(datatype, raw):
        check_image_size(raw[2], raw[1], limits.max_pixels, f"{field}: each image")
        if raw[0] > max_elements:
            raise PayloadTooLarge(f"{field} {raw} holds more than {max_elements} images")
        return tuple(raw)
    # A dimension over the limit is refused even when another is 0: numpy could not hold it.
    if math.prod(raw) > max_elements or max(raw, default=0) > max_elements:
        raise PayloadTooLarge(
            f"{field} {raw} is over this server's limit of {max_elements} elements per input"
        )
    return tuple(raw)


def _json_tensor(data: Any, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise InvalidInput(f"{where} must be a JSON array, got {_kind(data)}")
    count = math.prod(shape)
    if not any(isinstance(v, list) for v in data):
        if len(data) != count:
            raise InvalidInput(
                f"{where} has {len(data)} elements but shape {list(shape)} needs {count}"
            )
        flat = data
    else:
        flat = _flatten_nested(data, shape, where)
    return _frozen(_json_values(flat, datatype, where).reshape(shape))


def _flatten_nested(data: list[Any], shape: tuple[int, ...], where: str) -> list[Any]:
    level: list[Any] = [data]
    for depth, dim in enumerate(shape):
        below: list[Any] = []
        for item in level:
            if not isinstance(item, list) or len(item) != dim:
                raise InvalidInput(
                    f"{where} is nested but does not follow shape {list(shape)}: expected "
                    f"arrays of {dim} at depth {depth}; send one flat array or arrays nested "
                    "exactly as the shape"
                )
            below.extend(item)
        level = below
    return level


def _json_values(flat: list[Any], datatype: str, where: str) -> np.ndarray:
    dtype = _DTYPES[datatype]
    if datatype == "BOOL":
        _check_types(flat, (bool,), "true or false", where)
        return np.array(flat, dtype=np.bool_)
    if datatype == "BYTES":
        _check_types(flat, (str,), "a string", where)
        try:
            return _object_array([v.encode("utf-8") for v in flat])
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"{where} holds a string that is not valid Unicode") from exc
    if dtype.kind in "ui":
        _check_types(flat, (int,), "an integer", where)
        info = np.iinfo(dtype)
        for j, v in enumerate(flat):
            if not info.min <= v <= info.max:
                raise InvalidInput(
                    f"{where}: element {j} ({_show(v)}) is out of range for {datatype} "
                    f"[{info.min}, {info.max}]"
                )
        return np.array(flat, dtype=dtype)
    _check_types(flat, (int, float), "a number", where)
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError as exc:
        raise InvalidInput(f"{where} holds an integer too large for {datatype}") from exc
    with np.errstate(over="ignore"):
        narrow = wide.astype(dtype)
    overflow = np.isinf(narrow) & np.isfinite(wide)
    if overflow.any():
        j = int(np.argmax(overflow))
        raise InvalidInput(f"{where}: element {j} ({wide[j]}) is out of range for {datatype}")
    return narrow


def _check_types(flat: list[Any], kinds: tuple[type, ...], expected: str, where: str) -> None:
    # type() rather than isinstance(): a JSON true must not pass as the integer 1.
    if all(type(v) in kinds for v in flat):
        return
    j = next(j for j, v in enumerate(flat) if type(v) not in kinds)
    raise InvalidInput(f"{where}: element {j} must be {expected}, got {_kind(flat[j])}")


def _binary_tensor(
    chunk: memoryview, datatype: str, shape: tuple[int, ...], where: str
) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _frozen(_bytes_elements(chunk, count, where).reshape(shape))
    dtype = _DTYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}.parameters.binary_data_size is {len(chunk)} bytes but shape "
            f"{list(shape)} of {datatype} needs {count * dtype.itemsize}"
        )
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if (raw > 1).any():
            j = int(np.argmax(raw > 1))
            raise InvalidInput(f"{where}: BOOL element {j} is the byte {raw[j]}; use 0 or 1")
        return _frozen(raw.view(np.bool_).reshape(shape))
    return _frozen(np.frombuffer(chunk, dtype=dtype).reshape(shape))


def _bytes_elements(chunk: memoryview, count: int, where: str) -> np.ndarray:
    size, pos = len(chunk), 0
    if count * 4 > size:
        raise InvalidInput(
            f"{where}.parameters.binary_data_size is {size} bytes, too few for {count} BYTES "
            "elements of at least 4 bytes each"
        )
    elements = []
    for j in range(count):
        if pos + 4 > size:
            raise InvalidInput(f"{where}: BYTES element {j} has no room for its 4-byte length")
        (length,) = struct.unpack_from("<I", chunk, pos)
        if pos + 4 + length > size:
            raise InvalidInput(
                f"{where}: BYTES element {j} claims {length} bytes but only {size - pos - 4} "
                "are left in parameters.binary_data_size"
            )
        elements.append(bytes(chunk[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    if pos != size:
        raise InvalidInput(
            f"{where}.parameters.binary_data_size is {size} bytes but its {count} BYTES "
            f"elements take {pos}"
        )
    return _object_array(elements)


def _parse_outputs(doc: dict[str, Any]) -> tuple[RequestedOutput, ...]:
    raw = doc.get("outputs", [])
    if not isinstance(raw, list):
        raise InvalidInput(f"outputs must be a JSON array of requested outputs, got {_kind(raw)}")
    outputs: list[RequestedOutput] = []
    for i, item in enumerate(raw):
        where = f"outputs[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be a JSON object with a name, got {_kind(item)}")
        name = _required_str(item, "name", where)
        if any(o.name == name for o in outputs):
            raise InvalidInput(f"{where}.name {_show(name)} is requested twice")
        parameters = _parameters(item, where)
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"{where}.parameters.binary_data must be true or false")
        k = parameters.get("classification", 0)
        if type(k) is not int or k < 0:
            raise InvalidInput(
                f"{where}.parameters.classification must be a non-negative integer (how many "
                f"top classes to return), got {_show(k)}"
            )
        outputs.append(RequestedOutput(name, binary, k))
    return tuple(outputs)


# --- Model input ---------------------------------------------------------------------------


def prepare_model_input(
    request: InferRequest,
    spec: PreprocessingSpec,
    *,
    max_batch_size: int,
) -> np.ndarray:
    """Turn a request's one input into the model's float32 batch ``(N, C, H, W)``.

    Two forms are accepted: FP32 ``[N, C, H, W]`` exactly as the spec says, already
    normalised by the client (finite values only); or UINT8 ``[N, H, W, C]`` raw pixels
    (C 1 or 3; each image within the size policy, checked by :func:`parse_infer_request`),
    each made into model input by the code an uploaded ``/v1`` image goes through
    (``validation.image_to_model_input``: training's resize, conversion and normalisation).

    Raises:
        InvalidInput: not exactly one input, a datatype or shape that fits neither form, a
            batch size outside ``1..max_batch_size``, or non-finite FP32 values.
    """
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if len(request.inputs) != 1:
        names = ", ".join(_show(t.name) for t in request.inputs)
        raise InvalidInput(
            f"inputs: this model takes exactly one input ({INPUT_NAME!r}), got "
            f"{len(request.inputs)}: {names}"
        )
    tensor = request.inputs[0]
    c, h, w = spec.input_size
    forms = f"FP32 [N, {c}, {h}, {w}] (normalised) or UINT8 [N, height, width, 1 or 3] (pixels)"
    if tensor.datatype not in ("FP32", "UINT8"):
        raise InvalidInput(f"inputs[0].datatype is {tensor.datatype}; this model takes {forms}")
    shape = tensor.shape
    if tensor.datatype == "FP32":
        fits = len(shape) == 4 and shape[1:] == (c, h, w)
    else:
        fits = len(shape) == 4 and shape[3] in (1, 3) and min(shape[1:3]) >= 1
    if not fits:
        raise InvalidInput(
            f"inputs[0].shape {list(shape)} does not fit {tensor.datatype} for this model, "
            f"which takes {forms}"
        )
    if not 1 <= shape[0] <= max_batch_size:
        raise InvalidInput(
            f"inputs[0].shape: batch size {shape[0]} must be between 1 and {max_batch_size}"
        )
    if tensor.datatype == "FP32":
        if not np.isfinite(tensor.data).all():
            raise InvalidInput("inputs[0].data holds NaN or infinite values")
        return np.array(tensor.data, dtype=np.float32)
    return _pixels_to_batch(tensor.data, spec)


def pixel_batch(request: InferRequest) -> np.ndarray | None:
    """The request's raw ``uint8`` images ``(N, H, W, C)`` when its one input is a ``UINT8``
    pixel batch (what the prediction log keeps as PNG files), else None."""
    if len(request.inputs) != 1:
        return None
    tensor = request.inputs[0]
    if tensor.datatype != "UINT8" or tensor.data.ndim != 4:
        return None
    return np.asarray(tensor.data, dtype=np.uint8)


def _pixels_to_batch(pixels: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """``uint8 (N, H, W, C)`` to normalised ``float32 (N, C, H, W)``, image by image."""
    images = []
    for image in pixels:  # (H, W, C); Pillow wants (H, W) for one channel
        plane = image[..., 0] if image.shape[-1] == 1 else image
        pil = Image.fromarray(np.ascontiguousarray(plane))
        try:
            images.append(image_to_model_input(pil, spec))
        except InvalidInput as exc:
            raise InvalidInput(f"inputs[0].data: {exc}") from exc
    return np.stack(images)


# --- Responses -----------------------------------------------------------------------------


def check_outputs(request: InferRequest, available: Collection[str]) -> None:
    """Check, before inference, that every requested output exists.

    Raises:
        InvalidInput: naming the first requested output the model does not have.
    """
    for i, wanted in enumerate(request.outputs):
        if wanted.name not in available:
            raise InvalidInput(
                f"outputs[{i}].name {_show(wanted.name)} is not an output of this model; "
                f"it has {', '.join(sorted(available))}"
            )


def resolve_outputs(
    request: InferRequest,
    produced: Mapping[str, np.ndarray],
    *,
    labels: Sequence[str] = (),
) -> tuple[list[OutputTensor], set[str]]:
    """Pick the outputs a request asked for and how each goes back.

    With no requested outputs, all of ``produced`` is returned. A requested classification
    replaces the tensor by its top-k strings (:func:`classify`).

    Returns:
        The outputs in the order requested, and the names to send as binary data.

    Raises:
        InvalidInput: an unknown output, or a classification of a non-numeric output.
    """
    if not request.outputs:
        everything = [OutputTensor(name, data) for name, data in produced.items()]
        return everything, set(produced) if request.binary_data_output else set()
    check_outputs(request, produced.keys())
    outputs, binary = [], set()
    for i, wanted in enumerate(request.outputs):
        data = produced[wanted.name]
        if wanted.classification:
            if data.dtype.kind not in "uif":
                raise InvalidInput(
                    f"outputs[{i}].parameters.classification needs a numeric output; "
                    f"{_show(wanted.name)} is {datatype_of(data.dtype)}"
                )
            data = classify(data, wanted.classification, labels)
        outputs.append(OutputTensor(wanted.name, data))
        if request.binary_data_output if wanted.binary_data is None else wanted.binary_data:
            binary.add(wanted.name)
    return outputs, binary


def classify(scores: np.ndarray, k: int, labels: Sequence[str] = ()) -> np.ndarray:
    """Top-k classes per batch row as BYTES strings ``"score:index[:label]"``.

    The first axis is the batch (a 1-D array is one row); the rest of each row is flattened,
    as Triton does. ``k`` is capped at the number of classes; ties go to the lower index and
    NaN ranks last.

    Returns:
        An object array of ``bytes``, ``(B, k)`` (or ``(k,)`` for a 1-D input).
    """
    rows = scores.reshape(1, -1) if scores.ndim <= 1 else scores.reshape(scores.shape[0], -1)
    classes = rows.shape[1]
    k = min(k, classes)
    key = np.where(np.isnan(rows), -np.inf, rows) if rows.dtype.kind == "f" else rows
    # A stable ascending sort of the reversed row, read backwards: descending, and among
    # equal scores the lower index first.
    order = classes - 1 - np.argsort(key[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for b, row in enumerate(order):
        for j, index in enumerate(row.tolist()):
            label = f":{labels[index]}" if index < len(labels) else ""
            # str() of a numpy scalar is its shortest round-trip form: "3.3", not "3.29999995".
            out[b, j] = f"{rows[b, index]!s}:{index}{label}".encode()
    return out if scores.ndim >= 2 else out.reshape(k)


def encode_infer_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[OutputTensor],
    *,
    binary: bool | Collection[str] = False,
    parameters: Mapping[str, ParamValue] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode an inference response body and its headers.

    Args:
        model_name: the model's name.
        model_version: its version, or None to leave ``model_version`` out.
        request_id: the request's ``id``, or None when it had none.
        outputs: the tensors to return, in order.
        binary: True to send every output as binary data, False for none, or the names of
            those to send as binary data.
        parameters: the response's own parameters (e.g. ``ood_flagged``); left out if empty.

    Returns:
        The body and the headers to set: ``Content-Type`` (``application/json``, or
        ``application/octet-stream`` with binary data) and, with binary data,
        ``Inference-Header-Content-Length``.

    Raises:
        InvalidInput: a BYTES output that is not UTF-8 was asked for as JSON.
    """
    names = {o.name for o in outputs}
    binary_names = (names if binary else set()) if isinstance(binary, bool) else set(binary)
    if binary_names - names:
        raise ValueError(f"binary names {sorted(binary_names - names)} are not among the outputs")
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    entries, chunks = [], []
    for out in outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.data.shape),
        }
        if out.name in binary_names:
            raw = tensor_bytes(out.data, out.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(out.data, out.datatype, out.name)
        entries.append(entry)
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not binary_names:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def tensor_bytes(data: np.ndarray, datatype: str) -> bytes:
    """A tensor's bytes in the binary extension's layout (little-endian; each BYTES element
    behind its 4-byte length), which gRPC's ``raw_output_contents`` share."""
    if datatype != "BYTES":
        return np.ascontiguousarray(data, dtype=_DTYPES[datatype]).tobytes()
    parts = []
    for element in data.reshape(-1).tolist():
        raw = element.encode() if isinstance(element, str) else bytes(element)
        parts += [struct.pack("<I", len(raw)), raw]
    return b"".join(parts)


def _to_json(data: np.ndarray, datatype: str, name: str) -> list[Any]:
    flat = data.reshape(-1).tolist()
    if datatype != "BYTES":
        return flat
    try:
        return [e if isinstance(e, str) else bytes(e).decode("utf-8") for e in flat]
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"output {_show(name)} holds BYTES that are not UTF-8 text; request it with "
            "parameters.binary_data = true"
        ) from exc


# --- Metadata and errors -------------------------------------------------------------------


def server_metadata(*, version: str, name: str = "resnetkit") -> dict[str, Any]:
    """The body of ``GET /v2``: name, version and the extensions this server implements."""
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


# --- Small helpers -------------------------------------------------------------------------


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _object_array(items: list[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    """The JSON type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "a number", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "an object")


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a client-given scalar, for messages; containers are named by kind."""
    if isinstance(value, list | dict):  # a repr could be huge, or nested past the stack
        return _kind(value)
    text = repr(value[:limit] if isinstance(value, str) else value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
