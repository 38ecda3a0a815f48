"""Edge exports: ExecuTorch, LiteRT and Core ML, checked on 1,000 real test images.

One briefly trained resnet8 (the session's shared run directory) is converted for real; no
converter is mocked. Each conversion costs 5-20 s here, so every format is converted once
in fp32 or int8 and the bad-input tests fail before any conversion starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from resnetkit.cli.main import main
from resnetkit.errors import ConfigError, ExportError, MissingDependency
from resnetkit.export import load_model_ref
from resnetkit.export.edge import (
    FP32_MAX_ABS_DIFF,
    MIN_PARITY_IMAGES,
    edge_runner,
    export_edge,
    read_edge_metadata,
)
from resnetkit.onnxio import card_metadata
from tests.export.rundir import trained_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


def _card_in(path: Path, run_dir: Path) -> dict[str, object]:
    metadata = read_edge_metadata(path)
    expected = card_metadata(load_model_ref(str(run_dir)).card)
    assert {k: metadata[k] for k in expected} == json.loads(json.dumps(expected))
    return metadata


def test_executorch_fp32_is_written_only_when_it_matches_torch_on_1000_real_images(
    run_dir: Path, tmp_path: Path
) -> None:
    loaded = load_model_ref(str(run_dir))
    out = tmp_path / "model.pte"
    # Zero tolerance: XNNPACK's float kernels differ from torch's by ~1e-6, so this fails
    # for real, and the file must not exist afterwards (nor any staged file beside it).
    with pytest.raises(ExportError, match=r"parity check failed.*not written.*1000 test images"):
        export_edge(loaded, out, fmt="executorch", max_abs_diff=0.0)
    assert list(tmp_path.iterdir()) == []

    report = export_edge(loaded, out, fmt="executorch")
    assert report.parity is not None and report.parity.passed
    assert report.parity.images == MIN_PARITY_IMAGES
    assert report.parity.top1_agreement >= 0.999
    assert report.parity.max_abs_diff <= FP32_MAX_ABS_DIFF
    assert report.details["delegated_subgraphs"] >= 1  # XNNPACK took the convolutions
    assert report.details["portable_ops"]  # and the portable kernels the rest, in the check
    assert [p.name for p in tmp_path.iterdir()] == ["model.pte"]
    metadata = _card_in(out, run_dir)
    assert metadata["format"] == "executorch" and metadata["precision"] == "fp32"
    # The written file, reloaded, still gives torch's logits.
    test = loaded.dataset("test", limit=16)
    images = loaded.normalized(test.images)
    with torch.inference_mode():
        expected = loaded.module()(images).numpy()
    got = edge_runner(out, threads=1).run(images.numpy())
    assert abs(got - expected).max() <= FP32_MAX_ABS_DIFF


def test_tflite_int8_from_the_cli_stays_within_the_onnx_int8_budget(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model-int8.tflite"
    code = main(["export", str(run_dir), "--format", "tflite", "--int8", "-o", str(out),
                 "--calib", "256", "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    parity = report["parity"]
    assert parity["precision"] == "int8" and parity["images"] == 1000
    assert parity["drop_points"] <= 1.0  # the budget `resnetkit quantize` applies
    assert parity["edge_top1"] > 0.5  # a real classifier, not a constant
    metadata = _card_in(out, run_dir)
    assert metadata["quantization"]["calibration_images"] == 256
    # int8 weights: about a quarter of the fp32 model's bytes.
    fp32_bytes = sum(p.numel() * 4 for p in load_model_ref(str(run_dir)).module().parameters())
    assert out.stat().st_size < 0.5 * fp32_bytes


def test_coreml_package_is_converted_and_structurally_checked(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.mlpackage"
    assert main(["export", str(run_dir), "--format", "coreml", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "structure: input [1, 1, 28, 28], output [1, 10]" in text
    assert "Core ML runs only on macOS" in text
    assert (out / "Manifest.json").is_file()
    assert _card_in(out, run_dir)["format"] == "coreml"
    assert [p.name for p in tmp_path.iterdir()] == ["model.mlpackage"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "tensorrt", "-o", "m.plan"], "--format 'tensorrt' is not known; use one"),
        (["--format", "tflite", "-o", "missing/m.tflite"], "the folder missing does not exist"),
        (["--format", "tflite", "-o", "m.pte"], "a tflite file should end in .tflite"),
        (["--format", "coreml", "--int8", "-o", "m.mlpackage"], "--int8 is not offered"),
        (["--format", "executorch", "--parity-images", "10", "-o", "m.pte"], "at least 1000"),
        (["--format", "tflite", "--no-parity", "-o", "m.tflite"], "always checked"),
        (["-o", "m.onnx", "--int8"], "--int8: only for --format"),
    ],
)
def test_bad_edge_arguments_are_one_line_errors_before_any_work(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(run_dir), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fmt", "module", "file", "message"),
    [
        ("coreml", "coremltools", "m.mlpackage", r"pip install 'resnetkit\[coreml\]'$"),
        ("tflite", "litert_torch", "m.tflite",
         r"pip install 'resnetkit\[tflite\]', then pip install --no-deps litert-torch==0\.10\.0"),
    ],
)  # fmt: skip
def test_a_missing_extra_names_the_extra(
    run_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    module: str,
    file: str,
    message: str,
) -> None:
    # A None entry in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependency, match=message):
        export_edge(load_model_ref(str(run_dir)), tmp_path / file, fmt=fmt)
    assert list(tmp_path.iterdir()) == []


class _InverseErf(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erfinv(x.tanh() * 0.5)  # LiteRT has no lowering for erfinv


class _Spectrum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x, dim=-1).abs()  # Core ML has no complex FFT


class _OddModel(nn.Module):
    """A conv net with an op the target cannot lower, inside a named block."""

    def __init__(self, odd: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.head = nn.Sequential(nn.ReLU(), odd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x)).mean((2, 3))


def _to_tflite(model: nn.Module, tmp_path: Path) -> None:
    from resnetkit.export.edge_litert import to_tflite

    to_tflite(model, torch.zeros(1, 1, 8, 8), metadata={})


def _to_coreml(model: nn.Module, tmp_path: Path) -> None:
    from resnetkit.export.edge_coreml import to_mlpackage

    to_mlpackage(model, torch.zeros(1, 1, 8, 8), tmp_path / "m.mlpackage", metadata={})


@pytest.mark.parametrize(
    ("convert", "odd", "expected"),
    [
        (_to_tflite, _InverseErf(), "tflite conversion failed on op erfinv in layer head.1 "
         "(_InverseErf): Lowering not found"),
        (_to_coreml, _Spectrum(), "coreml conversion failed on op fft_rfft in layer head.1 "
         "(_Spectrum): "),
    ],
    ids=["tflite", "coreml"],
)  # fmt: skip
def test_an_unsupported_op_names_the_op_and_the_layer(
    tmp_path: Path, convert: Any, odd: nn.Module, expected: str
) -> None:
    with pytest.raises(ExportError) as caught:
        convert(_OddModel(odd), tmp_path)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message and len(message) < 300
    assert list(tmp_path.iterdir()) == []


def test_read_edge_metadata_refuses_files_it_did_not_write(tmp_path: Path) -> None:
    junk = tmp_path / "x.tflite"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(Exception, match="not a TFLite model"):
        read_edge_metadata(junk)
    with pytest.raises(ConfigError, match="not an edge model"):
        read_edge_metadata(tmp_path / "x.onnx")
