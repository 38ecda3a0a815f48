"""The gate: candidate and production on the same frozen sets, thresholds, a blessing.

Both models run as the server would run them (ONNX Runtime, fp32 or int8) on every gate set;
their class probabilities are kept in the output folder (``eval/<model>-<set>.npz``), so the
gate step reads exactly what the evaluate step measured.

Checks, each ``{"name", "value", "threshold", "passed", "detail"}``:

* ``accuracy/<set>``: top-1 >= ``min_accuracy`` (value threshold);
* ``ece/<set>``: expected calibration error (15 bins) <= ``max_ece``;
* ``accuracy_change/<set>``: candidate minus production, in points, from a **paired
  bootstrap** over the set's images (both models resampled on the same indices). It passes
  when the lower bound of the ``confidence`` interval is >= ``-max_accuracy_drop_points``:
  a drop that is only noise does not block, a drop bigger than the budget fails even when
  the point estimate hides it in noise, and noise alone never blesses a worse model;
* ``class_change/<set>``: the worst class's recall change (points) >= ``-max_class_drop_points``,
  over classes with at least ``min_class_samples`` images;
* ``ece_change/<set>``: the ECE increase <= ``max_ece_increase``;
* ``latency_p95_ms`` and ``size_mb``: the served artifact's p95 latency for one image (one
  thread) and file size, within the budgets.

Without a production version the change checks are left out ("no baseline").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write
from resnetkit.pipeline.config import GateSection

if TYPE_CHECKING:
    from resnetkit.data import ImageDataset
    from resnetkit.export import LoadedModel

__all__ = ["Predictions", "gate_checks", "predict", "served_artifact_budget"]

ECE_BINS = 15
_BATCH = 256


@dataclass(frozen=True)
class Predictions:
    """A model's class probabilities on one gate set, in the set's class order."""

    probs: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64

    @property
    def correct(self) -> np.ndarray:
        """Per image: whether the top-1 class is the label."""
        return np.asarray(self.probs.argmax(axis=1) == self.labels)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy."""
        return float(self.correct.mean())

    def ece(self) -> float:
        """Expected calibration error over :data:`ECE_BINS` equal-width confidence bins."""
        confidence = self.probs.max(axis=1)
        bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
        total = 0.0
        for b in range(ECE_BINS):
            inside = bins == b
            if inside.any():
                gap = abs(self.correct[inside].mean() - confidence[inside].mean())
                total += inside.mean() * gap
        return float(total)

    def class_recall(self) -> dict[int, tuple[float, int]]:
        """Per class present: (recall, number of images)."""
        out = {}
        for c in np.unique(self.labels):
            mask = self.labels == c
            out[int(c)] = (float(self.correct[mask].mean()), int(mask.sum()))
        return out

    def save(self, path: Path) -> None:
        """Write as ``.npz``, atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:
                np.savez(fh, probs=self.probs, labels=self.labels)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> Predictions:
        """Read :meth:`save`'s file."""
        with np.load(path) as data:
            return cls(np.asarray(data["probs"]), np.asarray(data["labels"]))


def _label_order(model: LoadedModel, classes: tuple[str, ...]) -> np.ndarray:
    """For each of the model's outputs, the gate set's class index it stands for."""
    labels = model.labels
    if sorted(labels) != sorted(classes):
        raise ConfigError(
            f"{model.identity.label} predicts {len(labels)} classes ({', '.join(labels[:4])}...) "
            f"that are not the gate set's ({', '.join(classes[:4])}...)"
        )
    return np.array([classes.index(name) for name in labels])


def predict(model: LoadedModel, dataset: ImageDataset, artifact: str) -> Predictions:
    """Run ``model`` as the server would (``artifact``: onnx or onnx-int8) over ``dataset``.

    Raises:
        ConfigError: the model's classes or input shape do not fit the set.
    """
    from resnetkit.evaluate import check_dataset_fits

    check_dataset_fits(dataset, model.spec)
    order = _label_order(model, dataset.classes)
    backend = model.backend(artifact)
    chunks = []
    for start in range(0, len(dataset), _BATCH):
        batch = model.normalized(dataset.images[start : start + _BATCH]).numpy()
        logits = backend.predict(batch).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        reordered = np.zeros_like(probs)
        reordered[:, order] = probs
        chunks.append(reordered.astype(np.float32))
    return Predictions(np.concatenate(chunks), dataset.labels.numpy().astype(np.int64))


