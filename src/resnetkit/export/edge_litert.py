"""LiteRT (TensorFlow Lite) ``.tflite`` models: conversion, int8, metadata, and running them.

* **Conversion**: ``litert_torch.convert`` (the PyTorch-to-LiteRT converter, formerly
  ``ai-edge-torch``) lowers the captured program to TFLite ops, batch 1, float32 input
  ``(1, C, H, W)`` as the model takes it (no layout change: the preprocessing spec applies
  unchanged).
* **int8**: PT2E static quantization with litert-torch's ``PT2EQuantizer`` (symmetric int8,
  per-channel weights), calibrated on the same real training images the ONNX int8 uses.
  The converted model is fully integer: its input and output tensors are int8 with a scale
  and zero point, which :class:`TfliteRunner` applies (``q = round(x / scale) + zero``).
* **Metadata**: a TFLite metadata entry :data:`METADATA_NAME` whose buffer is the JSON of
  the model card and the export's facts, added to the flatbuffer with the schema that ships
  with ``ai-edge-litert``; ``Interpreter`` ignores it, any flatbuffer reader finds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnetkit.errors import CheckpointError, ExportError
from resnetkit.export.edge_capture import (
    calibrated_pt2e,
    capture,
    converter_error,
    quiet_converters,
)

__all__ = ["METADATA_NAME", "TfliteRunner", "add_tflite_metadata", "read_tflite_metadata",
           "to_tflite"]  # fmt: skip

METADATA_NAME = "resnetkit"
_FILE_IDENTIFIER = b"TFL3"


def _quant_config() -> Any:
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    return QuantConfig(pt2e_quantizer=pt2e_quantizer.PT2EQuantizer().set_global(config))


def to_tflite(
    model: nn.Module,
    example: torch.Tensor,
    *,
    metadata: dict[str, Any],
    calibration: torch.Tensor | None = None,
) -> bytes:
    """Convert ``model`` (at ``example``'s batch-1 shape) to a ``.tflite`` flatbuffer.

    Args:
        model: the float model, on the CPU.
        example: one normalised input ``(1, C, H, W)``.
        metadata: stored as JSON under :data:`METADATA_NAME`.
        calibration: normalised training images; given, the model is PT2E int8.

    Raises:
        ExportError: the model cannot be captured or converted (naming the op and layer).
    """
    import litert_torch

    source: nn.Module = model.eval()
    quant = None
    if calibration is not None:
        quant = _quant_config()
        source = calibrated_pt2e(
            model, example, calibration, quant.pt2e_quantizer, fold_quantize=False
        )
    try:
        with quiet_converters():
            converted = litert_torch.convert(source, (example,), quant_config=quant)
            flatbuffer = bytes(converted.model_content())
    except Exception as exc:  # the converter raises assorted types; all mean "cannot convert"
        raise converter_error("tflite", exc, _captured_or_none(model, example)) from exc
    return add_tflite_metadata(flatbuffer, METADATA_NAME, json.dumps(metadata, sort_keys=True))


def _captured_or_none(model: nn.Module, example: torch.Tensor) -> Any:
    """The float model's graph, to name the layer of a failed op (None if it cannot be had)."""
    try:
        return capture(model, example)
    except ExportError:
        return None


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def add_tflite_metadata(flatbuffer: bytes, name: str, text: str) -> bytes:
    """``flatbuffer`` with a metadata entry ``name`` holding ``text`` (UTF-8), replacing one
    of the same name."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    model.buffers = [*(model.buffers or [])]
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _decoded(m.name) != name] + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + len(text) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _decoded(name: str | bytes | None) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")


def read_tflite_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object a ``.tflite`` file carries under :data:`METADATA_NAME`.

    Raises:
        CheckpointError: not a TFLite flatbuffer, or one without resnetkit metadata.
    """
    data = Path(path).read_bytes()
    if data[4:8] != _FILE_IDENTIFIER:
        raise CheckpointError(f"{path} is not a TFLite model (no TFL3 identifier)")
    try:
        model = _schema().Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _decoded(entry.Name()) == METADATA_NAME:
                raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
                result = json.loads(raw.decode("utf-8"))
                if isinstance(result, dict):
                    return result
    except (ValueError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a readable TFLite model: {exc}") from exc
    raise CheckpointError(f"{path} has no {METADATA_NAME} metadata: not exported by resnetkit")


class TfliteRunner:
    """Runs a ``.tflite`` model with the LiteRT ``Interpreter`` (its XNNPACK CPU delegate).

    Float in, float out whatever the model's tensor types: an int8 model's input is
    quantized and its output dequantized with the scales stored in the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        with quiet_converters():
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads or 1)
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def run(self, images: np.ndarray) -> np.ndarray:
        """Logits ``(N, K)`` of normalised float32 images ``(N, C, H, W)``, one at a time."""
        outs = []
        for i in range(images.shape[0]):
            self._interpreter.set_tensor(self._input["index"], self._quantize(images[i : i + 1]))
            self._interpreter.invoke()
            outs.append(self._dequantize(self._interpreter.get_tensor(self._output["index"])))
        return np.concatenate(outs)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = self._input["dtype"]
        if dtype == np.float32:
            return np.ascontiguousarray(x, dtype=np.float32)
        scale, zero = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if self._output["dtype"] == np.float32:
            return np.array(y, dtype=np.float32)
        scale, zero = self._output["quantization"]
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
