"""ResNet-9 (resnet9.py): shapes, options and the errors its arguments get."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnetkit.errors import ConfigError
from resnetkit.models import create_model, load_model, save_model
from resnetkit.models.layers import PatchWhitening
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
        ({"stem": "patchify"}, "stem 'patchify' is not known"),
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


def _correlated_images(n: int = 256, seed: int = 0) -> torch.Tensor:
    # Smooth images: neighbouring pixels strongly correlated, as in photos.
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, 16, 16, generator=g)
    return torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1) * 3 + 0.5


def test_patch_whitening_decorrelates_the_patches_it_was_fitted_on() -> None:
    images = _correlated_images()
    layer = PatchWhitening(1, patch=2, eps=1e-6)
    layer.fit(images)
    with torch.no_grad():
        out = layer(images)  # (B, 8, 15, 15); the last 4 channels are the first 4 negated
    assert out.shape == (256, 8, 15, 15)
    torch.testing.assert_close(out[:, 4:], -out[:, :4])
    flat = out[:, :4].permute(1, 0, 2, 3).reshape(4, -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    covariance = flat @ flat.T / (flat.shape[1] - 1)
    torch.testing.assert_close(covariance, torch.eye(4), atol=1e-3, rtol=0)
    inputs = images.unfold(2, 2, 1).unfold(3, 2, 1).reshape(-1, 4)
    assert torch.corrcoef(inputs.T)[0, 1] > 0.5  # the raw patches were far from white


def test_patch_whitening_rejects_images_with_other_channels() -> None:
    with pytest.raises(ConfigError, match=r"patch whitening needs images \(batch, 3"):
        PatchWhitening(3).fit(torch.randn(4, 1, 8, 8))


def test_whitening_stem_trains_only_its_bias_and_survives_save_and_load(tmp_path: Path) -> None:
    kwargs = {"in_chans": 1, "num_classes": 10, "stem": "whiten"}
    model = create_model("resnet9_s", **kwargs).eval()
    model.fit_to_data(_correlated_images())
    trainable = {name for name, p in model.named_parameters() if name.startswith("stem")}
    assert trainable == {"stem.0.bias"}
    assert model.stem[0].weight.abs().sum() > 0  # type: ignore[index]
    x = torch.randn(3, 1, 28, 28)
    assert [tuple(s.shape[1:]) for s in model.forward_intermediates(x)] == [
        (32, 13, 13),
        (64, 6, 6),
        (128, 3, 3),
    ]
    save_model(model, tmp_path / "run", arch="resnet9_s", kwargs=kwargs)
    loaded, card = load_model(tmp_path / "run")
    assert card.kwargs["stem"] == "whiten"
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
