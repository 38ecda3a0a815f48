"""The size / speed / accuracy trade-off of a model and its compressed variants.

Each variant is any model reference the loader takes: a run directory or weights version
(PyTorch, eager) or an ``.onnx`` file or version (e.g. the int8 model, in ONNX Runtime). For
each one this measures, in one process: test top-1 on real data, parameters and MACs, size on
disk, p95 latency at batch 1 and throughput at batch 32, and draws them as a scatter (latency
against accuracy, marker area proportional to the size on disk).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from resnetkit.contract import MODEL_WEIGHTS
from resnetkit.data import ImageDataset
from resnetkit.evaluate import predict_log_probs
from resnetkit.export.loading import LoadedModel, load_model_ref
from resnetkit.export.runtime import measure_latency
from resnetkit.fileio import new_figure, save_figure
from resnetkit.models import model_from_card, profile

__all__ = ["TradeoffRow", "measure_variant", "plot_tradeoff"]


@dataclass(frozen=True)
class TradeoffRow:
    """One variant's measurements."""

    name: str
    backend: str
    top1: float
    params: int
    macs: int
    size_bytes: int
    p95_ms_batch1: float
    images_per_s_batch32: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def _size_bytes(loaded: LoadedModel) -> int:
    if loaded.onnx_file is not None:
        return loaded.onnx_file.stat().st_size
    return (loaded.folder / MODEL_WEIGHTS).stat().st_size


def measure_variant(
    name: str,
    ref: str | os.PathLike[str],
    test: ImageDataset,
    *,
    registry: str | None = None,
    min_time_s: float = 1.0,
) -> TradeoffRow:
    """Measure one variant (any model reference) on ``test``."""
    loaded = load_model_ref(ref, registry=registry)
    backend = loaded.backend("torch" if loaded.has_weights else "onnx")
    spec = loaded.spec
    # Parameters and MACs from the architecture; built on the meta device for ONNX files.
    module = loaded.module() if loaded.has_weights else model_from_card(loaded.card, device="meta")
    prof = profile(module, spec.input_size)
    gen = torch.Generator().manual_seed(0)
    one, many = (
        measure_latency(
            backend, torch.randn((b, *spec.input_size), generator=gen).numpy(),
            min_time_s=min_time_s,
        )
        for b in (1, 32)
    )  # fmt: skip
    log_probs = predict_log_probs(backend.predict, test.images, spec, batch_size=500)
    return TradeoffRow(
        name=name,
        backend=backend.name,
        top1=float((log_probs.argmax(dim=1) == test.labels).float().mean()),
        params=prof.params,
        macs=prof.macs,
        size_bytes=_size_bytes(loaded),
        p95_ms_batch1=one.p95_ms,
        images_per_s_batch32=many.throughput,
    )


def plot_tradeoff(rows: list[TradeoffRow], out_png: str | os.PathLike[str]) -> Path:
    """Scatter of p95 latency (batch 1) against top-1; marker area ∝ size on disk."""
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    biggest = max(r.size_bytes for r in rows)
    for row in rows:
        area = 60 + 600 * row.size_bytes / biggest
        ax.scatter(row.p95_ms_batch1, 100 * row.top1, s=area, alpha=0.6)
        label = f"{row.name}\n{row.size_bytes / 1e6:.2f} MB, {row.macs / 1e6:.0f}M MACs"
        point = (row.p95_ms_batch1, 100 * row.top1)
        ax.annotate(label, point, fontsize=7, xytext=(6, 6), textcoords="offset points")
    ax.margins(0.18)  # room for the labels beside the markers
    ax.set_xlabel("p95 latency at batch 1 (ms)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy against latency (marker area: size on disk)")
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)
