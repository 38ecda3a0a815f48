"""Static post-training int8 quantization of an exported ONNX model with ONNX Runtime.

The format is fixed on purpose:

* **QDQ** (QuantizeLinear/DequantizeLinear pairs around each op): ONNX Runtime fuses the
  pairs into integer kernels on the CPU, and the graph stays readable by other runtimes.
* **Weights: signed 8-bit, per output channel** (symmetric). Per-channel scales keep the
  accuracy of convolutions whose filters differ in range after BN folding. The weights use
  7 of the 8 bits (``reduce_range``): on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX
  Runtime multiplies u8 by s8 with ``VPMADDUBSW``, which adds two products into a
  *saturating* int16; full-range weights overflow it and the model silently loses accuracy.
  Measured on an AVX2 machine with the quickstart's Fashion-MNIST model: full range gave
  91.31% top-1 (fp32 93.28%) and 96.2% top-1 agreement with fp32, 7-bit weights 93.21% and
  99.7% agreement, at the same speed. A model is often quantized on one machine and served
  on another, so the range is reduced everywhere; VNNI machines lose nothing measurable.
* **Activations: unsigned 8-bit** (asymmetric, zero point per tensor). The int8 kernels of
  x86 CPUs (AVX-512 VNNI ``VPDPBUSD``, AVX2 ``VPMADDUBSW``) multiply *unsigned* by
  *signed* bytes. With signed activations (s8s8, ONNX Runtime's default) the MLAS kernels
  must first shift the activations into u8 range and correct with extra terms, or fall back
  to a slower path; the issue measured 3-4x slower on this machine. After a ReLU the
  activations are non-negative anyway, so u8 also spends no bit on a sign that is never
  used. Verified on this machine (2 threads, AVX-512 VNNI, loaded by other jobs) with
  ``bench/inference_bench.py --quick --s8``: ONNX Runtime MatMulInteger u8 x s8 179 GOP/s
  against s8 x s8 22 GOP/s; ResNet-18 at 224x224, batch 32: 72 img/s with u8 activations
  against 26 img/s with s8 (2.8x), batch 1: 47 against 18 img/s.

Calibration runs N real training images through the model and picks each activation's
range by ``minmax`` (the observed extremes: one outlier can waste most of the 256 levels, and
it destroys accuracy on deeper ResNets), ``percentile`` (the 99.999th percentile of |x|; the
default) or ``entropy`` (the range minimising KL divergence of the histogram). Before that,
ONNX Runtime's quantization pre-processing (symbolic shape inference and graph optimisation,
which folds any remaining BatchNorm into its convolution) prepares the fp32 model.

:func:`quantize_with_budget` then measures top-1 on the real test set before and after and
marks the result ``accepted=False`` when it drops by more than the budget, so it is flagged
and not silently registered.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resnetkit.data import PreprocessingSpec
from resnetkit.errors import ConfigError, ExportError
from resnetkit.evaluate import predict_log_probs
from resnetkit.fileio import atomic_write
from resnetkit.onnxio import (
    INPUT_NAME,
    OUTPUT_NAME,
    import_onnx,
    load_proto,
    ort_session,
    read_metadata,
    write_metadata,
)

__all__ = [
    "CALIBRATION_METHODS",
    "QuantizationReport",
    "check_quantizable",
    "evaluate_onnx_top1",
    "quantize_onnx",
    "quantize_with_budget",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("u8", "s8")
_CALIB_BATCH = 32


def _ort_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError("int8 quantization needs onnxruntime: pip install onnxruntime") from exc
    return quantization


class _CalibrationReader:
    """Feeds normalised calibration images to ONNX Runtime in batches."""

    def __init__(self, images: torch.Tensor) -> None:
        self._images = images.float().numpy()
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        # ONNX Runtime's histogram calibrators stack the batches, so all must be one size:
        # the last batch is completed with images from the start (every image is used).
        n = self._images.shape[0]
        size = min(_CALIB_BATCH, n)
        for start in range(0, n, size):
            index = np.arange(start, start + size) % n
            yield {INPUT_NAME: np.ascontiguousarray(self._images[index])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


def _preprocess(quantization: Any, src: Path, dst: Path) -> Path:
    """ONNX Runtime's quantization pre-processing; the source model if it fails."""
    try:
        with _quiet_ort():
            quantization.shape_inference.quant_pre_process(str(src), str(dst))
    except Exception:  # pre-processing is an optimisation; quantizing still works without
        return src
    return dst


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Keep ONNX Runtime's quantization tools from printing ``WARNING:root`` lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
            yield
    finally:
        root.setLevel(level)


