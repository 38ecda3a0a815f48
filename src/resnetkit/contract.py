"""The run-artifact contract every stage reads: file names, ``model.json``, the drift reference.

A **run directory** (from training) or a **model directory** (weights and card only) holds::

    config.toml                   the recipe the run trained with
    metrics.jsonl                 one line per epoch
    checkpoints/{latest,best}.pt  resumable training state
    model.safetensors             the weights (never pickle)
    model.json                    the model card: arch, kwargs, labels, preprocessing
    summary.json                  final metrics (test_accuracy, ...) and lineage
    eval.json, plots/*.png        the last evaluation
    drift_reference.safetensors   embeddings, softmax outputs and labels on held-out data

``model.json`` is parsed and validated here, once, into a :class:`ModelCard` whose
preprocessing is a typed :class:`PreprocessingSpec`; training writes it, and the registry,
the loader, the server and the monitor read it through this module. It imports nothing from
the package but ``errors`` and ``fileio``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resnetkit.errors import CheckpointError, ConfigError
from resnetkit.fileio import atomic_write

__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_TOML",
    "DRIFT_KEYS",
    "DRIFT_REFERENCE",
    "EVAL_JSON",
    "METRICS_JSONL",
    "MODEL_JSON",
    "MODEL_WEIGHTS",
    "ONNX_FILE",
    "OOD_DETECTOR",
    "PLOTS_DIR",
    "SUMMARY_JSON",
    "ModelCard",
    "PreprocessingSpec",
    "git_commit",
    "read_json_object",
    "read_model_json",
    "read_summary",
    "write_json",
    "write_summary",
]

CONFIG_TOML = "config.toml"
METRICS_JSONL = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
SUMMARY_JSON = "summary.json"
EVAL_JSON = "eval.json"
PLOTS_DIR = "plots"
#: The name an ONNX model has inside a registered version.
ONNX_FILE = "model.onnx"
DRIFT_REFERENCE = "drift_reference.safetensors"
#: The drift reference's tensors: ``embeddings`` float32 (N, D) pre-logits,
#: ``probabilities`` float32 (N, K) softmax outputs, ``labels`` int64 (N,) true classes, and
#: (references written since the OOD flag exists) ``logits`` float32 (N, K).
#: The per-request out-of-distribution detector (``monitor/ood.py``), beside the reference.
OOD_DETECTOR = "ood_detector.npz"
DRIFT_KEYS = ("embeddings", "probabilities", "labels")
_CARD_KEYS = ("arch", "kwargs", "labels", "preprocessing")


@dataclasses.dataclass(frozen=True)
class PreprocessingSpec:
    """What a model expects as input: size, channels, and per-channel mean/std on [0, 1].

    Attributes:
        size: ``(height, width)``.
        channels: 1 or 3.
        mean: per-channel mean of the training pixels scaled to [0, 1].
        std: per-channel standard deviation, likewise.
    """

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"preprocessing size must be (height, width) > 0, got {self.size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocessing channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(
                f"preprocessing needs one mean and std per channel ({self.channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"preprocessing std must be positive, got {self.std}")

    @property
    def input_size(self) -> tuple[int, int, int]:
        """One sample's shape ``(C, H, W)``."""
        return (self.channels, *self.size)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``model.json``: ``{"size": [h, w], "channels", "mean", "std"}``."""
        return {
            "size": list(self.size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessingSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Raises:
            ConfigError: a key is missing or unknown, or a value has the wrong type.
        """
        keys = {"size", "channels", "mean", "std"}
        if not isinstance(data, Mapping) or set(data) != keys:
            found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ConfigError(f"preprocessing needs exactly the keys {sorted(keys)}, got {found}")
        try:
            return cls(
                size=(int(data["size"][0]), int(data["size"][1])),
                channels=int(data["channels"]),
                mean=tuple(float(m) for m in data["mean"]),
                std=tuple(float(s) for s in data["std"]),
            )
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise ConfigError(f"invalid preprocessing {dict(data)!r}: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """The contents of ``model.json``, validated.

    Attributes:
        arch: the zoo name, for ``create_model(arch, **kwargs)``.
        kwargs: the model's keyword arguments (lists in JSON come back as tuples).
        labels: class names in output order (empty when unknown).
        preprocessing: the input spec; None for a card that has none (e.g. hand-made).
        extra: every other key (``input_size``, ``profile``, ...), kept as is.
    """

    arch: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: list[str] = dataclasses.field(default_factory=list)
    preprocessing: PreprocessingSpec | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """Classes of the head: ``kwargs["num_classes"]``, else the number of labels."""
        n = self.kwargs.get("num_classes")
        return int(n) if isinstance(n, int) else (len(self.labels) or None)

    def spec(self, source: str = "the model") -> PreprocessingSpec:
        """The preprocessing spec, or a clear error naming ``source`` when there is none.

        Raises:
            ConfigError: the card has no preprocessing spec.
        """
        if self.preprocessing is None:
            raise ConfigError(
                f"{source} has no preprocessing spec (size, channels, mean, std) in its "
                f"{MODEL_JSON}; retrain or re-export it with resnetkit"
            )
        return self.preprocessing

    def to_dict(self) -> dict[str, Any]:
        """Plain data as written to ``model.json``."""
        return {
            "arch": self.arch,
            "kwargs": _plain(self.kwargs),
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else {},
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = MODEL_JSON) -> ModelCard:
        """Parse and validate ``model.json`` content.

        Raises:
            CheckpointError: naming ``source`` and the field that is wrong.
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source} must hold a JSON object, found {type(data).__name__}")
        if not isinstance(data.get("arch"), str) or not data["arch"]:
            raise CheckpointError(f"{source}: 'arch' must be a non-empty string naming the model")
        expected = {"kwargs": Mapping, "labels": list, "preprocessing": Mapping, "profile": Mapping}
        for key, kind in expected.items():
            if data.get(key) is not None and not isinstance(data[key], kind):
                name = "object" if kind is Mapping else kind.__name__
                raise CheckpointError(f"{source}: '{key}' must be a JSON {name}")
        card = cls(
            arch=data["arch"],
            kwargs={k: tuple(v) if isinstance(v, list) else v for k, v in _get(data, "kwargs")},
            labels=[str(x) for x in data.get("labels") or []],
            preprocessing=_spec_or_none(data.get("preprocessing"), source),
            extra={k: v for k, v in data.items() if k not in _CARD_KEYS},
        )
        n = card.kwargs.get("num_classes")
        if card.labels and isinstance(n, int) and len(card.labels) != n:
            raise CheckpointError(
                f"{source}: {len(card.labels)} labels but the head has num_classes={n}; "
                "they must agree"
            )
        return card


