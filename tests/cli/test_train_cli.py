"""``resnetkit train`` as a user runs it: recipe plus flags, a run directory, a test score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetkit.cli.main import build_parser, main
from resnetkit.cli.train import build_config
from resnetkit.config import TrainConfig
from resnetkit.contract import OOD_DETECTOR
from resnetkit.monitor.ood import OODDetector

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

_TINY = [
    "--model", "resnet8", "--model-arg", "width=0.5",
    "--data", "fashion-mnist", "--limit", "1088", "--val-fraction", "0.0588",
    "--batch-size", "128", "--num-threads", "1", "--no-progress",
]  # fmt: skip


def _config(*argv: str) -> TrainConfig:
    return build_config(build_parser("train").parse_args(["train", *argv]))


def test_flags_override_the_recipe_and_leave_the_rest() -> None:
    recipe = CONFIGS / "fashion_mnist_fast.toml"
    cfg = _config(
        "--config", str(recipe), "--epochs", "2", "--lr", "0.05",
        "--model-arg", "width=0.5", "--model-arg", "norm=group", "--tta-shift", "2",
    )  # fmt: skip
    assert cfg.epochs == 2 and cfg.optim.lr == 0.05 and cfg.tta_shift == 2
    assert cfg.model.arch == "resnet9_s"  # from the recipe
    # --model-arg adds to the recipe's model arguments; a bare word stays a string.
    assert cfg.model.kwargs == {"stem": "whiten", "width": 0.5, "norm": "group"}
    assert cfg.optim.schedule == "linear" and cfg.optim.label_smoothing == 0.1
    assert cfg.augment.crop_padding == 2 and cfg.tta_flip is True
    recipe = CONFIGS / "fashion_mnist.toml"
    assert _config("--config", str(recipe)).hard_examples.epochs == 8
    off = _config("--config", str(recipe), "--hard-epochs", "0").hard_examples
    assert off.epochs == 0 and off.fraction == 0.45  # the rest of the table stays


def test_another_model_leaves_the_recipe_s_model_arguments_behind() -> None:
    recipe = str(CONFIGS / "fashion_mnist_fast.toml")
    assert _config("--config", recipe).model.kwargs == {"stem": "whiten"}
    other = _config("--config", recipe, "--model", "resnet8", "--model-arg", "width=0.5")
    assert other.model.arch == "resnet8" and other.model.kwargs == {"width": 0.5}
    same = _config("--config", recipe, "--model", "resnet9_s", "--model-arg", "width=0.5")
    assert same.model.kwargs == {"stem": "whiten", "width": 0.5}


def test_training_leaves_a_run_evaluated_on_the_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    recipe = str(CONFIGS / "fashion_mnist_fast.toml")
    # 3 epochs: the recipe's small crops train the first 2, its warmup takes 1.6.
    argv = ["train", "--config", recipe, *_TINY, "--epochs", "3", "--test-limit", "300"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_samples"] == 300 and summary["tta_shift"] == 1  # from the recipe
    assert 0.2 < summary["test_accuracy"] <= 1.0  # 24 steps: twice chance at least
    assert summary["wall_seconds"] > 0 and summary["epochs"] == 3
    report = json.loads((out / "eval.json").read_text())
    assert report["top1"] == summary["test_accuracy"]
    assert (out / "plots" / "training_curves.png").stat().st_size > 0
    detector = OODDetector.load(out / OOD_DETECTOR)  # fitted on the held-out reference
    assert detector.method == "mahalanobis" and detector.means.shape[0] == 10
    table = capsys.readouterr().out
    assert "test accuracy" in table and f"{100 * summary['test_accuracy']:.2f}%" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-arg", "width"], "--model-arg takes KEY=VALUE, got 'width'"),
        (["--resume"], "--resume needs --out RUN_DIR"),
        (["--model", "resnet05"], "resnet05"),
        (["--config", "no/such/recipe.toml"], "recipe.toml"),
        (["--num-threads", "0"], "num_threads must be >= 1"),
        (["--early-stop-patience", "-1"], "early_stop_patience must be >= 1"),
        (["--test-limit", "0"], "data.test_limit must be >= 1"),
        (["--val-fraction", "1.5"], "data.val_fraction must be in [0, 1)"),
        (["--model", "resnet_tabular"], "resnet_tabular takes vector input"),
        (["--resume", "--out", "somewhere", "--epochs", "3"], "has no checkpoint to resume"),
        (["--device", "cuda:7"], "cuda"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_1(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *_TINY, "--epochs", "1", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_an_output_that_is_a_file_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert main(["train", *_TINY, "--epochs", "1", "--out", str(target)]) == 1
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep me"


def test_a_data_path_makes_a_run_name_without_slashes() -> None:
    from resnetkit.cli.train import _default_out
    from resnetkit.config import DataConfig, TrainConfig

    out = _default_out(TrainConfig(data=DataConfig(name="/tmp/some/photos")))
    assert out.parent == Path("runs") and "/" not in out.name and "photos" in out.name


def test_resume_of_a_finished_or_empty_run_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 1
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_resume_with_the_original_flags_is_accepted_and_only_real_changes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", *_TINY, "--epochs", "2", "--seed", "7", "--no-eval", "--out", str(out)]
    assert main(argv) == 0
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    # A run keeps its latest checkpoint; resuming it at its end must change nothing.
    assert main([*argv, "--resume"]) == 0
    assert (out / "model.safetensors").read_bytes() == weights
    # How it executes may change: threads, device, progress bars.
    assert main([*argv, "--resume", "--num-threads", "2", "--device", "cpu"]) == 0
    capsys.readouterr()

    changed = [*argv, "--resume", "--epochs", "3", "--model-arg", "width=0.25", "--lr", "0.05"]
    assert main(changed) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "--epochs (recorded 2, given 3)" in err
    assert "--model-arg width (recorded 0.5, given 0.25)" in err
    assert "--lr (recorded 0.2, given 0.05)" in err
    assert "--seed" not in err and "--model " not in err  # the same values are no change
    assert (out / "model.safetensors").read_bytes() == weights

    recipe = str(CONFIGS / "fashion_mnist_fast.toml")
    assert main(["train", "--config", recipe, "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"--config {recipe} with" in err and "model.arch (recorded 'resnet8', given" in err
