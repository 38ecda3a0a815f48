"""One inference interface over PyTorch and ONNX Runtime, and how to time it.

Every backend takes a normalised float32 batch ``(B, C, H, W)`` (NumPy or torch) and returns
float32 NumPy arrays, so evaluation, benchmarks and the server do not care which engine runs
underneath::

    backend = OnnxBackend("model-int8.onnx", name="onnx-int8", threads=2)
    logits = backend.predict(batch)            # (B, num_classes)
    outputs = backend.run(batch)               # {"logits": ..., "embedding": ...}
    stats = measure_latency(backend, batch)    # p50/p95/p99, images/s

Threads are explicit and never changed behind the caller's back. Each ONNX Runtime session
owns an intra-op pool of ``threads``; PyTorch has one intra-op pool per process, which a
:class:`TorchBackend` uses as it finds it (set it once, ``torch.set_num_threads``, where the
process starts) and reports as ``threads``. Two backends in one process (a stable and a
canary model) must not run at the same time on the same cores: the server serialises their
forward passes (see ``serve.batcher``) instead of letting two pools fight over the cores.

The five backends of the benchmark are :class:`TorchBackend` (eager fp32; BN-folded with
``channels_last``; bf16 autocast; in :mod:`resnetkit.export.torch_backend`) and
:class:`OnnxBackend` (an fp32 or an int8 file); the loader (:mod:`resnetkit.export.loading`)
builds them by kind. This module imports no torch: the serving runtime runs ONNX without it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from resnetkit.onnxio import INPUT_NAME, OUTPUT_NAME, default_threads, ort_session

if TYPE_CHECKING:
    import torch


__all__ = [
    "BackendBenchmark",
    "InferenceBackend",
    "LatencyStats",
    "OnnxBackend",
    "benchmark_backend",
    "default_threads",
    "measure_latency",
    "peak_rss_delta",
    "timed_load",
]

Batch = Any  # np.ndarray or torch.Tensor; torch is not imported here (the serving runtime)
B = TypeVar("B", bound="InferenceBackend")


@runtime_checkable
class InferenceBackend(Protocol):
    """What every backend offers."""

    name: str
    device: str
    threads: int
    load_time_s: float
    size_bytes: int
    outputs: tuple[str, ...]

    def predict(self, batch: Batch) -> np.ndarray:
        """Logits ``(B, num_classes)`` float32 for a normalised batch ``(B, C, H, W)``."""
        ...

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Every output by name: ``logits`` and, where the model has one, ``embedding``."""
        ...