def served_artifact_budget(model: LoadedModel, artifact: str) -> dict[str, float]:
    """The served artifact's size (MB) and p95 latency (ms) for one image on one thread."""
    from resnetkit.export.runtime import OnnxBackend, measure_latency

    path = model.int8_path() if artifact == "onnx-int8" or model.is_int8 else model.onnx_path()
    backend = OnnxBackend(path, name=artifact, threads=1)
    image = np.zeros((1, *model.input_size), dtype=np.float32)
    stats = measure_latency(backend, image, warmup=5, min_iterations=30, min_time_s=0.5)
    return {"size_mb": path.stat().st_size / 1e6, "latency_p95_ms": stats.p95_ms}


def paired_bootstrap(
    candidate: np.ndarray, baseline: np.ndarray, *, samples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """Accuracy difference (points) of two models on the same images, with its interval.

    Returns:
        (point estimate, lower bound, upper bound), candidate minus baseline, in points.
    """
    diff = candidate.astype(np.float64) - baseline.astype(np.float64)  # per image: -1, 0, 1
    rng = np.random.default_rng(seed)
    n = len(diff)
    means = np.empty(samples)
    for start in range(0, samples, 200):  # 200 resamples at a time bounds the memory
        count = min(200, samples - start)
        index = rng.integers(0, n, size=(count, n))
        means[start : start + count] = diff[index].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return 100 * float(diff.mean()), 100 * float(low), 100 * float(high)


def _check(
    name: str, value: float, threshold: float, passed: bool, detail: str = ""
) -> dict[str, Any]:
    return {"name": name, "value": round(value, 6), "threshold": threshold, "passed": bool(passed),
            "detail": detail}  # fmt: skip


def _value_checks(name: str, cand: Predictions, gate: GateSection) -> list[dict[str, Any]]:
    acc, ece = cand.accuracy, cand.ece()
    return [
        _check(f"accuracy/{name}", acc, gate.min_accuracy, acc >= gate.min_accuracy,
               f"{len(cand.labels)} images"),
        _check(f"ece/{name}", ece, gate.max_ece, ece <= gate.max_ece),
    ]  # fmt: skip


def _change_checks(
    name: str, cand: Predictions, base: Predictions, gate: GateSection, classes: tuple[str, ...]
) -> list[dict[str, Any]]:
    point, low, high = paired_bootstrap(
        cand.correct, base.correct, samples=gate.bootstrap_samples,
        confidence=gate.confidence, seed=gate.seed,
    )  # fmt: skip
    drop = -gate.max_accuracy_drop_points
    checks = [
        _check(f"accuracy_change/{name}", point, drop, low >= drop,
               f"{gate.confidence:.0%} CI [{low:+.2f}, {high:+.2f}] points; "
               f"{base.accuracy:.2%} -> {cand.accuracy:.2%}"),
    ]  # fmt: skip
    base_recall = base.class_recall()
    changes = {
        c: 100 * (recall - base_recall[c][0])
        for c, (recall, count) in cand.class_recall().items()
        if count >= gate.min_class_samples
    }
    if changes:
        worst = min(changes, key=lambda c: changes[c])
        limit = -gate.max_class_drop_points
        checks.append(
            _check(f"class_change/{name}", changes[worst], limit, changes[worst] >= limit,
                   f"worst class {classes[worst]!r} of {len(changes)} compared")
        )  # fmt: skip
    increase = cand.ece() - base.ece()
    checks.append(
        _check(f"ece_change/{name}", increase, gate.max_ece_increase,
               increase <= gate.max_ece_increase)
    )  # fmt: skip
    return checks


def gate_checks(
    sets: dict[str, tuple[Predictions, Predictions | None]],
    classes: tuple[str, ...],
    budget: dict[str, float],
    gate: GateSection,
) -> list[dict[str, Any]]:
    """Every check of the gate, in a stable order: per set (value, then change), then budgets.

    Args:
        sets: gate set name -> (candidate, production or None for "no baseline").
        classes: the class names, in label order.
        budget: the served artifact's ``size_mb`` and ``latency_p95_ms``.
    """
    checks: list[dict[str, Any]] = []
    for name, (cand, base) in sets.items():
        checks += _value_checks(name, cand, gate)
        if base is not None:
            checks += _change_checks(name, cand, base, gate, classes)
    latency, size = budget["latency_p95_ms"], budget["size_mb"]
    checks.append(
        _check("latency_p95_ms", latency, gate.max_latency_ms, latency <= gate.max_latency_ms,
               "one image, one thread, ONNX Runtime")
    )  # fmt: skip
    checks.append(_check("size_mb", size, gate.max_size_mb, size <= gate.max_size_mb))
    return checks
