"""Core ML ``.mlpackage`` models: conversion with coremltools and a structural check.

Core ML runs predictions only on macOS (and iOS): here the package is converted from the
captured ``torch.export`` program (an ML Program, float32 compute, iOS 16 / macOS 13 or
newer) and then read back and checked for its structure: one input ``input`` of shape
``(1, C, H, W)``, one output ``logits`` with one value per class, a non-empty program, the
metadata. Parity on images has to run on a Mac (``docs/edge.md`` says how).

The model card (arch, labels, preprocessing) and the export's facts travel in the model's
user-defined metadata under :data:`METADATA_KEY`, as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetkit.errors import CheckpointError, ExportError
from resnetkit.export.edge_capture import capture, converter_error, quiet_converters

__all__ = ["METADATA_KEY", "CoremlStructure", "check_mlpackage", "read_coreml_metadata",
           "to_mlpackage"]  # fmt: skip

METADATA_KEY = "resnetkit"
INPUT = "input"
OUTPUT = "logits"


def _ct() -> Any:
    import coremltools

    return coremltools


def to_mlpackage(
    model: nn.Module, example: torch.Tensor, path: Path, *, metadata: dict[str, Any]
) -> None:
    """Convert ``model`` (at ``example``'s batch-1 shape) and save it as the package ``path``.

    Raises:
        ExportError: the model cannot be captured or converted (naming the op and layer).
    """
    ct = _ct()
    program = capture(model, example)
    try:
        with quiet_converters():
            mlmodel = ct.convert(
                program.run_decompositions({}),
                inputs=[ct.TensorType(name=INPUT, shape=tuple(example.shape))],
                outputs=[ct.TensorType(name=OUTPUT)],
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT32,
                minimum_deployment_target=ct.target.iOS16,
            )
    except Exception as exc:  # coremltools raises assorted types; all mean "cannot convert"
        raise converter_error("coreml", exc, program) from exc
    mlmodel.user_defined_metadata[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
    mlmodel.short_description = f"resnetkit {metadata.get('arch', 'model')}: logits of " \
        f"{len(metadata.get('labels', []))} classes"  # fmt: skip
    mlmodel.input_description[INPUT] = "image normalised with the preprocessing in metadata"
    mlmodel.output_description[OUTPUT] = "class logits, in the order of the metadata's labels"
    with quiet_converters():
        mlmodel.save(str(path))


def _spec(path: str | os.PathLike[str]) -> Any:
    try:
        with quiet_converters():
            return _ct().models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:  # coremltools raises assorted types for unreadable packages
        raise CheckpointError(f"{path} is not a readable Core ML package: {exc}") from exc


def read_coreml_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object an ``.mlpackage`` carries in its user-defined metadata.

    Raises:
        CheckpointError: not a Core ML package, or one without resnetkit metadata.
    """
    text = _spec(path).description.metadata.userDefined.get(METADATA_KEY)
    if text is None:
        raise CheckpointError(f"{path} has no {METADATA_KEY} metadata: not exported by resnetkit")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: its {METADATA_KEY} metadata is not a JSON object")
    return data


@dataclass(frozen=True)
class CoremlStructure:
    """What the structural check read back from a package."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    operations: int
    spec_version: int


def _shape(feature: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in feature.type.multiArrayType.shape)


def check_mlpackage(
    path: str | os.PathLike[str], *, input_size: tuple[int, ...], classes: int
) -> CoremlStructure:
    """Read the package back and check its interface, program and metadata.

    Raises:
        ExportError: the package does not have the interface the model should have.
    """
    spec = _spec(path)
    inputs, outputs = list(spec.description.input), list(spec.description.output)
    problems = []
    if [f.name for f in inputs] != [INPUT] or _shape(inputs[0]) != (1, *input_size):
        got = [(f.name, _shape(f)) for f in inputs]
        problems.append(
            f"input should be {INPUT} (1, {', '.join(map(str, input_size))}), got {got}"
        )
    if [f.name for f in outputs] != [OUTPUT]:
        problems.append(f"output should be {OUTPUT}, got {[f.name for f in outputs]}")
    elif _shape(outputs[0]) and _shape(outputs[0])[-1] != classes:
        problems.append(f"{OUTPUT} should have {classes} classes, got {_shape(outputs[0])}")
    functions = spec.mlProgram.functions
    operations = sum(
        len(block.operations)
        for function in functions.values()
        for block in function.block_specializations.values()
    )
    if operations == 0:
        problems.append("the ML program has no operations")
    if METADATA_KEY not in spec.description.metadata.userDefined:
        problems.append(f"the {METADATA_KEY} metadata is missing")
    if problems:
        raise ExportError(f"Core ML structural check of {path} failed: {'; '.join(problems)}")
    output_shape = _shape(outputs[0])
    return CoremlStructure(
        (1, *input_size), output_shape, operations, int(spec.specificationVersion)
    )
