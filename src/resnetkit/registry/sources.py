"""What a registration reads: a training run directory or a single ``.onnx`` file.

A run directory must hold ``model.safetensors`` and ``model.json``; ``summary.json``
(final metrics), ``config.toml``, ``metrics.jsonl`` and a drift reference (``drift*``) are
taken when present. An ``.onnx`` file may have ``model.json``/``summary.json`` sidecars
(``<stem>.json`` is accepted for ``model.json``); without them, the ``resnetkit.*`` metadata
that ``resnetkit export`` and ``resnetkit quantize`` write into the file stands in. An int8
file whose accuracy check failed (``resnetkit.quantization_accepted`` false) is read with
``rejected`` set, so the store can refuse it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetkit.contract import (
    CONFIG_TOML,
    DRIFT_REFERENCE,
    METRICS_JSONL,
    MODEL_JSON,
    MODEL_WEIGHTS,
    ONNX_FILE,
    OOD_DETECTOR,
    SUMMARY_JSON,
    ModelCard,
    git_commit,
    read_json_object,
    read_model_json,
)
from resnetkit.errors import CheckpointError, RegistryError
from resnetkit.onnxio import card_from_metadata, read_metadata

__all__ = ["VersionSource", "read_source"]

_LINEAGE_KEYS = ("dataset_fingerprint", "run_id", "code_version", "git_commit")


@dataclass(frozen=True)
class VersionSource:
    """Files to store (artifact name → path) and the metadata read from them."""

    kind: str
    path: Path
    files: dict[str, Path]
    model_json: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    run_config: str | None = None
    run_id: str | None = None
    dataset_fingerprint: str | None = None
    code_version: str | None = None
    rejected: str | None = None  # why the artifact failed its own acceptance check


def _check_safetensors(path: Path) -> None:
    """The weights file must be a readable safetensors file holding tensors."""
    from safetensors import safe_open

    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty, not a safetensors file")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            keys = list(fh.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    if not keys:
        raise CheckpointError(f"{path} holds no tensors")


def _lineage(summary: dict[str, Any], model_json: dict[str, Any]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for key in _LINEAGE_KEYS:
        value = summary.get(key, model_json.get(key))
        found[key] = None if value is None else str(value)
    dataset = summary.get("dataset")  # training writes {"name", "fingerprint", ...}
    if found["dataset_fingerprint"] is None and isinstance(dataset, dict):
        fingerprint = dataset.get("fingerprint")
        found["dataset_fingerprint"] = None if fingerprint is None else str(fingerprint)
    return found


def _read_run_dir(folder: Path) -> VersionSource:
    for required in (MODEL_WEIGHTS, MODEL_JSON):
        if not (folder / required).is_file():
            raise RegistryError(
                f"{folder} is not a run directory: {required} is missing "
                "(train a model first, or pass an .onnx file)"
            )
    files = {MODEL_WEIGHTS: folder / MODEL_WEIGHTS, MODEL_JSON: folder / MODEL_JSON}
    for optional in (SUMMARY_JSON, CONFIG_TOML, METRICS_JSONL, DRIFT_REFERENCE, OOD_DETECTOR):
        if (folder / optional).is_file():
            files[optional] = folder / optional
    card = read_model_json(folder)
    _check_safetensors(folder / MODEL_WEIGHTS)
    summary = read_json_object(files[SUMMARY_JSON]) if SUMMARY_JSON in files else {}
    return _build(folder, "run_dir", files, card.to_dict(), summary)


def _quantization_verdict(metadata: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Metrics from an int8 file's quantization report, and why it was rejected (if it was)."""
    report = metadata.get("quantization_report")
    metrics = {}
    if isinstance(report, dict):
        metrics = {
            f"quantization_{k}": v
            for k, v in report.items()
            if k in ("method", "fp32_top1", "int8_top1", "drop_points", "budget_points")
        }
    if metadata.get("quantization_accepted") is not False:
        return metrics, None
    drop = metrics.get("quantization_drop_points")
    budget = metrics.get("quantization_budget_points")
    known = isinstance(drop, (int, float)) and isinstance(budget, (int, float))
    detail = f"top-1 dropped {drop:.2f} points, budget {budget:g}" if known else "no report"
    return metrics, f"its int8 accuracy check failed ({detail})"


def _read_onnx(path: Path) -> VersionSource:
    files = {ONNX_FILE: path}
    metadata = read_metadata(path)
    card: ModelCard | None = None
    for candidate in (path.with_suffix(".json"), path.parent / MODEL_JSON):
        if candidate.is_file():
            card = read_model_json(candidate)
            files[MODEL_JSON] = candidate
            break
    if card is None:
        card = card_from_metadata(metadata, source=str(path))
    summary: dict[str, Any] = {}
    if (path.parent / SUMMARY_JSON).is_file():
        files[SUMMARY_JSON] = path.parent / SUMMARY_JSON
        summary = read_json_object(files[SUMMARY_JSON])
    quantization, rejected = _quantization_verdict(metadata)
    source = _build(path, "onnx", files, card.to_dict(), {**summary, **quantization})
    return dataclasses.replace(source, rejected=rejected)


def _build(
    path: Path,
    kind: str,
    files: dict[str, Path],
    model_json: dict[str, Any],
    summary: dict[str, Any],
) -> VersionSource:
    lineage = _lineage(summary, model_json)
    config = files.get(CONFIG_TOML)
    folder = path if path.is_dir() else path.parent
    return VersionSource(
        kind=kind,
        path=path.resolve(),
        files=files,
        model_json=model_json,
        metrics={k: v for k, v in summary.items() if k not in _LINEAGE_KEYS},
        run_config=config.read_text(encoding="utf-8") if config else None,
        run_id=lineage["run_id"] or (folder.resolve().name if kind == "run_dir" else None),
        dataset_fingerprint=lineage["dataset_fingerprint"],
        code_version=lineage["code_version"] or lineage["git_commit"] or git_commit(folder),
    )


def read_source(path: str | os.PathLike[str]) -> VersionSource:
    """Read a run directory or an ``.onnx`` file for registration.

    Raises:
        RegistryError: when the path is neither, or its metadata is unreadable.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return _read_run_dir(p)
    if p.is_file() and p.suffix.lower() == ".onnx":
        return _read_onnx(p)
    if not p.exists():
        raise RegistryError(f"{p} does not exist; pass a run directory or an .onnx file")
    raise RegistryError(f"{p} is neither a run directory nor an .onnx file")
