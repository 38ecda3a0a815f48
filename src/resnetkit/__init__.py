"""resnetkit: residual networks from data to a monitored production service."""

from resnetkit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelNotFoundError,
    ResNetKitError,
)
from resnetkit.models import create_model, list_models, load_pretrained, profile

__version__ = "0.1.0"

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
