from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from resnetkit.data import ImageDataset, load_image_folder, split_train_val
from resnetkit.data.image_folder import inspect_image_folder
from resnetkit.errors import ConfigError, DataError

from .helpers import save_image, write_truncated_jpeg

_FORMATS = (".png", ".jpg")  # WebP has no grayscale mode: see the RGB test
_FASHION = {"shirt": 0, "trouser": 1, "sneaker": 7, "bag": 8}


def _write_class(fashion: ImageDataset, folder: Path, name: str, count: int) -> None:
    """``count`` real Fashion-MNIST images of class ``name`` in ``folder/name/``, PNG and JPEG."""
    picks = (fashion.labels == _FASHION[name]).nonzero().flatten()[:count]
    for k, i in enumerate(picks.tolist()):
        save_image(fashion.images[i, 0].numpy(), folder / name / f"{k}{_FORMATS[k % 2]}")


@pytest.fixture()
def folder(fashion_train: ImageDataset, tmp_path: Path) -> Path:
    """Layout (b): three classes of real Fashion-MNIST images, four per class."""
    root = tmp_path / "clothes"
    for name in ("shirt", "trouser", "sneaker"):
        _write_class(fashion_train, root, name, 4)
    (root / "shirt" / "notes.txt").write_text("not an image, ignored")
    return root


@pytest.fixture()
def split_folder(fashion_train: ImageDataset, tmp_path: Path) -> Path:
    """Layout (a): train/ with three images per class, test/ with two, two classes."""
    root = tmp_path / "split"
    for name in ("shirt", "trouser"):
        _write_class(fashion_train, root / "train", name, 3)
        _write_class(fashion_train, root / "test", name, 2)
    return root


