"""ONNX export with a dynamic batch axis, metadata that travels, and a parity check.

The exported graph has one input named :data:`INPUT_NAME` (``"input"``, float32
``(batch, C, H, W)``, already normalised with the model's preprocessing spec) and one output
named :data:`OUTPUT_NAME` (``"logits"``, float32 ``(batch, num_classes)``). The batch axis is
symbolic (``"batch"``); every other axis is fixed at export.

Exporter choice: torch's ``torch.export``-based ("dynamo") exporter. It captures the graph
with a *symbolic* batch dimension, so a model whose code would silently bake in the example
batch size fails at export instead of producing a graph that is wrong at other batch sizes
(the classic pitfall of the TorchScript tracer, which is deprecated in torch 2.9+ and records
Python branches as constants). It needs ``onnxscript``. It emits opset 18 natively; asking it
for 17 runs ONNX's version converter, which has no ``Pad`` adapter for 17 and silently keeps
18 — so :data:`MIN_OPSET` is 18. Adaptive pooling is no pitfall here: the zoo pools with
``mean`` over the spatial axes, which exports as ``ReduceMean`` at any input size.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.config import atomic_write
from resnetkit.errors import ConfigError, ExportError

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "METADATA_PREFIX",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "ParityReport",
    "check_parity",
    "export_onnx",
    "read_onnx_metadata",
    "write_onnx_metadata",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
MIN_OPSET = 18
DEFAULT_OPSET = 18
METADATA_PREFIX = "resnetkit."
_EXAMPLE_BATCH = 2  # not 1: torch.export specialises size-1 dimensions


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError("ONNX export needs the onnx package: pip install onnx") from exc
    return onnx


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def write_onnx_metadata(model_proto: Any, metadata: Mapping[str, Any]) -> None:
    """Set ``metadata_props`` on an ``onnx.ModelProto`` in place.

    Keys are prefixed with :data:`METADATA_PREFIX` (``resnetkit.labels``, ...); values that
    are not strings are stored as JSON. Existing keys are replaced.
    """
    wanted = {_key(k): _encode(v) for k, v in metadata.items()}
    keep = [p for p in model_proto.metadata_props if p.key not in wanted]
    del model_proto.metadata_props[:]
    for prop in keep:
        model_proto.metadata_props.append(prop)
    for key, value in wanted.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def _key(name: str) -> str:
    return name if name.startswith(METADATA_PREFIX) else METADATA_PREFIX + name


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``resnetkit.*`` metadata of an ONNX file, prefix removed, JSON values decoded.

    Raises:
        ExportError: the file cannot be read as ONNX.
    """
    onnx = _import_onnx()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ExportError(f"cannot read ONNX model {path}: {exc}") from exc
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            try:
                out[prop.key[len(METADATA_PREFIX) :]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key[len(METADATA_PREFIX) :]] = prop.value
    return out


