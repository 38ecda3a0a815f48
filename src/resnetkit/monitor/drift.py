"""Data drift detection: is recent traffic still drawn from the data the model was checked on?

Four detectors compare a **window** of recent requests with the **reference** a training run
leaves behind (``drift_reference.safetensors``: pre-logits embeddings, softmax outputs and
labels on held-out images). Each is a pure function on arrays returning a
:class:`DetectorResult`:

==================  ==========================================================================
``ks_pca``          covariate shift: PCA fitted on the reference embeddings, a two-sample
                    Kolmogorov-Smirnov test per component, Bonferroni over the components.
``mmd``             covariate shift, jointly over the components: the squared maximum mean
                    discrepancy with an RBF kernel, p-value from a seeded permutation test.
``chi2_class``      label shift: chi-square on the predicted-class counts (2 x K table),
                    p-value from a seeded Monte Carlo draw with both margins fixed.
``ks_confidence``   the model's confidence: two-sample KS on the maximum softmax probability.
==================  ==========================================================================

:class:`DriftReference` precomputes what does not depend on the window (the PCA basis, fitted on
one half of the reference, and the other half projected on it; class counts; confidences)
and its
:meth:`~DriftReference.evaluate` runs all four on a window. The verdict controls the
false-positive rate of the whole: Holm's step-down procedure over the four p-values at the
overall ``alpha``, valid under any dependence between the detectors, so a window from the
reference distribution is flagged with probability at most ``alpha``.

Everything is immutable after construction and :meth:`~DriftReference.evaluate` draws its
randomness from its own seeded generator, so one reference may be evaluated from several
threads at once (the server does, on a sliding window).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from safetensors import SafetensorError
from safetensors.numpy import load_file

from resnetkit.contract import DRIFT_KEYS, DRIFT_REFERENCE
from resnetkit.errors import ConfigError, DriftError
from resnetkit.monitor.stats import chi2_sf, ks_2samp

__all__ = [
    "DETECTORS",
    "DetectorResult",
    "DriftReference",
    "DriftReport",
    "DriftSettings",
    "PCABasis",
    "chi2_class",
    "fit_pca",
    "holm_adjust",
    "ks_confidence",
    "ks_pca",
    "mmd",
    "split_reference",
]

#: The detectors :meth:`DriftReference.evaluate` runs, in report order.
DETECTORS = ("ks_pca", "mmd", "chi2_class", "ks_confidence")

Array = NDArray[np.float64]


@dataclasses.dataclass(frozen=True)
class DriftSettings:
    """How drift is tested; the defaults meet the goals measured by ``bench/drift_bench.py``.

    Attributes:
        alpha: the overall false-positive rate of the verdict (Holm over the detectors).
        min_window: the fewest samples a window (and the reference) may have.
        pca_variance: keep the fewest principal components explaining this fraction of
            the reference embeddings' variance...
        max_components: ...but at most this many (each costs the KS test a Bonferroni
            factor, and the trailing components of a ResNet embedding are mostly noise).
        mmd_reference_size: reference samples MMD compares with (a subsample drawn anew
            from the seed of each call); bounds its cost at ``(size + window)²`` kernel
            entries.
        mmd_permutations: permutations of the MMD test (p-value resolution 1 / (n + 1)).
        chi2_simulations: Monte Carlo tables of the chi-square test.
    """

    alpha: float = 0.05
    min_window: int = 20
    pca_variance: float = 0.9
    max_components: int = 16
    mmd_reference_size: int = 500
    mmd_permutations: int = 200
    chi2_simulations: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "alpha must be in (0, 1)": 0 < self.alpha < 1,
            "min_window must be >= 2": self.min_window >= 2,
            "pca_variance must be in (0, 1]": 0 < self.pca_variance <= 1,
            "max_components must be >= 1": self.max_components >= 1,
            "mmd_reference_size must be >= 2": self.mmd_reference_size >= 2,
            "mmd_permutations must be >= 1": self.mmd_permutations >= 1,
            "chi2_simulations must be >= 1": self.chi2_simulations >= 1,
        }
        wrong = [message for message, ok in checks.items() if not ok]
        if wrong:
            raise ConfigError(f"invalid drift settings: {'; '.join(wrong)} (got {self})")


@dataclasses.dataclass(frozen=True)
class DetectorResult:
    """One detector's answer on one window.

    Attributes:
        name: the detector, one of :data:`DETECTORS`.
        statistic: its test statistic (KS distance, MMD², chi-square).
        p_value: in [0, 1]; small means the window is unlikely under the reference.
        drift: whether the detector rejects "no drift" (in a :class:`DriftReport`: after
            Holm's correction over all detectors).
        details: JSON-ready extras (per-component p-values, bandwidth, counts, ...).
    """

    name: str
    statistic: float
    p_value: float
    drift: bool
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "drift": self.drift,
            "details": dict(self.details),
        }


@dataclasses.dataclass(frozen=True)
class DriftReport:
    """The verdict on one window and every detector's result.

    Attributes:
        drift_detected: whether any detector rejects after Holm's correction at ``alpha``.
        alpha: the overall false-positive rate the verdict is controlled at.
        results: one :class:`DetectorResult` per detector, in :data:`DETECTORS` order.
        reference_size: samples in the reference.
        window_size: samples in the window.
    """

    drift_detected: bool
    alpha: float
    results: tuple[DetectorResult, ...]
    reference_size: int
    window_size: int

    def result(self, name: str) -> DetectorResult:
        """The result of detector ``name``.

        Raises:
            KeyError: no detector of that name ran.
        """
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no detector {name!r} in this report; ran {[r.name for r in self.results]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"drift_detected": bool, "alpha", "correction", sizes, "detectors"}``."""
        return {
            "drift_detected": self.drift_detected,
            "alpha": self.alpha,
            "correction": "holm",
            "reference_size": self.reference_size,
            "window_size": self.window_size,
            "detectors": {r.name: r.to_dict() for r in self.results},
        }


@dataclasses.dataclass(frozen=True, eq=False)
class PCABasis:
    """A PCA fitted on reference embeddings.

    Attributes:
        mean: ``(D,)`` reference mean.
        components: ``(m, D)`` orthonormal principal axes, largest variance first.
        explained_variance_ratio: ``(m,)`` fraction of the total variance along each axis.
    """

    mean: Array
    components: Array
    explained_variance_ratio: Array

    @property
    def dim(self) -> int:
        """Embedding dimension ``D`` the basis projects from."""
        return int(self.mean.shape[0])

    @property
    def num_components(self) -> int:
        """Number of components ``m`` kept."""
        return int(self.components.shape[0])

    def project(self, embeddings: ArrayLike) -> Array:
        """Coordinates ``(N, m)`` of ``embeddings`` ``(N, D)`` along the kept components."""
        x = np.asarray(embeddings, dtype=np.float64)
        return np.asarray((x - self.mean) @ self.components.T, dtype=np.float64)


# --- input checks -----------------------------------------------------------------------------


def _as_matrix(values: ArrayLike, what: str, min_rows: int) -> Array:
    """``values`` as a finite float64 ``(N, F)`` array with at least ``min_rows`` rows."""
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DriftError(f"{what} must be a numeric array: {exc}") from exc
    if x.ndim != 2 or x.shape[1] < 1:
        raise DriftError(f"{what} must be a 2-D array (samples, features), got {x.shape}")
    if x.shape[0] < min_rows:
        raise DriftError(
            f"{what} has {x.shape[0]} samples; drift detection needs at least {min_rows} "
            "(wait for a larger window)"
        )
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
        raise DriftError(f"{what} has NaN or infinite values in {bad} of {x.shape[0]} samples")
    return x


def _same_columns(reference: Array, window: Array, what: str) -> None:
    if reference.shape[1] != window.shape[1]:
        raise DriftError(
            f"{what}: the window has {window.shape[1]} columns but the reference "
            f"{reference.shape[1]}; they come from different models"
        )


def _checked_pair(
    reference: ArrayLike, window: ArrayLike, what: str, min_rows: int
) -> tuple[Array, Array]:
    ref = _as_matrix(reference, f"reference {what}", min_rows)
    win = _as_matrix(window, f"window {what}", min_rows)
    _same_columns(ref, win, what)
    return ref, win


def _result(
    name: str, statistic: float, p_value: float, alpha: float, details: Mapping[str, Any]
) -> DetectorResult:
    p = min(1.0, max(0.0, float(p_value)))
    return DetectorResult(name, float(statistic), p, p <= alpha, dict(details))


def _check_args(alpha: float, **minimums: tuple[int, int]) -> None:
    """Raise ConfigError unless ``alpha`` is in (0, 1) and each ``value >= minimum``."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    for name, (value, minimum) in minimums.items():
        if value < minimum:
            raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _rounded(values: Array) -> list[float]:
    return [round(float(v), 6) for v in values]


# --- PCA + KS ---------------------------------------------------------------------------------


def fit_pca(embeddings: ArrayLike, *, variance: float = 0.9, max_components: int = 16) -> PCABasis:
    """Fit PCA (by SVD) on reference embeddings ``(N, D)``.

    Keeps the fewest components whose cumulative explained variance reaches ``variance``,
    at most ``max_components`` and at least one (also for constant embeddings).

    Raises:
        DriftError: ``embeddings`` is not a finite 2-D array with at least 2 rows.
    """
    x = _as_matrix(embeddings, "reference embeddings", 2)
    mean = x.mean(axis=0)
    centred = x - mean
    if len(x) >= x.shape[1]:
        # The SVD of the D x D scatter matrix gives the same axes (and the squared singular
        # values) as that of the N x D data, at a fraction of the cost when N >> D.
        _, power, vt = np.linalg.svd(centred.T @ centred, hermitian=True)
    else:
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        power = singular**2
    total = float(power.sum())
    ratio = power / total if total > 0 else np.zeros_like(power)
    needed = int(np.searchsorted(np.cumsum(ratio), variance - 1e-12) + 1) if total > 0 else 1
    m = max(1, min(needed, max_components, vt.shape[0]))
    return PCABasis(mean=mean, components=vt[:m].copy(), explained_variance_ratio=ratio[:m].copy())


def split_reference(num_samples: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices of the reference half a PCA is fitted on, and of the half tests compare with.

    The top principal components of a sample overfit it: the sample's own variance along
    them is inflated (by about ``(1 + sqrt(D / N))²`` for isotropic data), so a window from
    the very same distribution would look "narrower" and be flagged. Testing against
    reference points the PCA never saw removes that bias. The split is fixed (seed 0).
    """
    order = np.random.default_rng(0).permutation(num_samples)
    half = num_samples // 2
    return np.sort(order[:half]), np.sort(order[half:])


def _ks_columns(reference: Array, window: Array, alpha: float) -> DetectorResult:
    """KS per column of two projected samples, Bonferroni over the columns."""
    # The asymptotic distribution (monitor/stats.py): within a few percent of the exact one
    # from a window of 20 up, and several times faster on a reference of thousands.
    statistics, p_values = ks_2samp(reference, window)
    m = len(p_values)
    worst = int(np.argmin(p_values))
    details = {
        "num_components": m,
        "worst_component": worst,
        "component_statistics": _rounded(statistics),
        "component_p_values": [float(p) for p in p_values],
    }
    return _result("ks_pca", statistics[worst], m * p_values[worst], alpha, details)


def ks_pca(
    reference_embeddings: ArrayLike,
    window_embeddings: ArrayLike,
    *,
    alpha: float = 0.05,
    pca: PCABasis | None = None,
) -> DetectorResult:
    """Two-sample KS on each principal component of the embeddings, Bonferroni-corrected.

    Args:
        reference_embeddings: ``(N, D)`` embeddings of the reference data.
        window_embeddings: ``(n, D)`` embeddings of the window.
        alpha: the detector's false-positive rate.
        pca: a basis fitted on reference embeddings other than ``reference_embeddings``
            (see :func:`split_reference`); when None, one half of the reference is used to
            fit it with :func:`fit_pca`'s defaults and the other half to test against.

    Returns:
        The largest per-component KS distance, and ``m x`` its p-value (capped at 1).

    Raises:
        ConfigError: ``alpha`` outside (0, 1).
        DriftError: fewer than 2 samples (4 in the reference without ``pca``), NaN, or
            different embedding dimensions.
    """
    _check_args(alpha)
    ref, win = _checked_pair(reference_embeddings, window_embeddings, "embeddings", 2)
    if pca is None:
        if len(ref) < 4:
            raise DriftError(f"ks_pca needs 4 or more reference samples, got {len(ref)}")
        fit_rows, test_rows = split_reference(len(ref))
        pca, ref = fit_pca(ref[fit_rows]), ref[test_rows]
    if pca.dim != ref.shape[1]:
        raise DriftError(f"the PCA basis projects from {pca.dim} dimensions, not {ref.shape[1]}")
    result = _ks_columns(pca.project(ref), pca.project(win), alpha)
    explained = float(pca.explained_variance_ratio.sum())
    return dataclasses.replace(result, details={**result.details, "explained_variance": explained})


# --- MMD --------------------------------------------------------------------------------------


def _squared_distances(x: Array) -> Array:
    norms = np.einsum("ij,ij->i", x, x)
    sq = norms[:, None] + norms[None, :] - 2.0 * (x @ x.T)
    np.maximum(sq, 0.0, out=sq)
    np.fill_diagonal(sq, 0.0)
    return sq


def _median_bandwidth(sq: Array) -> float:
    """Median heuristic: the median squared distance between distinct pooled samples."""
    upper = sq[np.triu_indices_from(sq, k=1)]
    median = float(np.median(upper))
    if median > 0:
        return median
    mean = float(upper.mean())  # over half the points coincide: fall back to the mean
    return mean if mean > 0 else 1.0


def _mmd2_for_splits(
    kernel: NDArray[np.float32], first: NDArray[np.float32], m: int
) -> NDArray[np.float64]:
    """Unbiased MMD² for each row of ``first`` (0/1 masks of the first sample, ``m`` ones)."""
    total_n = kernel.shape[0]
    n = total_n - m
    row_sums = kernel.sum(axis=1)
    xkx = np.einsum("pj,pj->p", first @ kernel, first).astype(np.float64)  # (P,)
    xk1 = (first @ row_sums).astype(np.float64)
    total = float(row_sums.sum())
    xky = xk1 - xkx
    yky = total - 2.0 * xk1 + xkx
    # The kernel's diagonal is 1: subtract it for the unbiased within-sample means.
    return np.asarray(
        (xkx - m) / (m * (m - 1)) + (yky - n) / (n * (n - 1)) - 2.0 * xky / (m * n),
        dtype=np.float64,
    )


def _mmd_test(
    reference: Array, window: Array, alpha: float, seed: int, permutations: int
) -> DetectorResult:
    pooled = np.vstack([reference, window])
    sq = _squared_distances(pooled)
    bandwidth = _median_bandwidth(sq)
    # float32 halves the cost of the permutation products; the statistic's precision
    # (1e-7 of kernel values in [0, 1]) is far below the permutation noise.
    kernel = np.exp(-sq / bandwidth).astype(np.float32)
    m = len(reference)
    observed = np.zeros((1, len(pooled)), dtype=np.float32)
    observed[0, :m] = 1.0
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.repeat(observed, permutations, axis=0), axis=1)
    statistic = float(_mmd2_for_splits(kernel, observed, m)[0])
    null = _mmd2_for_splits(kernel, shuffled, m)
    exceed = int(np.count_nonzero(null >= statistic - 1e-12))
    p_value = (1 + exceed) / (1 + permutations)
    details = {
        "bandwidth_sq": bandwidth,
        "permutations": permutations,
        "reference_samples": m,
        "null_mean": float(null.mean()),
    }
    return _result("mmd", statistic, p_value, alpha, details)


