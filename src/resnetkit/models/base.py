"""The interface every zoo model answers, and argument checks shared by the models.

``forward_features`` → ``forward_head(pre_logits=...)`` is the split that fine-tuning,
distillation, drift detection (the pre-logits embedding) and Grad-CAM rely on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from resnetkit.errors import ConfigError

__all__ = ["FINAL_NORM_KEPT", "ClassifierModel", "check_positive", "check_rate"]

#: Why BN folding leaves a final norm before the head (see ``ResidualBlock``'s declarations).
FINAL_NORM_KEPT = "normalises the residual sum and a ReLU precedes the classifier"


def check_positive(name: str, value: Any, *, integer: bool = True) -> None:
    """Raise ConfigError naming ``name`` unless ``value`` is a positive int (or number)."""
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def check_rate(name: str, value: Any) -> None:
    """Raise ConfigError naming ``name`` unless ``0 <= value < 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")


class ClassifierModel(nn.Module):
    """Base of every zoo model: features, then a pooled embedding, then a linear head.

    Subclasses set ``num_features``, ``num_classes`` and ``fc`` and implement
    ``forward_features``, ``forward_head`` and ``forward_intermediates``.
    """

    num_features: int
    num_classes: int
    fc: nn.Linear
    feature_info: list[dict[str, Any]]
    grad_checkpointing: bool = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features before pooling."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the features and classify; ``pre_logits`` returns the embedding."""
        raise NotImplementedError

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def fit_to_data(self, images: torch.Tensor) -> None:
        """Fit data-dependent layers (e.g. a whitening stem) to normalised training images.

        The trainer calls it once, before the first step, on the first images of the training
        split; most models have no such layer and do nothing.
        """

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes``."""
        check_positive("num_classes", num_classes)
        self.num_classes = num_classes
        device, dtype = self.fc.weight.device, self.fc.weight.dtype
        self.fc = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype)

    def get_classifier(self) -> nn.Linear:
        """The final linear layer."""
        return self.fc

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations during backward to save memory."""
        for m in self.modules():
            if m is not self and isinstance(m, ClassifierModel):
                m.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def run_checkpointed(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)``; with grad checkpointing on while training, recomputed in backward."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, x, use_reentrant=False)
        return module(x)