def _one_line_data_error(root: Path, split: str = "train", **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        load_image_folder(root, split=split, size=28, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# Loading ------------------------------------------------------------------------------------


def test_split_folders_load_each_split_with_the_same_classes(split_folder: Path) -> None:
    train = load_image_folder(split_folder, split="train", size=28)
    test = load_image_folder(split_folder, split="test", size=28)
    assert train.classes == test.classes == ("shirt", "trouser")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and test.labels.tolist() == [0, 0, 1, 1]
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.files[:2] == ("shirt/0.png", "shirt/1.jpg") and test.split == "test"
    assert test.source == str(split_folder / "test") and train.skipped == test.skipped == ()


def test_class_folders_hold_out_a_stratified_test_share_that_never_overlaps(
    folder: Path,
) -> None:
    train = load_image_folder(folder, split="train", size=28)
    test = load_image_folder(folder, split="test", size=28)
    assert train.classes == test.classes == ("shirt", "sneaker", "trouser")
    assert sorted(test.labels.tolist()) == [0, 1, 2]  # 20% of 4, at least one, per class
    assert sorted(train.labels.tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    assert not set(train.files) & set(test.files)
    assert len(set(train.files) | set(test.files)) == 12


def test_held_out_share_depends_only_on_the_file_names(folder: Path, tmp_path: Path) -> None:
    test = load_image_folder(folder, split="test", size=28)
    assert load_image_folder(folder, split="test", size=28).files == test.files
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "renamed")
    assert load_image_folder(moved, split="test", size=28).files == test.files


def test_limit_takes_from_every_class_and_after_the_split(folder: Path) -> None:
    train = load_image_folder(folder, split="train", size=28, limit=4)
    assert train.labels.tolist() == [0, 0, 1, 2]  # the old first-N took shirts only
    test = load_image_folder(folder, split="test", size=28)
    assert not set(train.files) & set(test.files)


def test_lossless_png_pixels_survive(split_folder: Path, fashion_train: ImageDataset) -> None:
    ds = load_image_folder(split_folder, size=28)
    first_shirt = int((fashion_train.labels == 0).nonzero()[0])
    assert torch.equal(ds.images[0], fashion_train.images[first_shirt])


def test_resizes_and_converts_webp_and_rgb(split_folder: Path) -> None:
    save_image(np.full((10, 10), 99, np.uint8), split_folder / "train/shirt/c.webp", mode="RGB")
    ds = load_image_folder(split_folder, size=(16, 20), channels=3)
    assert ds.images.shape == (7, 3, 16, 20)
    assert load_image_folder(split_folder, size=28, channels=1).images.shape == (7, 1, 28, 28)


def test_image_of_another_size_is_resized(split_folder: Path, fashion_train: ImageDataset) -> None:
    big = np.kron(fashion_train.images[3, 0].numpy(), np.ones((3, 2), np.uint8))  # 84x56
    save_image(big, split_folder / "train" / "trouser" / "big.png")
    ds = load_image_folder(split_folder, size=28)
    assert ds.images.shape == (7, 1, 28, 28) and "trouser/big.png" in ds.files


def test_mixed_grayscale_and_colour_becomes_rgb(split_folder: Path) -> None:
    save_image(np.full((28, 28), 50, np.uint8), split_folder / "train/trouser/rgb.png", mode="RGB")
    ds = load_image_folder(split_folder, size=28)
    assert ds.channels == 3
    gray = ds.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_hidden_files_and_folders_are_ignored(split_folder: Path) -> None:
    shutil.copy(split_folder / "train/shirt/0.png", split_folder / "train/shirt/.hidden.png")
    shutil.copytree(split_folder / "train/shirt", split_folder / "train/shirt/.ipynb_checkpoints")
    shutil.copytree(split_folder / "train/shirt", split_folder / ".cache")
    assert len(load_image_folder(split_folder, size=28)) == 6


def test_inspect_describes_the_layout_without_decoding(folder: Path, split_folder: Path) -> None:
    (folder / "shirt" / "0.png").write_bytes(b"")  # not decoded, so not noticed here
    layout = inspect_image_folder(folder)
    assert (layout.kind, len(layout.train), len(layout.test)) == ("class-folders", 9, 3)
    assert "20% of each held out for testing" in layout.describe()
    described = inspect_image_folder(split_folder).describe()
    assert described.endswith(
        "train/ and test/ folders, 2 classes, 6 training and 4 test image files"
    )


# Layout rules --------------------------------------------------------------------------------


def test_test_folder_beside_class_folders_is_refused(folder: Path) -> None:
    # The advice of the old "no test/ folder" error: it made "test" a fourth class.
    save_image(np.zeros((28, 28), np.uint8), folder / "test" / "shirt" / "held.png")
    message = _one_line_data_error(folder)
    assert "mixes class folders [shirt, sneaker, trouser] with train/ or test/" in message
    assert f"{folder}/train/<class>/ with {folder}/test/<class>/" in message


@pytest.mark.parametrize(("have", "missing"), [("train", "test"), ("test", "train")])
def test_split_folder_without_its_sibling_is_refused(
    split_folder: Path, have: str, missing: str
) -> None:
    shutil.rmtree(split_folder / missing)
    message = _one_line_data_error(split_folder, split=have)
    assert f"{have}/ but no {missing}/" in message and f"{split_folder}/{missing}/" in message


def test_validation_folder_beside_train_and_test_is_refused(split_folder: Path) -> None:
    shutil.copytree(split_folder / "test", split_folder / "val")
    assert "--val-fraction" in _one_line_data_error(split_folder)


@pytest.mark.parametrize("split", ["train", "test"])
def test_different_class_names_are_refused_with_both_lists(
    split_folder: Path, fashion_train: ImageDataset, split: str
) -> None:
    # train/{x,y} against test/{a,b} used to train and report 50% with exit 0.
    shutil.rmtree(split_folder / "test")
    _write_class(fashion_train, split_folder / "test", "sneaker", 1)
    _write_class(fashion_train, split_folder / "test", "bag", 1)
    message = _one_line_data_error(split_folder, split=split)
    assert "train/ has [shirt, trouser], test/ has [bag, sneaker]" in message


def test_test_split_without_a_class_is_refused(
    split_folder: Path, fashion_train: ImageDataset
) -> None:
    _write_class(fashion_train, split_folder / "train", "bag", 2)
    message = _one_line_data_error(split_folder)
    assert "only in train/: [bag], only in test/: []" in message


@pytest.mark.parametrize("layout", ["class-folders", "split-folders"])
def test_a_single_class_is_refused(split_folder: Path, layout: str) -> None:
    for split in ("train", "test"):
        shutil.rmtree(split_folder / split / "trouser")
    root = split_folder / "train" if layout == "class-folders" else split_folder
    message = _one_line_data_error(root)
    assert "only one class folder (shirt/)" in message and str(root) in message


@pytest.mark.parametrize("where", ["", "test"])
def test_an_empty_class_folder_is_refused_by_name(split_folder: Path, where: str) -> None:
    root = split_folder / "train" if not where else split_folder
    empty = (split_folder / "train" / "shirt") if not where else (split_folder / "test" / "shirt")
    for path in empty.iterdir():
        path.unlink()
    (empty / "readme.md").write_text("to do")
    message = _one_line_data_error(root)
    assert message.startswith(f"{empty}: no images") and "1 other file(s) ignored" in message


def test_class_with_one_image_cannot_be_split(split_folder: Path) -> None:
    root = split_folder / "test"  # two per class: fine
    assert len(load_image_folder(root, size=28)) == 2
    (root / "trouser" / "1.jpg").unlink()
    assert _one_line_data_error(root).startswith(f"{root / 'trouser'}: only 1 image")


def test_images_outside_class_folders_are_refused(split_folder: Path) -> None:
    shutil.copy(split_folder / "train/shirt/0.png", split_folder / "train" / "loose.png")
    assert "outside any class folder (e.g. loose.png)" in _one_line_data_error(split_folder)


@pytest.mark.parametrize("layout", ["missing", "no-classes"])
def test_unusable_directories_are_data_errors(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "root"
    if layout != "missing":
        root.mkdir()
    assert str(root) in _one_line_data_error(root)


def test_bad_options_are_config_errors(split_folder: Path) -> None:
    options: list[dict[str, Any]] = [{"split": "val"}, {"channels": 2}, {"size": 0}]
    for kwargs in options:
        with pytest.raises(ConfigError):
            load_image_folder(split_folder, **kwargs)


# Unreadable files ----------------------------------------------------------------------------


def _write_bad(kind: str, path: Path, fashion: ImageDataset) -> Path:
    if kind == "truncated":
        return write_truncated_jpeg(fashion.images[5, 0].numpy(), path.with_suffix(".jpg"))
    if kind == "empty":
        path.with_suffix(".png").write_bytes(b"")
        return path.with_suffix(".png")
    path.with_suffix(".jpg").write_text("<html>a web page saved as .jpg</html>")
    return path.with_suffix(".jpg")


_REASONS = {
    "truncated": "image file is truncated (",
    "empty": "empty file (0 bytes)",
    "not-an-image": "not an image file (Pillow cannot identify its format)",
}


@pytest.mark.parametrize("kind", list(_REASONS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_unreadable_file_is_one_line_naming_it_and_the_cli_flag(
    split_folder: Path, fashion_train: ImageDataset, kind: str, split: str
) -> None:
    bad = _write_bad(kind, split_folder / split / "trouser" / "bad", fashion_train)
    message = _one_line_data_error(split_folder, split=split)
    assert message.startswith(f"{bad}: {_REASONS[kind]}")
    assert "--skip-bad-images" in message and "skip_bad_images" not in message


@pytest.mark.parametrize("split", ["train", "test"])
def test_skip_bad_images_lists_each_split_s_own_files_with_short_reasons(
    split_folder: Path, fashion_train: ImageDataset, split: str
) -> None:
    paths = [
        _write_bad(kind, split_folder / split / "trouser" / f"bad-{kind}", fashion_train)
        for kind in _REASONS
    ]
    other = "test" if split == "train" else "train"
    ds = load_image_folder(split_folder, split=split, size=28, skip_bad_images=True)
    assert len(ds) == (6 if split == "train" else 4)
    assert sorted((b.path, b.reason[:20]) for b in ds.skipped) == sorted(
        (str(p), _REASONS[k][:20]) for p, k in zip(paths, _REASONS, strict=True)
    )
    assert all(b.path not in b.reason and "\n" not in b.reason for b in ds.skipped)
    assert load_image_folder(split_folder, split=other, size=28, skip_bad_images=True).skipped == ()


def test_skipped_files_are_counted_once_after_the_validation_split(
    split_folder: Path, fashion_train: ImageDataset
) -> None:
    _write_bad("empty", split_folder / "train" / "shirt" / "bad", fashion_train)
    full = load_image_folder(split_folder, size=28, skip_bad_images=True)
    train, val = split_train_val(full, 0.3, seed=0)
    assert len(train.skipped) == 1 and val.skipped == ()


def test_error_counts_the_other_unreadable_files(
    split_folder: Path, fashion_train: ImageDataset
) -> None:
    _write_bad("empty", split_folder / "train" / "shirt" / "bad", fashion_train)
    _write_bad("not-an-image", split_folder / "train" / "trouser" / "bad", fashion_train)
    assert "(and 1 more unreadable file);" in _one_line_data_error(split_folder)


def test_a_class_with_no_readable_image_is_refused_even_when_skipping(
    split_folder: Path, fashion_train: ImageDataset
) -> None:
    for path in (split_folder / "test" / "trouser").iterdir():
        path.write_bytes(b"")
    message = _one_line_data_error(split_folder, split="test", skip_bad_images=True)
    assert re.match(
        re.escape(f"{split_folder / 'test' / 'trouser'}: none of its 2 test image(s)"), message
    )
