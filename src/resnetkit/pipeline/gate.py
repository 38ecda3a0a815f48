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
  thread) and file size, within the budgets;
* robustness, only when configured (:func:`robustness_evaluation`, on the first
  ``robustness_images`` test images, both models as the served artifact, the same seeded
  corruptions and far-OOD images for both): ``mce_change``, the candidate's mCE normalised
  by production's errors (Hendrycks & Dietterich: production is 100) minus 100, in points,
  <= ``max_mce_increase``; ``ood_auroc_change/<set>``, the served OOD detector's AUROC on
  each far-OOD set, candidate minus production, >= ``-max_ood_auroc_drop``. A candidate
  whose detector is unavailable fails ``ood_auroc`` with the reason: the operator asked
  for the check.

Without a production version the change checks are left out ("no baseline"); the
robustness values are still reported (``mce``, unnormalised; ``ood_auroc/<set>``), with no
threshold, and do not fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write
from resnetkit.pipeline.config import GateSection

if TYPE_CHECKING:  # SciPy (the corruptions) only where robustness is checked
    from resnetkit.data import ImageDataset
    from resnetkit.export import LoadedModel
    from resnetkit.monitor.robustness import Classify, CorruptionResult

__all__ = [
    "Predictions",
    "gate_checks",
    "predict",
    "robustness_checks",
    "robustness_evaluation",
    "served_artifact_budget",
]

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
    *,
    robustness: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every check of the gate, in a stable order: per set (value, then change), budgets,
    then robustness.

    Args:
        sets: gate set name -> (candidate, production or None for "no baseline").
        classes: the class names, in label order.
        budget: the served artifact's ``size_mb`` and ``latency_p95_ms``.
        robustness: :func:`robustness_evaluation`'s result (None: not configured).
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
    if gate.robustness_checked:
        checks += robustness_checks(robustness, gate)
    return checks


# -- robustness: corruptions (mCE) and the OOD detector, candidate against production --------


def _classifier(model: LoadedModel, backend: Any, order: np.ndarray) -> Classify:
    """``uint8`` images to predicted gate-set class indices, on the served artifact."""
    import torch

    def classify(images: np.ndarray) -> np.ndarray:
        batch = model.normalized(torch.from_numpy(np.ascontiguousarray(images))).numpy()
        return np.asarray(order[backend.predict(batch).argmax(axis=1)])

    return classify


