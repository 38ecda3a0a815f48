"""MACs and parameters counted from the graph."""

from __future__ import annotations

import pytest

from resnetkit import create_model, profile


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("resnet50", 4.09, 4.11), ("resnet18", 1.81, 1.82), ("resnet34", 3.66, 3.67)],
)
def test_macs_at_224_match_the_published_figures(name: str, low: float, high: float) -> None:
    prof = profile(create_model(name, device="meta"), (3, 224, 224))
    assert low <= round(prof.macs / 1e9, 2) <= high


def test_macs_scale_with_input_area_and_count_grouped_convs() -> None:
    small = profile(create_model("resnet18", device="meta"), (3, 128, 128)).macs
    large = profile(create_model("resnet18", device="meta"), (3, 256, 256)).macs
    assert large / small == pytest.approx(4.0, rel=0.01)
    resnext = profile(create_model("resnext50_32x4d", device="meta"), (3, 224, 224)).macs
    assert 4.2e9 < resnext < 4.3e9  # 4.23 G in the ResNeXt paper; grouped convs counted right


def test_profile_counts_attention_in_the_hybrid() -> None:
    with_tf = profile(create_model("resnet_hybrid", device="meta"), (3, 224, 224)).macs
    fewer = profile(create_model("resnet_hybrid", depth=1, device="meta"), (3, 224, 224)).macs
    assert with_tf > fewer


def test_profile_reports_stage_shapes_and_restores_training_mode() -> None:
    model = create_model("resnet20")
    model.train()
    prof = profile(model, (3, 32, 32))
    assert model.training
    assert prof.stage_shapes == ((16, 32, 32), (32, 16, 16), (64, 8, 8))
    assert prof.output_shape == (10,)
    assert prof.trainable_params == prof.params
