from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from resnetkit.data import (
    ImageDataset,
    PreprocessingSpec,
    compute_preprocessing,
    normalize,
    normalize_array,
    preprocess_image,
)
from resnetkit.errors import ConfigError, DataError


def test_statistics_match_a_float64_reference(fashion_train: ImageDataset) -> None:
    spec = compute_preprocessing(fashion_train)
    pixels = fashion_train.images.double() / 255
    assert spec.size == (28, 28) and spec.channels == 1
    assert spec.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-12)
    assert spec.std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-9)
    # The published Fashion-MNIST statistics are 0.2860 / 0.3530; a 2k subset is close.
    assert spec.mean[0] == pytest.approx(0.286, abs=0.01)


def test_normalized_training_data_has_zero_mean_and_unit_std(fashion_train: ImageDataset) -> None:
    spec = compute_preprocessing(fashion_train)
    x = normalize(fashion_train.images, spec)
    assert x.dtype == torch.float32
    assert x.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert x.std().item() == pytest.approx(1.0, abs=1e-3)


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessingSpec(size=(32, 28), channels=3, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data == {
        "size": [32, 28],
        "channels": 3,
        "mean": [0.1, 0.2, 0.3],
        "std": [0.4, 0.5, 0.6],
    }
    assert PreprocessingSpec.from_dict(data) == spec


@pytest.mark.parametrize(
    "data",
    [
        {"size": [28, 28], "channels": 1, "mean": [0.1]},
        {"size": [28, 28], "channels": 1, "mean": [0.1], "std": [0.2], "extra": 1},
        {"size": [28, 28], "channels": 1, "mean": [0.1, 0.2], "std": [0.2]},
        {"size": [28], "channels": 1, "mean": [0.1], "std": [0.2]},
        {"size": [28, 28], "channels": 1, "mean": [0.1], "std": [0.0]},
        {"size": [28, 28], "channels": "one", "mean": [0.1], "std": [0.2]},
    ],
)
def test_invalid_specs_are_config_errors(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PreprocessingSpec.from_dict(data)


@given(
    st.lists(st.integers(0, 255), min_size=4, max_size=4),
    st.floats(0.0, 1.0),
    st.floats(0.01, 2.0),
)
def test_normalize_matches_the_formula(pixels: list[int], mean: float, std: float) -> None:
    spec = PreprocessingSpec(size=(2, 2), channels=1, mean=(mean,), std=(std,))
    x = torch.tensor(pixels, dtype=torch.uint8).view(1, 1, 2, 2)
    expected = (x.double() / 255 - mean) / std
    assert torch.allclose(normalize(x, spec).double(), expected, atol=1e-4)


def test_normalize_rejects_a_shape_that_does_not_fit() -> None:
    spec = PreprocessingSpec(size=(28, 28), channels=1, mean=(0.5,), std=(0.5,))
    with pytest.raises(DataError, match="does not fit"):
        normalize(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), spec)


def test_a_served_photo_is_preprocessed_like_training_data(fashion_train: ImageDataset) -> None:
    spec = compute_preprocessing(fashion_train)
    array = fashion_train.images[3, 0].numpy()
    photo = Image.fromarray(array).convert("RGB")  # a colour upload of a grayscale model input
    x = preprocess_image(photo, spec)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    # Bit for bit what training's normalize gives: the torch-free path is the same arithmetic.
    np.testing.assert_array_equal(x, normalize(fashion_train.images[3], spec).numpy())
    bigger = preprocess_image(Image.fromarray(np.kron(array, np.ones((2, 2), np.uint8))), spec)
    assert bigger.shape == (1, 28, 28)


def test_normalize_array_is_normalize_without_torch(fashion_train: ImageDataset) -> None:
    spec = compute_preprocessing(fashion_train)
    batch = fashion_train.images[:64]
    np.testing.assert_array_equal(
        normalize_array(batch.numpy(), spec), normalize(batch, spec).numpy()
    )
    with pytest.raises(DataError, match="does not fit"):
        normalize_array(np.zeros((2, 3, 28, 28), np.uint8), spec)
