"""The size / speed / accuracy trade-off of a model and its compressed variants.

Each variant is a run directory (PyTorch weights) or an ``.onnx`` file (e.g. the int8
model). For each one this measures, in one process: test top-1 on real data, parameters and
MACs, size on disk, p95 latency at batch 1 and throughput at batch 32, and draws them as a
scatter (latency against accuracy, marker area proportional to the size on disk).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.config import atomic_write
from resnetkit.data import ImageDataset, PreprocessingSpec, normalize
from resnetkit.errors import ConfigError
from resnetkit.export.onnx import read_onnx_metadata
from resnetkit.export.runtime import InferenceBackend, OnnxBackend, TorchBackend, measure_latency
from resnetkit.models import create_model, load_model, profile
from resnetkit.models.artifact import MODEL_WEIGHTS

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


@dataclass(frozen=True)
class _Variant:
    backend: InferenceBackend
    preprocessing: dict[str, Any]
    size_bytes: int
    module: nn.Module  # for params and MACs; built on the meta device for ONNX files


def _load(path: Path) -> _Variant:
    if path.suffix == ".onnx":
        meta = read_onnx_metadata(path)
        if "arch" not in meta or "preprocessing" not in meta:
            raise ConfigError(f"{path} has no resnetkit metadata; export it with resnetkit")
        module = create_model(meta["arch"], device="meta", **meta.get("kwargs", {}))
        onnx = OnnxBackend(path, name="onnxruntime")
        return _Variant(onnx, meta["preprocessing"], path.stat().st_size, module)
    model, card = load_model(path)
    backend = TorchBackend(model, name="torch-eager")
    return _Variant(backend, card.preprocessing, (path / MODEL_WEIGHTS).stat().st_size, model)


def _top1(backend: InferenceBackend, test: ImageDataset, spec: PreprocessingSpec) -> float:
    correct = 0
    for start in range(0, len(test), 500):
        x = normalize(test.images[start : start + 500], spec).numpy()
        logits = backend.predict(x)
        correct += int(
            (np.argmax(logits, axis=1) == test.labels[start : start + 500].numpy()).sum()
        )
    return correct / len(test)


def measure_variant(
    name: str, path: str | os.PathLike[str], test: ImageDataset, *, min_time_s: float = 1.0
) -> TradeoffRow:
    """Measure one variant (a run directory or an ``.onnx`` file) on ``test``."""
    variant = _load(Path(path))
    backend = variant.backend
    spec = PreprocessingSpec.from_dict(variant.preprocessing)
    input_size = (spec.channels, *spec.size)
    prof = profile(variant.module, input_size)
    gen = torch.Generator().manual_seed(0)
    one, many = (
        measure_latency(
            backend, torch.randn((b, *input_size), generator=gen).numpy(), min_time_s=min_time_s
        )
        for b in (1, 32)
    )
    return TradeoffRow(
        name=name,
        backend=backend.name,
        top1=_top1(backend, test, spec),
        params=prof.params,
        macs=prof.macs,
        size_bytes=variant.size_bytes,
        p95_ms_batch1=one.p95_ms,
        images_per_s_batch32=many.throughput,
    )


def plot_tradeoff(rows: list[TradeoffRow], out_png: str | os.PathLike[str]) -> Path:
    """Scatter of p95 latency (batch 1) against top-1; marker area ∝ size on disk."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
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
    fig.tight_layout()
    out = Path(out_png)
    atomic_write(out, lambda p: fig.savefig(p, format="png"))
    return out
