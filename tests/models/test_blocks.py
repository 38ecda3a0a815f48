"""Blocks and shortcuts: shapes that cannot be added fail at construction, by name."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetkit import ConfigError
from resnetkit.models import ResNet
from resnetkit.models.blocks import PadShortcut, make_shortcut


def test_identity_shortcut_that_cannot_be_added_names_stage_block_and_shapes() -> None:
    with pytest.raises(ConfigError) as info:
        ResNet("basic", (1, 1), (16, 32), shortcut="identity", stem="cifar", stem_width=16)
    message = str(info.value)
    assert "stage 2, block 0" in message
    assert "(32, H/2, W/2)" in message
    assert "(16, H, W)" in message


def test_pad_shortcut_cannot_shrink_channels() -> None:
    with pytest.raises(ConfigError, match="stage 2, block 0: shortcut='pad' cannot shrink"):
        ResNet("basic", (1, 1), (32, 16), shortcut="pad", stem="cifar", stem_width=32)


def test_identity_shortcut_is_fine_when_no_block_changes_shape() -> None:
    model = ResNet("basic", (2,), (16,), shortcut="identity", stem="cifar", stem_width=16)
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 1000)


@pytest.mark.parametrize("kind", ["projection", "avgpool"])
def test_projection_shortcuts_have_torchvision_and_timm_layouts(kind: str) -> None:
    module = make_shortcut(
        kind, 64, 128, 2, norm="batch", dims=2, preact=False, where="stage 2, block 0"
    )
    keys = sorted(module.state_dict())
    if kind == "projection":
        assert keys[0].startswith("0.") and any(k.startswith("1.") for k in keys)
    else:  # avg-pool at index 0, conv at 1, norm at 2 as in timm's ResNet-D
        assert keys[0].startswith("1.") and any(k.startswith("2.") for k in keys)


@settings(max_examples=50, deadline=None)
@given(
    in_chs=st.integers(1, 32),
    extra=st.integers(0, 32),
    stride=st.integers(1, 3),
    size=st.integers(1, 17),
    dims=st.sampled_from([1, 2]),
)
def test_pad_shortcut_output_matches_a_strided_branch(
    in_chs: int, extra: int, stride: int, size: int, dims: int
) -> None:
    x = torch.randn((2, in_chs) + (size,) * dims)
    out = PadShortcut(in_chs, in_chs + extra, stride)(x)
    branch = torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d
    expected = branch(in_chs, in_chs + extra, 3, stride=stride, padding=1)(x)
    assert out.shape == expected.shape
    lo = extra // 2
    torch.testing.assert_close(
        out[:, lo : lo + in_chs], x[(..., *[slice(None, None, stride)] * dims)]
    )
