"""ONNX export with parity checks, and one inference interface over torch and ONNX Runtime.

* :func:`export_onnx` writes ``input`` -> ``logits`` with a dynamic batch axis and the
  preprocessing spec and labels in the metadata; :func:`check_parity` compares ONNX Runtime
  with PyTorch on real images and raises :class:`~resnetkit.errors.ExportError` above
  tolerance.
* :class:`TorchBackend` and :class:`OnnxBackend` implement :class:`InferenceBackend`;
  :func:`measure_latency` and :func:`peak_rss_delta` time and size them.
"""

from resnetkit.export.onnx import (
    DEFAULT_OPSET,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    ParityReport,
    check_parity,
    export_onnx,
    read_onnx_metadata,
    write_onnx_metadata,
)
from resnetkit.export.runtime import (
    BackendBenchmark,
    InferenceBackend,
    LatencyStats,
    OnnxBackend,
    TorchBackend,
    benchmark_backend,
    default_threads,
    measure_latency,
    peak_rss_delta,
    timed_load,
)

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "BackendBenchmark",
    "InferenceBackend",
    "LatencyStats",
    "OnnxBackend",
    "ParityReport",
    "TorchBackend",
    "benchmark_backend",
    "check_parity",
    "default_threads",
    "export_onnx",
    "measure_latency",
    "peak_rss_delta",
    "read_onnx_metadata",
    "timed_load",
    "write_onnx_metadata",
]
