from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.data import load_cifar, load_dataset
from resnetkit.data.cifar import CIFAR10_CLASSES
from resnetkit.errors import ConfigError, DataError


def _records(labels: list[list[int]], seed: int) -> tuple[bytes, np.ndarray]:
    """CIFAR binary records: label byte(s), then red, green and blue 32x32 planes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    head = np.array(labels, dtype=np.uint8)
    return np.concatenate([head, pixels.reshape(len(labels), -1)], axis=1).tobytes(), pixels


@pytest.fixture()
def cifar10_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}.bin").write_bytes(_records([[i], [9]], seed=i)[0])
    (root / "test_batch.bin").write_bytes(_records([[3]], seed=0)[0])
    return tmp_path  # the parent: the loader finds the unpacked folder itself


def test_reads_cifar10_binary_with_planes_in_rgb_order(cifar10_dir: Path) -> None:
    train = load_cifar(cifar10_dir, "cifar10", "train")
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
    assert train.classes == CIFAR10_CLASSES and train.allows_hflip
    _, pixels = _records([[1], [9]], seed=1)
    assert torch.equal(train.images[:2], torch.from_numpy(pixels))
    test = load_dataset("cifar10", "test", data_dir=cifar10_dir)
    assert (len(test), test.labels.tolist(), test.split) == (1, [3], "test")


def test_reads_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    data, _ = _records([[4, 77], [19, 3]], seed=2)
    (tmp_path / "train.bin").write_bytes(data)
    (tmp_path / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    fine = load_dataset("cifar100", data_dir=tmp_path)
    coarse = load_dataset("cifar100", data_dir=tmp_path, label_mode="coarse")
    assert fine.labels.tolist() == [77, 3] and fine.classes[77] == "f77"
    assert coarse.labels.tolist() == [4, 19] and coarse.num_classes == 20


def test_a_file_that_is_not_whole_records_is_a_data_error(cifar10_dir: Path) -> None:
    path = cifar10_dir / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"data_batch_3\.bin"):
        load_cifar(cifar10_dir, "cifar10")


def test_missing_files_say_to_use_the_binary_version(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="binary version"):
        load_cifar(tmp_path, "cifar10")


def test_label_out_of_range_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "test_batch.bin").write_bytes(_records([[12]], seed=0)[0])
    with pytest.raises(DataError, match="out of range"):
        load_cifar(tmp_path, "cifar10", "test")


def test_cifar_needs_a_data_dir_and_a_valid_label_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_dir"):
        load_dataset("cifar10")
    with pytest.raises(ConfigError, match="label_mode"):
        load_cifar(tmp_path, "cifar100", label_mode="medium")
