"""BN folding: exact on real images for every zoo family, and honest about what stays."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.compress import fold_batchnorm, plan_folding
from resnetkit.data import load_dataset
from resnetkit.errors import ConfigError
from resnetkit.models import create_model, get_entry, list_models

# Deep or wide at 32x32: seconds each on two cores.
SLOW_MODELS = {
    "resnet101",
    "resnet110",
    "resnet152",
    "preact_resnet164",
    "wrn_28_10",
    "wide_resnet50_2",
}


@pytest.fixture(scope="module")
def fashion() -> torch.Tensor:
    """Sixteen real Fashion-MNIST test images, scaled to roughly zero mean, unit variance."""
    images = load_dataset("fashion-mnist", "test", limit=16).images.float() / 255
    return (images - 0.286) / 0.353  # (16, 1, 28, 28)


def build(name: str) -> nn.Module:
    """A one-channel (or 16-feature) version of a zoo model, for real grayscale images."""
    family = get_entry(name).family
    if family == "tabular":
        return create_model(name, in_features=16)
    if family == "hybrid":
        return create_model(name, in_chans=1, img_size=32)
    return create_model(name, in_chans=1)


def real_input(name: str, images: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST in the layout the model takes: 32x32 image, 784-long signal, 16 features."""
    family = get_entry(name).family
    if family == "tabular":
        return F.avg_pool2d(images, 7).flatten(1)  # (B, 16)
    if family == "1d":
        return images.flatten(2)  # (B, 1, 784)
    return F.pad(images, (2, 2, 2, 2))  # (B, 1, 32, 32)


def with_real_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running stats from real data."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration passes
            with torch.no_grad():
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def assert_agree(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> None:
    """Folded and unfolded agree within 1e-5 relative in float32 -- or, where the unfolded
    float32 model is itself further than that from the exact (float64) result (resnet152 with
    random weights: 7e-4; preact_resnet164: 3e-5), the folded one is as close to exact."""
    with torch.no_grad():
        reference = copy.deepcopy(model).double()(x.double())
        expected = model(x)
        got = folded(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)
    noise = relative_error(expected.double(), reference)
    assert relative_error(got, expected) < max(1e-5, 3 * noise)
    assert relative_error(got.double(), reference) < max(1e-5, 2 * noise)


def zoo_params() -> list[object]:
    return [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in list_models()
    ]


@pytest.mark.parametrize("name", zoo_params())
def test_folded_model_matches_unfolded_on_real_images(name: str, fashion: torch.Tensor) -> None:
    x = real_input(name, fashion[:8])
    model = with_real_statistics(build(name), x)
    folded = fold_batchnorm(model)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()
        # The fold itself is exact: in float64 the two agree to rounding.
        assert relative_error(fold_batchnorm(exact)(x.double()), exact(x.double())) < 1e-10
    assert_agree(model, folded, x)
    plan = plan_folding(model)
    folded_norms = sum(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in folded.modules())
    assert folded_norms == len(plan.kept)  # everything not listed as kept is gone


@pytest.mark.parametrize("name", ["resnet18", "resnet50d", "seresnet50", "resnet20"])
def test_post_activation_models_fold_every_batchnorm(name: str) -> None:
    assert plan_folding(build(name)).kept == {}


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn_16_4"])
def test_preact_models_keep_only_norms_on_the_residual_sum(name: str) -> None:
    plan = plan_folding(build(name))
    assert plan.pairs, "conv1 -> bn2 must fold inside pre-activation blocks"
    assert all(k.endswith(".bn1") or k == "final_norm" for k in plan.kept)
    assert all("residual sum" in reason for reason in plan.kept.values())


def test_channels_last_folded_model_matches_and_leaves_the_original_alone(
    fashion: torch.Tensor,
) -> None:
    x = real_input("resnet18", fashion[:8])
    model = with_real_statistics(build("resnet18"), x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model, channels_last=True)
    assert folded.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in folded.parameters())
    assert_agree(model, folded, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.bn1, nn.BatchNorm2d)


def test_channels_last_on_a_model_without_2d_convolutions_is_refused() -> None:
    with pytest.raises(ConfigError, match="channels_last"):
        fold_batchnorm(build("resnet_tabular"), channels_last=True)


def test_resnet9_folds_through_the_max_pool_only_where_every_scale_is_positive(
    fashion: torch.Tensor,
) -> None:
    x = real_input("resnet9_s", fashion[:8])
    model = with_real_statistics(build("resnet9_s"), x)
    assert plan_folding(model).kept == {}
    with torch.no_grad():
        model.stages[1].bn.weight[3] = -0.5  # max(s * x) != s * max(x) for s < 0
    plan = plan_folding(model)
    assert list(plan.kept) == ["stages.1.bn"]
    assert "max-pool" in plan.kept["stages.1.bn"]
    assert_agree(model, fold_batchnorm(model), x)