def _get(data: Mapping[str, Any], key: str) -> list[tuple[str, Any]]:
    return list((data.get(key) or {}).items())


def _spec_or_none(value: Any, source: str) -> PreprocessingSpec | None:
    if not value:
        return None
    try:
        return PreprocessingSpec.from_dict(value)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if type(value).__module__ == "torch":  # a dtype such as torch.float32
        return str(value)
    return value


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file that must hold an object.

    Raises:
        CheckpointError: the file is missing, unreadable, not JSON or not an object.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{p} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{p} must hold a JSON object, found {type(data).__name__}")
    return data


def read_model_json(path: str | os.PathLike[str]) -> ModelCard:
    """Read ``model.json`` (a file, or a directory holding one).

    Raises:
        CheckpointError: when it is missing or malformed.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_JSON
    if not p.is_file():
        raise CheckpointError(f"no {MODEL_JSON} at {p}")
    return ModelCard.from_dict(read_json_object(p), source=str(p))


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(_plain(data), indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_summary(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``summary.json`` of a run directory as a dict (empty when absent)."""
    path = Path(directory) / SUMMARY_JSON
    return read_json_object(path) if path.is_file() else {}


def write_summary(directory: str | os.PathLike[str], summary: Mapping[str, Any]) -> None:
    """Write ``summary.json`` atomically."""
    write_json(Path(directory) / SUMMARY_JSON, dict(summary))


def git_commit(folder: str | os.PathLike[str]) -> str | None:
    """The git commit ``folder`` is checked out at, for the ``code_version`` lineage field.

    None when ``folder`` is not in a git work tree or git is missing (never an error).
    """
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
