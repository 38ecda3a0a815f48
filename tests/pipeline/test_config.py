"""The pipeline file: defaults, unknown keys named, values checked, paths from the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnetkit.cli.main import main
from resnetkit.errors import ConfigError
from resnetkit.pipeline import PipelineConfig, load_pipeline_config

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "fashion_mnist.toml"


def test_no_file_means_the_documented_defaults() -> None:
    cfg = load_pipeline_config(None)
    assert cfg == PipelineConfig()
    assert cfg.gate.min_accuracy == 0.80 and cfg.gate.max_accuracy_drop_points == 1.0
    assert cfg.train.recipe is None and cfg.data.feedback is None


def test_the_example_file_states_the_defaults_and_reads_its_paths_from_its_folder() -> None:
    cfg = load_pipeline_config(EXAMPLE)
    assert cfg.gate == PipelineConfig().gate and cfg.data == PipelineConfig().data
    assert cfg.train.recipe == str((EXAMPLE.parent.parent / "fashion_mnist_fast.toml").resolve())
    assert Path(cfg.train.recipe).is_file()
    assert cfg.rollout.canary == {"steps": [5, 25, 50, 100], "interval_s": 30.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gate]\nmin_acuracy = 0.9\n", "unknown setting gate.min_acuracy"),
        ("colour = 1\n", "unknown setting colour"),
        ("[gate]\nartifact = 'tflite'\n", "gate.artifact must be one of onnx, onnx-int8"),
        ("[data]\nfeedback_fraction = 1.0\n", r"feedback_fraction must be in \(0, 1\)"),
        ("[gate]\nmin_accuracy = 'high'\n", "gate.min_accuracy: expected float"),
        ("[gate\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline_config(tmp_path / "nope.toml")


def test_the_cli_checks_the_canary_settings_as_the_server_will(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[rollout.canary]\nstepz = [1]\n")
    assert main(["pipeline", "run", str(path), "--name", "f", "--out", str(tmp_path / "o")]) == 1
    assert "rollout.canary: unknown setting stepz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
