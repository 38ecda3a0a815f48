"""CIFAR-10 and CIFAR-100 in the binary format (never the pickle format, which runs code).

A CIFAR-10 record is one label byte then 3072 pixel bytes (1024 red, 1024 green, 1024 blue,
each a row-major 32x32 plane); a CIFAR-100 record has two label bytes (coarse, fine) first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from resnetkit.data.dataset import ImageDataset
from resnetkit.errors import ConfigError, DataError

__all__ = ["CIFAR10_CLASSES", "load_cifar"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

_PIXELS = 3 * 32 * 32
_LAYOUT = {
    # name: (folder the archive unpacks to, train files, test files)
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                ["test_batch.bin"]),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"]),
}  # fmt: skip


def _class_names(directory: Path, name: str, label_mode: str, num_classes: int) -> tuple[str, ...]:
    if name == "cifar10":
        return CIFAR10_CLASSES
    names_file = directory / f"{label_mode}_label_names.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(names) == num_classes:
            return tuple(names)
    return tuple(f"class_{i:03d}" for i in range(num_classes))


def _resolve_dir(data_dir: Path, name: str) -> Path:
    sub, train_files, test_files = _LAYOUT[name]
    for candidate in (data_dir, data_dir / sub):
        if (candidate / train_files[0]).is_file() or (candidate / test_files[0]).is_file():
            return candidate
    raise DataError(
        f"{data_dir}: no {name} binary files ({train_files[0]} ...); download the "
        f"'binary version' of {name.upper()} and unpack it there (the pickle version is not read)"
    )


def _read_records(path: Path, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + _PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path}: corrupt CIFAR binary file: {raw.size} bytes is not a whole number of "
            f"{record}-byte records"
        )
    rows = raw.reshape(-1, record)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), rows[:, label_index].astype(np.int64)


def load_cifar(
    data_dir: str | Path,
    name: str = "cifar10",
    split: str = "train",
    *,
    label_mode: str = "fine",
) -> ImageDataset:
    """Load CIFAR-10 or CIFAR-100 from the binary files in ``data_dir``.

    Args:
        data_dir: the folder holding the ``.bin`` files, or the one the archive unpacks into.
        name: ``"cifar10"`` or ``"cifar100"``.
        split: ``"train"`` or ``"test"``.
        label_mode: for CIFAR-100, ``"fine"`` (100 classes) or ``"coarse"`` (20).

    Raises:
        DataError: the files are missing or corrupt, or a label is out of range.
        ConfigError: an unknown name, split or label mode.
    """
    if name not in _LAYOUT:
        raise ConfigError(f"unknown CIFAR variant {name!r}; use 'cifar10' or 'cifar100'")
    if label_mode not in ("fine", "coarse"):
        raise ConfigError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    directory = _resolve_dir(Path(data_dir), name)
    files = _LAYOUT[name][1] if split == "train" else _LAYOUT[name][2]
    label_bytes, label_index = (1, 0) if name == "cifar10" else (2, int(label_mode == "fine"))
    num_classes = 10 if name == "cifar10" else (100 if label_mode == "fine" else 20)
    parts = []
    for file_name in files:
        if not (directory / file_name).is_file():
            raise DataError(f"{directory / file_name}: missing {name} file")
        parts.append(_read_records(directory / file_name, label_bytes, label_index))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.max() >= num_classes:
        raise DataError(f"{directory}: label {labels.max()} out of range for {num_classes} classes")
    return ImageDataset(
        images=torch.from_numpy(images.copy()),
        labels=torch.from_numpy(labels),
        classes=_class_names(directory, name, label_mode, num_classes),
        name=name,
        split=split,
        allows_hflip=True,
        source=str(directory),
    )
