"""ONNX files as resnetkit writes them: tensor names, ``resnetkit.*`` metadata, sessions.

An exported model has one input :data:`INPUT_NAME` (float32 ``(batch, C, H, W)``, normalised
with the model's preprocessing spec) and the outputs :data:`OUTPUT_NAME` (``logits``,
``(batch, classes)``) and, from files exported since the server landed,
:data:`EMBEDDING_NAME` (the pre-logits embedding, ``(batch, features)``, for drift
detection). The model card travels in ``metadata_props`` under the prefix
:data:`METADATA_PREFIX` (``resnetkit.arch``, ``resnetkit.labels``, ...; JSON for values that
are not strings), so an ``.onnx`` file alone is enough to serve. Export, quantization, the
registry and the server read and write it through this module, and open ONNX Runtime
sessions through :func:`ort_session`, always with explicit thread settings.
"""

from __future__ import annotations

import json
import mmap
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from resnetkit.contract import ModelCard
from resnetkit.errors import CheckpointError, ConfigError, ExportError

__all__ = [
    "DEFAULT_OPSET",
    "EMBEDDING_NAME",
    "INPUT_NAME",
    "METADATA_PREFIX",
    "OUTPUT_NAME",
    "card_from_metadata",
    "card_metadata",
    "check_onnx_file",
    "default_threads",
    "import_onnx",
    "import_ort",
    "load_proto",
    "ort_session",
    "read_metadata",
    "write_metadata",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EMBEDDING_NAME = "embedding"
#: The opset :func:`resnetkit.export.export_onnx` writes by default (the exporter lives beside
#: torch; the number lives here so the torch-free loader can name cached exports).
DEFAULT_OPSET = 18
METADATA_PREFIX = "resnetkit."
_CARD_KEYS = ("arch", "kwargs", "labels", "preprocessing")


def import_onnx() -> Any:
    """The ``onnx`` package, or an error that says how to install it."""
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError("ONNX files need the onnx package: pip install onnx") from exc
    return onnx


def import_ort() -> Any:
    """The ``onnxruntime`` package, or an error that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError("ONNX Runtime is missing: pip install onnxruntime") from exc
    return onnxruntime


def default_threads() -> int:
    """Threads to use when none are given: the CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_proto(path: str | os.PathLike[str]) -> Any:
    """Parse an ONNX file (without external data).

    Raises:
        CheckpointError: the file is missing, empty or not an ONNX model.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p} does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty, not an ONNX model")
    onnx = import_onnx()
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise CheckpointError(f"{p} is not a readable ONNX model: {exc}") from exc
    if not len(proto.graph.node):
        raise CheckpointError(f"{p} is not a readable ONNX model: its graph is empty")
    return proto


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _key(name: str) -> str:
    return name if name.startswith(METADATA_PREFIX) else METADATA_PREFIX + name


def write_metadata(proto: Any, metadata: Mapping[str, Any]) -> None:
    """Set ``resnetkit.*`` entries of an ``onnx.ModelProto``'s ``metadata_props`` in place.

    Values that are not strings are stored as JSON; existing keys are replaced.
    """
    wanted = {_key(k): _encode(v) for k, v in metadata.items()}
    keep = [p for p in proto.metadata_props if p.key not in wanted]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in wanted.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(source: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """The ``resnetkit.*`` metadata of an ONNX file or proto: prefix removed, JSON decoded.

    A file is read by :func:`check_onnx_file`, without the ``onnx`` package (the serving
    install has none); a proto is an ``onnx.ModelProto`` already parsed.

    Raises:
        CheckpointError: the file cannot be read as ONNX.
    """
    if isinstance(source, (str, os.PathLike)):
        pairs = check_onnx_file(source)
    else:
        pairs = [(prop.key, prop.value) for prop in source.metadata_props]
    out: dict[str, Any] = {}
    for raw_key, value in pairs:
        key = raw_key.removeprefix(METADATA_PREFIX)
        if key != raw_key:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
    return out


# Field numbers of onnx.proto (ModelProto, GraphProto, StringStringEntryProto).
_MODEL_GRAPH, _MODEL_METADATA, _GRAPH_NODE, _ENTRY_KEY, _ENTRY_VALUE = 7, 14, 1, 1, 2
_LENGTH_DELIMITED = 2


def check_onnx_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Check that ``path`` is an ONNX model with a non-empty graph, and return its
    ``metadata_props`` as ``(key, value)`` pairs, reading the protobuf wire format directly.

    ``onnx.load`` would parse every tensor of the file into Python objects; this walks the
    top-level fields and skips the weights by their length, through a memory map, so it
    costs next to nothing on a large model and needs no ``onnx`` package.

    Raises:
        CheckpointError: the file is missing, empty, not protobuf, or has no graph nodes.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p} does not exist")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty, not an ONNX model")
    try:
        with open(p, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            pairs, has_nodes = _scan_model(buf)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p} is not a readable ONNX model: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"{p} cannot be read: {exc.strerror or exc}") from exc
    if not has_nodes:
        raise CheckpointError(f"{p} is not a readable ONNX model: its graph is empty")
    return pairs


def _scan_model(buf: mmap.mmap) -> tuple[list[tuple[str, str]], bool]:
    pairs: list[tuple[str, str]] = []
    has_graph = has_nodes = False
    for field, start, end in _fields(buf, 0, len(buf)):
        if field == _MODEL_GRAPH and start is not None:
            has_graph = True
            has_nodes = has_nodes or any(
                f == _GRAPH_NODE and s is not None for f, s, _ in _fields(buf, start, end)
            )
        elif field == _MODEL_METADATA and start is not None:
            entry = {
                f: buf[s:e].decode("utf-8") for f, s, e in _fields(buf, start, end) if s is not None
            }
            pairs.append((entry.get(_ENTRY_KEY, ""), entry.get(_ENTRY_VALUE, "")))
    if not has_graph:
        raise ValueError("no graph")
    return pairs, has_nodes


def _fields(buf: mmap.mmap, pos: int, end: int) -> Iterator[tuple[int, int | None, int]]:
    """``(field number, start, end)`` of each field in ``buf[pos:end]``; start is None for
    fields that are not length-delimited."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError(f"field number 0 at byte {pos}")
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            yield field, None, pos
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError(f"a field of {length} bytes runs past the end at byte {pos}")
            yield field, pos, pos + length
            pos += length
        elif wire in (1, 5):  # fixed 64 or 32 bits
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise ValueError("truncated")
            yield field, None, pos
        else:
            raise ValueError(f"wire type {wire} at byte {pos}")


def _varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def card_metadata(card: ModelCard) -> dict[str, Any]:
    """The metadata entries that carry a model card into an ONNX file."""
    data = card.to_dict()
    return {k: data[k] for k in _CARD_KEYS}


def card_from_metadata(metadata: Mapping[str, Any], *, source: str) -> ModelCard:
    """The model card an ONNX file carries.

    Raises:
        CheckpointError: the file has no resnetkit metadata, or it is malformed.
    """
    if "arch" not in metadata or "preprocessing" not in metadata:
        raise CheckpointError(
            f"{source} has no resnetkit metadata (arch, labels, preprocessing): it was not "
            "exported by resnetkit; export the model with `resnetkit export`, or register the "
            "run directory it came from"
        )
    return ModelCard.from_dict({k: metadata[k] for k in _CARD_KEYS if k in metadata}, source=source)


def _providers(ort: Any, device: str) -> list[str]:
    kind = device.split(":")[0]
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind != "cuda":
        raise ConfigError(f"ONNX Runtime runs on cpu or cuda, not {device!r}")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    warnings.warn(
        "device cuda asked for, but this onnxruntime has no CUDAExecutionProvider "
        "(install onnxruntime-gpu); running on the CPU",
        RuntimeWarning,
        stacklevel=3,
    )
    return ["CPUExecutionProvider"]


def ort_session(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    device: str = "cpu",
    spinning: bool = True,
) -> Any:
    """An ONNX Runtime session with explicit threads and full graph optimisation.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (default: the CPUs this process may use); inter-op is 1,
            the graph runs sequentially. Several sessions in one process each get their own
            pool, so give each its share of the cores.
        device: ``cpu`` or ``cuda`` (the CUDA provider when this onnxruntime has it;
            otherwise a warning and the CPU).
        spinning: let idle intra-op threads spin for the next call (lower latency for a
            busy benchmark; turn it off in a server where other threads need the cores).

    Raises:
        ConfigError: ``threads`` below 1 or an unknown device.
        CheckpointError: ONNX Runtime cannot load the file.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    ort = import_ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no "WARNING:root" lines in command output
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = _providers(ort, device)
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CheckpointError(f"ONNX Runtime cannot load {path}: {exc}") from exc
