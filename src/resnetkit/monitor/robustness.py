"""The robustness report: accuracy under common corruptions and adversarial attacks.

The model is reached through plain callables, so this module needs neither the data nor the
training stage: a :data:`Classify` maps ``uint8`` images ``(N, C, H, W)`` to predicted class
indices ``(N,)``. Every classifier sees the very same corrupted images (one seed per
corruption), so a model and its baseline are compared image for image.

mCE follows Hendrycks & Dietterich (2019): for corruption ``c``,
``CE_c = sum_s E(c, s) / sum_s E_base(c, s)`` and
``relative CE_c = sum_s (E(c, s) - E_clean) / sum_s (E_base(c, s) - E_base_clean)``, with ``E``
the top-1 error; mCE and relative mCE are their means over corruptions. Without a baseline
the report gives each corruption's mean error over severities, unnormalised, and says so.

The out-of-distribution part scores far-OOD sets that ship here (:func:`far_ood_images`:
uniform noise, and crops of the ``skimage.data`` photos resized to the input; the caller adds
MNIST for a Fashion-MNIST model and the reverse) against the in-distribution test images:
AUROC and FPR at 95 % TPR per detector method (:func:`ood_separation`), beside the
max-softmax baseline of Hendrycks & Gimpel (2017).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnetkit.fileio import new_figure, save_figure
from resnetkit.monitor.corruptions import CORRUPTIONS, SEVERITIES, check_severities, corrupt

__all__ = [
    "PHOTOS",
    "Classify",
    "CorruptionResult",
    "corruption_accuracy",
    "corruption_errors",
    "far_ood_images",
    "ood_separation",
    "plot_attack_accuracy",
    "plot_corruption_accuracy",
]

#: The ``skimage.data`` photos the far-OOD "photos" set is cut from (all ship with scikit-image).
PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "page", "text",
    "immunohistochemistry", "hubble_deep_field", "grass", "gravel", "brick", "cell", "clock",
)  # fmt: skip

#: ``uint8`` images ``(N, C, H, W)`` -> predicted class indices ``(N,)``.
Classify = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class CorruptionResult:
    """One model's accuracy: clean, and per corruption a list over ``severities``."""

    clean: float
    by_corruption: dict[str, list[float]]
    severities: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``robustness.json``."""
        return {
            "clean_accuracy": self.clean,
            "severities": list(self.severities),
            "accuracy": {k: list(v) for k, v in self.by_corruption.items()},
        }


def _accuracy(classify: Classify, images: np.ndarray, labels: np.ndarray, batch: int) -> float:
    hits = 0
    for start in range(0, len(images), batch):
        predicted = classify(images[start : start + batch])
        hits += int((np.asarray(predicted) == labels[start : start + batch]).sum())
    return hits / max(len(images), 1)


def _seed_for(seed: int, name: str, severity: int) -> int:
    """A seed per (corruption, severity): independent of which others are run."""
    return zlib.crc32(f"{seed}:{name}:{severity}".encode())


def corruption_accuracy(
    classifiers: dict[str, Classify],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = SEVERITIES,
    seed: int = 0,
    batch_size: int = 500,
    on_step: Callable[[str, int], None] | None = None,
) -> dict[str, CorruptionResult]:
    """Accuracy of each classifier on ``images`` clean and under every corruption/severity.

    Args:
        classifiers: name -> classifier; all see the same corrupted images.
        images: ``uint8`` ``(N, C, H, W)``; labels ``(N,)`` class indices.
        on_step: called after each (corruption, severity), e.g. to advance a progress bar.

    Raises:
        ConfigError: a severity outside 1-5 or an unknown corruption.
    """
    check_severities(list(severities))
    clean = {k: _accuracy(f, images, labels, batch_size) for k, f in classifiers.items()}
    table: dict[str, dict[str, list[float]]] = {k: {} for k in classifiers}
    for name in corruptions:
        for severity in severities:
            rng = np.random.default_rng(_seed_for(seed, name, severity))
            corrupted = corrupt(images, name, severity, rng)
            for key, classify in classifiers.items():
                acc = _accuracy(classify, corrupted, labels, batch_size)
                table[key].setdefault(name, []).append(acc)
            if on_step is not None:
                on_step(name, severity)
    return {k: CorruptionResult(clean[k], table[k], tuple(severities)) for k in classifiers}


def corruption_errors(
    model: CorruptionResult, baseline: CorruptionResult | None = None
) -> dict[str, Any]:
    """CE per corruption and mCE; normalised by ``baseline`` (with relative CE) when given.

    Returns:
        ``{"normalised": bool, "ce": {name: x}, "mce": x}``, plus ``"relative_ce"`` and
        ``"relative_mce"`` with a baseline. Unnormalised CE is the mean error over severities.
    """
    ce: dict[str, float] = {}
    relative: dict[str, float] = {}
    for name, accs in model.by_corruption.items():
        errors = 1.0 - np.asarray(accs)
        if baseline is None:
            ce[name] = float(errors.mean())
            continue
        base = 1.0 - np.asarray(baseline.by_corruption[name])
        ce[name] = float(errors.sum() / max(base.sum(), 1e-12))
        gap = float((base - (1.0 - baseline.clean)).sum())
        # A corruption the baseline is not hurt by leaves relative CE undefined: NaN says so.
        relative[name] = float((errors - (1.0 - model.clean)).sum() / gap) if gap > 0 else np.nan
    out: dict[str, Any] = {
        "normalised": baseline is not None,
        "ce": ce,
        "mce": float(np.mean(list(ce.values()))) if ce else float("nan"),
    }
    if baseline is not None:
        out["relative_ce"] = relative
        finite = [v for v in relative.values() if np.isfinite(v)]
        out["relative_mce"] = float(np.mean(finite)) if finite else float("nan")
    return out


def plot_corruption_accuracy(
    results: dict[str, CorruptionResult], out_png: str | os.PathLike[str]
) -> Path:
    """Accuracy against severity, one panel per corruption, one line per model."""
    first = next(iter(results.values()))
    names = list(first.by_corruption)
    cols = min(len(names), 5)
    rows = -(-len(names) // cols)
    fig = new_figure(2.6 * cols, 2.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax, name in zip(axes.flat, names, strict=False):
        for key, result in results.items():
            xs = [0, *result.severities]
            ax.plot(xs, [result.clean, *result.by_corruption[name]], marker="o", label=key)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7)
    fig.supxlabel("severity (0: clean)")
    fig.supylabel("top-1 accuracy")
    return save_figure(fig, out_png)


def plot_attack_accuracy(
    attacks: dict[str, dict[str, list[float]]],
    eps: Sequence[float],
    clean: dict[str, float],
    out_png: str | os.PathLike[str],
) -> Path:
    """Accuracy against eps, one line per (model, attack); eps 0 is the clean accuracy.

    Args:
        attacks: model -> attack name -> accuracy per eps.
    """
    fig = new_figure(5.5, 3.6)
    ax = fig.subplots()
    for key, by_attack in attacks.items():
        for method, accs in by_attack.items():
            ax.plot([0.0, *eps], [clean[key], *accs], marker="o", label=f"{key} {method}")
    ax.set_xlabel("eps (L-infinity, fraction of the pixel range)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Adversarial accuracy")
    return save_figure(fig, out_png)


def _photo(name: str, channels: int) -> np.ndarray:
    """One ``skimage.data`` photo as float ``(H, W, channels)`` in [0, 1]."""
    import skimage.data
    from skimage.color import gray2rgb, rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    image = img_as_float(getattr(skimage.data, name)())
    if image.ndim == 3 and image.shape[2] == 4:
        image = rgba2rgb(image)
    if channels == 1:
        image = rgb2gray(image) if image.ndim == 3 else image
        return image[..., None]
    return gray2rgb(image) if image.ndim == 2 else image


def far_ood_images(
    input_size: tuple[int, int, int], count: int, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """Far-OOD sets at a model's input size, ``uint8`` ``(count, C, H, W)`` each.

    ``uniform_noise``: every pixel uniform in [0, 255]. ``photos``: seeded random square crops
    (a quarter to all of the short side) of the :data:`PHOTOS`, cycling over the photos,
    resized to ``(H, W)`` with anti-aliasing, grey for a one-channel model.
    """
    from skimage.transform import resize

    c, h, w = input_size
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (count, c, h, w), dtype=np.uint8)
    photos = [_photo(name, c) for name in PHOTOS]
    crops = np.empty((count, c, h, w), dtype=np.uint8)
    for i in range(count):
        image = photos[i % len(photos)]
        side = min(image.shape[:2])
        size = int(rng.integers(max(side // 4, 1), side + 1))
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        crop = image[top : top + size, left : left + size]
        small = resize(crop, (h, w), anti_aliasing=True)
        crops[i] = np.clip(np.rint(small * 255), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return {"uniform_noise": noise, "photos": crops}


def ood_separation(
    in_scores: dict[str, np.ndarray], out_scores: dict[str, dict[str, np.ndarray]]
) -> dict[str, dict[str, dict[str, float]]]:
    """AUROC and FPR at 95 % TPR of each method on each far-OOD set.

    Args:
        in_scores: method -> scores of the in-distribution images (higher: more OOD).
        out_scores: set name -> method -> scores of that set's images.

    Returns:
        ``{set: {method: {"auroc", "fpr_at_95_tpr", "flagged"}}}``; ``flagged`` is the share
        of the set above the served threshold (scores > 1), for methods on that scale.
    """
    from resnetkit.monitor.ood import auroc, fpr_at_tpr

    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_method in out_scores.items():
        table[name] = {}
        for method, scores in by_method.items():
            row = {
                "auroc": auroc(in_scores[method], scores),
                "fpr_at_95_tpr": fpr_at_tpr(in_scores[method], scores),
            }
            if method != "max_softmax":
                row["flagged"] = float(np.mean(np.asarray(scores) > 1.0))
            table[name][method] = row
    return table