def _torch_export(model: nn.Module, example: torch.Tensor, opset: int) -> Any:
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=1 << 16)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" warnings, once per export
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
    except Exception as exc:  # torch.export raises many types; all mean "cannot export"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {first}") from exc
    finally:
        quiet.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: Sequence[int],
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis, atomically.

    Args:
        model: an ``nn.Module`` on the CPU; it is exported in eval mode (and left as it was).
        path: the ``.onnx`` file to write; a reader sees the old file or the new one.
        input_size: one sample's shape without the batch axis, e.g. ``(1, 28, 28)``.
        opset: ONNX opset, at least :data:`MIN_OPSET`.
        metadata: stored in ``metadata_props`` as ``resnetkit.<key>`` (JSON for non-strings);
            pass ``preprocessing`` (the spec's dict) and ``labels`` so serving needs nothing
            else.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ConfigError: an opset below :data:`MIN_OPSET`.
        ExportError: the exporter fails or the result has no dynamic batch axis.
    """
    if opset < MIN_OPSET:
        raise ConfigError(
            f"opset {opset} is not supported: torch's exporter emits opset {MIN_OPSET} and "
            f"cannot convert down (no Pad adapter); use --opset {MIN_OPSET} or higher"
        )
    onnx = _import_onnx()
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros((_EXAMPLE_BATCH, *input_size), dtype=torch.float32)
        program = _torch_export(model, example, opset)
    finally:
        model.train(was_training)
    proto = program.model_proto
    _check_dynamic_batch(proto)
    write_onnx_metadata(proto, {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME})
    write_onnx_metadata(proto, dict(metadata or {}))
    target = Path(path)
    atomic_write(target, lambda tmp: onnx.save_model(proto, str(tmp)))
    return target


def _check_dynamic_batch(proto: Any) -> None:
    for value in (*proto.graph.input, *proto.graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            raise ExportError(
                f"exported {value.name!r} has a fixed batch size {dim0.dim_value}; the model "
                "code specialises on the batch size"
            )


@dataclass(frozen=True)
class ParityReport:
    """ONNX Runtime against PyTorch on the same images.

    ``max_rel_diff`` is the largest absolute difference divided by the largest absolute
    PyTorch logit (element-wise ratios blow up on logits near zero and mean nothing).
    """

    images: int
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    passed: bool

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"parity on {self.images} images (batches {list(self.batch_sizes)}): max abs "
            f"{self.max_abs_diff:.2e}, max rel {self.max_rel_diff:.2e}, top-1 agreement "
            f"{self.top1_agreement:.2%}"
        )


def _batches(n: int, sizes: Sequence[int]) -> list[slice]:
    # Cycle through the sizes so each runs at least once (sizes other than the export batch).
    out, start, i = [], 0, 0
    while start < n:
        size = sizes[i % len(sizes)]
        out.append(slice(start, min(n, start + size)))
        start, i = start + size, i + 1
    return out


def _ort_session(path: str | os.PathLike[str]) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError("the parity check needs onnxruntime: pip install onnxruntime") from exc
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 3, 16),
    atol: float = 1e-4,
    rtol: float = 1e-4,
    min_top1_agreement: float = 0.99,
) -> ParityReport:
    """Run ONNX Runtime and PyTorch on the same real images and compare the logits.

    Args:
        model: the PyTorch model that was exported (evaluated in eval mode on the CPU).
        onnx_path: the exported file.
        images: normalised float32 ``(N, C, H, W)`` — real test images, not noise: noise
            exercises none of the ranges that trained weights see.
        batch_sizes: the batch sizes ONNX Runtime runs, cycled over the images; keep some
            other than the export batch (2) to catch a batch axis frozen at export.
        atol, rtol: fail when ``max_abs_diff > atol + rtol * max|torch logit|``.
        min_top1_agreement: fail when fewer predictions agree.

    Raises:
        ExportError: above tolerance, with every figure in the message.
    """
    session = _ort_session(onnx_path)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = model(images.float()).float().numpy()
    finally:
        model.train(was_training)
    got = np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: images[s].float().numpy()})[0]
            for s in _batches(images.shape[0], batch_sizes)
        ]
    )
    abs_diff = float(np.abs(got - expected).max())
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    scale = float(np.abs(expected).max())
    report = ParityReport(
        images=int(images.shape[0]),
        batch_sizes=tuple(batch_sizes),
        max_abs_diff=abs_diff,
        max_rel_diff=abs_diff / scale if scale > 0 else (math.inf if abs_diff else 0.0),
        top1_agreement=agreement,
        passed=abs_diff <= atol + rtol * scale and agreement >= min_top1_agreement,
    )
    if not report.passed:
        raise ExportError(
            f"ONNX parity check failed: {report.summary()}; tolerance atol {atol:g} + rtol "
            f"{rtol:g} x {scale:.3g}, top-1 agreement at least {min_top1_agreement:.0%}"
        )
    return report
