"""Properties of the metric functions, checked on random inputs with hypothesis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetkit.errors import ConfigError
from resnetkit.evaluate.metrics import (
    calibration_bins,
    confusion_matrix,
    expected_calibration_error,
    negative_log_likelihood,
    per_class_metrics,
    topk_accuracy,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def predictions(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random logits (N, C) and targets (N,)."""
    num_classes = draw(st.integers(2, 12))
    n = draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scale = draw(st.floats(0.1, 10.0))
    logits = torch.randn(n, num_classes, generator=generator) * scale
    targets = torch.randint(0, num_classes, (n,), generator=generator)
    return logits, targets, num_classes


@SETTINGS
@given(predictions())
def test_confusion_matrix_sums_to_n_and_its_trace_is_top1(
    data: tuple[torch.Tensor, torch.Tensor, int],
) -> None:
    logits, targets, c = data
    cm = confusion_matrix(logits.argmax(1), targets, c)
    assert cm.shape == (c, c)
    assert int(cm.sum()) == len(targets)
    assert cm.sum(dim=1).tolist() == torch.bincount(targets, minlength=c).tolist()
    assert topk_accuracy(logits, targets, 1) == pytest.approx(int(cm.trace()) / len(targets))


@SETTINGS
@given(predictions(), st.integers(1, 6))
def test_topk_accuracy_grows_with_k_and_reaches_1_at_all_classes(
    data: tuple[torch.Tensor, torch.Tensor, int], k: int
) -> None:
    logits, targets, c = data
    accs = [topk_accuracy(logits, targets, j) for j in range(1, c + 1)]
    assert accs == sorted(accs)
    assert accs[-1] == 1.0
    # k beyond the number of classes is capped, not an error.
    assert topk_accuracy(logits, targets, c + k) == 1.0


@SETTINGS
@given(predictions())
def test_precision_recall_f1_lie_in_unit_interval_and_f1_is_their_harmonic_mean(
    data: tuple[torch.Tensor, torch.Tensor, int],
) -> None:
    logits, targets, c = data
    m = per_class_metrics(confusion_matrix(logits.argmax(1), targets, c))
    for values in (m.precision, m.recall, m.f1):
        assert bool(((values >= 0) & (values <= 1)).all())
    both = (m.precision + m.recall) > 0
    harmonic = 2 * m.precision * m.recall / (m.precision + m.recall).clamp_min(1e-300)
    torch.testing.assert_close(m.f1[both], harmonic[both])
    assert int(m.support.sum()) == len(targets)
    assert 0.0 <= m.macro_f1 <= 1.0


@SETTINGS
@given(predictions())
def test_ece_is_in_unit_interval_and_matches_its_bins(
    data: tuple[torch.Tensor, torch.Tensor, int],
) -> None:
    logits, targets, _ = data
    probs = logits.softmax(1)
    ece = expected_calibration_error(probs, targets)
    assert 0.0 <= ece <= 1.0
    bins = calibration_bins(probs, targets)
    assert len(bins.counts) == 15 and len(bins.edges) == 16
    assert sum(bins.counts) == len(targets)
    assert ece == pytest.approx(bins.ece)


@SETTINGS
@given(predictions())
def test_perfect_predictions_have_ece_equal_to_one_minus_mean_confidence(
    data: tuple[torch.Tensor, torch.Tensor, int],
) -> None:
    logits, _, _ = data
    probs = logits.softmax(1)
    targets = probs.argmax(1)  # every prediction is right
    confidence = probs.max(1).values.double()
    assert expected_calibration_error(probs, targets) == pytest.approx(
        float((1 - confidence).mean()), abs=1e-9
    )


def test_ece_of_a_calibrated_bin_is_zero_and_of_an_overconfident_one_is_the_gap() -> None:
    # Ten samples at confidence 0.8: eight right is calibrated, five right is off by 0.3.
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    calibrated = torch.tensor([0] * 8 + [1] * 2)
    overconfident = torch.tensor([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, calibrated) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(probs, overconfident) == pytest.approx(0.3)


@SETTINGS
@given(predictions())
def test_nll_equals_cross_entropy_and_is_non_negative(
    data: tuple[torch.Tensor, torch.Tensor, int],
) -> None:
    logits, targets, _ = data
    nll = negative_log_likelihood(logits.log_softmax(1), targets)
    expected = float(torch.nn.functional.cross_entropy(logits.double(), targets))
    assert nll >= 0.0
    assert nll == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_uniform_prediction_has_nll_log_c() -> None:
    log_probs = torch.full((4, 10), -math.log(10))
    assert negative_log_likelihood(log_probs, torch.tensor([0, 3, 5, 9])) == pytest.approx(
        math.log(10)
    )


def test_metrics_accept_numpy_arrays() -> None:
    scores = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    targets = np.array([0, 1, 1])
    assert topk_accuracy(scores, targets) == pytest.approx(2 / 3)
    assert confusion_matrix(scores.argmax(1), targets, 2).tolist() == [[1, 0], [1, 1]]
    m = per_class_metrics(np.array([[1, 0], [1, 1]]))
    assert m.precision.tolist() == [0.5, 1.0]
    assert m.recall.tolist() == [1.0, 0.5]


def test_a_class_never_predicted_has_zero_precision_not_nan() -> None:
    m = per_class_metrics(torch.tensor([[3, 0, 0], [2, 0, 0], [0, 0, 0]]))
    assert m.precision.tolist() == [0.6, 0.0, 0.0]
    assert m.recall.tolist() == [1.0, 0.0, 0.0]
    assert not bool(m.f1.isnan().any())


def test_bad_shapes_and_out_of_range_targets_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"\(N, C\)"):
        topk_accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        topk_accuracy(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ConfigError, match="2 predictions for 3 targets"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ConfigError, match="square"):
        per_class_metrics(torch.zeros(2, 3))