def robustness_evaluation(
    candidate: LoadedModel,
    baseline: LoadedModel | None,
    dataset: ImageDataset,
    gate: GateSection,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Both models under the same seeded corruptions and against the same far-OOD images,
    as the served artifact: what :func:`robustness_checks` judges. None when neither
    robustness check is configured (nothing is computed).

    Returns:
        Plain data: ``images``, ``seed``, and ``corruptions`` (each role's accuracy per
        corruption and severity) and/or ``ood`` (each role's OOD report), per the config.
    """
    from resnetkit.monitor.corruptions import CORRUPTIONS
    from resnetkit.monitor.ood_eval import far_ood_sets, ood_report
    from resnetkit.monitor.robustness import corruption_accuracy

    if not gate.robustness_checked:
        return None
    say = progress or (lambda message: None)
    count = min(gate.robustness_images, len(dataset))
    images = dataset.images[:count].numpy()
    labels = dataset.labels[:count].numpy()
    models = {"candidate": candidate, "baseline": baseline}
    roles = {k: m for k, m in models.items() if m is not None}
    out: dict[str, Any] = {"images": count, "seed": gate.seed, "artifact": gate.artifact}
    if gate.max_mce_increase is not None:
        names = list(gate.robustness_corruptions or CORRUPTIONS)
        classifiers = {
            role: _classifier(m, m.backend(gate.artifact), _label_order(m, dataset.classes))
            for role, m in roles.items()
        }
        total = len(names) * len(gate.robustness_severities)
        done = iter(range(1, total + 1))
        results = corruption_accuracy(
            classifiers, images, labels, corruptions=names,
            severities=gate.robustness_severities, seed=gate.seed,
            on_step=lambda name, s: say(f"robustness: {name} {s} ({next(done)}/{total})"),
        )  # fmt: skip
        out["corruptions"] = {role: r.to_dict() for role, r in results.items()}
    if gate.max_ood_auroc_drop is not None:
        say(f"robustness: OOD detectors on {count} test images and the far-OOD sets")
        far = far_ood_sets(candidate, count, seed=gate.seed, data_name=dataset.name)
        out["ood"] = {
            role: ood_report(m, images, dataset.name, gate.seed, artifact=gate.artifact, far=far)
            for role, m in roles.items()
        }
        out["ood_unavailable_sets"] = far[1]
    return out


def _reported(name: str, value: float | None, detail: str) -> dict[str, Any]:
    """A value shown beside the checks, not gated: no threshold, never fails."""
    shown = None if value is None else round(value, 6)
    return {"name": name, "value": shown, "threshold": None, "passed": True, "detail": detail}


def _result(data: dict[str, Any]) -> CorruptionResult:
    from resnetkit.monitor.robustness import CorruptionResult

    return CorruptionResult(
        float(data["clean_accuracy"]),
        {k: list(v) for k, v in data["accuracy"].items()},
        tuple(data["severities"]),
    )


def _mce_check(corruptions: dict[str, Any], images: int, gate: GateSection) -> dict[str, Any]:
    from resnetkit.monitor.robustness import corruption_errors

    cand = _result(corruptions["candidate"])
    size = f"{len(cand.by_corruption)} corruptions x {len(cand.severities)} severities"
    if corruptions.get("baseline") is None:
        errors = corruption_errors(cand)
        detail = f"no baseline: mean error under {size}, {images} images; not gated"
        return _reported("mce", 100 * errors["mce"], detail)
    base = _result(corruptions["baseline"])
    errors = corruption_errors(cand, base)
    increase = 100 * errors["mce"] - 100
    rel = errors["relative_mce"]
    accuracy = {k: np.mean(list(r.by_corruption.values())) for k, r in (("b", base), ("c", cand))}
    detail = (
        f"mCE {100 * errors['mce']:.1f}% of production's errors"
        + (f", relative mCE {100 * rel:.1f}%" if np.isfinite(rel) else "")
        + f"; corrupted accuracy {accuracy['b']:.2%} -> {accuracy['c']:.2%}; {size}, "
        f"{images} images"
    )
    limit = gate.max_mce_increase
    assert limit is not None
    return _check("mce_change", increase, limit, increase <= limit, detail)


def _ood_checks(
    ood: dict[str, Any], unavailable: dict[str, str], gate: GateSection
) -> list[dict[str, Any]]:
    drop = gate.max_ood_auroc_drop
    assert drop is not None
    cand, base = ood["candidate"], ood.get("baseline")
    if not cand["available"]:
        why = (
            f"candidate's OOD detector unavailable: {cand['reason']}; max_ood_auroc_drop needs one"
        )
        return [{"name": "ood_auroc", "value": None, "threshold": -drop, "passed": False,
                 "detail": why}]  # fmt: skip
    checks = []
    for name, by_method in cand["sets"].items():
        auroc = by_method[cand["method"]]["auroc"]
        if base is None:
            checks.append(_reported(f"ood_auroc/{name}", auroc,
                                    f"no baseline: {cand['method']} AUROC; not gated"))  # fmt: skip
        elif not base["available"]:
            why = f"production's detector unavailable ({base['reason']}): not compared"
            checks.append(_reported(f"ood_auroc/{name}", auroc, why))
        else:
            before = base["sets"][name][base["method"]]["auroc"]
            change = auroc - before
            methods = {cand["method"], base["method"]}
            how = cand["method"] if len(methods) == 1 else f"{base['method']} -> {cand['method']}"
            size, inside = cand["set_sizes"][name], cand["in_distribution_images"]
            detail = f"AUROC {before:.4f} -> {auroc:.4f} ({how}); {size} far-OOD, {inside} test"
            checks.append(
                _check(f"ood_auroc_change/{name}", change, -drop, change >= -drop, detail)
            )
    for name, why in unavailable.items():
        checks.append(_reported(f"ood_auroc/{name}", None, f"set unavailable: {why}"))
    return checks


def _not_evaluated(name: str, key: str) -> dict[str, Any]:
    detail = f"gate.{key} is set but the evaluate step measured no robustness: re-run it"
    return {"name": name, "value": None, "threshold": None, "passed": False, "detail": detail}


def robustness_checks(robustness: dict[str, Any] | None, gate: GateSection) -> list[dict[str, Any]]:
    """The configured robustness checks from :func:`robustness_evaluation`'s result; a
    configured check that was not evaluated fails, saying so (never passes unmeasured)."""
    data = robustness or {}
    checks: list[dict[str, Any]] = []
    if gate.max_mce_increase is not None:
        if "corruptions" in data:
            checks.append(_mce_check(data["corruptions"], data["images"], gate))
        else:
            checks.append(_not_evaluated("mce_change", "max_mce_increase"))
    if gate.max_ood_auroc_drop is not None:
        if "ood" in data:
            checks += _ood_checks(data["ood"], data.get("ood_unavailable_sets", {}), gate)
        else:
            checks.append(_not_evaluated("ood_auroc", "max_ood_auroc_drop"))
    return checks