def mmd(
    reference: ArrayLike,
    window: ArrayLike,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    permutations: int = 200,
    max_reference: int = 500,
    pca: PCABasis | None = None,
) -> DetectorResult:
    """Squared maximum mean discrepancy with an RBF kernel and a permutation-test p-value.

    The kernel is ``exp(-||a - b||² / h)`` with ``h`` the median squared distance of the
    **pooled** sample (reference subsample and window): a bandwidth that does not change
    when the samples are permuted, so the permutation test is exact. The reference is
    subsampled (seeded) to ``max_reference`` rows so a call costs at most
    ``(max_reference + n)²`` kernel entries.

    Args:
        reference: ``(N, F)`` reference samples (embeddings, or their PCA coordinates).
        window: ``(n, F)`` window samples.
        alpha: the detector's false-positive rate.
        seed: seeds the subsample and the permutations.
        permutations: permutations of the test.
        max_reference: the largest reference sample used.
        pca: when given, both samples are projected on it first: fewer, denser
            dimensions, where the median heuristic has more power and the kernel costs less.
            Fit it on reference points other than ``reference`` (:func:`split_reference`).

    Raises:
        ConfigError: ``alpha`` outside (0, 1), a negative seed, no permutations, or
            ``max_reference`` below 2.
        DriftError: fewer than 2 samples, NaN, or different dimensions.
    """
    _check_args(
        alpha, seed=(seed, 0), permutations=(permutations, 1), max_reference=(max_reference, 2)
    )
    ref, win = _checked_pair(reference, window, "samples", 2)
    if pca is not None:
        ref, win = pca.project(ref), pca.project(win)
    return _mmd_test(_subsample(ref, max_reference, seed), win, alpha, seed, permutations)


