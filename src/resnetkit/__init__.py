"""resnetkit: residual networks from data to a monitored production service.

The model-zoo functions are imported on first use, so ``import resnetkit`` (and the CLI's
help) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from resnetkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelNotFoundError,
    ResNetKitError,
)

__version__ = "0.1.0"

_LAZY = dict.fromkeys(
    ("create_model", "list_models", "load_pretrained", "profile"), "resnetkit.models"
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelNotFoundError",
    "ResNetKitError",
    "__version__",
    "create_model",
    "list_models",
    "load_pretrained",
    "profile",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resnetkit' has no attribute {name!r}")
