"""The run directory a training run leaves behind, as DESIGN.md describes it.

``config.toml``, ``metrics.jsonl`` (one line per epoch), ``checkpoints/{latest,best}.pt``,
``model.safetensors`` + ``model.json`` (the contract every later stage reads),
``summary.json`` and ``drift_reference.safetensors`` (embeddings and softmax outputs on the
held-out validation data, the reference that drift detection compares live traffic with).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from resnetkit.config import TrainConfig, atomic_write, save_toml, to_dict
from resnetkit.data import fingerprint, normalize
from resnetkit.errors import ConfigError
from resnetkit.models import ClassifierModel, profile, save_model

if TYPE_CHECKING:
    from resnetkit.train.loop import TrainResult
    from resnetkit.train.setup import TrainData

__all__ = [
    "DRIFT_REFERENCE",
    "SUMMARY",
    "append_metrics",
    "config_differences",
    "finish",
    "read_summary",
    "rewrite_metrics",
    "start",
    "write_summary",
]

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
DRIFT_REFERENCE = "drift_reference.safetensors"
# Enough reference samples for the drift tests; the whole of a large training set (used when
# there is no validation split) would cost more time than a training epoch.
DRIFT_SAMPLES = 5000
# Settings that may change between a run and its resumption without changing the result.
_RESUMABLE = {"progress", "num_threads", "device"}


def start(run_dir: Path, cfg: TrainConfig) -> None:
    """Create a fresh run directory and save the config.

    Raises:
        ConfigError: when ``run_dir`` already holds a run (nothing is overwritten).
    """
    if (run_dir / "checkpoints").exists() or (run_dir / "model.json").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose --out"
        )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_toml(run_dir / "config.toml", to_dict(cfg))
    atomic_write(run_dir / METRICS, lambda p: p.write_text("", encoding="utf-8"))


def config_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Dotted names of the settings that differ (ignoring those safe to change)."""
    a, b = _flatten(to_dict(saved)), _flatten(to_dict(current))
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k.split(".")[0] not in _RESUMABLE]


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to ``metrics.jsonl`` and flush it to disk."""
    with (run_dir / METRICS).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def rewrite_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` with ``history`` (on resume: drops epochs past the checkpoint)."""
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(run_dir / METRICS, lambda p: p.write_text(text, encoding="utf-8"))


def read_summary(run_dir: Path) -> dict[str, Any]:
    """``summary.json`` as a dict (empty when absent)."""
    path = run_dir / SUMMARY
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` atomically."""
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(run_dir / SUMMARY, lambda p: p.write_text(text, encoding="utf-8"))


def _code_version() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@torch.inference_mode()
def drift_reference(
    model: ClassifierModel,
    data: TrainData,
    batch_size: int = 1024,
    max_samples: int = DRIFT_SAMPLES,
) -> dict[str, torch.Tensor]:
    """Pre-logits embeddings ``(N, D)`` and softmax outputs ``(N, K)`` on held-out data.

    The validation split, or the training set when there is none; at most ``max_samples``
    of it, evenly spaced so that a dataset stored class by class keeps every class.
    """
    dataset = data.val if data.val is not None else data.train
    picked = torch.linspace(0, len(dataset) - 1, min(len(dataset), max_samples)).long()
    images, labels = dataset.images[picked], dataset.labels[picked]
    device = next(model.parameters()).device
    model.eval()
    embeddings, probs = [], []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device), data.spec)
        feats = model.forward_features(x)
        embeddings.append(model.forward_head(feats, pre_logits=True).float().cpu())
        probs.append(model.forward_head(feats).float().softmax(dim=1).cpu())
    return {
        "embeddings": torch.cat(embeddings),
        "probabilities": torch.cat(probs),
        "labels": labels.clone(),
    }


def finish(
    run_dir: Path,
    cfg: TrainConfig,
    model: ClassifierModel,
    kwargs: dict[str, Any],
    data: TrainData,
    result: TrainResult,
) -> None:
    """Write the final weights, ``model.json``, the drift reference and ``summary.json``."""
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    input_size = (data.spec.channels, *data.spec.size)
    prof = profile(model, input_size)
    save_model(
        model,
        run_dir,
        arch=cfg.model.arch,
        kwargs=kwargs,
        labels=data.labels,
        preprocessing=data.spec.to_dict(),
        extra={
            "input_size": list(input_size),
            "profile": {"params": prof.params, "macs": prof.macs},
        },
    )
    tensors = drift_reference(model, data)
    atomic_write(run_dir / DRIFT_REFERENCE, lambda p: save_file(tensors, str(p)))
    summary = {
        "run_id": f"{run_dir.name}-{uuid.uuid4().hex[:8]}",
        "arch": cfg.model.arch,
        "dataset": {
            "name": cfg.data.name,
            "fingerprint": fingerprint(data.train),
            "train_samples": len(data.train),
            "val_samples": len(data.val) if data.val is not None else 0,
        },
        "seed": cfg.seed,
        "epochs": result.epochs_run,
        "stopped_early": result.stopped_early,
        "val_accuracy": result.val_accuracy,
        "best_val_accuracy": result.best_val_accuracy,
        "train_seconds": round(result.train_seconds, 3),
        "images_per_s": round(result.images_per_s, 1),
        "params": prof.params,
        "macs": prof.macs,
        "code_version": _code_version(),
    }
    write_summary(run_dir, summary)