def check_quantizable(fp32_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check, before any work, that ``fp32_path`` is a float model resnetkit can quantize.

    Returns:
        The file's ``resnetkit.*`` metadata.

    Raises:
        CheckpointError: the file is not a readable ONNX model.
        ConfigError: it is already quantized.
    """
    proto = load_proto(fp32_path)
    metadata = read_metadata(proto)
    quantized = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"}
    if "quantization" in metadata or any(n.op_type in quantized for n in proto.graph.node):
        raise ConfigError(
            f"{fp32_path} is already quantized; quantize the float model it came from "
            "(its run directory or the fp32 .onnx file)"
        )
    return metadata


def quantize_onnx(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: torch.Tensor,
    *,
    method: str = "percentile",
    activation_type: str = "u8",
    preprocess: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a static int8 QDQ version of an fp32 ONNX model, atomically.

    Args:
        fp32_path: from :func:`resnetkit.export.export_onnx` (input ``input``).
        out_path: the int8 ``.onnx`` file.
        calibration_images: normalised float32 ``(N, C, H, W)``, real training images.
        method: ``minmax``, ``entropy`` or ``percentile``.
        activation_type: ``u8`` (fast on x86, see the module docstring) or ``s8`` (only to
            measure the difference).
        preprocess: run ONNX Runtime's quantization pre-processing first.
        metadata: extra ``resnetkit.*`` metadata; the fp32 model's is kept.

    Raises:
        ConfigError: an unknown method or activation type, or no calibration images.
        ExportError: ONNX Runtime fails to quantize.
        StorageFull: no room for the int8 file (a file already at ``out_path`` is kept).
    """
    target = Path(out_path)
    with _quantized(
        fp32_path, calibration_images, method, activation_type, preprocess, metadata
    ) as (quantized, info):
        _save(_with_metadata(quantized, info), target)
    return target


@contextlib.contextmanager
def _quantized(
    fp32_path: str | os.PathLike[str],
    calibration_images: torch.Tensor,
    method: str,
    activation_type: str,
    preprocess: bool,
    metadata: dict[str, Any] | None,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The int8 model in a scratch folder (gone after the block) and its metadata."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"method {method!r} is not known; use {', '.join(CALIBRATION_METHODS)}")
    if activation_type not in ACTIVATION_TYPES:
        raise ConfigError(f"activation_type must be u8 or s8, got {activation_type!r}")
    if calibration_images.dim() != 4 or calibration_images.shape[0] == 0:
        raise ConfigError("calibration needs at least one image, shape (N, C, H, W)")
    source_metadata = check_quantizable(fp32_path)
    q = _ort_quantization()
    # Scratch files go to the system's temp folder, never the working directory.
    with tempfile.TemporaryDirectory(prefix="resnetkit-quantize-") as tmp:
        src = Path(fp32_path)
        if preprocess:
            src = _preprocess(q, src, Path(tmp) / "pre.onnx")
        quantized = Path(tmp) / "int8.onnx"
        try:
            with _quiet_ort():
                _quantize_static(q, src, quantized, calibration_images, method, activation_type)
        except Exception as exc:  # onnxruntime raises assorted types
            raise ExportError(f"int8 quantization of {fp32_path} failed: {exc}") from exc
        info = {
            **source_metadata,
            **(metadata or {}),
            "quantization": {
                "format": "QDQ",
                "weights": "s8 per-channel, 7-bit range",
                "activations": activation_type,
                "calibration_method": method,
                "calibration_images": int(calibration_images.shape[0]),
            },
        }
        yield quantized, info


def _quantize_static(
    q: Any, src: Path, dst: Path, images: torch.Tensor, method: str, activation_type: str
) -> None:
    methods = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }
    q.quantize_static(
        str(src),
        str(dst),
        _CalibrationReader(images),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QUInt8 if activation_type == "u8" else q.QuantType.QInt8,
        weight_type=q.QuantType.QInt8,
        reduce_range=True,  # 7-bit weights: no int16 saturation without VNNI (see above)
        calibrate_method=methods[method],
    )


def _with_metadata(src: Path, metadata: dict[str, Any]) -> Any:
    """The ``onnx.ModelProto`` at ``src`` with ``metadata`` set."""
    proto = import_onnx().load(str(src))
    write_metadata(proto, metadata)
    return proto


def _save(proto: Any, target: Path) -> None:
    """Write ``proto`` to ``target`` atomically (a full disk keeps the file already there)."""
    atomic_write(target, lambda tmp: import_onnx().save_model(proto, str(tmp)))


def evaluate_onnx_top1(
    path: str | os.PathLike[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: PreprocessingSpec,
    *,
    batch_size: int = 256,
    threads: int | None = None,
) -> float:
    """Top-1 accuracy (fraction) of an ONNX model on ``uint8`` images ``(N, C, H, W)``.

    Runs through the one evaluation loop (:func:`resnetkit.evaluate.predict_log_probs`).
    """
    session = ort_session(path, threads=threads)

    def logits(x: torch.Tensor) -> np.ndarray:
        out: np.ndarray = session.run([OUTPUT_NAME], {INPUT_NAME: x.float().numpy()})[0]
        return out

    log_probs = predict_log_probs(logits, images, spec, batch_size=batch_size)
    return float((log_probs.argmax(dim=1) == labels).float().mean()) if len(labels) else 0.0


@dataclass(frozen=True)
class QuantizationReport:
    """Accuracy of an int8 model against its fp32 source, on the same real test images."""

    path: str
    method: str
    activation_type: str
    calibration_images: int
    test_images: int
    fp32_top1: float
    int8_top1: float
    budget_points: float
    fp32_size_bytes: int
    int8_size_bytes: int

    @property
    def drop_points(self) -> float:
        """Accuracy lost, in percentage points (negative: int8 did better)."""
        return (self.fp32_top1 - self.int8_top1) * 100

    @property
    def accepted(self) -> bool:
        """Whether the drop is within the budget."""
        return self.drop_points <= self.budget_points

    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the derived fields."""
        return {**asdict(self), "drop_points": self.drop_points, "accepted": self.accepted}


def quantize_with_budget(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    spec: PreprocessingSpec,
    *,
    method: str = "percentile",
    budget_points: float = 1.0,
    activation_type: str = "u8",
) -> QuantizationReport:
    """Quantize, then measure top-1 before and after on real test images.

    The int8 file is written either way (to inspect it) and carries
    ``resnetkit.quantization_accepted`` in its metadata; the report's ``accepted`` is
    ``False`` when top-1 drops by more than ``budget_points``.

    Args:
        calibration_images: normalised float32 training images ``(N, C, H, W)``.
        test_images, test_labels: ``uint8`` test images and their labels.
        spec: the model's preprocessing, to normalise the test images.

    Raises:
        StorageFull: no room for the int8 file; a file already at ``out_path`` is kept.
    """
    out = Path(out_path)
    # One write, at the end, with the verdict: a full disk or a failed evaluation leaves a
    # file already at ``out_path`` as it was, never an int8 model without its report.
    with _quantized(fp32_path, calibration_images, method, activation_type, True, None) as (
        quantized,
        info,
    ):
        fp32 = evaluate_onnx_top1(fp32_path, test_images, test_labels, spec)
        int8 = evaluate_onnx_top1(quantized, test_images, test_labels, spec)
        proto = _with_metadata(quantized, info)
        report = QuantizationReport(
            path=str(out),
            method=method,
            activation_type=activation_type,
            calibration_images=int(calibration_images.shape[0]),
            test_images=int(test_images.shape[0]),
            fp32_top1=fp32,
            int8_top1=int8,
            budget_points=budget_points,
            fp32_size_bytes=Path(fp32_path).stat().st_size,
            int8_size_bytes=int(proto.ByteSize()),  # the file without the report
        )
        accepted = report.accepted
        write_metadata(
            proto, {"quantization_report": report.to_dict(), "quantization_accepted": accepted}
        )
        _save(proto, out)
    return report
