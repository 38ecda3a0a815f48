"""Optimisers with the usual exclusions, and an exponential moving average of the weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from resnetkit.config import OptimConfig
from resnetkit.errors import ConfigError

__all__ = ["ModelEMA", "build_optimizer", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters: no weight decay on norm weights, biases and embeddings.

    Decaying BN's scale or a bias only fights the normalisation (Goyal et al. 2017); every
    parameter with fewer than two dimensions, plus position embeddings and tokens, is exempt.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over :func:`param_groups`.

    Raises:
        ConfigError: for an unknown optimiser or a non-positive learning rate.
    """
    if cfg.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.lr}")
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    raise ConfigError(f"optim.name {cfg.name!r} is not known; use sgd or adamw")


class ModelEMA:
    """Exponential moving average of a model's parameters and buffers.

    The averaged copy is what gets evaluated and saved when EMA is on; it often gains a few
    tenths of a point at no training cost. Warm-up of the decay (``min(decay, (1+n)/(10+n))``)
    keeps the average from being dominated by the random initialisation early on.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        own = self.module.state_dict()
        averaged: list[torch.Tensor] = []
        current: list[torch.Tensor] = []
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(own[key])
                current.append(value.detach())
            else:
                own[key].copy_(value)
        if averaged:  # one fused call instead of a Python loop over every tensor
            torch._foreach_lerp_(averaged, current, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the average exactly."""
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])
