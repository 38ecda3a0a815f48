"""Turning a TrainConfig into the things the loop needs: device, precision, data, model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resnetkit.config import DataConfig, TrainConfig
from resnetkit.data import (
    AugmentSpec,
    ImageDataset,
    PreprocessingSpec,
    compute_preprocessing,
    load_dataset,
    normalize,
    split_train_val,
)
from resnetkit.errors import ConfigError
from resnetkit.models import ClassifierModel, create_model, get_entry, load_pretrained

__all__ = [
    "FREEZE_MODES",
    "TrainData",
    "apply_freeze",
    "augment_spec",
    "build_model",
    "load_train_data",
    "model_kwargs",
    "small_crop_epochs",
]

FREEZE_MODES = ("none", "backbone", "bn")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class TrainData:
    """The training and held-out validation sets and the preprocessing they define."""

    train: ImageDataset
    val: ImageDataset | None
    spec: PreprocessingSpec

    @property
    def labels(self) -> list[str]:
        """Class names, in label order."""
        return list(self.train.classes)


def load_train_data(cfg: DataConfig, seed: int) -> TrainData:
    """Load the training split, hold out ``val_fraction`` of it, and compute preprocessing."""
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else None
    full = load_dataset(
        cfg.name,
        "train",
        data_dir=cfg.data_dir,
        limit=cfg.limit,
        image_size=size,
        skip_bad_images=cfg.skip_bad_images,
        seed=seed,
    )
    if cfg.val_fraction > 0:
        train, val = split_train_val(full, cfg.val_fraction, seed=seed)
    else:
        train, val = full, None
    return TrainData(train, val, compute_preprocessing(train))


def augment_spec(cfg: TrainConfig, dataset: ImageDataset, epoch: int = 0) -> AugmentSpec:
    """The augmentation of ``cfg`` in ``epoch``; flips only where the dataset allows them.

    With ``augment.small_crop``, the first ``augment.small_crop_epochs`` epochs train on
    random crops of that side (cheaper steps while the network learns coarse features);
    the rest on crops of the full image size. The last epoch is always full size (see
    :func:`small_crop_epochs`), so ``--epochs 2`` on a recipe with three small-crop epochs
    still ends at the size the model is tested at.

    Raises:
        ConfigError: a negative ``small_crop_epochs``, or crops that do not fit the images.
    """
    a = cfg.augment
    if a.small_crop_epochs < 0:
        raise ConfigError(f"augment.small_crop_epochs must be >= 0, got {a.small_crop_epochs}")
    crop_size = None
    if a.small_crop is not None:
        side = min(dataset.image_size) + 2 * a.crop_padding
        if not 1 <= a.small_crop <= side:
            raise ConfigError(
                f"augment.small_crop = {a.small_crop} does not fit {dataset.name}'s "
                f"{dataset.image_size[0]}x{dataset.image_size[1]} images padded by "
                f"{a.crop_padding}; use 1 to {side}"
            )
        if epoch < small_crop_epochs(cfg):
            crop_size = a.small_crop
    return AugmentSpec(
        crop_padding=a.crop_padding,
        crop_size=crop_size,
        hflip=a.hflip and dataset.allows_hflip,
        alternate_flips=a.alternate_flips,
        erase_prob=a.erase_prob,
        mixup_alpha=a.mixup_alpha,
        cutmix_alpha=a.cutmix_alpha,
        mix_prob=a.mix_prob,
    )


def small_crop_epochs(cfg: TrainConfig) -> int:
    """How many epochs train on small crops: ``augment.small_crop_epochs``, but never the last.

    The last full-size epochs carry a short run's accuracy (on Fashion-MNIST, 3 small-crop
    epochs and 5 full-size ones reach 94.0% where 5 and 3 reach 93.4%), and a model that
    never saw a full-size image is tested on full-size ones.
    """
    if cfg.augment.small_crop is None:
        return 0
    return max(0, min(cfg.augment.small_crop_epochs, cfg.epochs - 1))


def model_kwargs(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """The model's keyword arguments: the recipe's, plus classes and channels from the data.

    Raises:
        ConfigError: the model does not take images (the trainer's data are images).
    """
    entry = get_entry(cfg.model.arch)
    if entry.input_kind != "image":
        raise ConfigError(
            f"{cfg.model.arch} takes {entry.input_kind} input of shape (batch, "
            f"{', '.join(map(str, entry.input_size))}), but {data.train.name} holds images "
            f"(channels, height, width); train an image model (`resnetkit models list`)"
        )
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("num_classes", data.train.num_classes)
    kwargs.setdefault("in_chans", data.spec.channels)
    if cfg.grad_checkpointing:
        kwargs["grad_checkpointing"] = True
    return kwargs


# Images used to fit data-dependent layers: enough patches for a stable covariance, cheap.
_FIT_IMAGES = 5000


def build_model(
    cfg: TrainConfig, kwargs: dict[str, Any], device: torch.device, data: TrainData
) -> nn.Module:
    """Create the model, fit it to ``data`` where it asks to be (``fit_to_data``, e.g. a
    whitening stem), load ``init_from`` if given, apply ``freeze``, move it to ``device``."""
    model = create_model(cfg.model.arch, **kwargs)
    if isinstance(model, ClassifierModel):
        # The first images of the training split: the same on every rank and on resume.
        model.fit_to_data(normalize(data.train.images[:_FIT_IMAGES], data.spec))
    if cfg.init_from:
        # The loader adapts conv1 to in_chans and drops a classifier of another size.
        load_pretrained(model, cfg.init_from, strict=True)
    apply_freeze(model, cfg.freeze)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def apply_freeze(model: nn.Module, mode: str) -> None:
    """Freeze ``backbone`` (all but the classifier) or ``bn`` (norm layers) or nothing.

    Raises:
        ConfigError: for an unknown mode.
    """
    if mode not in FREEZE_MODES:
        raise ConfigError(f"freeze {mode!r} is not known; use one of {', '.join(FREEZE_MODES)}")
    if mode == "backbone":
        head = {id(p) for p in model.get_submodule("fc").parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
    elif mode == "bn":
        for m in model.modules():
            if isinstance(m, _NORMS):
                for p in m.parameters():
                    p.requires_grad_(False)


def set_train_mode(model: nn.Module, freeze: str) -> None:
    """``model.train()``, except that frozen BatchNorm layers stay in eval mode."""
    model.train()
    if freeze in ("backbone", "bn"):
        for m in model.modules():
            if isinstance(m, _NORMS) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
