"""Classification metrics as pure functions on tensors or arrays.

Every function takes model outputs for the whole evaluation set (probabilities ``(N, C)`` or
log-probabilities, and integer targets ``(N,)``) and returns plain numbers or tensors; nothing
here knows about models, devices or files. NumPy arrays are accepted wherever a tensor is.
Computation is in float64 so that sums over large test sets do not drift.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from resnetkit.errors import ConfigError

__all__ = [
    "DEFAULT_CALIBRATION_BINS",
    "ArrayLike",
    "CalibrationBins",
    "ClassMetrics",
    "calibration_bins",
    "confusion_matrix",
    "expected_calibration_error",
    "negative_log_likelihood",
    "per_class_metrics",
    "topk_accuracy",
]

ArrayLike = torch.Tensor | np.ndarray
DEFAULT_CALIBRATION_BINS = 15


def _as_tensor(x: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    tensor = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return tensor.detach().to(device="cpu", dtype=dtype)


def _check_scores(scores: ArrayLike, targets: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    s = _as_tensor(scores, torch.float64)
    t = _as_tensor(targets, torch.int64)
    if s.dim() != 2 or t.shape != (s.shape[0],):
        raise ConfigError(
            f"scores must be (N, C) and targets (N,), got {tuple(s.shape)} and {tuple(t.shape)}"
        )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= s.shape[1]):
        raise ConfigError(f"targets must lie in [0, {s.shape[1]}) for {s.shape[1]} classes")
    return s, t


def topk_accuracy(scores: ArrayLike, targets: ArrayLike, k: int = 1) -> float:
    """Fraction of samples whose target is among the ``k`` highest scores.

    Args:
        scores: ``(N, C)`` logits, probabilities or log-probabilities (any monotone score).
        targets: ``(N,)`` class indices.
        k: how many top classes count; capped at ``C`` (top-5 of 3 classes is top-3).

    Returns:
        Accuracy in [0, 1]; 0.0 for an empty set.
    """
    s, t = _check_scores(scores, targets)
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if t.numel() == 0:
        return 0.0
    top = s.topk(min(k, s.shape[1]), dim=1).indices  # (N, k)
    return float((top == t[:, None]).any(dim=1).double().mean())


def confusion_matrix(predictions: ArrayLike, targets: ArrayLike, num_classes: int) -> torch.Tensor:
    """Count matrix ``(C, C)``: row = true class, column = predicted class.

    Args:
        predictions: ``(N,)`` predicted class indices.
        targets: ``(N,)`` true class indices.
        num_classes: ``C``.

    Returns:
        An ``int64`` tensor whose entries sum to ``N``.
    """
    p = _as_tensor(predictions, torch.int64).reshape(-1)
    t = _as_tensor(targets, torch.int64).reshape(-1)
    if p.shape != t.shape:
        raise ConfigError(f"{p.numel()} predictions for {t.numel()} targets")
    for name, x in (("predictions", p), ("targets", t)):
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ConfigError(f"{name} must lie in [0, {num_classes})")
    flat = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes)


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    """Per-class precision, recall, F1 and support, each a float64 tensor ``(C,)``.

    A class that is never predicted has precision 0; one that never occurs has recall 0;
    F1 is 0 where precision + recall is 0 (scikit-learn's ``zero_division=0``).
    """

    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    support: torch.Tensor

    @property
    def macro_precision(self) -> float:
        """Unweighted mean of per-class precision."""
        return float(self.precision.mean()) if self.precision.numel() else 0.0

    @property
    def macro_recall(self) -> float:
        """Unweighted mean of per-class recall."""
        return float(self.recall.mean()) if self.recall.numel() else 0.0

    @property
    def macro_f1(self) -> float:
        """Unweighted mean of per-class F1."""
        return float(self.f1.mean()) if self.f1.numel() else 0.0


def _safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def per_class_metrics(confusion: ArrayLike) -> ClassMetrics:
    """Precision, recall and F1 for every class from a confusion matrix (rows = truth)."""
    cm = _as_tensor(confusion, torch.float64)
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ConfigError(f"a confusion matrix must be square, got {tuple(cm.shape)}")
    tp = cm.diagonal()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, actual)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return ClassMetrics(precision=precision, recall=recall, f1=f1, support=actual.to(torch.int64))


@dataclasses.dataclass(frozen=True)
class CalibrationBins:
    """Equal-width confidence bins on [0, 1] for ECE and the reliability diagram.

    Attributes:
        edges: ``n_bins + 1`` bin edges.
        counts: samples per bin.
        accuracy: fraction correct per bin (0 for an empty bin).
        confidence: mean top-1 confidence per bin (0 for an empty bin).
    """

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    accuracy: tuple[float, ...]
    confidence: tuple[float, ...]

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum_b |acc_b - conf_b| * n_b / N``."""
        total = sum(self.counts)
        if total == 0:
            return 0.0
        gaps = (
            abs(a - c) * n
            for a, c, n in zip(self.accuracy, self.confidence, self.counts, strict=True)
        )
        return float(sum(gaps) / total)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "edges": list(self.edges),
            "counts": list(self.counts),
            "accuracy": list(self.accuracy),
            "confidence": list(self.confidence),
        }


def calibration_bins(
    probs: ArrayLike, targets: ArrayLike, n_bins: int = DEFAULT_CALIBRATION_BINS
) -> CalibrationBins:
    """Bin samples by top-1 softmax confidence into ``n_bins`` equal-width bins.

    Bins are right-closed, ``(lo, hi]``, with a confidence of exactly 0 in the first bin.

    Args:
        probs: ``(N, C)`` probabilities (softmax outputs).
        targets: ``(N,)`` class indices.
        n_bins: number of bins (15 by convention, as in Guo et al. 2017).
    """
    if n_bins < 1:
        raise ConfigError(f"n_bins must be at least 1, got {n_bins}")
    p, t = _check_scores(probs, targets)
    confidence, predicted = p.max(dim=1) if p.numel() else (p.new_zeros(0), t.new_zeros(0))
    correct = (predicted == t).double()
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    n = counts.double().clamp_min(1)
    acc = torch.bincount(index, weights=correct, minlength=n_bins) / n
    conf = torch.bincount(index, weights=confidence, minlength=n_bins) / n
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    return CalibrationBins(
        edges=tuple(edges.tolist()),
        counts=tuple(int(c) for c in counts.tolist()),
        accuracy=tuple(acc.tolist()),
        confidence=tuple(conf.tolist()),
    )


def expected_calibration_error(
    probs: ArrayLike, targets: ArrayLike, n_bins: int = DEFAULT_CALIBRATION_BINS
) -> float:
    """Expected calibration error of top-1 softmax confidence, over equal-width bins.

    Args:
        probs: ``(N, C)`` probabilities.
        targets: ``(N,)`` class indices.
        n_bins: number of bins.

    Returns:
        ECE in [0, 1]; 0.0 for an empty set.
    """
    return calibration_bins(probs, targets, n_bins).ece


def negative_log_likelihood(log_probs: ArrayLike, targets: ArrayLike) -> float:
    """Mean negative log-likelihood of the targets.

    Args:
        log_probs: ``(N, C)`` log-probabilities (``log_softmax`` of the logits).
        targets: ``(N,)`` class indices.

    Returns:
        Mean NLL in nats (0.0 for an empty set); ``inf`` if a target has probability 0.
    """
    lp, t = _check_scores(log_probs, targets)
    if t.numel() == 0:
        return 0.0
    return float(-lp.gather(1, t[:, None]).mean())
