"""The test-set evaluation that ends a training run (``resnetkit train``, ``prune``, ``distill``).

The loop never sees the test split; this evaluates the finished run on it, at the precision
the run trained at, and merges the result into ``summary.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resnetkit.config import TrainConfig
from resnetkit.contract import METRICS_JSONL, PLOTS_DIR, read_summary, write_summary
from resnetkit.data import has_fixed_shape, load_dataset
from resnetkit.evaluate import evaluate_model, plot_training_curves
from resnetkit.models import load_model

__all__ = ["evaluate_run"]


def evaluate_run(run_dir: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Evaluate the run's model on the test split; write eval.json, plots and the summary.

    Returns:
        The whole ``summary.json`` after the merge.
    """
    device = None if cfg.device == "auto" else cfg.device
    model, card = load_model(run_dir, device=device)
    if cfg.channels_last:  # as the run trained: 1.6x faster under bf16 on this CPU
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    spec = card.spec(str(run_dir))
    fixed = has_fixed_shape(cfg.data.name)
    test = load_dataset(
        cfg.data.name,
        "test",
        data_dir=cfg.data.data_dir,
        limit=cfg.data.test_limit,
        image_size=cfg.data.image_size,
        # An image folder's test images take the training images' channels and size.
        channels=None if fixed else spec.channels,
        skip_bad_images=cfg.data.skip_bad_images,
    )
    report = evaluate_model(
        model,
        test,
        spec,
        tta_flip=cfg.tta_flip,
        tta_shift=cfg.tta_shift,
        # At the precision the run trained at: bf16 autocast is 3-4x faster than float32 on
        # this CPU, which matters once test-time augmentation multiplies the passes.
        precision=cfg.precision,
        progress=cfg.progress,
    )
    report.save(run_dir)
    plot_training_curves(run_dir / METRICS_JSONL, run_dir / PLOTS_DIR / "training_curves.png")
    summary = read_summary(run_dir)
    summary.update(
        test_accuracy=report.top1,
        test_top5=report.top5,
        test_ece=report.ece,
        test_samples=len(test),
        tta_flip=cfg.tta_flip,
        tta_shift=cfg.tta_shift,
    )
    write_summary(run_dir, summary)
    return summary
