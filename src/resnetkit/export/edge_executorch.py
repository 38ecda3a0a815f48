"""ExecuTorch ``.pte`` programs: lowering, PT2E int8, metadata, and running them here.

* **Lowering**: the captured program goes through ``to_edge_transform_and_lower`` with the
  XNNPACK partitioner, which delegates every subgraph XNNPACK supports (convolutions,
  linear, pooling, the adds of the residuals) to its CPU kernels; whatever it declines runs
  on ExecuTorch's portable kernels (the fallback), so an op XNNPACK lacks costs speed, not
  the export. ``delegate=False`` writes a portable-only program (every target that runs
  ExecuTorch runs it).
* **int8**: PT2E static quantization with the ``XNNPACKQuantizer`` (symmetric int8
  weights per output channel, int8 activations), calibrated on the same real training
  images the ONNX int8 uses, then lowered the same way.
* **Metadata**: a constant method :data:`METADATA_METHOD` that returns the JSON string of
  the model card (arch, labels, preprocessing) and the export's facts; any ExecuTorch
  runtime reads it with ``program.load_method("resnetkit_metadata").execute([])``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.errors import CheckpointError
from resnetkit.export.edge_capture import (
    calibrated_pt2e,
    capture,
    converter_error,
    quiet_converters,
)

__all__ = ["METADATA_METHOD", "PteProgram", "PteRunner", "read_pte_metadata", "to_pte"]

METADATA_METHOD = "resnetkit_metadata"
_DELEGATE_CALL = "executorch_call_delegate"


@dataclass(frozen=True)
class PteProgram:
    """A serialised program and what the lowering did with its ops.

    Attributes:
        buffer: the ``.pte`` bytes.
        delegated_subgraphs: subgraphs handed to XNNPACK (0 for a portable-only program).
        portable_ops: ops left to the portable kernels, by name, with their counts.
    """

    buffer: bytes
    delegated_subgraphs: int
    portable_ops: dict[str, int]


def _quantizer() -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def to_pte(
    model: nn.Module,
    example: torch.Tensor,
    *,
    metadata: dict[str, Any],
    calibration: torch.Tensor | None = None,
    delegate: bool = True,
) -> PteProgram:
    """Lower ``model`` (at ``example``'s batch-1 shape) to an ExecuTorch program.

    Args:
        model: the float model, on the CPU.
        example: one normalised input ``(1, C, H, W)``.
        metadata: stored as JSON in the :data:`METADATA_METHOD` constant method.
        calibration: normalised training images; given, the program is PT2E int8.
        delegate: hand what XNNPACK supports to it (else portable kernels only).

    Raises:
        ExportError: the model cannot be captured or lowered (naming the op and layer).
    """
    from executorch.exir import to_edge_transform_and_lower

    source = (
        calibrated_pt2e(model, example, calibration, _quantizer(), fold_quantize=True)
        if calibration is not None
        else model
    )
    program = capture(source, example)
    partitioners = []
    if delegate:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    try:
        with quiet_converters():
            edge = to_edge_transform_and_lower(
                program,
                partitioner=partitioners,
                constant_methods={METADATA_METHOD: json.dumps(metadata, sort_keys=True)},
            )
            delegated, portable = _delegation(edge.exported_program())
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # exir raises assorted types; all mean "cannot lower"
        raise converter_error("executorch", exc, program) from exc
    return PteProgram(bytes(buffer), delegated, portable)


def _delegation(lowered: Any) -> tuple[int, dict[str, int]]:
    """Subgraphs delegated to XNNPACK, and the ops left to the portable kernels."""
    delegated, portable = 0, Counter[str]()
    for node in lowered.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == _DELEGATE_CALL:
            delegated += 1
        elif name != "getitem":
            found = re.search(r"aten\.([\w.]+)", str(node.target))  # "<EdgeOpOverload: ...>"
            portable[(found.group(1) if found else name).removesuffix(".default")] += 1
    return delegated, dict(portable)


def _runtime() -> Any:
    from executorch.runtime import Runtime

    return Runtime.get()


def read_pte_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object a ``.pte`` file carries in its :data:`METADATA_METHOD` method.

    Raises:
        CheckpointError: not an ExecuTorch program, or one without resnetkit metadata.
    """
    try:
        with quiet_converters():
            program = _runtime().load_program(Path(path))
            if METADATA_METHOD not in program.method_names:
                raise CheckpointError(f"{path} has no {METADATA_METHOD} method: not exported "
                                      "by resnetkit")  # fmt: skip
            method = program.load_method(METADATA_METHOD)
            assert method is not None
            (text,) = method.execute([])
    except CheckpointError:
        raise
    except Exception as exc:  # the runtime raises RuntimeError/ValueError for bad bytes
        raise CheckpointError(f"{path} is not a readable ExecuTorch program: {exc}") from exc
    data = json.loads(text)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {METADATA_METHOD} is not a JSON object")
    return data


class PteRunner:
    """Runs a ``.pte`` program's ``forward`` with ExecuTorch's runtime, one image at a time.

    Args:
        path: the program.
        threads: XNNPACK's thread pool size (one pool per process: the last runner wins).
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        if threads is not None:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        with quiet_converters():
            program = _runtime().load_program(Path(path))
            self._method = program.load_method("forward")

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(N, K)`` of normalised float32 images ``(N, C, H, W)``, one at a time."""
        outs = [
            self._method.execute([torch.from_numpy(np.ascontiguousarray(images[i : i + 1]))])[0]
            for i in range(images.shape[0])
        ]
        return np.concatenate([o.numpy() for o in outs])
