"""The PNG plots: written atomically, readable images, training curves from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnetkit.errors import DataError
from resnetkit.evaluate.metrics import calibration_bins
from resnetkit.evaluate.plots import (
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_training_curves,
    read_metrics_jsonl,
)

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")


def _assert_png(path: Path, min_side: int = 300) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side
    # Atomic writes leave no temp files behind.
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def _write_metrics(path: Path, epochs: int = 6) -> Path:
    lines = []
    for epoch in range(1, epochs + 1):
        for step in range(3):  # step rows carry train metrics only
            global_step = (epoch - 1) * 3 + step
            lines.append(
                {
                    "epoch": epoch - 1 + step / 3,
                    "step": global_step,
                    "train_loss": 2 / epoch,
                    "lr": 0.1 / epoch,
                }
            )
        lines.append(
            {
                "epoch": epoch,
                "step": epoch * 3,
                "train_loss": 1.8 / epoch,
                "train_acc": 1 - 0.5 / epoch,
                "val_loss": 2.0 / epoch,
                "val_acc": 1 - 0.6 / epoch,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path


def test_confusion_matrix_plot_is_a_png_in_a_new_folder(tmp_path: Path) -> None:
    counts = torch.tensor(
        [[50, 2, 3, 0, 0], [1, 60, 0, 0, 0], [5, 0, 40, 5, 0], [0, 0, 3, 47, 0], [0, 0, 0, 0, 0]]
    )
    out = plot_confusion_matrix(counts, CLASSES, tmp_path / "plots" / "cm.png")
    assert out == tmp_path / "plots" / "cm.png"
    _assert_png(out)


def test_confusion_matrix_plot_handles_many_classes(tmp_path: Path) -> None:
    counts = torch.eye(100, dtype=torch.long) * 10 + 1
    _assert_png(plot_confusion_matrix(counts, [f"c{i}" for i in range(100)], tmp_path / "cm.png"))


def test_reliability_diagram_is_a_png(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=generator) * 3
    targets = torch.randint(0, 10, (500,), generator=generator)
    bins = calibration_bins(logits.softmax(1), targets)
    _assert_png(plot_reliability_diagram(bins, tmp_path / "rel.png"))


def test_training_curves_plot_every_loss_accuracy_and_lr(tmp_path: Path) -> None:
    metrics = _write_metrics(tmp_path / "metrics.jsonl")
    out = plot_training_curves(metrics, tmp_path / "plots" / "training_curves.png")
    _assert_png(out)
    with Image.open(out) as image:  # three panels stacked: loss, accuracy, lr
        assert image.size[1] > image.size[0]


def test_training_curves_with_only_losses_by_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "train_loss": 1 / (s + 1)}) + "\n" for s in range(50))
    )
    _assert_png(plot_training_curves(path, tmp_path / "curves.png"), min_side=200)


def test_a_truncated_last_line_is_ignored_but_a_bad_middle_line_is_an_error(
    tmp_path: Path,
) -> None:
    path = _write_metrics(tmp_path / "metrics.jsonl", epochs=2)
    rows = read_metrics_jsonl(path)
    path.write_text(path.read_text() + '{"epoch": 3, "train_lo')  # a run still writing
    assert read_metrics_jsonl(path) == rows
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics_jsonl(path)


def test_missing_or_empty_metrics_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read training metrics"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "out.png")
    empty = tmp_path / "metrics.jsonl"
    empty.write_text('{"epoch": 1, "note": "nothing numeric to plot"}\n')
    with pytest.raises(DataError, match="no loss, accuracy or lr"):
        plot_training_curves(empty, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
