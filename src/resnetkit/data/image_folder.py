"""ImageFolder: a directory with one subfolder per class, holding JPEG, PNG or WebP files.

Images are decoded in a thread pool (Pillow releases the GIL while decoding) and kept as one
``uint8`` tensor. A file that cannot be read stops loading with its path and reason, or, with
``skip_bad_images=True``, is left out and listed in ``ImageDataset.skipped``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from resnetkit.data.dataset import BadImage, ImageDataset
from resnetkit.data.images import read_image
from resnetkit.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_MAX_THREADS = 8


def _list_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; an ImageFolder needs one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class subfolders; an ImageFolder needs one per class")
    files = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            files += [
                (Path(dirpath) / f, label)
                for f in sorted(filenames)
                if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith(".")
            ]
    if not files:
        raise DataError(
            f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files)"
        )
    return classes, files


def _read_or_error(path: Path, size: tuple[int, int], channels: int | None) -> np.ndarray | str:
    try:
        return read_image(path, size, channels)
    except DataError as exc:
        return str(exc)


def _stack(arrays: list[np.ndarray], channels: int | None) -> torch.Tensor:
    if channels is None and any(a.shape[0] == 3 for a in arrays):
        # Mixed grayscale and colour: grayscale becomes RGB by repeating, as Pillow does.
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays))


def load_image_folder(
    root: str | Path,
    *,
    size: int | tuple[int, int] = 32,
    channels: int | None = None,
    skip_bad_images: bool = False,
    split: str = "train",
    num_threads: int | None = None,
) -> ImageDataset:
    """Load every image under ``root/<class>/`` into memory.

    Args:
        root: the directory; class names are its subfolder names, sorted.
        size: output ``(height, width)`` (or one number for a square); images are resized.
        channels: 1 or 3, or None for 1 if every image is grayscale and 3 otherwise.
        skip_bad_images: leave out unreadable images (listed in ``skipped``) instead of
            failing.
        split: the split name recorded in the dataset.
        num_threads: decoding threads; by default up to 8.

    Raises:
        DataError: the directory has no classes or no images, an image cannot be read (unless
            skipped), or every image is unreadable.
    """
    root = Path(root)
    hw = (size, size) if isinstance(size, int) else size
    classes, files = _list_files(root)
    threads = num_threads or min(_MAX_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda item: _read_or_error(item[0], hw, channels), files))
    arrays, labels, names, skipped = [], [], [], []
    for (path, label), result in zip(files, results, strict=True):
        if isinstance(result, str):
            if not skip_bad_images:
                raise DataError(f"{result} (pass skip_bad_images=True to skip unreadable images)")
            skipped.append(BadImage(str(path), result))
            continue
        arrays.append(result)
        labels.append(label)
        names.append(path.relative_to(root).as_posix())
    if not arrays:
        raise DataError(f"{root}: none of the {len(files)} images could be read")
    return ImageDataset(
        images=_stack(arrays, channels),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=tuple(classes),
        name="image-folder",
        split=split,
        allows_hflip=True,
        source=str(root),
        files=tuple(names),
        skipped=tuple(skipped),
    )
