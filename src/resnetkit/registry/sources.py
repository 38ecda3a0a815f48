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
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnetkit.errors import RegistryError

__all__ = ["VersionSource", "read_source"]

WEIGHTS_FILE = "model.safetensors"
MODEL_JSON = "model.json"
SUMMARY_JSON = "summary.json"
CONFIG_TOML = "config.toml"
METRICS_JSONL = "metrics.jsonl"
ONNX_FILE = "model.onnx"
ONNX_METADATA_PREFIX = "resnetkit."
_ONNX_MODEL_KEYS = ("arch", "kwargs", "labels", "preprocessing")

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


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def check_model_json(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check the fields of ``model.json`` that later stages rely on."""
    if not isinstance(data.get("arch"), str) or not data["arch"]:
        raise RegistryError(f"{path}: 'arch' must be a non-empty string naming the model")
    expected = {"kwargs": dict, "labels": list, "preprocessing": dict, "profile": dict}
    for key, kind in expected.items():
        if key in data and not isinstance(data[key], kind):
            raise RegistryError(f"{path}: '{key}' must be a JSON {kind.__name__}")
    return data


def _git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _lineage(summary: dict[str, Any], model_json: dict[str, Any]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for key in _LINEAGE_KEYS:
        value = summary.get(key, model_json.get(key))
        found[key] = None if value is None else str(value)
    return found


def _read_run_dir(folder: Path) -> VersionSource:
    for required in (WEIGHTS_FILE, MODEL_JSON):
        if not (folder / required).is_file():
            raise RegistryError(
                f"{folder} is not a run directory: {required} is missing "
                "(train a model first, or pass an .onnx file)"
            )
    files = {WEIGHTS_FILE: folder / WEIGHTS_FILE, MODEL_JSON: folder / MODEL_JSON}
    for optional in (SUMMARY_JSON, CONFIG_TOML, METRICS_JSONL):
        if (folder / optional).is_file():
            files[optional] = folder / optional
    for drift in sorted(folder.glob("drift*")):
        if drift.is_file():
            files[drift.name] = drift
    model_json = check_model_json(_read_json_object(folder / MODEL_JSON), folder / MODEL_JSON)
    summary = _read_json_object(files[SUMMARY_JSON]) if SUMMARY_JSON in files else {}
    return _build(folder, "run_dir", files, model_json, summary)


def _onnx_metadata(path: Path) -> dict[str, Any]:
    """The file's ``resnetkit.*`` metadata (prefix removed, JSON values decoded)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise RegistryError(f"{path} is not a readable ONNX model: {exc}") from exc
    found: dict[str, Any] = {}
    for prop in proto.metadata_props:
        key = prop.key.removeprefix(ONNX_METADATA_PREFIX)
        if key != prop.key:
            try:
                found[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                found[key] = prop.value
    return found


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
    metadata = _onnx_metadata(path)
    model_json: dict[str, Any] = {}
    if "arch" in metadata:
        described = {k: metadata[k] for k in _ONNX_MODEL_KEYS if k in metadata}
        model_json = check_model_json(described, path)
    for candidate in (path.with_suffix(".json"), path.parent / MODEL_JSON):
        if candidate.is_file():
            model_json = check_model_json(_read_json_object(candidate), candidate)
            files[MODEL_JSON] = candidate
            break
    summary: dict[str, Any] = {}
    if (path.parent / SUMMARY_JSON).is_file():
        files[SUMMARY_JSON] = path.parent / SUMMARY_JSON
        summary = _read_json_object(files[SUMMARY_JSON])
    quantization, rejected = _quantization_verdict(metadata)
    source = _build(path, "onnx", files, model_json, {**summary, **quantization})
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
        code_version=lineage["code_version"] or lineage["git_commit"] or _git_commit(folder),
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
