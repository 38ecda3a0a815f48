"""ResNet-9 (resnet9.py): shapes, options and the errors its arguments get."""

from __future__ import annotations

import pytest
import torch

from resnetkit.errors import ConfigError
from resnetkit.models import create_model
from resnetkit.models.resnet9 import ResidualPair


def test_each_stage_halves_the_resolution_and_widens() -> None:
    model = create_model("resnet9_s", in_chans=1).eval()
    stages = model.forward_intermediates(torch.randn(2, 1, 28, 28))
    assert [tuple(s.shape[1:]) for s in stages] == [(32, 14, 14), (64, 7, 7), (128, 3, 3)]
    assert model.num_features == 128


def test_residual_pairs_follow_the_first_and_last_stage_by_default() -> None:
    model = create_model("resnet9")
    pairs = [sum(isinstance(m, ResidualPair) for m in s.modules()) for s in model.stages]
    assert pairs == [1, 0, 1]


def test_zero_init_last_makes_every_pair_start_as_the_identity() -> None:
    model = create_model("resnet9_s", residual=(1, 1, 1), zero_init_last=True).eval()
    pair = model.stages[1].residual[0]
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(pair(x), x)


def test_width_scales_every_stage() -> None:
    model = create_model("resnet9_s", width=2.0)
    assert [f["num_chs"] for f in model.feature_info] == [64, 128, 256]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": (16, 32, 64)}, "4 widths"),
        ({"residual": (1, -1, 1)}, r"residual\[1\]"),
        ({"widths": (16, 0, 64, 128)}, r"widths\[1\]"),
        ({"head_scale": 0}, "head_scale"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model("resnet9_s", **kwargs)


def test_inputs_of_the_wrong_shape_get_a_clear_error() -> None:
    model = create_model("resnet9_s", in_chans=1)
    with pytest.raises(ConfigError, match=r"expects input \(batch, 1"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ConfigError, match="at least 8x8"):
        model(torch.randn(2, 1, 4, 4))
