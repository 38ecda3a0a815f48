"""Reading ONNX files without the onnx package: metadata and a sanity check of the graph."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from resnetkit.errors import CheckpointError
from resnetkit.onnxio import check_onnx_file, read_metadata, write_metadata


def _model(nodes: int = 1, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 4], [0.5] * 4)
    names = ["x"] + [f"h{i}" for i in range(nodes - 1)] + ["y"]
    graph_nodes = [helper.make_node("Add", [names[i], "w"], [names[i + 1]]) for i in range(nodes)]
    graph = helper.make_graph(graph_nodes, "g", [x], [y], initializer=[weight])
    model = helper.make_model(graph)
    if metadata:
        write_metadata(model, metadata)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_metadata_read_from_the_wire_equals_onnxs(tmp_path: Path) -> None:
    meta = {"labels": ["a", "b"], "arch": "resnet18", "note": "ünïcode ✓"}
    path = _save(_model(3, meta), tmp_path / "m.onnx")
    pairs = check_onnx_file(path)
    assert pairs == [(p.key, p.value) for p in onnx.load(str(path)).metadata_props]
    assert read_metadata(path) == meta == read_metadata(onnx.load(str(path)))


def test_a_graph_without_nodes_is_refused(tmp_path: Path) -> None:
    path = _save(_model(0), tmp_path / "empty.onnx")
    with pytest.raises(CheckpointError, match="graph is empty"):
        check_onnx_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"PK\x03\x04 a zip file", "not a readable ONNX model")],
)
def test_files_that_are_not_onnx_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        check_onnx_file(path)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    data = _model(2, {"arch": "x"}).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        check_onnx_file(path)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=256))
def test_any_bytes_give_metadata_or_one_checkpoint_error(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.onnx"
    path.write_bytes(data)
    try:
        pairs = check_onnx_file(path)
    except CheckpointError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)
