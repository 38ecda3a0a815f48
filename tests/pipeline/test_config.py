"""The pipeline file: defaults, unknown keys named, values checked, paths from the file."""

from __future__ import annotations

import dataclasses
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


def test_robustness_checks_are_off_by_default() -> None:
    gate = PipelineConfig().gate
    assert gate.max_mce_increase is None and gate.max_ood_auroc_drop is None
    assert not gate.robustness_checked and gate.robustness_images == 1000


def test_the_example_file_states_the_defaults_and_reads_its_paths_from_its_folder() -> None:
    cfg = load_pipeline_config(EXAMPLE)
    # The example turns the robustness checks on; every other gate key is the default.
    on = dataclasses.replace(cfg.gate, max_mce_increase=None, max_ood_auroc_drop=None)
    assert on == PipelineConfig().gate and cfg.data == PipelineConfig().data
    assert cfg.gate.max_mce_increase == 15.0 and cfg.gate.max_ood_auroc_drop == 0.02
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
        ("[gate]\nmax_mce_increase = -1\n", "gate.max_mce_increase must be >= 0, got -1.0"),
        ("[gate]\nmax_ood_auroc_drop = 2\n", r"gate.max_ood_auroc_drop must be in \[0, 1\]"),
        ("[gate]\nrobustness_images = 0\n", "gate.robustness_images must be at least 1"),
        ("[gate]\nrobustness_severities = [0, 3]\n", "must be severities 1 to 5, got \\[0, 3\\]"),
        ("[gate]\nrobustness_severities = []\n", "must be severities 1 to 5, got \\[\\]"),
        ("[gate]\nrobustness_corruptions = ['snow']\n", "unknown 'snow'; use names from"),
        ("[gate]\nmax_mce_increase = 'ten'\n", "gate.max_mce_increase: expected"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_pipeline_config(path)
    assert "\n" not in str(caught.value)


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
