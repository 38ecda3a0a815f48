"""ImageFolder: labelled JPEG, PNG or WebP files in one folder per class, in one of two layouts.

**(a) Split folders**: ``root/train/<class>/...`` and ``root/test/<class>/...``. Both must hold
the same class folder names.

**(b) Class folders only**: ``root/<class>/...``. The test split is held out automatically:
in every class, the :data:`TEST_FRACTION` (20%, at least one image) of files whose relative
path ranks first by a seeded SHA-256 hash form the test split and the rest the training split.
The choice depends only on each file's path below ``root`` and the fixed seed
:data:`HOLDOUT_SEED` (not on ``--seed``, the file order or the machine), so the training run
and its end-of-run evaluation, which load the two splits separately, get the same disjoint
files every time; adding an image moves at most one other file of its class between splits.
Each class needs at least two images.

Either way, validation data comes out of the training split
(:func:`~resnetkit.data.split_train_val`, ``--val-fraction``), never out of the test split.

Rules, checked by :func:`inspect_image_folder` before any image is decoded (a break is a
:class:`~resnetkit.errors.DataError` naming the folder and what to do):

* a root that mixes the layouts (class folders beside ``train/`` or ``test/``), or has only
  one of ``train/`` and ``test/``, is refused;
* at least two classes; class names are the folder names, sorted (labels index into them);
* every class folder holds at least one image (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, any
  case); its subfolders belong to it; hidden files and folders (``.name``) and files with
  other extensions are ignored; image files outside a class folder are refused.

Images of any size are resized to the size asked (aspect ratio not kept), turned upright by
their EXIF orientation and flattened over black (see :mod:`resnetkit.data.images`). They are
decoded in a thread pool (Pillow releases the GIL) and kept as one ``uint8`` tensor. A file
that cannot be read (truncated, empty, not an image despite its extension) stops loading with
its path and a short reason, or, with ``skip_bad_images=True``, is left out and listed in
``ImageDataset.skipped`` (each split lists its own files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import UnidentifiedImageError

from resnetkit.data.dataset import BadImage, ImageDataset
from resnetkit.data.images import image_to_array, open_image
from resnetkit.errors import ConfigError, DataError

__all__ = [
    "HOLDOUT_SEED",
    "IMAGE_EXTENSIONS",
    "TEST_FRACTION",
    "ImageFolderLayout",
    "inspect_image_folder",
    "load_image_folder",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
#: Share of each class held out as the test split when a root has no train/ and test/ folders.
TEST_FRACTION = 0.2
#: Seed of the held-out choice; fixed, so every caller of either split agrees on it.
HOLDOUT_SEED = 0
_SPLITS = ("train", "test")
_VALIDATION_NAMES = frozenset({"val", "valid", "validation"})
_MAX_THREADS = 8
_MAX_LISTED = 20  # class names shown in one message

FileList = tuple[tuple[Path, int], ...]  # (file, label) in label order, then path order


@dataclasses.dataclass(frozen=True)
class ImageFolderLayout:
    """What :func:`inspect_image_folder` found: the layout, the classes and each split's files.

    Attributes:
        root: the folder given.
        kind: ``"split-folders"`` (``root/train/`` and ``root/test/``) or ``"class-folders"``
            (``root/<class>/``, test share held out automatically).
        classes: class names, sorted; labels index into them.
        train: ``(file, label)`` of the training split.
        test: ``(file, label)`` of the test split.
    """

    root: Path
    kind: Literal["split-folders", "class-folders"]
    classes: tuple[str, ...]
    train: FileList
    test: FileList

    def split_root(self, split: str) -> Path:
        """The folder whose class subfolders hold ``split``'s files."""
        return self.root / split if self.kind == "split-folders" else self.root

    def files(self, split: str) -> FileList:
        """``(file, label)`` of ``split`` (``"train"`` or ``"test"``)."""
        return self.train if split == "train" else self.test

    def describe(self) -> str:
        """One line for a user: the layout, the classes and the image files of each split."""
        counts = f"{len(self.train)} training and {len(self.test)} test image files"
        if self.kind == "split-folders":
            return f"{self.root}: train/ and test/ folders, {len(self.classes)} classes, {counts}"
        return (
            f"{self.root}: one folder per class, {len(self.classes)} classes, "
            f"{TEST_FRACTION:.0%} of each held out for testing: {counts}"
        )


def _layouts(root: Path) -> str:
    return (
        f"use {root}/train/<class>/ with {root}/test/<class>/, or {root}/<class>/ alone "
        f"({TEST_FRACTION:.0%} of each class is then held out for testing)"
    )


def _names(names: list[str] | set[str]) -> str:
    ordered = sorted(names)
    shown = ", ".join(ordered[:_MAX_LISTED])
    more = len(ordered) - _MAX_LISTED
    return f"[{shown}{f', … {more} more' if more > 0 else ''}]"


