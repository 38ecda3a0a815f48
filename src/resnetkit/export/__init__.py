"""ONNX export with parity checks, and one inference interface over torch and ONNX Runtime.

* :func:`export_onnx` writes ``input`` -> ``logits`` with a dynamic batch axis and the
  preprocessing spec and labels in the metadata; :func:`check_parity` compares ONNX Runtime
  with PyTorch on real images and raises :class:`~resnetkit.errors.ExportError` above
  tolerance.
* :class:`TorchBackend` and :class:`OnnxBackend` implement :class:`InferenceBackend`;
  :func:`measure_latency` and :func:`peak_rss_delta` time and size them.

Names are imported from their submodules on first use: loading a model reference and
running it with ONNX Runtime imports no torch (the serving runtime), exporting does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnetkit.lazy import lazy_attributes

if TYPE_CHECKING:
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
        benchmark_backend,
        default_threads,
        measure_latency,
        peak_rss_delta,
        timed_load,
    )
    from resnetkit.export.torch_backend import TorchBackend

_LAZY: dict[str, str] = {
    "BACKEND_KINDS": "resnetkit.export.loading",
    "BackendBenchmark": "resnetkit.export.runtime",
    "DEFAULT_OPSET": "resnetkit.export.onnx",
    "InferenceBackend": "resnetkit.export.runtime",
    "LatencyStats": "resnetkit.export.runtime",
    "LoadedModel": "resnetkit.export.loading",
    "MAX_OPSET": "resnetkit.export.onnx",
    "MIN_OPSET": "resnetkit.export.onnx",
    "ModelIdentity": "resnetkit.export.loading",
    "OnnxBackend": "resnetkit.export.runtime",
    "ParityReport": "resnetkit.export.onnx",
    "TorchBackend": "resnetkit.export.torch_backend",
    "benchmark_backend": "resnetkit.export.runtime",
    "cache_root": "resnetkit.export.loading",
    "check_loadable": "resnetkit.export.loading",
    "check_opset": "resnetkit.export.onnx",
    "check_parity": "resnetkit.export.onnx",
    "default_threads": "resnetkit.export.runtime",
    "export_onnx": "resnetkit.export.onnx",
    "load_model_ref": "resnetkit.export.loading",
    "measure_latency": "resnetkit.export.runtime",
    "peak_rss_delta": "resnetkit.export.runtime",
    "timed_load": "resnetkit.export.runtime",
}

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


__getattr__ = lazy_attributes(__name__, _LAZY)
