"""Saving and rebuilding a model from its artifact: ``model.safetensors`` + ``model.json``.

The card's format and the file names are the contract in :mod:`resnetkit.contract`; this
module adds what needs model code: building the zoo model the card names and loading the
weights into it strictly. Weights are safetensors, never pickle; both files are written
atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from resnetkit.contract import (
    MODEL_JSON,
    MODEL_WEIGHTS,
    ModelCard,
    PreprocessingSpec,
    read_model_json,
)
from resnetkit.errors import CheckpointError, ConfigError
from resnetkit.fileio import atomic_write
from resnetkit.models.zoo import create_model

__all__ = [
    "MODEL_JSON",
    "MODEL_WEIGHTS",
    "ModelCard",
    "load_model",
    "load_weights",
    "model_from_card",
    "read_model_json",
    "save_model",
]


def save_model(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    arch: str,
    kwargs: Mapping[str, Any],
    labels: Sequence[str] = (),
    preprocessing: PreprocessingSpec | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` atomically."""
    out = Path(directory)
    card = ModelCard(
        arch=arch,
        kwargs=dict(kwargs),
        labels=list(labels),
        preprocessing=preprocessing,
        extra=dict(extra or {}),
    )
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / MODEL_WEIGHTS, lambda p: save_file(state, str(p)))
    text = json.dumps(card.to_dict(), indent=2)
    atomic_write(out / MODEL_JSON, lambda p: p.write_text(text + "\n", encoding="utf-8"))
    return card


def model_from_card(card: ModelCard, *, device: str | torch.device | None = None) -> nn.Module:
    """The zoo model a card names, freshly initialised.

    Raises:
        CheckpointError: the card names an unknown model or arguments the model rejects.
    """
    try:
        return create_model(card.arch, device=device, **card.kwargs)
    except ConfigError as exc:
        raise CheckpointError(
            f"{MODEL_JSON} describes a model that cannot be built: {exc}"
        ) from exc


def load_weights(model: nn.Module, weights: str | os.PathLike[str], *, label: str = "") -> None:
    """Load a safetensors file into ``model`` strictly (every key, every shape).

    Args:
        label: how to name the weights in errors (e.g. ``fashion:3``); the path by default.

    Raises:
        CheckpointError: the file is missing, not safetensors, or does not fit the model.
    """
    name = label or str(weights)
    try:
        state = load_file(str(weights))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{name}: {MODEL_WEIGHTS} is missing") from exc
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(
            f"{name}: {MODEL_WEIGHTS} is not a readable safetensors file"
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{name}: the weights do not fit the model card: {detail}") from exc


def load_model(
    directory: str | os.PathLike[str], *, device: str | torch.device | None = None
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model saved by :func:`save_model`, in eval mode.

    Raises:
        CheckpointError: when a file is missing or the weights do not fit the architecture.
    """
    d = Path(directory)
    card = read_model_json(d)
    model = model_from_card(card)
    load_weights(model, d / MODEL_WEIGHTS, label=str(d))
    if device is not None:
        model.to(device)
    return model.eval(), card
