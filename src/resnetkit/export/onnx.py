"""ONNX export with a dynamic batch axis, metadata that travels, and a parity check.

The exported graph has one input named :data:`INPUT_NAME` (``"input"``, float32
``(batch, C, H, W)``, already normalised with the model's preprocessing spec) and the outputs
:data:`OUTPUT_NAME` (``"logits"``, float32 ``(batch, num_classes)``) and, for zoo models,
:data:`EMBEDDING_NAME` (``"embedding"``, the pre-logits features the server watches for
drift). The batch axis is symbolic (``"batch"``); every other axis is fixed at export. Names
and metadata are the contract of :mod:`resnetkit.onnxio`.

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

from resnetkit.errors import ConfigError, ExportError
from resnetkit.fileio import atomic_write
from resnetkit.models import ClassifierModel
from resnetkit.onnxio import (
    DEFAULT_OPSET,
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    import_onnx,
    ort_session,
    write_metadata,
)

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "ParityReport",
    "check_opset",
    "check_parity",
    "export_onnx",
]

BATCH_AXIS = "batch"
MIN_OPSET = 18
MAX_OPSET = 23  # the newest opset this onnx/onnxruntime pair runs
_EXAMPLE_BATCH = 2  # not 1: torch.export specialises size-1 dimensions


class _WithEmbedding(nn.Module):
    """A zoo model that returns its logits and its pre-logits embedding."""

    def __init__(self, model: ClassifierModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        embedding = self.model.forward_head(features, pre_logits=True)
        return self.model.forward_head(features), embedding


def _torch_export(model: nn.Module, example: torch.Tensor, opset: int, outputs: list[str]) -> Any:
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
                output_names=outputs,
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
        ConfigError: an opset outside :data:`MIN_OPSET` .. :data:`MAX_OPSET`.
        ExportError: the exporter fails or the result has no dynamic batch axis.
    """
    check_opset(opset)
    onnx = import_onnx()
    graph: nn.Module = model
    outputs = [OUTPUT_NAME]
    if isinstance(model, ClassifierModel):
        graph, outputs = _WithEmbedding(model), [OUTPUT_NAME, EMBEDDING_NAME]
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros((_EXAMPLE_BATCH, *input_size), dtype=torch.float32)
        program = _torch_export(graph, example, opset, outputs)
    finally:
        model.train(was_training)
    proto = program.model_proto
    _check_dynamic_batch(proto)
    _check_opset_written(proto, opset)
    write_metadata(proto, {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME})
    write_metadata(proto, dict(metadata or {}))
    target = Path(path)
    atomic_write(target, lambda tmp: onnx.save_model(proto, str(tmp)))
    return target


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write, before any work starts.

    Raises:
        ConfigError: an opset outside :data:`MIN_OPSET` .. :data:`MAX_OPSET`.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} (torch's exporter "
            f"emits opset {MIN_OPSET} and cannot convert below it; ONNX Runtime here runs up "
            f"to {MAX_OPSET})"
        )


def _check_opset_written(proto: Any, opset: int) -> None:
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"asked for opset {opset} but the exporter wrote opset {written}")


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
    session = ort_session(onnx_path)
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
