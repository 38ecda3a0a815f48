"""Datasets, preprocessing, batch augmentation and loaders for training ResNets.

Everything is kept as tensors in memory: a source returns an :class:`ImageDataset` of
``uint8`` images, :class:`BatchLoader` serves seeded, resumable (and shardable) batches,
:func:`augment_batch` augments and normalises whole batches, and :class:`PreprocessingSpec`
is the normalisation saved with the model. This package imports no other resnetkit stage.

Example::

    train = load_dataset("fashion-mnist", "train")
    train, val = split_train_val(train, val_fraction=0.1, seed=0)
    spec = compute_preprocessing(train)
    loader = BatchLoader(train.images, train.labels, batch_size=256, seed=0)
    generator = torch.Generator().manual_seed(0)
    for images, labels in loader.epoch(0):
        batch = augment_batch(images, labels, AugmentSpec(crop_padding=2), spec, generator)

Submodules are imported on first use (``resnetkit.data.PreprocessingSpec`` does not import
torch; ``resnetkit.data.augment_batch`` does), so the torch-free serving runtime can read the
preprocessing spec and decode images through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnetkit.lazy import lazy_attributes

if TYPE_CHECKING:
    from resnetkit.data.augment import (
        AugmentedBatch,
        AugmentSpec,
        alternating_flips,
        augment_batch,
        cutmix,
        mixup,
        random_crop,
        random_erasing,
        random_hflip,
        translate,
    )
    from resnetkit.data.cifar import load_cifar
    from resnetkit.data.dataset import BadImage, ImageDataset, split_train_val
    from resnetkit.data.fingerprinting import fingerprint
    from resnetkit.data.image_folder import load_image_folder
    from resnetkit.data.images import (
        ALPHA_BACKGROUND,
        apply_exif_orientation,
        flatten_transparency,
        image_to_array,
        open_image,
        read_image,
    )
    from resnetkit.data.loader import BatchLoader, epoch_permutation
    from resnetkit.data.preprocess import (
        PreprocessingSpec,
        compute_preprocessing,
        normalize,
        normalize_array,
        preprocess_image,
    )
    from resnetkit.data.sources import has_fixed_shape, known_datasets, load_dataset
    from resnetkit.data.synthetic import load_synthetic

_LAZY: dict[str, str] = {
    "ALPHA_BACKGROUND": "resnetkit.data.images",
    "AugmentSpec": "resnetkit.data.augment",
    "AugmentedBatch": "resnetkit.data.augment",
    "BadImage": "resnetkit.data.dataset",
    "BatchLoader": "resnetkit.data.loader",
    "ImageDataset": "resnetkit.data.dataset",
    "PreprocessingSpec": "resnetkit.contract",
    "alternating_flips": "resnetkit.data.augment",
    "apply_exif_orientation": "resnetkit.data.images",
    "augment_batch": "resnetkit.data.augment",
    "compute_preprocessing": "resnetkit.data.preprocess",
    "cutmix": "resnetkit.data.augment",
    "epoch_permutation": "resnetkit.data.loader",
    "fingerprint": "resnetkit.data.fingerprinting",
    "flatten_transparency": "resnetkit.data.images",
    "has_fixed_shape": "resnetkit.data.sources",
    "image_to_array": "resnetkit.data.images",
    "known_datasets": "resnetkit.data.sources",
    "load_cifar": "resnetkit.data.cifar",
    "load_dataset": "resnetkit.data.sources",
    "load_image_folder": "resnetkit.data.image_folder",
    "load_synthetic": "resnetkit.data.synthetic",
    "mixup": "resnetkit.data.augment",
    "normalize": "resnetkit.data.preprocess",
    "open_image": "resnetkit.data.images",
    "preprocess_image": "resnetkit.data.preprocess",
    "normalize_array": "resnetkit.data.preprocess",
    "random_crop": "resnetkit.data.augment",
    "random_erasing": "resnetkit.data.augment",
    "random_hflip": "resnetkit.data.augment",
    "read_image": "resnetkit.data.images",
    "split_train_val": "resnetkit.data.dataset",
    "translate": "resnetkit.data.augment",
}

__all__ = [
    "ALPHA_BACKGROUND",
    "AugmentSpec",
    "AugmentedBatch",
    "BadImage",
    "BatchLoader",
    "ImageDataset",
    "PreprocessingSpec",
    "alternating_flips",
    "apply_exif_orientation",
    "augment_batch",
    "compute_preprocessing",
    "cutmix",
    "epoch_permutation",
    "fingerprint",
    "flatten_transparency",
    "has_fixed_shape",
    "image_to_array",
    "known_datasets",
    "load_cifar",
    "load_dataset",
    "load_image_folder",
    "load_synthetic",
    "mixup",
    "normalize",
    "normalize_array",
    "open_image",
    "preprocess_image",
    "random_crop",
    "random_erasing",
    "random_hflip",
    "read_image",
    "split_train_val",
    "translate",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
