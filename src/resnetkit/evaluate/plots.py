"""PNG plots of evaluation results and training curves, drawn off-screen.

Figures are built with :class:`matplotlib.figure.Figure` on the Agg canvas, never through
``pyplot``: no display, no global figure state, safe to call from any thread. Every PNG is
written atomically, so a reader never sees half an image.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import NullFormatter, ScalarFormatter

from resnetkit.errors import DataError
from resnetkit.evaluate.metrics import ArrayLike, CalibrationBins
from resnetkit.fileio import new_figure, save_figure

__all__ = [
    "plot_confusion_matrix",
    "plot_reliability_diagram",
    "plot_training_curves",
    "read_metrics_jsonl",
]

_MAX_ANNOTATED_CLASSES = 20  # beyond this, numbers in cells are unreadable
_MAX_LABELLED_CLASSES = 50  # beyond this, tick labels overlap


def plot_confusion_matrix(
    confusion: ArrayLike | Sequence[Sequence[int]],
    class_names: Sequence[str],
    out_png: str | os.PathLike[str],
    *,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a confusion matrix normalised per row (each true class sums to 1).

    Cells are annotated with the row fraction when there are at most 20 classes.

    Args:
        confusion: ``(C, C)`` counts, rows = true class, columns = predicted class.
        class_names: ``C`` names for the axes.
        out_png: where to write the PNG.
        title: figure title.

    Returns:
        The path written.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    n = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    normed = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = min(max(4.5, 0.55 * n + 2.5), 20.0)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(normed, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= _MAX_LABELLED_CLASSES:
        ticks = np.arange(n)
        ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
        ax.set_yticks(ticks, labels=list(class_names))
    if n <= _MAX_ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                value = normed[i, j]
                colour = "white" if value > 0.5 else "black"
                text = f"{value:.2f}" if value >= 0.005 else "0"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return save_figure(fig, out_png)


def plot_reliability_diagram(
    bins: CalibrationBins,
    out_png: str | os.PathLike[str],
    *,
    title: str = "Reliability diagram",
) -> Path:
    """Draw accuracy against confidence per bin, with the gap to the diagonal and bin counts.

    Args:
        bins: from :func:`~resnetkit.evaluate.metrics.calibration_bins`.
        out_png: where to write the PNG.
        title: figure title; the ECE is appended.

    Returns:
        The path written.
    """
    edges = np.asarray(bins.edges)
    width = np.diff(edges)
    left = edges[:-1]
    acc, conf = np.asarray(bins.accuracy), np.asarray(bins.confidence)
    counts = np.asarray(bins.counts)
    filled = counts > 0
    fig = new_figure(5.5, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(
        left[filled],
        acc[filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    gap_lo, gap_hi = np.minimum(acc, conf), np.maximum(acc, conf)
    top.bar(
        left[filled],
        (gap_hi - gap_lo)[filled],
        bottom=gap_lo[filled],
        width=width[filled],
        align="edge",
        facecolor=(1.0, 0.3, 0.3, 0.25),
        edgecolor="tab:red",
        linewidth=1.0,
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left")
    top.set_title(f"{title} (ECE {bins.ece:.4f})")
    bottom.bar(
        left, counts, width=width, align="edge", color="tab:gray", edgecolor="black", linewidth=0.5
    )
    if counts.max(initial=0) > 0:
        bottom.set_yscale("log")  # most samples usually sit in the top bin
        bottom.yaxis.set_major_formatter(ScalarFormatter())
        bottom.yaxis.set_minor_formatter(NullFormatter())
    bottom.set_xlabel("confidence (top-1 softmax)")
    bottom.set_ylabel("samples")
    return save_figure(fig, out_png)


def read_metrics_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file: one JSON object per line.

    A truncated last line (a run still writing) is ignored; a malformed line elsewhere is an
    error.

    Raises:
        DataError: the file is missing or a line before the last is not a JSON object.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read training metrics {p}: {exc}") from exc
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise DataError(f"{p}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{p}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _series(rows: list[dict[str, Any]], x_key: str, key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        x, y = _number(row.get(x_key)), _number(row.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _panel_keys(rows: list[dict[str, Any]], x_key: str) -> dict[str, list[str]]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(k for k in row if k not in ("epoch", "step", x_key)))
    panels: dict[str, list[str]] = {"loss": [], "accuracy": [], "learning rate": []}
    for key in keys:
        if key.endswith("loss"):
            panels["loss"].append(key)
        elif key.endswith(("acc", "accuracy")):
            panels["accuracy"].append(key)
        elif key == "lr":
            panels["learning rate"].append(key)
    return {name: ks for name, ks in panels.items() if any(_series(rows, x_key, k)[0] for k in ks)}


def _draw_panel(ax: Axes, rows: list[dict[str, Any]], x_key: str, keys: list[str]) -> None:
    for key in keys:
        xs, ys = _series(rows, x_key, key)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=key)
    ax.grid(True, alpha=0.3)
    ax.legend()


def plot_training_curves(
    metrics_jsonl_path: str | os.PathLike[str], out_png: str | os.PathLike[str]
) -> Path:
    """Plot loss, accuracy and learning rate from a run's ``metrics.jsonl``.

    Keys ending in ``loss`` share the loss panel, keys ending in ``acc``/``accuracy`` the
    accuracy panel, and ``lr`` gets its own; only panels with data are drawn. The x-axis is
    ``epoch`` when rows carry it, else ``step``.

    Returns:
        The path written.

    Raises:
        DataError: the file is unreadable or holds nothing to plot.
    """
    rows = read_metrics_jsonl(metrics_jsonl_path)
    x_key = "epoch" if any(_number(r.get("epoch")) is not None for r in rows) else "step"
    panels = _panel_keys(rows, x_key)
    if not panels:
        raise DataError(
            f"{metrics_jsonl_path}: no loss, accuracy or lr values against {x_key} to plot"
        )
    fig = new_figure(6.5, 2.8 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, keys) in zip(axes, panels.items(), strict=True):
        _draw_panel(ax, rows, x_key, keys)
        ax.set_ylabel(name)
        if name == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[-1].set_xlabel(x_key)
    axes[0].set_title("Training curves")
    return save_figure(fig, out_png)
