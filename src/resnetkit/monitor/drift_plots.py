"""Pictures of drift: a window against its reference, and detection rates over shifts.

Figures are built on the Agg canvas with :class:`matplotlib.figure.Figure`, never through
``pyplot`` (no global figure state: safe from the server's background thread), and written
atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from numpy.typing import ArrayLike, NDArray

from resnetkit.errors import ConfigError
from resnetkit.fileio import new_figure, save_figure
from resnetkit.monitor.drift import DriftReference, DriftReport

__all__ = ["plot_detection_heatmap", "plot_drift"]

_MAX_SCATTER_POINTS = 2000  # reference points drawn; more only hide the window's
_REFERENCE_COLOUR, _WINDOW_COLOUR = "tab:blue", "tab:orange"


def _top_two(points: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The first two columns; zeros for the second when the PCA kept one component."""
    second = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
    return points[:, 0], second


def _scatter_panel(ax: Axes, reference: NDArray[np.float64], window: NDArray[np.float64]) -> None:
    step = max(1, len(reference) // _MAX_SCATTER_POINTS)
    ax.scatter(*_top_two(reference[::step]), s=4, alpha=0.3, c=_REFERENCE_COLOUR, label="reference")
    ax.scatter(*_top_two(window), s=8, alpha=0.7, c=_WINDOW_COLOUR, label="window")
    ax.set(title="Embeddings: top 2 PCA components", xlabel="PC 1", ylabel="PC 2")
    ax.legend(loc="best", fontsize="small")


def _confidence_panel(
    ax: Axes, reference: NDArray[np.float64], window: NDArray[np.float64]
) -> None:
    low = min(0.0, float(reference.min()), float(window.min()))
    high = max(1.0, float(reference.max()), float(window.max()))
    bins = [float(b) for b in np.linspace(low, high, 26)]
    for values, colour, label in (
        (reference, _REFERENCE_COLOUR, "reference"),
        (window, _WINDOW_COLOUR, "window"),
    ):
        ax.hist(values, bins=bins, density=True, alpha=0.5, color=colour, label=label)
    ax.set(title="Maximum softmax probability", xlabel="confidence", ylabel="density")
    ax.legend(loc="upper left", fontsize="small")


def _class_panel(
    ax: Axes,
    reference_counts: NDArray[np.int64],
    window_counts: NDArray[np.int64],
    class_names: Sequence[str] | None,
) -> None:
    k = len(reference_counts)
    x = np.arange(k)
    ax.bar(
        x - 0.2,
        reference_counts / max(1, reference_counts.sum()),
        0.4,
        color=_REFERENCE_COLOUR,
        label="reference",
    )
    ax.bar(
        x + 0.2,
        window_counts / max(1, window_counts.sum()),
        0.4,
        color=_WINDOW_COLOUR,
        label="window",
    )
    names = list(class_names) if class_names and len(class_names) == k else [str(i) for i in x]
    ax.set_xticks(x, names, rotation=45 if k > 5 else 0, ha="right" if k > 5 else "center")
    ax.set(title="Predicted classes", ylabel="fraction of samples")
    ax.legend(loc="best", fontsize="small")


def _verdict_title(report: DriftReport) -> str:
    verdict = "DRIFT DETECTED" if report.drift_detected else "no drift detected"
    parts = [f"{r.name} p={r.details.get('holm_p_value', r.p_value):.3g}" for r in report.results]
    return (
        f"{verdict} (alpha {report.alpha:g}, Holm): window of {report.window_size} vs "
        f"reference of {report.reference_size}\n" + ", ".join(parts)
    )


def plot_drift(
    reference: DriftReference,
    window_embeddings: ArrayLike,
    window_probabilities: ArrayLike,
    report: DriftReport,
    out_png: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw a window against its reference: PCA scatter, confidence, predicted classes.

    Args:
        reference: the reference the window was evaluated against.
        window_embeddings: ``(n, D)`` embeddings of the window.
        window_probabilities: ``(n, K)`` softmax outputs of the window.
        report: ``reference.evaluate(...)`` on this window; its verdict is the title.
        out_png: where to write the PNG.
        class_names: labels of the class bars (class indices when None).

    Returns:
        The path written.

    Raises:
        DriftError: the window does not fit the reference.
    """
    embeddings, probabilities = reference.check_window(window_embeddings, window_probabilities)
    counts = np.bincount(probabilities.argmax(axis=1), minlength=reference.num_classes)
    fig = new_figure(15, 4.8)
    axes = fig.subplots(1, 3)
    _scatter_panel(axes[0], reference.projected, reference.pca.project(embeddings))
    _confidence_panel(axes[1], reference.confidence, probabilities.max(axis=1))
    _class_panel(axes[2], reference.class_counts, counts.astype(np.int64), class_names)
    fig.suptitle(_verdict_title(report), color="tab:red" if report.drift_detected else "black")
    return save_figure(fig, out_png)


def plot_detection_heatmap(
    rates: ArrayLike,
    shifts: Sequence[str],
    window_sizes: Sequence[int],
    out_png: str | os.PathLike[str],
    *,
    title: str = "Drift detection rate",
) -> Path:
    """Draw detection rates (fractions in [0, 1]) as a shift x window-size heatmap, annotated.

    Args:
        rates: ``(len(shifts), len(window_sizes))`` fraction of windows flagged.
        shifts: row names (e.g. ``"mnist"``, ``"none"`` for the false-positive row).
        window_sizes: column names: samples per window.
        out_png: where to write the PNG.
        title: the figure title.

    Returns:
        The path written.

    Raises:
        ConfigError: ``rates`` does not have one row per shift and one column per size.
    """
    values = np.asarray(rates, dtype=np.float64)
    if values.shape != (len(shifts), len(window_sizes)):
        raise ConfigError(
            f"rates of shape {values.shape} do not fit {len(shifts)} shifts x "
            f"{len(window_sizes)} window sizes"
        )
    fig = new_figure(1.4 * len(window_sizes) + 3, 0.55 * len(shifts) + 1.6)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        colour = "black" if value > 0.6 else "white"
        ax.text(j, i, f"{100 * value:.0f}%", ha="center", va="center", color=colour)
    ax.set_xticks(range(len(window_sizes)), [str(n) for n in window_sizes])
    ax.set_yticks(range(len(shifts)), list(shifts))
    ax.set(xlabel="window size (samples)", title=title)
    fig.colorbar(image, ax=ax, label="fraction of windows flagged")
    return save_figure(fig, out_png)
