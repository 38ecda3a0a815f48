"""``resnetkit eval`` as a user runs it, on a real model directory and real Fashion-MNIST."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnetkit.cli.main import main
from resnetkit.data import PreprocessingSpec
from resnetkit.evaluate.precision import cpu_has_fast_bf16
from resnetkit.models import create_model, save_model
from tests.evaluate.helpers import (
    FASHION_DIR,
    one_thread,
    require_fashion_mnist,
    write_model_dir,
)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_fashion_mnist()
    return write_model_dir(tmp_path_factory.mktemp("run"))


def _eval(*args: str) -> int:
    return main(["eval", *args, "--data", "fashion-mnist", "--data-dir", str(FASHION_DIR)])


def test_eval_prints_a_summary_and_writes_results_into_the_run(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _eval(str(model_dir), "--limit", "200") == 0
    out = capsys.readouterr().out
    for text in ("top-1 accuracy", "top-5 accuracy", "ECE", "NLL", "Ankle boot", "F1"):
        assert text in out
    report = json.loads((model_dir / "eval.json").read_text())
    assert report["num_samples"] == 200 and report["split"] == "test"
    assert report["dataset"] == "fashion-mnist"
    for name in ("confusion_matrix.png", "reliability_diagram.png"):
        assert (model_dir / "plots" / name).is_file()


def test_json_output_with_options_and_another_out_dir(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "eval-out"
    args = ("--limit", "100", "--batch-size", "32", "--tta-flip", "--tta-shift", "1")
    args += ("--device", "cpu", "--amp")
    assert _eval(str(model_dir / "model.json"), *args, "--out", str(out_dir), "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["tta_flip"] is True and printed["num_samples"] == 100
    # --amp is the "auto" policy: bf16 only where the CPU runs it natively.
    amp = "bfloat16" if cpu_has_fast_bf16() else "float32"
    assert printed["tta_shift"] == 1 and printed["precision"] == amp
    assert printed["per_class"][9]["label"] == "Ankle boot"
    assert json.loads((out_dir / "eval.json").read_text()) == printed
    assert (out_dir / "plots" / "confusion_matrix.png").is_file()


def test_a_bad_path_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "resnetkit.cli.main", "eval", str(tmp_path / "nope"),
         "--data", "fashion-mnist"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_directory_without_a_model_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "checkpoints").mkdir()
    assert _eval(str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "not a run directory" in err and len(err.strip().splitlines()) == 1


def test_a_model_for_other_images_is_refused_before_evaluating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = PreprocessingSpec(size=(32, 32), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    kwargs = {"in_chans": 3, "num_classes": 10}
    model = create_model("resnet8", **kwargs)
    save_model(model, tmp_path, arch="resnet8", kwargs=kwargs, preprocessing=spec)
    assert _eval(str(tmp_path), "--limit", "10") == 1
    err = capsys.readouterr().err
    assert "1x28x28 images but the model expects 3x32x32" in err
    assert not (tmp_path / "eval.json").exists()