class OnnxBackend:
    """An ONNX file under ONNX Runtime, with explicit threads and full graph optimisation.

    Args:
        path: an ``.onnx`` file from :func:`~resnetkit.export.export_onnx` (or its int8
            version from :func:`~resnetkit.compress.quantize_onnx`).
        name: e.g. ``onnx-fp32``, ``onnx-int8``.
        device: ``cpu`` or ``cuda`` (the CUDA execution provider when ONNX Runtime has it;
            otherwise a warning and the CPU).
        threads: intra-op threads (default: the CPUs this process may use).
        spinning: let idle threads spin between calls (see :func:`resnetkit.onnxio.ort_session`).

    Raises:
        CheckpointError: ONNX Runtime cannot load the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "onnx-fp32",
        device: str | torch.device = "cpu",  # a torch.device works; torch is not needed
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        start = time.perf_counter()
        self.name = name
        self.path = Path(path)
        self.threads = threads or default_threads()
        self.session = ort_session(
            self.path, threads=self.threads, device=str(device), spinning=spinning
        )
        providers = self.session.get_providers()
        self.device = "cuda" if providers and providers[0].startswith("CUDA") else "cpu"
        self.outputs: tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())
        self.size_bytes = self.path.stat().st_size
        self.load_time_s = time.perf_counter() - start

    @staticmethod
    def _input(batch: Batch) -> np.ndarray:
        if hasattr(batch, "detach"):  # a torch tensor; checked without importing torch
            batch = batch.detach().cpu().numpy()
        return np.ascontiguousarray(batch, dtype=np.float32)

    def predict(self, batch: Batch) -> np.ndarray:
        """Logits ``(B, num_classes)`` float32."""
        out: np.ndarray = self.session.run([OUTPUT_NAME], {INPUT_NAME: self._input(batch)})[0]
        return out

    def run(self, batch: Batch) -> dict[str, np.ndarray]:
        """Every output of the graph by name."""
        values = self.session.run(list(self.outputs), {INPUT_NAME: self._input(batch)})
        return dict(zip(self.outputs, values, strict=True))


def timed_load(factory: Callable[[], B]) -> B:
    """Call ``factory`` and record its whole wall time (reading, folding, session) as
    the backend's ``load_time_s``."""
    start = time.perf_counter()
    backend = factory()
    backend.load_time_s = time.perf_counter() - start
    return backend


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one backend at one batch size, after warm-up."""

    batch_size: int
    iterations: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch_size / (self.p50_ms / 1e3) if self.p50_ms > 0 else 0.0


def _percentile(sorted_ms: list[float], q: float) -> float:
    # Nearest-rank percentile: a p99 over 50 runs is the slowest run, not an interpolation.
    rank = max(1, min(len(sorted_ms), round(q / 100 * len(sorted_ms) + 0.5)))
    return sorted_ms[rank - 1]


def measure_latency(
    backend: InferenceBackend,
    batch: Batch,
    *,
    warmup: int = 3,
    min_iterations: int = 10,
    max_iterations: int = 200,
    min_time_s: float = 1.0,
) -> LatencyStats:
    """Time ``backend.predict(batch)``: ``warmup`` untimed calls, then at least
    ``min_iterations`` and ``min_time_s`` of timed ones (at most ``max_iterations``)."""
    for _ in range(warmup):
        backend.predict(batch)
    times_ms: list[float] = []
    started = time.perf_counter()
    while len(times_ms) < max_iterations and (
        len(times_ms) < min_iterations or time.perf_counter() - started < min_time_s
    ):
        t0 = time.perf_counter()
        backend.predict(batch)
        times_ms.append((time.perf_counter() - t0) * 1e3)
    times_ms.sort()
    return LatencyStats(
        batch_size=int(batch.shape[0]),
        iterations=len(times_ms),
        p50_ms=statistics.median(times_ms),
        p95_ms=_percentile(times_ms, 95),
        p99_ms=_percentile(times_ms, 99),
    )


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_rss_delta() -> Iterator[dict[str, int | None]]:
    """Measure the peak resident memory added inside the ``with`` block (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so each block is
    measured on its own; yields a dict whose ``"bytes"`` is set on exit (``None`` where the
    kernel offers no way to measure).
    """
    result: dict[str, int | None] = {"bytes": None}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _rss_kib("VmRSS")
    except OSError:
        base = None
    try:
        yield result
    finally:
        peak = _rss_kib("VmHWM")
        if base is not None and peak is not None:
            result["bytes"] = max(0, peak - base) * 1024


@dataclass(frozen=True)
class BackendBenchmark:
    """Everything measured for one backend: load, size, memory and latency per batch size."""

    name: str
    device: str
    load_time_s: float
    size_bytes: int
    peak_rss_bytes: int | None
    latencies: tuple[LatencyStats, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "name": self.name,
            "device": self.device,
            "load_time_s": self.load_time_s,
            "size_bytes": self.size_bytes,
            "peak_rss_bytes": self.peak_rss_bytes,
            "latencies": [
                {
                    "batch_size": s.batch_size,
                    "iterations": s.iterations,
                    "p50_ms": s.p50_ms,
                    "p95_ms": s.p95_ms,
                    "p99_ms": s.p99_ms,
                    "throughput": s.throughput,
                }
                for s in self.latencies
            ],
        }


def benchmark_backend(
    factory: Callable[[], InferenceBackend],
    input_size: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    *,
    warmup: int = 3,
    min_time_s: float = 1.0,
    seed: int = 0,
) -> BackendBenchmark:
    """Load a backend (timed) and measure it at each batch size, with peak memory added.

    Inputs are seeded standard-normal batches: latency does not depend on pixel values.
    """
    rng = np.random.default_rng(seed)
    with peak_rss_delta() as rss:
        backend = timed_load(factory)
        stats = tuple(
            measure_latency(
                backend,
                rng.standard_normal((b, *input_size), dtype=np.float32),
                warmup=warmup,
                min_time_s=min_time_s,
            )
            for b in batch_sizes
        )
    return BackendBenchmark(
        name=backend.name,
        device=backend.device,
        load_time_s=backend.load_time_s,
        size_bytes=backend.size_bytes,
        peak_rss_bytes=rss["bytes"],
        latencies=stats,
    )


def __getattr__(name: str) -> Any:
    if name == "TorchBackend":  # kept importable from here; it lives beside torch
        from resnetkit.export.torch_backend import TorchBackend

        return TorchBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
