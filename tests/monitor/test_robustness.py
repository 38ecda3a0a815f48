"""The robustness report's library: mCE by its definition, one corrupted set for all models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.errors import ConfigError
from resnetkit.export import load_model_ref
from resnetkit.monitor.robustness import (
    Classify,
    CorruptionResult,
    corruption_accuracy,
    corruption_errors,
    plot_attack_accuracy,
    plot_corruption_accuracy,
)
from resnetkit.train.adversarial import PixelSpaceModel
from tests.export.rundir import trained_run_dir


def _classifier(run: Path) -> tuple[Classify, np.ndarray, np.ndarray]:
    loaded = load_model_ref(str(run))
    model = PixelSpaceModel(loaded.module("cpu"), loaded.spec)
    test = loaded.dataset("test", limit=100)

    def classify(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images).float() / 255).argmax(1).numpy()

    return classify, test.images.numpy(), test.labels.numpy()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Classify, np.ndarray, np.ndarray]:
    return _classifier(trained_run_dir(str(tmp_path_factory.getbasetemp())))


def test_mce_and_relative_mce_follow_hendrycks_and_dietterich() -> None:
    model = CorruptionResult(0.9, {"a": [0.8, 0.6], "b": [0.9, 0.7]}, (1, 2))
    base = CorruptionResult(0.8, {"a": [0.6, 0.4], "b": [0.7, 0.5]}, (1, 2))
    out = corruption_errors(model, base)
    # CE_a = (0.2 + 0.4) / (0.4 + 0.6); CE_b = (0.1 + 0.3) / (0.3 + 0.5)
    assert out["ce"] == pytest.approx({"a": 0.6, "b": 0.5})
    assert out["mce"] == pytest.approx(0.55)
    # relative: a = (0.1 + 0.3) / (0.2 + 0.4); b = (0.0 + 0.2) / (0.1 + 0.3)
    assert out["relative_ce"] == pytest.approx({"a": 2 / 3, "b": 0.5})
    assert out["relative_mce"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert out["normalised"] is True


def test_without_baseline_ce_is_the_mean_error_and_unharmed_baseline_gives_no_relative_ce() -> None:
    model = CorruptionResult(0.9, {"a": [0.8, 0.6]}, (1, 2))
    alone = corruption_errors(model)
    assert alone["normalised"] is False
    assert alone["ce"] == pytest.approx({"a": 0.3})  # (0.2 + 0.4) / 2
    assert alone["mce"] == pytest.approx(0.3)
    assert "relative_mce" not in alone
    unharmed = CorruptionResult(0.8, {"a": [0.8, 0.8]}, (1, 2))
    assert math.isnan(corruption_errors(model, unharmed)["relative_ce"]["a"])


@pytest.mark.slow  # trains the shared small model (~10 s) when no other test has
def test_every_classifier_sees_the_same_corrupted_images(
    real: tuple[Classify, np.ndarray, np.ndarray],
) -> None:
    classify, images, labels = real
    steps: list[tuple[str, int]] = []
    results = corruption_accuracy(
        {"a": classify, "b": classify}, images, labels, corruptions=["gaussian_noise", "rotate"],
        severities=[1, 5], seed=3, batch_size=32, on_step=lambda n, s: steps.append((n, s)),
    )  # fmt: skip
    assert results["a"] == results["b"]
    assert steps == [("gaussian_noise", 1), ("gaussian_noise", 5), ("rotate", 1), ("rotate", 5)]
    assert results["a"].clean == pytest.approx(float((classify(images) == labels).mean()))
    assert results["a"].clean > 0.6  # a trained model, so corruptions have something to hurt
    noise = results["a"].by_corruption["gaussian_noise"]
    # Severe noise hurts, and more than mild noise. Mild noise may even help this 2-epoch
    # model: +3 points on these 100 images and +1.1 on 1,000 where float32 on an AVX2-only
    # CPU trained it, so no bound on that side.
    assert noise[1] < noise[0] and noise[1] < results["a"].clean - 0.2
    again = corruption_accuracy(
        {"a": classify}, images, labels, corruptions=["rotate"], severities=[5], seed=3
    )
    assert again["a"].by_corruption["rotate"] == [results["a"].by_corruption["rotate"][1]]


def test_bad_severities_are_refused_before_any_image_is_classified() -> None:
    calls: list[int] = []

    def classify(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return np.zeros(len(images), dtype=np.int64)

    images = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ConfigError, match="severities are 1 to 5"):
        corruption_accuracy({"a": classify}, images, np.zeros(4), severities=[1, 7])
    assert calls == []


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    result = CorruptionResult(0.9, {"a": [0.8, 0.6], "b": [0.9, 0.7]}, (1, 3))
    png = plot_corruption_accuracy({"model": result}, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    attacks = {"model": {"fgsm": [0.5, 0.2], "pgd": [0.3, 0.0]}}
    png = plot_attack_accuracy(attacks, [0.1, 0.2], {"model": 0.9}, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
