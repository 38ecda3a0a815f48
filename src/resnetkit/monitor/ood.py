"""Per-request out-of-distribution (OOD) scores: is this one input like anything the model saw?

An :class:`OODDetector` is fitted once on held-out in-distribution data (the pre-logits
embeddings and the logits a model gives it) and scores any later sample with NumPy alone, so
the server can score every request at the cost of a few small matrix products:

=================  ===========================================================================
``mahalanobis``    Lee et al. (2018): class-conditional Gaussians with one tied covariance on
                   the embedding; the score is the squared Mahalanobis distance to the
                   nearest class mean. The covariance is shrunk towards a scaled identity
                   and inverted with ``pinv``, so a rank-deficient embedding stays stable.
                   The embedding is first put through a signed square root: pooled ReLU
                   features are non-negative and skewed, far from the Gaussian the method
                   assumes; on the Fashion-MNIST recipe this lifts the AUROC against photos
                   from 0.94 to 0.997 and against noise from 0.98 to 0.998.
``energy``         Liu et al. (2020): the free energy ``-logsumexp(logits)``; high for inputs
                   the model has no strong answer for.
``combined``       the larger of the two normalised scores, calibrated again.
=================  ===========================================================================

Each method's threshold is calibrated so that ``quantile`` (95 %) of held-out
in-distribution samples pass. The scores used for calibration are *out of sample*: the data
are split in :data:`FOLDS` folds, each scored by a detector fitted on the others
(cross-fitting), then the served detector is fitted on all of it; in-sample Mahalanobis
distances are smaller than those of new images, and calibrating on them would flag far more
than 5 % of new in-distribution traffic.

A **served score** is normalised so that 1.0 is the threshold and a sample is *flagged* when
its score is above 1.0: ``(raw - origin) / (threshold - origin)``, with ``origin`` 0 for the
Mahalanobis distance (so the served score is raw / threshold) and the held-out median for the
energy, whose raw values may be negative.

The detector is saved as a small versioned ``.npz`` (:data:`OOD_FILE`, beside the drift
reference) and loaded with a clear :class:`~resnetkit.errors.CheckpointError` for a corrupt
or foreign file. This module imports NumPy only: the server uses it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from resnetkit.contract import OOD_DETECTOR
from resnetkit.errors import CheckpointError, ConfigError, DriftError
from resnetkit.fileio import atomic_write

__all__ = [
    "DEFAULT_METHOD",
    "FORMAT",
    "FORMAT_VERSION",
    "METHODS",
    "OOD_FILE",
    "OODDetector",
    "OODScores",
    "auroc",
    "detector_beside",
    "energy",
    "fit_from_reference",
    "fpr_at_tpr",
    "mahalanobis_min",
]

#: The detector's file name, beside ``drift_reference.safetensors`` in a run or version.
OOD_FILE = OOD_DETECTOR
FORMAT = "resnetkit-ood"
FORMAT_VERSION = 1
METHODS = ("mahalanobis", "energy", "combined")
#: The served method: best AUROC on the Fashion-MNIST recipe (``bench/robustness_bench.py``).
DEFAULT_METHOD = "mahalanobis"
#: Weight of the scaled identity the tied covariance is shrunk towards.
SHRINKAGE = 0.01
_MIN_SAMPLES = 20
#: Calibration folds: each sample is scored by a detector fitted on the other nine tenths,
#: nearly the served detector's data, so its distances are nearly as small as the served
#: detector's on new images (two folds, half the data, flagged 3.6% instead of 5%).
FOLDS = 10

F64 = NDArray[np.float64]


def energy(logits: ArrayLike) -> F64:
    """The free energy ``-logsumexp(logits)`` per row ``(N,)``, in float64 and stable."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return np.asarray(-lse, dtype=np.float64)


