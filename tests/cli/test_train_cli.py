"""``resnetkit train`` as a user runs it: recipe plus flags, a run directory, a test score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetkit.cli.main import build_parser, main
from resnetkit.cli.train import build_config
from resnetkit.config import TrainConfig

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
    assert cfg.model.kwargs == {"width": 0.5, "norm": "group"}  # a bare word stays a string
    assert cfg.optim.schedule == "linear" and cfg.optim.label_smoothing == 0.1
    assert cfg.augment.crop_padding == 2 and cfg.tta_flip is True


def test_training_leaves_a_run_evaluated_on_the_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    recipe = str(CONFIGS / "fashion_mnist_fast.toml")
    argv = ["train", "--config", recipe, *_TINY, "--epochs", "2", "--test-limit", "300"]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_samples"] == 300 and summary["tta_shift"] == 1  # from the recipe
    assert 0.2 < summary["test_accuracy"] <= 1.0  # 16 steps: twice chance at least
    assert summary["wall_seconds"] > 0 and summary["epochs"] == 2
    report = json.loads((out / "eval.json").read_text())
    assert report["top1"] == summary["test_accuracy"]
    assert (out / "plots" / "training_curves.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "test accuracy" in table and f"{100 * summary['test_accuracy']:.2f}%" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-arg", "width"], "--model-arg takes KEY=VALUE, got 'width'"),
        (["--resume"], "--resume needs --out RUN_DIR"),
        (["--model", "resnet05"], "resnet05"),
        (["--config", "no/such/recipe.toml"], "recipe.toml"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_1(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *_TINY, "--epochs", "1", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
