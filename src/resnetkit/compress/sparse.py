"""Unstructured magnitude pruning: zero the smallest weights, keep them zero while fine-tuning.

Global magnitude pruning (Han et al. 2015): one threshold over the weights of every
convolution and linear layer, so layers with many small weights lose more of them. The model
keeps its shapes: **it saves no time and no memory on dense kernels** (the MACs, the latency
and the ``safetensors`` size do not change); it only makes the weights compress better and
shows how much of the network is redundant. For a model that is really smaller and faster,
use structured pruning (:func:`resnetkit.compress.prune.prune_model`).

:class:`SparseTrainer` is the :class:`~resnetkit.train.Trainer` that puts the zeros back after
every optimiser step. Its masks are the zero pattern of the weights it starts from, so a
resumed run rebuilds the same masks from its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from resnetkit.config import TrainConfig
from resnetkit.errors import ConfigError
from resnetkit.train import TrainResult, train
from resnetkit.train.loop import Trainer

__all__ = [
    "SparseTrainer",
    "Sparsity",
    "magnitude_prune",
    "measure_sparsity",
    "sparse_finetune",
]


def _prunable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of every convolution and linear layer, by module name."""
    return {
        name: module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Conv1d | nn.Linear)
    }


@dataclass(frozen=True)
class Sparsity:
    """How many prunable weights are zero, overall and per layer."""

    zeros: int
    total: int
    per_layer: dict[str, float]  # share of zeros per layer

    @property
    def ratio(self) -> float:
        """Share of the convolution and linear weights that are zero."""
        return self.zeros / max(self.total, 1)


def measure_sparsity(model: nn.Module) -> Sparsity:
    """Count the zero weights of every convolution and linear layer."""
    weights = _prunable(model)
    zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
    return Sparsity(
        zeros=sum(zeros.values()),
        total=sum(w.numel() for w in weights.values()),
        per_layer={name: zeros[name] / w.numel() for name, w in weights.items()},
    )


@torch.no_grad()
def magnitude_prune(model: nn.Module, ratio: float) -> Sparsity:
    """Zero exactly ``round(ratio * total)`` of the smallest-magnitude weights, in place.

    Args:
        model: any model with convolution or linear layers.
        ratio: share of their weights to zero, in ``[0, 1)``.

    Raises:
        ConfigError: for a ratio outside ``[0, 1)`` or a model with nothing to prune.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio}")
    weights = list(_prunable(model).values())
    if not weights:
        raise ConfigError(f"{type(model).__name__} has no convolution or linear weights")
    magnitudes = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    count = round(ratio * magnitudes.numel())
    drop = torch.zeros(magnitudes.numel(), dtype=torch.bool)
    # A stable sort prunes an exact count even when many weights share a magnitude.
    drop[magnitudes.argsort(stable=True)[:count]] = True
    start = 0
    for w in weights:
        part = drop[start : start + w.numel()].view_as(w).to(w.device)
        w.masked_fill_(part, 0.0)
        start += w.numel()
    return measure_sparsity(model)


class SparseTrainer(Trainer):
    """The training loop that keeps the starting model's zero weights at zero."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> None:
        super().__init__(cfg, run_dir, resume=resume)  # a resumed run's weights are loaded here
        weights = _prunable(self.model)
        self._weights = list(weights.values())
        # 1 where a weight may move, 0 where it was pruned; in the weight's dtype for the
        # fused multiply below.
        self._masks = [(w != 0).to(w.dtype) for w in self._weights]

    @torch.no_grad()
    def after_step(self) -> None:
        """Put the pruned weights back to zero after the optimiser moved them."""
        torch._foreach_mul_(self._weights, self._masks)


def sparse_finetune(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False) -> TrainResult:
    """Fine-tune ``cfg.init_from`` (a magnitude-pruned model) keeping its zeros; see :func:`train`.

    Raises:
        ConfigError: without ``cfg.init_from`` (there would be no zeros to keep).
    """
    if not cfg.init_from:
        raise ConfigError("sparse fine-tuning starts from a pruned model: set init_from")
    return train(cfg, run_dir, resume=resume, trainer=SparseTrainer)
