"""Every recipe in configs/ is a valid TrainConfig that the loop can start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnetkit.config import TrainConfig, from_dict, load_toml
from resnetkit.data import known_datasets
from resnetkit.models import create_model, list_models

RECIPES = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))


def test_the_required_recipes_exist() -> None:
    names = {p.name for p in RECIPES}
    assert {
        "fashion_mnist_fast.toml",
        "fashion_mnist.toml",
        "fashion_mnist_long.toml",
        "fashion_mnist_wide.toml",
        "mnist.toml",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_with_known_model_and_data(path: Path) -> None:
    cfg = from_dict(TrainConfig, load_toml(path))
    assert cfg.model.arch in list_models()
    assert cfg.data.name in known_datasets()
    if cfg.data.name == "mnist":
        assert not cfg.tta_flip  # a mirrored digit can be another digit


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_model_builds_with_its_arguments(path: Path) -> None:
    cfg = from_dict(TrainConfig, load_toml(path))
    model = create_model(cfg.model.arch, num_classes=10, in_chans=1, **cfg.model.kwargs).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
