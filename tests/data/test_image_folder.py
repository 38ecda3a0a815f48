from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.data import ImageDataset, load_dataset, load_image_folder
from resnetkit.errors import DataError

from .helpers import save_image, write_truncated_jpeg

_FORMATS = (".png", ".jpg")  # WebP has no grayscale mode: see the RGB test


@pytest.fixture()
def folder(fashion_train: ImageDataset, tmp_path: Path) -> Path:
    """Three classes of real Fashion-MNIST images, four per class, in PNG and JPEG."""
    root = tmp_path / "clothes"
    for label, name in ((0, "shirt"), (1, "trouser"), (7, "sneaker")):
        picks = (fashion_train.labels == label).nonzero().flatten()[:4]
        for k, i in enumerate(picks.tolist()):
            array = fashion_train.images[i, 0].numpy()
            save_image(array, root / name / f"{k}{_FORMATS[k % 2]}")
    (root / "shirt" / "notes.txt").write_text("not an image, ignored")
    return root


def test_loads_classes_from_sorted_subfolders(folder: Path) -> None:
    ds = load_image_folder(folder, size=28)
    assert ds.classes == ("shirt", "sneaker", "trouser")
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.images.shape == (12, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.files[:2] == ("shirt/0.png", "shirt/1.jpg")
    assert ds.skipped == ()


def test_lossless_png_pixels_survive(folder: Path, fashion_train: ImageDataset) -> None:
    ds = load_image_folder(folder, size=28)
    first_shirt = int((fashion_train.labels == 0).nonzero()[0])
    assert torch.equal(ds.images[0], fashion_train.images[first_shirt])


def test_resizes_and_converts_webp_and_rgb(folder: Path) -> None:
    save_image(np.full((10, 10), 99, np.uint8), folder / "shirt" / "colour.webp", mode="RGB")
    ds = load_image_folder(folder, size=(16, 20), channels=3)
    assert ds.images.shape == (13, 3, 16, 20)
    assert load_image_folder(folder, size=28, channels=1).images.shape == (13, 1, 28, 28)


def test_mixed_grayscale_and_colour_becomes_rgb(folder: Path) -> None:
    save_image(np.full((28, 28), 50, np.uint8), folder / "trouser" / "rgb.png", mode="RGB")
    ds = load_image_folder(folder, size=28)
    assert ds.channels == 3
    gray = ds.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_truncated_jpeg_fails_fast_with_path_and_reason(
    folder: Path, fashion_train: ImageDataset
) -> None:
    bad = write_truncated_jpeg(fashion_train.images[5, 0].numpy(), folder / "trouser" / "bad.jpg")
    with pytest.raises(DataError) as info:
        load_image_folder(folder, size=28)
    message = str(info.value)
    assert str(bad) in message and "truncated" in message and "skip_bad_images" in message


def test_skip_bad_images_skips_and_counts(folder: Path, fashion_train: ImageDataset) -> None:
    write_truncated_jpeg(fashion_train.images[5, 0].numpy(), folder / "trouser" / "bad.jpg")
    (folder / "sneaker" / "empty.png").write_bytes(b"")
    ds = load_image_folder(folder, size=28, skip_bad_images=True)
    assert len(ds) == 12
    assert sorted(Path(b.path).name for b in ds.skipped) == ["bad.jpg", "empty.png"]
    assert all(b.reason for b in ds.skipped)


def test_every_image_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 images"):
        load_image_folder(tmp_path, skip_bad_images=True)


@pytest.mark.parametrize("layout", ["missing", "no-classes", "no-images"])
def test_unusable_directories_are_data_errors(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "root"
    if layout != "missing":
        root.mkdir()
    if layout == "no-images":
        (root / "cat").mkdir()
        (root / "cat" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=re.escape(str(root))):
        load_image_folder(root)


def test_load_dataset_accepts_a_path_and_train_test_subfolders(
    folder: Path, fashion_train: ImageDataset, tmp_path: Path
) -> None:
    assert len(load_dataset(str(folder), image_size=28)) == 12
    assert len(load_dataset(str(folder), limit=5)) == 5
    with pytest.raises(DataError, match="test"):
        load_dataset("image-folder", "test", data_dir=folder)
    split_root = tmp_path / "split"
    for split in ("train", "test"):
        save_image(fashion_train.images[0, 0].numpy(), split_root / split / "shirt" / "a.png")
    test = load_dataset("image-folder", "test", data_dir=split_root, image_size=28)
    assert (len(test), test.split, test.classes) == (1, "test", ("shirt",))
