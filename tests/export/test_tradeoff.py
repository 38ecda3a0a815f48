"""The trade-off report measures run directories and ONNX files side by side."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.cli.main import main
from resnetkit.data import load_dataset
from resnetkit.errors import CheckpointError
from resnetkit.export import export_onnx
from resnetkit.export.tradeoff import measure_variant, plot_tradeoff
from resnetkit.models import load_model
from resnetkit.onnxio import card_metadata

from .rundir import trained_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


def _onnx(run_dir: Path, path: Path) -> Path:
    model, card = load_model(run_dir)
    return export_onnx(model, path, input_size=(1, 28, 28), metadata=card_metadata(card))


def test_run_directory_and_its_onnx_agree_on_accuracy_and_size(
    run_dir: Path, tmp_path: Path
) -> None:
    test = load_dataset("fashion-mnist", "test", limit=400)
    torch_row = measure_variant("original", run_dir, test, min_time_s=0.05)
    onnx_row = measure_variant("onnx", _onnx(run_dir, tmp_path / "m.onnx"), test, min_time_s=0.05)
    assert torch_row.top1 == pytest.approx(onnx_row.top1, abs=0.01)
    assert torch_row.params == onnx_row.params and torch_row.macs == onnx_row.macs
    assert torch_row.p95_ms_batch1 > 0 and onnx_row.images_per_s_batch32 > 0
    png = plot_tradeoff([torch_row, onnx_row], tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_json_and_png(run_dir: Path, tmp_path: Path) -> None:
    onnx = _onnx(run_dir, tmp_path / "m.onnx")
    args = ["tradeoff", str(run_dir), "--int8", str(onnx), "--test-limit", "200"]
    assert main([*args, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "tradeoff.json").is_file()
    assert (tmp_path / "report" / "tradeoff.png").is_file()


def test_onnx_without_metadata_is_refused(run_dir: Path, tmp_path: Path) -> None:
    model, _ = load_model(run_dir)
    bare = export_onnx(model, tmp_path / "bare.onnx", input_size=(1, 28, 28))
    with pytest.raises(CheckpointError, match="no resnetkit metadata"):
        measure_variant("bare", bare, load_dataset("fashion-mnist", "test", limit=10))
