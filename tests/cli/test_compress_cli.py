"""``resnetkit prune`` (structured and unstructured) and ``distill`` from a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resnetkit.cli.main import main
from resnetkit.config import DataConfig
from resnetkit.models import load_model, profile
from resnetkit.train import train

from ..train.conftest import tiny_config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("source") / "run"
    train(tiny_config(data=DataConfig(limit=1088, val_fraction=0.0588, test_limit=500)), run)
    return run


def test_prune_fine_tunes_a_smaller_model(source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    assert main(["prune", str(source_run), "--ratio", "0.5", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    model, card = load_model(out)
    original, _ = load_model(source_run)
    size = (1, 28, 28)
    assert profile(model, size).macs < 0.6 * profile(original, size).macs
    assert len(card.kwargs["inner_widths"]) == 3
    assert "test_accuracy" in json.loads((out / "summary.json").read_text())


def test_unstructured_prune_keeps_the_zeros_and_says_it_saves_no_time(
    source_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sparse"
    assert main(["prune", str(source_run), "--unstructured", "--ratio", "0.7", "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    text = " ".join(capsys.readouterr().out.split())  # as read, without rich's line breaks
    assert "saves no time on dense kernels" in text and "sparse + fine-tuned" in text
    model, card = load_model(out)
    original, source_card = load_model(source_run)
    assert card.kwargs == source_card.kwargs  # the same dense shapes
    assert profile(model, (1, 28, 28)).macs == profile(original, (1, 28, 28)).macs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert "test_accuracy" in summary


def test_unstructured_prune_refuses_a_filter_criterion(
    source_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prune", str(source_run), "--unstructured", "--criterion", "bn",
                 "--out", str(tmp_path / "x")]) == 1  # fmt: skip
    assert "--unstructured ranks single weights" in capsys.readouterr().err


def test_distill_trains_the_student_named(source_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(source_run), "--student", "resnet8", "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    _, card = load_model(out)
    assert card.arch == "resnet8" and card.kwargs["in_chans"] == 1


def test_missing_teacher_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["distill", "--teacher", str(tmp_path / "nope"), "--student", "resnet8",
                 "--out", str(tmp_path / "s")])  # fmt: skip
    assert code == 1
    assert "does not exist" in capsys.readouterr().err
