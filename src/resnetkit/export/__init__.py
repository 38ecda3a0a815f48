"""ONNX export with parity checks, and one inference interface over torch and ONNX Runtime.

* :func:`export_onnx` writes ``input`` -> ``logits`` with a dynamic batch axis and the
  preprocessing spec and labels in the metadata; :func:`check_parity` compares ONNX Runtime
  with PyTorch on real images and raises :class:`~resnetkit.errors.ExportError` above
  tolerance.
* :class:`TorchBackend` and :class:`OnnxBackend` implement :class:`InferenceBackend`;
  :func:`measure_latency` and :func:`peak_rss_delta` time and size them.
"""

from resnetkit.export.loading import (
    BACKEND_KINDS,
    LoadedModel,
    ModelIdentity,
    cache_root,
    check_loadable,
    load_model_ref,
)
from resnetkit.export.onnx import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    ParityReport,
    check_opset,
    check_parity,
    export_onnx,
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
    "BACKEND_KINDS",
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "BackendBenchmark",
    "InferenceBackend",
    "LatencyStats",
    "LoadedModel",
    "ModelIdentity",
    "OnnxBackend",
    "ParityReport",
    "TorchBackend",
    "benchmark_backend",
    "cache_root",
    "check_loadable",
    "check_opset",
    "check_parity",
    "default_threads",
    "export_onnx",
    "load_model_ref",
    "measure_latency",
    "peak_rss_delta",
    "timed_load",
]
