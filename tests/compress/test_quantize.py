"""Static int8 (QDQ, u8 activations, 7-bit s8 per-channel weights) with a real accuracy check."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from resnetkit.compress import evaluate_onnx_top1, quantize_onnx, quantize_with_budget
from resnetkit.data import PreprocessingSpec, load_dataset, normalize
from resnetkit.errors import ConfigError
from resnetkit.export import export_onnx
from resnetkit.models import load_model
from resnetkit.onnxio import read_metadata
from tests.export.rundir import trained_run_dir


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreprocessingSpec]:
    model, card = load_model(trained_run_dir(str(tmp_path_factory.getbasetemp())))
    path = tmp_path_factory.mktemp("q") / "fp32.onnx"
    export_onnx(model, path, input_size=(1, 28, 28), metadata={"labels": card.labels})
    return path, card.spec()


@pytest.fixture(scope="module")
def calibration(fp32: tuple[Path, PreprocessingSpec]) -> torch.Tensor:
    train = load_dataset("fashion-mnist", "train")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:200]
    return normalize(train.images[index], fp32[1])


@pytest.fixture(scope="module")
def test_split() -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("fashion-mnist", "test", limit=2000)
    return test.images, test.labels


@pytest.mark.slow
@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax"])
def test_int8_top1_stays_within_budget_on_real_test_images(
    fp32: tuple[Path, PreprocessingSpec],
    calibration: torch.Tensor,
    test_split: tuple[torch.Tensor, torch.Tensor],
    tmp_path: Path,
    method: str,
) -> None:
    path, spec = fp32
    report = quantize_with_budget(
        path, tmp_path / "int8.onnx", calibration, *test_split, spec, method=method
    )
    assert report.fp32_top1 > 0.5  # a trained model, not chance (10%)
    assert report.accepted and abs(report.drop_points) <= 1.0
    assert report.int8_size_bytes < report.fp32_size_bytes / 2
    meta = read_metadata(tmp_path / "int8.onnx")
    assert meta["quantization_accepted"] is True
    assert meta["quantization"]["calibration_method"] == method
    assert len(meta["labels"]) == 10  # the fp32 metadata travels to the int8 file


def test_graph_is_qdq_with_u8_activations_and_s8_per_channel_weights(
    fp32: tuple[Path, PreprocessingSpec], calibration: torch.Tensor, tmp_path: Path
) -> None:
    out = quantize_onnx(fp32[0], tmp_path / "int8.onnx", calibration[:64])
    graph = onnx.load(str(out)).graph
    inits = {i.name: i for i in graph.initializer}
    quant = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quant, "QDQ format puts QuantizeLinear nodes in the graph"
    zero_points = {inits[n.input[2]].data_type for n in quant if n.input[2] in inits}
    assert zero_points == {TensorProto.UINT8}  # activations: unsigned
    conv_weights = [
        inits[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and len(inits[n.input[0]].dims) == 4
    ]
    assert conv_weights and all(w.data_type == TensorProto.INT8 for w in conv_weights)
    # 7-bit weights: u8 x s8 pairs cannot saturate int16 on CPUs without VNNI
    widest = max(int(abs(numpy_helper.to_array(w).astype(int)).max()) for w in conv_weights)
    assert 32 < widest <= 64
    per_channel = [
        n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
        and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
    ]  # fmt: skip
    assert len(per_channel) >= len(conv_weights)


def test_a_drop_beyond_the_budget_is_flagged_not_accepted(
    fp32: tuple[Path, PreprocessingSpec],
    calibration: torch.Tensor,
    test_split: tuple[torch.Tensor, torch.Tensor],
    tmp_path: Path,
) -> None:
    images, labels = test_split
    report = quantize_with_budget(
        fp32[0], tmp_path / "int8.onnx", calibration[:64], images[:300], labels[:300], fp32[1],
        method="minmax", budget_points=-50.0,  # int8 would have to gain 50 points
    )  # fmt: skip
    assert not report.accepted and report.to_dict()["accepted"] is False
    assert read_metadata(tmp_path / "int8.onnx")["quantization_accepted"] is False


def test_evaluate_onnx_top1_matches_torch(
    fp32: tuple[Path, PreprocessingSpec], test_split: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images, labels = test_split
    onnx_top1 = evaluate_onnx_top1(fp32[0], images[:500], labels[:500], fp32[1])
    model, _ = load_model(trained_run_dir(str(fp32[0].parent.parent)))
    with torch.no_grad():
        torch_top1 = (model(normalize(images[:500], fp32[1])).argmax(1) == labels[:500]).float()
    assert onnx_top1 == pytest.approx(float(torch_top1.mean()), abs=0.002)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"method": "kl"}, "method"), ({"activation_type": "u4"}, "activation_type")],
)
def test_unknown_options_are_config_errors(
    fp32: tuple[Path, PreprocessingSpec],
    calibration: torch.Tensor,
    tmp_path: Path,
    kwargs: dict[str, str],
    match: str,
) -> None:
    with pytest.raises(ConfigError, match=match):
        quantize_onnx(fp32[0], tmp_path / "x.onnx", calibration[:4], **kwargs)  # type: ignore[arg-type]
