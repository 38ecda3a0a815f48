"""Structured pruning gives a smaller dense model that zoo code can rebuild."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnetkit import ConfigError, create_model, profile
from resnetkit.compress.prune import prune_model

PRUNABLE = ["resnet8", "resnet20", "resnet18", "resnet50", "preact_resnet18", "wrn_16_4"]


def _with_bn_statistics(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", PRUNABLE)
def test_half_the_inner_filters_halves_macs_and_rebuilds_from_kwargs(name: str) -> None:
    model = _with_bn_statistics(create_model(name))
    size = (3, 32, 32)
    pruned = prune_model(model, name, {}, ratio=0.5)
    before, after = profile(model, size), profile(pruned.model, size)
    assert after.params < 0.6 * before.params
    assert 0.3 * before.macs < after.macs < 0.6 * before.macs
    rebuilt = create_model(name, **pruned.kwargs)
    rebuilt.load_state_dict(pruned.model.state_dict(), strict=True)  # model.json is enough
    assert pruned.model(torch.randn(2, *size)).shape == (2, model.num_classes)


def test_pruning_dead_channels_leaves_the_function_unchanged() -> None:
    model = _with_bn_statistics(create_model("resnet20"))
    with torch.no_grad():  # silence half of every block's inner channels
        for stage in model.stages:
            for block in stage:
                half = block.bn1.weight.shape[0] // 2
                block.bn1.weight[:half] = 0.0
                block.bn1.bias[:half] = -1.0  # ReLU(-1) = 0 whatever the input
    pruned = prune_model(model, "resnet20", {}, ratio=0.5, criterion="bn")
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(pruned.model(x), model(x), rtol=1e-4, atol=1e-5)


def test_ratio_zero_keeps_everything() -> None:
    model = _with_bn_statistics(create_model("resnet8"))
    pruned = prune_model(model, "resnet8", {}, ratio=0.0)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(pruned.model(x), model(x))


@settings(max_examples=15, deadline=None)
@given(ratio=st.floats(0.0, 0.95), criterion=st.sampled_from(["l1", "bn"]))
def test_any_ratio_gives_a_working_smaller_model(ratio: float, criterion: str) -> None:
    model = _with_bn_statistics(create_model("resnet8", width=0.5))
    pruned = prune_model(model, "resnet8", {"width": 0.5}, ratio=ratio, criterion=criterion)
    for name, kept in pruned.kept.items():
        original = model.get_submodule(name).conv1.out_channels
        assert 1 <= kept <= original
        assert kept == max(1, round(original * (1 - ratio)))
    assert torch.isfinite(pruned.model(torch.randn(2, 3, 16, 16))).all()


def test_unsupported_models_and_arguments_are_refused() -> None:
    with pytest.raises(ConfigError, match="ResNeXt"):
        prune_model(create_model("resnext50_32x4d", device="meta"), "resnext50_32x4d",
                    {"groups": 32}, 0.5)  # fmt: skip
    for name in ("resnet_tabular", "resnet9_s"):
        with pytest.raises(ConfigError, match="works on the ResNet class"):
            prune_model(create_model(name), name, {}, 0.5)
    with pytest.raises(ConfigError, match="ratio"):
        prune_model(create_model("resnet8"), "resnet8", {}, 1.0)