def _subsample(rows: Array, max_rows: int, seed: int) -> Array:
    if len(rows) <= max_rows:
        return rows
    # A new subsample per call (not one fixed at start-up): a fixed one would carry its own
    # chance quirks into every verdict, raising the false-positive rate over many windows.
    picked = np.random.default_rng([seed, 1]).choice(len(rows), max_rows, replace=False)
    return rows[np.sort(picked)]


# --- predicted classes and confidence ---------------------------------------------------------


def _chi2_rows(reference: NDArray[np.int64], windows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Pearson chi-square of the 2 x K table (reference, each row of ``windows``)."""
    ref = np.atleast_2d(reference).astype(np.float64)  # (1 or P, K)
    win = windows.astype(np.float64)  # (P, K)
    column = ref + win
    n_ref, n_win = ref.sum(axis=1, keepdims=True), win.sum(axis=1, keepdims=True)
    share = column / (n_ref + n_win)
    expected_ref, expected_win = share * n_ref, share * n_win
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (ref - expected_ref) ** 2 / expected_ref + (win - expected_win) ** 2 / expected_win
    return np.asarray(np.where(column > 0, terms, 0.0).sum(axis=1), dtype=np.float64)


def _chi2_counts(
    reference_counts: NDArray[np.int64],
    window_counts: NDArray[np.int64],
    alpha: float,
    seed: int,
    simulations: int,
) -> DetectorResult:
    statistic = float(_chi2_rows(reference_counts, window_counts[None, :])[0])
    pooled = reference_counts + window_counts
    # Under "no shift" the window's counts, given both margins, are a draw without
    # replacement from the pooled counts: exact for any counts, unlike the chi-square
    # approximation that wants 5 or more expected per class (a window of 20 over 10 classes
    # has 2). Classes that neither sample predicts add nothing to the statistic.
    rng = np.random.default_rng(seed)
    draws = rng.multivariate_hypergeometric(pooled, int(window_counts.sum()), size=simulations)
    null = _chi2_rows(pooled - draws, draws)
    exceed = int(np.count_nonzero(null >= statistic - 1e-9))
    occupied = int(np.count_nonzero(pooled))
    asymptotic = chi2_sf(statistic, occupied - 1) if occupied > 1 else 1.0
    details = {
        "reference_frequencies": _rounded(reference_counts / max(1, reference_counts.sum())),
        "window_counts": [int(c) for c in window_counts],
        "simulations": simulations,
        "asymptotic_p_value": asymptotic,
    }
    return _result("chi2_class", statistic, (1 + exceed) / (1 + simulations), alpha, details)


def _class_counts(probabilities: Array) -> NDArray[np.int64]:
    counts = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
    return counts.astype(np.int64)


def chi2_class(
    reference_probabilities: ArrayLike,
    window_probabilities: ArrayLike,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    simulations: int = 1000,
) -> DetectorResult:
    """Chi-square test of the window's predicted classes against the reference's (label shift).

    Compares the counts of ``argmax`` predictions in a 2 x K table; the p-value is Monte
    Carlo (seeded, both margins fixed), so classes with few or zero expected counts are
    handled exactly. The Pearson chi-square approximation is in ``details`` for reference.

    Args:
        reference_probabilities: ``(N, K)`` softmax outputs on the reference.
        window_probabilities: ``(n, K)`` softmax outputs on the window.
        alpha: the detector's false-positive rate.
        seed: seeds the Monte Carlo draws.
        simulations: Monte Carlo tables drawn.

    Raises:
        ConfigError: ``alpha`` outside (0, 1), a negative seed, or no simulations.
        DriftError: fewer than 2 samples, NaN, or a different number of classes.
    """
    _check_args(alpha, seed=(seed, 0), simulations=(simulations, 1))
    ref, win = _checked_pair(reference_probabilities, window_probabilities, "probabilities", 2)
    return _chi2_counts(_class_counts(ref), _class_counts(win), alpha, seed, simulations)


def _ks_confidence(reference: Array, window: Array, alpha: float) -> DetectorResult:
    statistics, p_values = ks_2samp(reference, window)
    details = {
        "reference_mean_confidence": float(reference.mean()),
        "window_mean_confidence": float(window.mean()),
    }
    return _result("ks_confidence", statistics[0], p_values[0], alpha, details)


def ks_confidence(
    reference_probabilities: ArrayLike,
    window_probabilities: ArrayLike,
    *,
    alpha: float = 0.05,
) -> DetectorResult:
    """Two-sample KS test on the maximum softmax probability (the model's confidence).

    Raises:
        ConfigError: ``alpha`` outside (0, 1).
        DriftError: fewer than 2 samples, NaN, or a different number of classes.
    """
    _check_args(alpha)
    ref, win = _checked_pair(reference_probabilities, window_probabilities, "probabilities", 2)
    return _ks_confidence(ref.max(axis=1), win.max(axis=1), alpha)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: test ``i`` rejects iff ``adjusted[i] <= alpha``.

    Controls the family-wise error rate under any dependence between the tests.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


# --- the reference ----------------------------------------------------------------------------


class DriftReference:
    """A drift reference, prepared once, against which windows are evaluated.

    Build it with :meth:`from_arrays` or :meth:`from_file`. It holds only read-only arrays,
    so :meth:`evaluate` may run in several threads at once.

    Attributes:
        settings: the :class:`DriftSettings` every evaluation uses.
        pca: the basis, fitted on one half of the reference embeddings
            (:func:`split_reference`).
        projected: ``(N - N // 2, m)`` the other half, projected: what ``ks_pca`` and
            ``mmd`` compare windows with.
        confidence: ``(N,)`` maximum softmax probability of every reference sample.
        class_counts: ``(K,)`` predicted-class (argmax) counts of the reference.
        labels: ``(N,)`` true labels when given (kept for reports; no test uses them).
        num_samples, dim, num_classes: ``N``, ``D`` and ``K``.
    """

    def __init__(
        self,
        embeddings: Array,
        probabilities: Array,
        labels: NDArray[np.int64] | None,
        settings: DriftSettings,
    ) -> None:
        """Prepare a reference from checked arrays; use :meth:`from_arrays` instead."""
        self.settings = settings
        fit_rows, test_rows = split_reference(len(embeddings))
        self.pca = fit_pca(
            embeddings[fit_rows],
            variance=settings.pca_variance,
            max_components=settings.max_components,
        )
        self.projected = self.pca.project(embeddings[test_rows])  # (N - N // 2, m)
        self.confidence = probabilities.max(axis=1)  # (N,)
        self.class_counts = _class_counts(probabilities)  # (K,) predicted classes
        self.labels = labels
        self.num_samples, self.dim = embeddings.shape
        self.num_classes = probabilities.shape[1]
        basis = (self.pca.mean, self.pca.components, self.pca.explained_variance_ratio)
        for array in (*basis, self.projected, self.confidence, self.class_counts):
            array.flags.writeable = False  # shared by concurrent evaluate() calls
        if labels is not None:
            labels.flags.writeable = False

    def __repr__(self) -> str:
        return (
            f"DriftReference(samples={self.num_samples}, dim={self.dim}, "
            f"classes={self.num_classes}, components={self.pca.num_components})"
        )

    @classmethod
    def from_arrays(
        cls,
        embeddings: ArrayLike,
        probabilities: ArrayLike,
        labels: ArrayLike | None = None,
        *,
        settings: DriftSettings | None = None,
    ) -> DriftReference:
        """Prepare a reference from embeddings ``(N, D)``, softmax outputs ``(N, K)``, labels.

        Raises:
            DriftError: fewer than ``settings.min_window`` samples, NaN, or shapes that
                do not agree.
        """
        settings = settings or DriftSettings()
        emb = _as_matrix(embeddings, "reference embeddings", settings.min_window)
        probs = _as_matrix(probabilities, "reference probabilities", settings.min_window)
        if probs.shape[0] != emb.shape[0] or probs.shape[1] < 2:
            raise DriftError(
                f"reference probabilities {probs.shape} must be (N, K >= 2) with the N of "
                f"the embeddings {emb.shape}"
            )
        return cls(emb, probs, _checked_labels(labels, emb.shape[0]), settings)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, settings: DriftSettings | None = None
    ) -> DriftReference:
        """Read ``drift_reference.safetensors`` (the file, or a run directory holding it).

        Raises:
            DriftError: the file is missing, unreadable, or lacks a tensor it needs.
        """
        target = Path(path)
        if target.is_dir():
            target = target / DRIFT_REFERENCE
        try:
            tensors = load_file(str(target))
        except FileNotFoundError as exc:
            raise DriftError(
                f"no drift reference at {target}; `resnetkit train` writes {DRIFT_REFERENCE} "
                "into every run directory: point at one, or build one from data with "
                "`resnetkit drift --model REF --data DATA --make-reference`"
            ) from exc
        except (OSError, SafetensorError, ValueError) as exc:
            raise DriftError(f"cannot read the drift reference {target}: {exc}") from exc
        missing = [k for k in DRIFT_KEYS if k not in tensors]
        if missing:
            raise DriftError(
                f"{target} lacks {missing} (has {sorted(tensors)}); it needs {list(DRIFT_KEYS)}"
            )
        return cls.from_arrays(
            tensors["embeddings"], tensors["probabilities"], tensors["labels"], settings=settings
        )

    def check_window(self, embeddings: ArrayLike, probabilities: ArrayLike) -> tuple[Array, Array]:
        """Check a window against this reference; return it as float64 arrays.

        Raises:
            DriftError: fewer than ``min_window`` samples, NaN, or shapes that do not fit.
        """
        emb = _as_matrix(embeddings, "window embeddings", self.settings.min_window)
        probs = _as_matrix(probabilities, "window probabilities", self.settings.min_window)
        if emb.shape[1] != self.dim:
            raise DriftError(
                f"window embeddings have {emb.shape[1]} dimensions, the reference {self.dim}; "
                "is this the model the reference was made with?"
            )
        if probs.shape[1] != self.num_classes:
            raise DriftError(
                f"window probabilities have {probs.shape[1]} classes, the reference "
                f"{self.num_classes}; is this the model the reference was made with?"
            )
        if len(emb) != len(probs):
            raise DriftError(f"{len(emb)} window embeddings but {len(probs)} probability rows")
        return emb, probs

    def evaluate(
        self, embeddings: ArrayLike, probabilities: ArrayLike, *, seed: int = 0
    ) -> DriftReport:
        """Run every detector on a window and combine them (Holm at ``settings.alpha``).

        Args:
            embeddings: ``(n, D)`` pre-logits embeddings of the window.
            probabilities: ``(n, K)`` softmax outputs of the window.
            seed: seeds the MMD subsample and permutations and the chi-square draws; the
                same window and seed give the same report.

        Raises:
            ConfigError: a negative seed.
            DriftError: the window is too small, has NaN, or does not fit the reference.
        """
        _check_args(self.settings.alpha, seed=(seed, 0))
        emb, probs = self.check_window(embeddings, probabilities)
        s = self.settings
        projected = self.pca.project(emb)
        results = [
            _ks_columns(self.projected, projected, s.alpha),
            _mmd_test(
                _subsample(self.projected, s.mmd_reference_size, seed),
                projected,
                s.alpha,
                seed,
                s.mmd_permutations,
            ),
            _chi2_counts(
                self.class_counts, _class_counts(probs), s.alpha, seed, s.chi2_simulations
            ),
            _ks_confidence(self.confidence, probs.max(axis=1), s.alpha),
        ]
        adjusted = holm_adjust([r.p_value for r in results])
        corrected = tuple(
            dataclasses.replace(r, drift=a <= s.alpha, details={**r.details, "holm_p_value": a})
            for r, a in zip(results, adjusted, strict=True)
        )
        return DriftReport(
            drift_detected=any(r.drift for r in corrected),
            alpha=s.alpha,
            results=corrected,
            reference_size=self.num_samples,
            window_size=len(emb),
        )


def _checked_labels(labels: ArrayLike | None, n: int) -> NDArray[np.int64] | None:
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DriftError(
            f"reference labels must be integers of shape ({n},), got {y.dtype} {y.shape}"
        )
    return y.astype(np.int64)
