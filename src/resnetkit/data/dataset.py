"""The in-memory dataset every source returns, and the seeded train/validation split.

A dataset is a pair of tensors kept as ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels
``(N,)``: small enough for the datasets we train on to sit in memory (Fashion-MNIST is 47 MB),
and fast because batches are formed by indexing, not by per-sample Python code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from resnetkit.errors import ConfigError, DataError

__all__ = ["BadImage", "ImageDataset", "split_train_val"]


@dataclasses.dataclass(frozen=True)
class BadImage:
    """An image file that could not be read, and why."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images and labels held as tensors, with the metadata later stages record.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        labels: ``int64`` tensor ``(N,)`` with values in ``[0, len(classes))``.
        classes: class names; ``labels`` index into it.
        name: the source name, e.g. ``"fashion-mnist"``.
        split: ``"train"``, ``"test"`` or ``"val"``.
        allows_hflip: whether a horizontal flip keeps the label (false for digits).
        source: where the data was read from (a path, or a description).
        files: for ImageFolder, each sample's path relative to the root, in sample order.
        skipped: images that could not be read and were skipped.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    allows_hflip: bool = True
    source: str = ""
    files: tuple[str, ...] = ()
    skipped: tuple[BadImage, ...] = ()

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), "
                f"got {images.dtype} with shape {tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise DataError(
                f"{self.name}: labels must be an int64 tensor ({images.shape[0]},), "
                f"got {labels.dtype} with shape {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise DataError(
                f"{self.name}: labels outside [0, {len(self.classes)}) for "
                f"{len(self.classes)} classes"
            )
        if self.files and len(self.files) != images.shape[0]:
            raise DataError(f"{self.name}: {len(self.files)} file names for {len(self)} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Number of image channels (1 or 3)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """Image height and width."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(
        self, indices: torch.Tensor | Sequence[int], *, split: str | None = None
    ) -> ImageDataset:
        """Return the samples at ``indices`` (in that order) as a new dataset.

        Args:
            indices: sample indices.
            split: the new dataset's split name; the current one if not given.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64)
        files = tuple(self.files[i] for i in idx.tolist()) if self.files else ()
        return dataclasses.replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            split=self.split if split is None else split,
            files=files,
        )


def split_train_val(
    dataset: ImageDataset,
    val_fraction: float,
    seed: int = 0,
) -> tuple[ImageDataset, ImageDataset]:
    """Split a training set into training and validation parts with a fixed seed.

    The same dataset, fraction and seed always give the same split. Both parts keep the
    original sample order, so the split does not depend on the device or on later shuffling.

    Args:
        dataset: the training set; a test set may not be split.
        val_fraction: fraction of samples held out, in ``(0, 1)``.
        seed: seed of the random permutation.

    Returns:
        ``(train, val)`` with splits named ``"train"`` and ``"val"``; images skipped while
        loading stay listed in ``train.skipped`` only.

    Raises:
        ConfigError: the fraction is outside ``(0, 1)``, leaves a part empty, or the dataset
            is a test set.
    """
    if dataset.split == "test":
        raise ConfigError("the test set is for evaluation only; split the training set instead")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"val_fraction must be in (0, 1) to split, got {val_fraction} (training takes 0 "
            "for no validation split)"
        )
    n = len(dataset)
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ConfigError(f"val_fraction {val_fraction} of {n} samples leaves a part empty")
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    val_idx, _ = perm[:n_val].sort()
    train_idx, _ = perm[n_val:].sort()
    val = dataclasses.replace(dataset.subset(val_idx, split="val"), skipped=())
    # Skipped files stay listed on the training part only, so a report that adds up every
    # part's ``skipped`` counts each file once.
    return dataset.subset(train_idx, split="train"), val
