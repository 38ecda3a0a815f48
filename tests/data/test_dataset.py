from __future__ import annotations

import pytest
import torch

from resnetkit.data import ImageDataset, split_train_val
from resnetkit.errors import ConfigError, DataError


def _tiny(n: int = 10, split: str = "train") -> ImageDataset:
    return ImageDataset(
        images=torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2),
        labels=torch.arange(n) % 3,
        classes=("a", "b", "c"),
        name="tiny",
        split=split,
    )


def test_dataset_reports_its_shape(fashion_train: ImageDataset) -> None:
    assert len(fashion_train) == 2000
    assert fashion_train.channels == 1
    assert fashion_train.image_size == (28, 28)
    assert fashion_train.num_classes == 10


@pytest.mark.parametrize(
    ("images", "labels"),
    [
        (torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64)),  # float images
        (torch.zeros(2, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)),  # 3-D
        (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64)),
        (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 5])),  # label >= classes
    ],
)
def test_dataset_rejects_inconsistent_tensors(images: torch.Tensor, labels: torch.Tensor) -> None:
    with pytest.raises(DataError):
        ImageDataset(images=images, labels=labels, classes=("a", "b"), name="x", split="train")


def test_subset_keeps_order_and_metadata() -> None:
    ds = _tiny()
    sub = ds.subset([3, 1], split="val")
    assert torch.equal(sub.images, ds.images[[3, 1]])
    assert sub.labels.tolist() == [0, 1]
    assert (sub.split, sub.classes, sub.name) == ("val", ds.classes, "tiny")


def test_split_is_disjoint_covers_everything_and_is_seeded(fashion_train: ImageDataset) -> None:
    train, val = split_train_val(fashion_train, 0.1, seed=3)
    again_train, again_val = split_train_val(fashion_train, 0.1, seed=3)
    _, other_val = split_train_val(fashion_train, 0.1, seed=4)
    assert (len(train), len(val)) == (1800, 200)
    assert (train.split, val.split) == ("train", "val")
    assert torch.equal(val.images, again_val.images) and torch.equal(
        train.labels, again_train.labels
    )
    assert not torch.equal(val.images, other_val.images)
    # Every training image lands in exactly one part: compare as sorted rows of bytes.
    flat = lambda d: sorted(map(bytes, d.images.view(len(d), -1).numpy()))  # noqa: E731
    assert sorted(flat(train) + flat(val)) == flat(fashion_train)


def test_split_refuses_the_test_set() -> None:
    with pytest.raises(ConfigError, match="evaluation only"):
        split_train_val(_tiny(split="test"), 0.2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.01])
def test_split_rejects_fractions_that_leave_a_part_empty(fraction: float) -> None:
    with pytest.raises(ConfigError):
        split_train_val(_tiny(10), fraction)
