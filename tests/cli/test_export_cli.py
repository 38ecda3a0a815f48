"""``resnetkit export|quantize|bench`` on a real, briefly trained run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetkit.cli.main import main
from resnetkit.onnxio import read_metadata
from resnetkit.registry import open_registry
from tests.export.rundir import trained_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run_dir(str(tmp_path_factory.getbasetemp()))


def test_export_writes_onnx_and_reports_parity(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "-o", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parity"]["top1_agreement"] == 1.0 and result["parity"]["max_abs_diff"] < 1e-4
    assert read_metadata(out)["labels"][0] == "T-shirt/top"


def test_export_of_an_onnx_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m.onnx").write_bytes(b"x")  # never opened: the name says what it is
    assert main(["export", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx")]) == 1
    assert "already ONNX" in capsys.readouterr().err


def test_export_resolves_a_registry_alias(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    with open_registry(url, tmp_path / "artifacts") as store:
        info = store.register(run_dir, "fashion")
        store.set_alias("fashion", "production", info.version, reason="test")
    out = tmp_path / "prod.onnx"
    code = main(["export", "fashion@production", "--registry", url, "-o", str(out), "--no-parity"])
    assert code == 0 and out.exists()
    assert "parity check skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_quantize_reports_accuracy_before_and_after(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8.onnx"
    argv = ["quantize", str(run_dir), "-o", str(out), "--calib", "128", "--test-limit", "1000"]
    # The tiny test model (resnet8, 16 channels, 75%) loses about 1.2 points in int8; the
    # budget leaves room for that: this test is about the report, the next about the verdict.
    assert main([*argv, "--budget", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accepted"] and report["method"] == "percentile"
    assert report["test_images"] == 1000 and report["calibration_images"] == 128
    assert report["fp32_top1"] > 0.6 and abs(report["drop_points"]) < 3


def test_the_exit_status_says_whether_int8_kept_within_its_budget(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8.onnx"
    argv = ["quantize", str(run_dir), "-o", str(out), "--calib", "1", "--test-limit", "300"]
    status = main([*argv, "--budget", "0", "--method", "minmax"])
    text = capsys.readouterr().out
    dropped = float(text.split("drop ")[1].split(" points")[0])
    assert status == (1 if dropped > 0 else 0) and out.exists()
    assert ("REJECTED" in text) == (dropped > 0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--budget", "-50"], "--budget must be at least 0"),
        (["--calib", "0"], "--calib must be at least 1"),
        (["--test-limit", "0"], "--test-limit must be at least 1"),
    ],
)
def test_nonsense_quantize_arguments_are_refused_before_any_work(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    out = tmp_path / "int8.onnx"
    assert main(["quantize", str(run_dir), "-o", str(out), *flags]) == 1
    assert message in capsys.readouterr().err and not out.exists()


def test_bench_prints_json_for_each_backend_and_batch(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", str(run_dir), "--batch-sizes", "1,4", "--min-time", "0.02", "--json"]
    assert main([*argv, "--backends", "torch-eager,torch-folded-cl,onnx-fp32"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in results] == ["torch-eager", "torch-folded-cl", "onnx-fp32"]
    assert all([s["batch_size"] for s in r["latencies"]] == [1, 4] for r in results)


def test_bench_rejects_an_unknown_backend(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(run_dir), "--backends", "tensorrt"]) == 1
    assert "unknown" in capsys.readouterr().err
