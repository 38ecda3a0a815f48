"""Common corruptions: every one at every severity, on real digits of clothing and a photo."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage import data as skdata
from skimage.transform import resize

from resnetkit.data import load_dataset
from resnetkit.errors import ConfigError
from resnetkit.monitor.corruptions import CORRUPTIONS, SEVERITIES, corrupt


@pytest.fixture(scope="module")
def clothes() -> np.ndarray:
    return load_dataset("fashion-mnist", "test", limit=64).images.numpy()  # (64, 1, 28, 28)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rgb = resize(skdata.astronaut(), (48, 48), anti_aliasing=True)  # (48, 48, 3) floats
    return (rgb * 255).round().astype(np.uint8).transpose(2, 0, 1)[None]  # (1, 3, 48, 48)


def _damage(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.abs(after.astype(np.int16) - before).mean())


def test_at_least_the_twelve_corruptions_of_the_issue_are_there() -> None:
    assert len(CORRUPTIONS) >= 12
    for family in ("noise", "blur", "brightness", "contrast", "fog", "pixelate", "jpeg"):
        assert any(family in name for name in CORRUPTIONS), family
    for geometry in ("rotate", "shear_scale", "translate", "elastic"):
        assert geometry in CORRUPTIONS


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damage_grows_with_severity_and_shape_and_dtype_are_kept(
    clothes: np.ndarray, name: str
) -> None:
    damage = []
    for severity in SEVERITIES:
        out = corrupt(clothes, name, severity, np.random.default_rng(0))
        assert out.shape == clothes.shape and out.dtype == np.uint8
        damage.append(_damage(clothes, out))
    assert damage[0] > 0.5, damage  # even severity 1 changes the images
    assert all(b > a for a, b in itertools.pairwise(damage)), damage


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_colour_photos_keep_their_channels_and_the_seed_fixes_the_result(
    photo: np.ndarray, name: str
) -> None:
    a = corrupt(photo, name, 3, np.random.default_rng(7))
    b = corrupt(photo, name, 3, np.random.default_rng(7))
    assert a.shape == photo.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert _damage(photo, a) > 0.5


@pytest.mark.parametrize("severity", [0, 6, -1])
def test_severities_outside_one_to_five_are_refused(clothes: np.ndarray, severity: int) -> None:
    with pytest.raises(ConfigError, match="severities are 1 to 5"):
        corrupt(clothes, "contrast", severity, np.random.default_rng(0))


def test_unknown_corruption_and_float_images_are_refused(clothes: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="not known"):
        corrupt(clothes, "snow", 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="uint8"):
        corrupt(clothes.astype(np.float32), "contrast", 1, np.random.default_rng(0))
