"""The ResNet model zoo: every family behind one factory and one interface."""

from resnetkit.models.artifact import (
    ModelCard,
    load_model,
    load_weights,
    model_from_card,
    read_model_json,
    save_model,
)
from resnetkit.models.base import ClassifierModel
from resnetkit.models.blocks import (
    BasicBlock,
    BottleneckBlock,
    PreActBasicBlock,
    PreActBottleneckBlock,
)
from resnetkit.models.compat import LoadReport, load_pretrained
from resnetkit.models.hybrid import ResNetHybrid
from resnetkit.models.profile import ModelProfile, count_params, profile
from resnetkit.models.resnet import ResNet
from resnetkit.models.tabular import ResidualMLP
from resnetkit.models.zoo import ModelEntry, create_model, get_entry, list_models, register_model

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "ClassifierModel",
    "LoadReport",
    "ModelCard",
    "ModelEntry",
    "ModelProfile",
    "PreActBasicBlock",
    "PreActBottleneckBlock",
    "ResNet",
    "ResNetHybrid",
    "ResidualMLP",
    "count_params",
    "create_model",
    "get_entry",
    "list_models",
    "load_model",
    "load_pretrained",
    "load_weights",
    "model_from_card",
    "profile",
    "read_model_json",
    "register_model",
    "save_model",
]
