"""Training: one loop for every zoo model, alone or under torchrun, with exact resume."""

from resnetkit.train.checkpoint import load_checkpoint, save_checkpoint
from resnetkit.train.evaluation import evaluate_run
from resnetkit.train.loop import Trainer, TrainResult, check_config, train, validate
from resnetkit.train.optim import ModelEMA, build_optimizer, param_groups
from resnetkit.train.schedule import lr_factor

__all__ = [
    "ModelEMA",
    "TrainResult",
    "Trainer",
    "build_optimizer",
    "check_config",
    "evaluate_run",
    "load_checkpoint",
    "lr_factor",
    "param_groups",
    "save_checkpoint",
    "train",
    "validate",
]
