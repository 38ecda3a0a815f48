"""Distillation runs through the training loop and logs both loss terms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnetkit.compress.distill import distill, kd_loss
from resnetkit.errors import ConfigError
from resnetkit.models import load_model
from resnetkit.train import train

from ..train.conftest import tiny_config


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, torch.randn(8, 10), 4.0).item() > 0


def test_student_learns_from_teacher_and_logs_both_losses(tmp_path: Path) -> None:
    train(tiny_config(), tmp_path / "teacher")
    teacher, _ = load_model(tmp_path / "teacher")
    result = distill(tiny_config(), tmp_path / "student", teacher, alpha=0.7, temperature=3.0)
    metrics = [
        json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()
    ]
    assert {"train_kd_loss", "train_ce_loss"} <= set(metrics[-1])
    assert metrics[-1]["train_kd_loss"] < metrics[0]["train_kd_loss"]
    assert result.epochs_run == 2 and (tmp_path / "student" / "model.json").is_file()


def test_teacher_with_other_classes_is_refused(tmp_path: Path) -> None:
    from resnetkit import create_model

    with pytest.raises(ConfigError, match="share the classes"):
        distill(tiny_config(), tmp_path / "s", create_model("resnet8", in_chans=1, num_classes=3))
    with pytest.raises(ConfigError, match="alpha"):
        distill(tiny_config(), tmp_path / "t", create_model("resnet8"), alpha=2.0)