def mahalanobis_min(embeddings: ArrayLike, means: ArrayLike, precision: ArrayLike) -> F64:
    """The squared Mahalanobis distance to the nearest mean, per row ``(N,)``.

    ``(x - mu_k)^T P (x - mu_k)`` expanded as ``x'Px - 2 x'(P mu_k) + mu_k'P mu_k`` so that one
    ``(N, D) @ (D, D)`` and one ``(N, D) @ (D, K)`` product do all classes at once.
    """
    mu = np.asarray(means, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    pm = mu @ p  # (K, D): P mu_k, P symmetric
    return _mahalanobis_min(np.asarray(embeddings, dtype=np.float64), p, pm, (pm * mu).sum(1))


def _mahalanobis_min(x: F64, p: F64, pm: F64, mu_term: F64) -> F64:
    self_term = ((x @ p) * x).sum(axis=1)  # (N,)
    d2 = self_term[:, None] - 2.0 * (x @ pm.T) + mu_term[None, :]
    return np.asarray(np.maximum(d2.min(axis=1), 0.0), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class OODScores:
    """Scores of a batch under one method.

    Attributes:
        method: the method that scored.
        scores: ``(N,)`` normalised scores; 1.0 is the threshold.
        flagged: ``(N,)`` booleans, ``scores > 1``.
    """

    method: str
    scores: F64
    flagged: NDArray[np.bool_]


def _checked(values: ArrayLike, what: str, ndim: int) -> F64:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DriftError(f"{what} must be numeric: {exc}") from exc
    if x.ndim != ndim:
        raise DriftError(f"{what} must be {ndim}-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DriftError(f"{what} holds NaN or infinite values")
    return x


#: Transforms of the embedding before the Mahalanobis score.
TRANSFORMS = ("sqrt", "none")


def _transformed(x: F64, transform: str) -> F64:
    """``sign(x) sqrt(|x|)`` for ``sqrt`` (a power transform towards Gaussian features)."""
    if transform == "none":
        return x
    return np.asarray(np.sign(x) * np.sqrt(np.abs(x)), dtype=np.float64)


def _fit_gaussians(x: F64, classes: NDArray[np.int64]) -> tuple[F64, F64]:
    """Class means ``(K, D)`` of the classes present and the shrunk tied precision ``(D, D)``."""
    present = np.unique(classes)
    means = np.stack([x[classes == k].mean(axis=0) for k in present])
    centred = x - means[np.searchsorted(present, classes)]
    cov = centred.T @ centred / len(x)
    dim = cov.shape[0]
    scale = float(np.trace(cov)) / dim or 1.0
    shrunk = (1.0 - SHRINKAGE) * cov + SHRINKAGE * scale * np.eye(dim)
    return means, np.asarray(np.linalg.pinv(shrunk, hermitian=True), dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class OODDetector:
    """Mahalanobis (tied covariance) and energy scores, calibrated on held-out data.

    Attributes:
        means: ``(K, D)`` class means of the embedding (classes with held-out samples).
        precision: ``(D, D)`` inverse of the shrunk tied covariance.
        thresholds: raw threshold per method (the ``quantile`` of held-out scores).
        origins: raw value each method's normalised score counts from.
        method: the method :meth:`score` serves by default.
        quantile: the share of held-out samples that pass.
        samples: held-out samples fitted on.
        source: what the held-out data were ("validation split", "test split", ...).
    """

    means: F64
    precision: F64
    thresholds: Mapping[str, float]
    origins: Mapping[str, float]
    method: str = DEFAULT_METHOD
    quantile: float = 0.95
    samples: int = 0
    source: str = ""
    transform: str = "sqrt"
    _pm: F64 = dataclasses.field(init=False, repr=False)
    _mu_term: F64 = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"OOD method {self.method!r} is not known; use {', '.join(METHODS)}")
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"OOD transform {self.transform!r} is not one of {TRANSFORMS}")
        # What does not depend on the sample, computed once: a request pays two small products.
        pm = self.means @ self.precision
        object.__setattr__(self, "_pm", pm)
        object.__setattr__(self, "_mu_term", (pm * self.means).sum(axis=1))

    @property
    def dim(self) -> int:
        """The embedding size ``D`` the detector scores."""
        return int(self.means.shape[1])

    @classmethod
    def fit(
        cls,
        embeddings: ArrayLike,
        logits: ArrayLike,
        labels: ArrayLike | None = None,
        *,
        quantile: float = 0.95,
        method: str = DEFAULT_METHOD,
        source: str = "",
        seed: int = 0,
        transform: str = "sqrt",
    ) -> OODDetector:
        """Fit on held-out in-distribution data and calibrate every method's threshold.

        Args:
            embeddings: ``(N, D)`` pre-logits embeddings.
            logits: ``(N, K)`` logits of the same samples.
            labels: ``(N,)`` true classes, or None (or -1 entries) to use the predictions.
            quantile: the share of held-out samples that must pass, in (0, 1).
            method: the method served by default.
            source: what the held-out data were, kept in the file.
            seed: the split of the calibration folds.
            transform: of the embedding before the Mahalanobis score (``sqrt`` or ``none``).

        Raises:
            DriftError: too few samples, mismatched shapes, or non-finite values.
            ConfigError: a quantile outside (0, 1) or an unknown method.
        """
        if not 0 < quantile < 1:
            raise ConfigError(f"the OOD quantile must be in (0, 1), got {quantile}")
        if transform not in TRANSFORMS:
            raise ConfigError(f"OOD transform {transform!r} is not one of {TRANSFORMS}")
        x = _transformed(_checked(embeddings, "embeddings", 2), transform)
        z = _checked(logits, "logits", 2)
        if len(x) != len(z) or len(x) < _MIN_SAMPLES:
            raise DriftError(
                f"the OOD detector needs at least {_MIN_SAMPLES} samples with one embedding and "
                f"one logit row each, got {len(x)} embeddings and {len(z)} logit rows"
            )
        classes = z.argmax(axis=1).astype(np.int64)
        if labels is not None:
            given = np.asarray(labels, dtype=np.int64).reshape(-1)
            if len(given) != len(x):
                raise DriftError(f"{len(given)} labels for {len(x)} samples")
            classes = np.where(given >= 0, given, classes)
        raw = cls._cross_fitted(x, z, classes, seed)
        thresholds, origins = cls._calibrate(raw, quantile)
        means, precision = _fit_gaussians(x, classes)
        return cls(
            means, precision, thresholds, origins, method, quantile, len(x), source, transform
        )

    @staticmethod
    def _cross_fitted(x: F64, z: F64, classes: NDArray[np.int64], seed: int) -> dict[str, F64]:
        """Every sample's raw scores from a detector fitted on the other folds."""
        fold = np.random.default_rng(seed).permutation(len(x)) % FOLDS
        maha = np.empty(len(x))
        for k in range(FOLDS):
            means, precision = _fit_gaussians(x[fold != k], classes[fold != k])
            maha[fold == k] = mahalanobis_min(x[fold == k], means, precision)
        return {"mahalanobis": maha, "energy": energy(z)}

    @staticmethod
    def _calibrate(raw: dict[str, F64], q: float) -> tuple[dict[str, float], dict[str, float]]:
        origins = {"mahalanobis": 0.0, "energy": float(np.median(raw["energy"]))}
        thresholds = {m: float(np.quantile(raw[m], q)) for m in ("mahalanobis", "energy")}
        for m in thresholds:  # a degenerate (constant) score still gets a usable scale
            if thresholds[m] - origins[m] <= 0:
                thresholds[m] = origins[m] + 1e-12
        both = np.maximum(*(_normalise(raw[m], thresholds[m], origins[m]) for m in thresholds))
        origins["combined"] = 0.0
        thresholds["combined"] = max(float(np.quantile(both, q)), 1e-12)
        return thresholds, origins

    def raw(self, embeddings: ArrayLike | None, logits: ArrayLike | None, method: str) -> F64:
        """Unnormalised scores of ``method`` (higher: further from the held-out data).

        Raises:
            DriftError: an input the method needs is missing, or of the wrong width.
        """
        if method == "combined":
            parts = [self.normalised(embeddings, logits, m) for m in ("mahalanobis", "energy")]
            return np.asarray(np.maximum(*parts), dtype=np.float64)
        if method == "energy":
            if logits is None:
                raise DriftError("the energy score needs the model's logits")
            return energy(_checked(logits, "logits", 2))
        if method != "mahalanobis":
            raise ConfigError(f"OOD method {method!r} is not known; use {', '.join(METHODS)}")
        if embeddings is None:
            raise DriftError("the Mahalanobis score needs the model's embedding output")
        x = _checked(embeddings, "embeddings", 2)
        if x.shape[1] != self.dim:
            raise DriftError(
                f"embeddings of width {x.shape[1]} for a detector fitted on width {self.dim}: "
                "the detector belongs to another model"
            )
        x = _transformed(x, self.transform)
        return _mahalanobis_min(x, self.precision, self._pm, self._mu_term)

    def normalised(
        self, embeddings: ArrayLike | None, logits: ArrayLike | None, method: str
    ) -> F64:
        """Scores of ``method`` on the served scale: 1.0 is the threshold."""
        raw = self.raw(embeddings, logits, method)
        return _normalise(raw, self.thresholds[method], self.origins[method])

    def score(
        self,
        embeddings: ArrayLike | None,
        logits: ArrayLike | None,
        method: str | None = None,
    ) -> OODScores:
        """Served scores and flags of a batch (the detector's own method unless given)."""
        chosen = method or self.method
        scores = self.normalised(embeddings, logits, chosen)
        return OODScores(chosen, scores, scores > 1.0)

    @property
    def needs_embedding(self) -> bool:
        """Whether the served method reads the embedding (not only the logits)."""
        return self.method != "energy"

    def describe(self) -> dict[str, Any]:
        """Plain data for model info and reports."""
        return {
            "method": self.method,
            "quantile": self.quantile,
            "samples": self.samples,
            "source": self.source,
            "thresholds": dict(self.thresholds),
            "transform": self.transform,
        }

    # --- the file ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the detector as a versioned ``.npz``, atomically."""
        arrays: dict[str, Any] = {
            "format": np.array(FORMAT),
            "format_version": np.array(FORMAT_VERSION),
            "method": np.array(self.method),
            "source": np.array(self.source),
            "transform": np.array(self.transform),
            "quantile": np.array(self.quantile),
            "samples": np.array(self.samples),
            "means": self.means.astype(np.float64),
            "precision": self.precision.astype(np.float64),
            "methods": np.array(list(self.thresholds)),
            "thresholds": np.array([self.thresholds[m] for m in self.thresholds]),
            "origins": np.array([self.origins[m] for m in self.thresholds]),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OODDetector:
        """Read a detector written by :meth:`save`.

        Raises:
            CheckpointError: the file is missing, corrupt, foreign or of a newer version.
        """
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as data:
                found = {k: data[k] for k in data.files}
        except FileNotFoundError as exc:
            raise CheckpointError(f"no OOD detector at {p}") from exc
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"{p} is not a readable OOD detector file: {exc}") from exc
        if str(found.get("format", "")) != FORMAT:
            raise CheckpointError(f"{p} is not a resnetkit OOD detector (no {FORMAT!r} format tag)")
        version = int(found.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{p} is an OOD detector of format version {version}; this resnetkit reads "
                f"version {FORMAT_VERSION} (refit it: resnetkit drift --make-reference)"
            )
        try:
            return cls._from_arrays(found)
        except (KeyError, ValueError, TypeError, IndexError, ConfigError) as exc:
            raise CheckpointError(f"{p} is a malformed OOD detector: {exc}") from exc

    @classmethod
    def _from_arrays(cls, a: dict[str, Any]) -> OODDetector:
        means = np.asarray(a["means"], dtype=np.float64)
        precision = np.asarray(a["precision"], dtype=np.float64)
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise ValueError(f"means {means.shape} and precision {precision.shape} do not fit")
        methods = [str(m) for m in a["methods"]]
        if sorted(methods) != sorted(METHODS):
            raise ValueError(f"thresholds for {methods}, expected {list(METHODS)}")
        thresholds = dict(zip(methods, map(float, a["thresholds"]), strict=True))
        origins = dict(zip(methods, map(float, a["origins"]), strict=True))
        finite = np.isfinite([*thresholds.values(), *origins.values()]).all()
        if not (finite and np.isfinite(means).all() and np.isfinite(precision).all()):
            raise ValueError("non-finite values")
        return cls(
            means, precision, thresholds, origins, method=str(a["method"]),
            quantile=float(a["quantile"]), samples=int(a["samples"]), source=str(a["source"]),
            transform=str(a["transform"]),
        )  # fmt: skip


def _normalise(raw: F64, threshold: float, origin: float) -> F64:
    return np.asarray((raw - origin) / (threshold - origin), dtype=np.float64)


def auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    """Area under the ROC curve of "out-of-distribution" against "in" (ties count half):
    the probability that a random OOD sample scores higher than a random in-distribution one."""
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    if len(a) == 0 or len(b) == 0:
        raise DriftError("AUROC needs at least one in- and one out-of-distribution score")
    ranks = _average_ranks(np.concatenate([a, b]))
    u = ranks[len(a) :].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def _average_ranks(x: F64) -> F64:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return np.asarray((sums / counts)[inverse], dtype=np.float64)


def fpr_at_tpr(in_scores: ArrayLike, out_scores: ArrayLike, tpr: float = 0.95) -> float:
    """The share of in-distribution samples flagged when the threshold flags ``tpr`` of the
    out-of-distribution ones (FPR at 95 % TPR, OOD as the positive class)."""
    a = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    b = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    if len(a) == 0 or len(b) == 0:
        raise DriftError("FPR at TPR needs at least one in- and one out-of-distribution score")
    threshold = np.quantile(b, 1.0 - tpr, method="lower")
    return float(np.mean(a >= threshold))


def fit_from_reference(
    path: str | os.PathLike[str], *, method: str = DEFAULT_METHOD, source: str | None = None
) -> OODDetector:
    """Fit a detector on a drift reference that holds ``logits`` beside its embeddings
    (references written since the OOD flag exists; older ones: ``drift --make-reference``).

    Raises:
        DriftError: the file is unreadable or lacks ``embeddings``, ``logits`` or ``labels``.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    p = Path(path)
    try:
        tensors = load_file(str(p))
    except (OSError, SafetensorError, ValueError) as exc:
        raise DriftError(f"cannot read the drift reference {p}: {exc}") from exc
    missing = [k for k in ("embeddings", "logits") if k not in tensors]
    if missing:
        raise DriftError(
            f"{p} has no {' and no '.join(missing)} (written before the OOD flag existed); "
            "rebuild it with `resnetkit drift --make-reference`"
        )
    return OODDetector.fit(
        tensors["embeddings"], tensors["logits"], tensors.get("labels"), method=method,
        source=source or f"the held-out samples of {p.name}",
    )  # fmt: skip


def detector_beside(
    folder: str | os.PathLike[str], reference: str | os.PathLike[str] | None
) -> tuple[OODDetector | None, str]:
    """The detector of a model folder: its :data:`OOD_FILE`, else one fitted on its drift
    reference when that holds logits; None with the reason when there is neither.

    Raises:
        CheckpointError: an :data:`OOD_FILE` that is corrupt or foreign.
    """
    stored = Path(folder) / OOD_FILE
    if stored.is_file():
        return OODDetector.load(stored), f"{OOD_FILE}"
    if reference is None:
        return (
            None,
            "no OOD detector: the model has no drift reference (an ONNX file from elsewhere?)",
        )
    try:
        return fit_from_reference(reference), f"fitted on {Path(reference).name}"
    except DriftError as exc:
        return None, f"no OOD detector: {exc}"
