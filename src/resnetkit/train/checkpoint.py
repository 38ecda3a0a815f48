"""Training checkpoints: everything needed to resume a run exactly.

A checkpoint holds model, optimiser, grad-scaler and EMA states, the RNG state of every
generator the run draws from, the position (epoch, step in epoch, global step), the config
and the metrics so far. It is written atomically (temp file, fsync, rename), so a kill at
any moment leaves the previous checkpoint intact, and read with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from resnetkit.errors import CheckpointError
from resnetkit.fileio import atomic_write

__all__ = [
    "BEST",
    "LATEST",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

LATEST = "latest.pt"
BEST = "best.pt"


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles code).

    Raises:
        CheckpointError: when it is missing, truncated or not a checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file raises many different types
        raise CheckpointError(f"cannot read checkpoint {p}: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state or "position" not in state:
        raise CheckpointError(f"{p} is not a resnetkit training checkpoint")
    return state


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """The state of torch's global RNGs (CPU and every CUDA device) and of ``generators``."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put every RNG back to the state :func:`capture_rng` saw."""
    torch.set_rng_state(state["torch"].cpu())
    for name, g in generators.items():
        g.set_state(state["generators"][name].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
