"""Reading run directories and .onnx files for registration (sources.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from resnetkit.errors import CheckpointError, RegistryError
from resnetkit.registry.sources import read_source
from tests.registry.rundirs import LABELS, int8_metadata, make_onnx_file, make_run_dir


def test_a_run_directory_yields_its_artifacts_metrics_and_lineage(tmp_path: Path) -> None:
    spec = read_source(make_run_dir(tmp_path / "run", seed=3, accuracy=0.91))
    assert spec.kind == "run_dir"
    assert set(spec.files) >= {"model.safetensors", "model.json", "summary.json", "config.toml"}
    assert "drift_reference.safetensors" in spec.files
    assert spec.metrics == {"test_accuracy": 0.91, "test_loss": 0.31, "epochs": 3}
    assert (spec.run_id, spec.dataset_fingerprint) == ("run-3", "fmnist-sha256:1f2e3d")


def test_the_git_commit_is_the_code_version_when_the_run_does_not_say(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    run = make_run_dir(tmp_path / "repo" / "run")
    git = ["git", "-C", str(tmp_path / "repo")]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run(
        [
            *git,
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        check=True,
    )
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert read_source(run).code_version == head.stdout.strip()


def test_an_onnx_file_without_sidecars_or_metadata_is_refused(tmp_path: Path) -> None:
    # Without labels and a preprocessing spec, nothing could serve it.
    onnx = make_onnx_file(tmp_path / "net.onnx")
    with pytest.raises(CheckpointError, match=r"no resnetkit metadata.*resnetkit export"):
        read_source(onnx)


def test_an_onnx_file_describes_itself_through_its_metadata(tmp_path: Path) -> None:
    spec = read_source(make_onnx_file(tmp_path / "int8.onnx", int8_metadata(accepted=True)))
    assert spec.model_json["arch"] == "resnet20"
    assert spec.model_json["labels"] == LABELS
    assert spec.model_json["preprocessing"]["size"] == [28, 28]
    assert spec.metrics["quantization_int8_top1"] == 0.918
    assert spec.metrics["quantization_method"] == "percentile"
    assert spec.rejected is None


def test_an_int8_file_that_failed_its_budget_is_read_as_rejected(tmp_path: Path) -> None:
    spec = read_source(make_onnx_file(tmp_path / "int8.onnx", int8_metadata(accepted=False)))
    assert spec.rejected is not None
    assert "7.00 points, budget 1" in spec.rejected
    card = {k: v for k, v in int8_metadata(accepted=True).items() if "quantization" not in k}
    bare_path = make_onnx_file(tmp_path / "bare.onnx", {**card, "quantization_accepted": False})
    bare = read_source(bare_path)
    assert bare.rejected is not None and "no report" in bare.rejected


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    (tmp_path / "net.onnx").write_bytes(b"\xff not a protobuf")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        read_source(tmp_path / "net.onnx")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"kwargs": {}}', "'arch' must be a non-empty string"),
        ('{"arch": "resnet20", "labels": "cat"}', "'labels' must be a JSON list"),
    ],
)
def test_a_broken_model_json_is_refused(tmp_path: Path, content: str, message: str) -> None:
    run = make_run_dir(tmp_path / "run")
    (run / "model.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        read_source(run)


def test_a_path_that_is_neither_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_text(json.dumps({}))
    with pytest.raises(RegistryError, match=r"neither a run directory nor an \.onnx file"):
        read_source(tmp_path / "weights.pt")
    with pytest.raises(RegistryError, match="does not exist"):
        read_source(tmp_path / "nothing")