def _is_image(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _class_images(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` in path order, and how many other files were ignored."""
    images, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_image(name):
                images.append(Path(dirpath) / name)
            elif not name.startswith("."):
                ignored += 1
    return images, ignored


def _visible_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(folder: Path, root: Path) -> dict[str, list[Path]]:
    """The image files of each class folder in ``folder``, checked: >= 2 classes, none empty."""
    strays = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_image(p.name))
    if strays:
        raise DataError(
            f"{folder}: {len(strays)} image file(s) outside any class folder (e.g. {strays[0]}); "
            f"move each into the folder named for its class, {folder}/<class>/"
        )
    names = _visible_dirs(folder)
    if not names:
        raise DataError(f"{folder}: no class folders; {_layouts(root)}")
    if len(names) == 1:
        raise DataError(
            f"{folder}: only one class folder ({names[0]}/); a classifier needs at least two: "
            "add a folder of images for each other class"
        )
    classes = {}
    for name in names:
        images, ignored = _class_images(folder / name)
        if not images:
            others = f"; {ignored} other file(s) ignored" if ignored else ""
            raise DataError(
                f"{folder / name}: no images (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} files{others}); add images of this "
                "class or remove the folder"
            )
        classes[name] = images
    return classes


def _holdout_rank(path: Path, root: Path) -> bytes:
    key = f"{HOLDOUT_SEED}:{path.relative_to(root).as_posix()}"
    return hashlib.sha256(key.encode()).digest()


def _class_layout(root: Path) -> ImageFolderLayout:
    classes = _class_folders(root, root)
    train: list[tuple[Path, int]] = []
    test: list[tuple[Path, int]] = []
    for label, (name, images) in enumerate(classes.items()):
        if len(images) < 2:
            raise DataError(
                f"{root / name}: only 1 image; with one folder per class, {TEST_FRACTION:.0%} "
                "of each class (at least one image) is held out for testing, so each class "
                f"needs at least 2 (or give the splits yourself: {root}/train/ and {root}/test/)"
            )
        n_test = max(1, int(len(images) * TEST_FRACTION + 0.5))
        held = set(sorted(images, key=lambda p: _holdout_rank(p, root))[:n_test])
        for path in images:
            (test if path in held else train).append((path, label))
    return ImageFolderLayout(root, "class-folders", tuple(classes), tuple(train), tuple(test))


def _check_split_dirs(root: Path, dirs: list[str]) -> None:
    others = [d for d in dirs if d not in _SPLITS]
    validation = sorted(_VALIDATION_NAMES.intersection(others))
    if validation:
        raise DataError(
            f"{root}: a {validation[0]}/ folder beside train/ and test/; validation images are "
            f"held out of train/ (--val-fraction), so move {validation[0]}/'s images into the "
            "class folders of train/, or remove it"
        )
    if others:
        raise DataError(
            f"{root} mixes class folders {_names(others)} with train/ or test/ split folders; "
            f"{_layouts(root)} (a class named train or test must be renamed)"
        )
    for have, missing in (("train", "test"), ("test", "train")):
        if missing not in dirs:
            raise DataError(
                f"{root}: {have}/ but no {missing}/ beside it; add {root}/{missing}/<class>/ "
                f"with the same class folders, or move the class folders of {have}/ up into "
                f"{root}/ to have {TEST_FRACTION:.0%} of each class held out for testing"
            )


def _split_layout(root: Path, dirs: list[str]) -> ImageFolderLayout:
    _check_split_dirs(root, dirs)
    train = _class_folders(root / "train", root)
    test = _class_folders(root / "test", root)
    if set(train) != set(test):
        only_train, only_test = set(train) - set(test), set(test) - set(train)
        raise DataError(
            f"{root}: train/ and test/ must hold the same class folders; train/ has "
            f"{_names(list(train))}, test/ has {_names(list(test))} (only in train/: "
            f"{_names(only_train)}, only in test/: {_names(only_test)}); rename or add folders "
            "so the names match"
        )
    label = {name: i for i, name in enumerate(train)}
    return ImageFolderLayout(
        root,
        "split-folders",
        tuple(train),
        tuple((p, label[name]) for name, paths in train.items() for p in paths),
        tuple((p, label[name]) for name, paths in test.items() for p in paths),
    )


def inspect_image_folder(root: str | Path) -> ImageFolderLayout:
    """Check an ImageFolder's layout and list each split's files, without decoding any image.

    Call it before any expensive step: it checks both splits, whichever one is loaded later.

    Raises:
        DataError: the folder breaks a rule of the module docstring; the message names the
            folder and says which layout to use.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; {_layouts(root)}")
    dirs = _visible_dirs(root)
    if any(d in _SPLITS for d in dirs):
        return _split_layout(root, dirs)
    return _class_layout(root)


def _stratified_head(files: FileList, limit: int | None) -> FileList:
    """The first ``limit`` files taken class by class in turn, in their original order."""
    if limit is None or limit >= len(files):
        return files
    position: dict[int, int] = {}
    turns = []  # (k-th file of its class, label, index): sorting deals one per class in turn
    for index, (_, label) in enumerate(files):
        k = position.get(label, 0)
        position[label] = k + 1
        turns.append((k, label, index))
    return tuple(files[i] for i in sorted(i for _, _, i in sorted(turns)[:limit]))


def _reason(exc: DataError, path: Path) -> str:
    """A short, one-line reason without the path (the caller names the file)."""
    cause = exc.__cause__
    if isinstance(cause, UnidentifiedImageError):
        return "not an image file (Pillow cannot identify its format)"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror  # No such file or directory, Permission denied, ...
    text = str(cause if cause is not None else exc)
    text = text.replace(f"'{path}'", "").replace(str(path), "")
    return " ".join(text.split()) or type(cause).__name__


def _read_or_reason(path: Path, size: tuple[int, int], channels: int | None) -> np.ndarray | str:
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        return image_to_array(open_image(path), size, channels)
    except OSError as exc:  # stat: a broken link, a file removed while listing
        return exc.strerror or str(exc)
    except DataError as exc:
        return _reason(exc, path)


def _bad_images_error(bad: list[BadImage]) -> DataError:
    more = len(bad) - 1
    others = f" (and {more} more unreadable file{'s' if more > 1 else ''})" if more else ""
    return DataError(
        f"{bad[0].path}: {bad[0].reason}{others}; replace or delete it, or pass "
        "--skip-bad-images to leave unreadable files out"
    )


def _check_each_class_read(
    layout: ImageFolderLayout, split: str, files: FileList, labels: list[int], bad: list[BadImage]
) -> None:
    missing = sorted({label for _, label in files} - set(labels))
    if missing:
        paths = {str(path) for path, label in files if label == missing[0]}
        example = next(b for b in bad if b.path in paths)
        folder = layout.split_root(split) / layout.classes[missing[0]]
        raise DataError(
            f"{folder}: none of its {len(paths)} {split} image(s) could be read (e.g. "
            f"{example.path}: {example.reason}); a class needs a readable image in each split"
        )


def _stack(arrays: list[np.ndarray], channels: int | None) -> torch.Tensor:
    if channels is None and any(a.shape[0] == 3 for a in arrays):
        # Mixed grayscale and colour: grayscale becomes RGB by repeating, as Pillow does.
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays))


def _check_options(split: str, hw: tuple[int, int], channels: int | None) -> None:
    if split not in _SPLITS:
        raise ConfigError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if channels not in (1, 3, None):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    if min(hw) < 1:
        raise ConfigError(f"image size must be positive, got {hw[0]}x{hw[1]}")


def load_image_folder(
    root: str | Path,
    *,
    split: str = "train",
    size: int | tuple[int, int] = 32,
    channels: int | None = None,
    skip_bad_images: bool = False,
    limit: int | None = None,
    num_threads: int | None = None,
) -> ImageDataset:
    """Load one split of an ImageFolder (either layout of the module docstring) into memory.

    Args:
        root: the folder: ``root/train/`` and ``root/test/``, or ``root/<class>/`` alone.
        split: ``"train"`` or ``"test"``.
        size: output ``(height, width)`` (or one number for a square); images are resized.
        channels: 1 or 3, or None for 1 if every image is grayscale and 3 otherwise.
        skip_bad_images: leave out unreadable images (listed in ``skipped`` with a short
            reason) instead of failing.
        limit: load at most this many images, taken from each class in turn.
        num_threads: decoding threads; by default up to 8.

    Raises:
        ConfigError: an unknown split, channels other than 1 or 3, or a size below 1.
        DataError: the layout breaks a rule (checked before decoding), an image cannot be
            read (unless skipped), or every image of a class in this split is unreadable.
    """
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    _check_options(split, hw, channels)
    layout = inspect_image_folder(root)
    files = _stratified_head(layout.files(split), limit)
    threads = num_threads or min(_MAX_THREADS, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda item: _read_or_reason(item[0], hw, channels), files))
    arrays, labels, names, bad = [], [], [], []
    split_root = layout.split_root(split)
    for (path, label), result in zip(files, results, strict=True):
        if isinstance(result, str):
            bad.append(BadImage(str(path), result))
            continue
        arrays.append(result)
        labels.append(label)
        names.append(path.relative_to(split_root).as_posix())
    if bad and not skip_bad_images:
        raise _bad_images_error(bad)
    _check_each_class_read(layout, split, files, labels, bad)
    return ImageDataset(
        images=_stack(arrays, channels),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=layout.classes,
        name="image-folder",
        split=split,
        allows_hflip=True,
        source=str(split_root),
        files=tuple(names),
        skipped=tuple(bad),
    )
