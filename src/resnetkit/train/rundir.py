"""Writing the run directory a training run leaves behind.

The layout (file names, ``model.json``, ``summary.json``, the drift reference) is the
contract in :mod:`resnetkit.contract`; this module creates a run directory, keeps
``config.toml`` and ``metrics.jsonl`` up to date, and writes the drift reference. It computes
nothing: the trainer hands it what to write.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from resnetkit.config import TrainConfig, save_toml, to_dict
from resnetkit.contract import (
    CHECKPOINTS_DIR,
    CONFIG_TOML,
    DRIFT_KEYS,
    DRIFT_REFERENCE,
    METRICS_JSONL,
    MODEL_JSON,
)
from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write

__all__ = [
    "RESUMABLE_SETTINGS",
    "append_metrics",
    "config_differences",
    "discard_if_unstarted",
    "flatten_settings",
    "has_checkpoint",
    "rewrite_metrics",
    "start",
    "write_drift_reference",
]

# Settings that may change between a run and its resumption without changing the result.
RESUMABLE_SETTINGS = frozenset({"progress", "num_threads", "device"})


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint a run can resume from."""
    return (run_dir / CHECKPOINTS_DIR / "latest.pt").is_file()


def start(run_dir: Path, cfg: TrainConfig) -> None:
    """Create a fresh run directory and save the config.

    Raises:
        ConfigError: when ``run_dir`` already holds a run (nothing is overwritten).
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder for the run")
    if has_checkpoint(run_dir) or (run_dir / MODEL_JSON).exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose --out"
        )
    # A folder left by a run that failed before its first checkpoint holds nothing worth
    # keeping (config and an empty log), so a rerun may start over in it.
    (run_dir / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
    save_toml(run_dir / CONFIG_TOML, to_dict(cfg))
    atomic_write(run_dir / METRICS_JSONL, lambda p: p.write_text("", encoding="utf-8"))


def discard_if_unstarted(run_dir: Path, created: bool) -> None:
    """Remove what :func:`start` wrote when the run failed before its first checkpoint.

    Only a folder this run created is removed entirely; in a folder that existed before,
    only the files :func:`start` wrote are.
    """
    if has_checkpoint(run_dir) or (run_dir / MODEL_JSON).exists():
        return
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in (CONFIG_TOML, METRICS_JSONL):
        (run_dir / name).unlink(missing_ok=True)
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


def config_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Dotted names of the settings that differ (ignoring those safe to change)."""
    a, b = flatten_settings(to_dict(saved)), flatten_settings(to_dict(current))
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k.split(".")[0] not in RESUMABLE_SETTINGS]


def flatten_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"optim.lr": 0.1, "model.kwargs.width": 0.5, ...}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to ``metrics.jsonl`` and flush it to disk."""
    with (run_dir / METRICS_JSONL).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` with ``history`` (on resume: drops epochs past the checkpoint)."""
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(run_dir / METRICS_JSONL, lambda p: p.write_text(text, encoding="utf-8"))


def write_drift_reference(run_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``drift_reference.safetensors``: the tensors named in ``contract.DRIFT_KEYS``."""
    missing = [k for k in DRIFT_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"a drift reference needs {missing}")
    atomic_write(run_dir / DRIFT_REFERENCE, lambda p: save_file(tensors, str(p)))
