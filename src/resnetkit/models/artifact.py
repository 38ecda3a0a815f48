"""The model artifact every later stage reads: ``model.safetensors`` + ``model.json``.

``model.json`` holds ``{"arch", "kwargs", "labels", "preprocessing", ...}``, complete enough
that ``create_model(arch, **kwargs)`` plus the weights rebuilds the model exactly. Weights are
safetensors, never pickle; both files are written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from resnetkit.config import atomic_write
from resnetkit.errors import CheckpointError
from resnetkit.models.zoo import create_model

__all__ = [
    "MODEL_JSON",
    "MODEL_WEIGHTS",
    "ModelCard",
    "load_model",
    "read_model_json",
    "save_model",
]

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ModelCard:
    """The contents of ``model.json``."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data as written to ``model.json``."""
        return {
            "arch": self.arch,
            "kwargs": self.kwargs,
            "labels": self.labels,
            "preprocessing": self.preprocessing,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Parse ``model.json`` content.

        Raises:
            CheckpointError: when ``arch`` is missing or a field has the wrong type.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("arch"), str):
            raise CheckpointError('model.json must be an object with an "arch" string')
        known = {"arch", "kwargs", "labels", "preprocessing"}
        kwargs, labels = data.get("kwargs", {}), data.get("labels", [])
        if not isinstance(kwargs, Mapping) or not isinstance(labels, list):
            raise CheckpointError('model.json: "kwargs" must be an object, "labels" a list')
        return cls(
            arch=data["arch"],
            kwargs=_decode_kwargs(kwargs),
            labels=[str(x) for x in labels],
            preprocessing=dict(data.get("preprocessing") or {}),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _decode_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; layer tables such as layers=(2, 2, 2) come back as lists.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def save_model(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    arch: str,
    kwargs: Mapping[str, Any],
    labels: Sequence[str] = (),
    preprocessing: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` atomically."""
    out = Path(directory)
    card = ModelCard(
        arch=arch,
        kwargs=dict(kwargs),
        labels=list(labels),
        preprocessing=dict(preprocessing or {}),
        extra=dict(extra or {}),
    )
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / MODEL_WEIGHTS, lambda p: save_file(state, str(p)))
    text = json.dumps(card.to_dict(), indent=2, default=_json_default)
    atomic_write(out / MODEL_JSON, lambda p: p.write_text(text + "\n", encoding="utf-8"))
    return card


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value)
    raise TypeError(f"{value!r} cannot be stored in model.json")


def read_model_json(path: str | os.PathLike[str]) -> ModelCard:
    """Read ``model.json`` (a file, or a directory holding one).

    Raises:
        CheckpointError: when it is missing or malformed.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_JSON
    try:
        return ModelCard.from_dict(json.loads(p.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise CheckpointError(f"no {MODEL_JSON} at {p}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {p}: {exc}") from exc


def load_model(
    directory: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model saved by :func:`save_model`, in eval mode.

    Raises:
        CheckpointError: when a file is missing or the weights do not fit the architecture.
    """
    d = Path(directory)
    card = read_model_json(d)
    model = create_model(card.arch, **card.kwargs)
    weights = d / MODEL_WEIGHTS
    try:
        state = load_file(str(weights))
    except FileNotFoundError as exc:
        raise CheckpointError(f"no {MODEL_WEIGHTS} in {d}") from exc
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit {card.arch}: {exc}") from exc
    if device is not None:
        model.to(device)
    return model.eval(), card
