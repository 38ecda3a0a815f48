"""Behaviour of every registered model: shapes, gradients, determinism, the shared interface."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnetkit import ConfigError, ModelNotFoundError, create_model, list_models
from resnetkit.models import get_entry, profile

from .conftest import tiny_batch

ALL = list_models()
DEEPEST = ["resnet152", "preact_resnet164", "resnet110"]

REFERENCE_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# Published sizes (He et al. 2015, Zagoruyko & Komodakis 2016, Page 2018), in millions.
APPROX_PARAMS_M = {
    "resnet9": 6.5,
    "resnet20": 0.27,
    "resnet56": 0.85,
    "resnet110": 1.7,
    "wrn_28_10": 36.5,
}


def test_zoo_lists_every_family() -> None:
    families = {get_entry(n).family for n in ALL}
    assert {"resnet", "resnet-cifar", "preact", "wide", "resnext", "resnet-d", "se"} <= families
    assert {"hybrid", "1d", "tabular", "resnet9"} <= families
    for name in ["resnet8", "resnet44", "wrn_16_4", "preact_resnet18", "resnext50_32x4d"]:
        assert name in ALL


def test_list_models_filters_by_pattern() -> None:
    assert list_models("resnet5*") == ["resnet50", "resnet50d", "resnet56"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_and_output_shape(name: str) -> None:
    model = create_model(name, num_classes=7)
    x = tiny_batch(name)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_shared_interface_and_eval_determinism(name: str) -> None:
    model = create_model(name, drop_path_rate=0.2).eval()
    x = tiny_batch(name)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        feats = model.forward_features(x)
        emb = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        stages = model.forward_intermediates(x)
    assert emb.shape == (2, model.num_features)
    torch.testing.assert_close(logits, model.fc(emb))
    torch.testing.assert_close(logits, model(x))
    assert len(stages) == len(model.feature_info)
    assert [s.shape[1] for s in stages] == [f["num_chs"] for f in model.feature_info]
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEEPEST)
def test_gradient_reaches_the_first_layer_of_the_deepest_models(name: str) -> None:
    model = create_model(name, num_classes=10)
    model(tiny_batch(name)).logsumexp(dim=1).mean().backward()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.weight.grad is not None
    assert first.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_equal_torchvision(name: str) -> None:
    model = create_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(APPROX_PARAMS_M))
def test_parameter_counts_match_the_papers(name: str) -> None:
    model = create_model(name, device="meta")
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(APPROX_PARAMS_M[name], rel=0.02)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ModelNotFoundError, match=r"did you mean .*resnet50"):
        create_model("resnet05")


def test_unknown_argument_is_named() -> None:
    with pytest.raises(ConfigError, match="'colour'"):
        create_model("resnet18", colour="red")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": -3}, "num_classes"),
        ({"width": -1}, "width"),
        ({"in_chans": 0}, "in_chans"),
        ({"norm": "weird"}, "norm"),
        ({"act": "sparkle"}, "act"),
        ({"stem": "huge"}, "stem"),
        ({"shortcut": "magic"}, "shortcut"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"layers": (2, 0, 2, 2)}, "layers"),
    ],
)
def test_nonsense_arguments_raise_config_error_naming_them(
    kwargs: dict[str, object], argument: str
) -> None:
    with pytest.raises(ConfigError, match=argument):
        create_model("resnet18", **kwargs)


def test_nonsense_arguments_for_the_other_builders() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet_tabular", num_classes=0)
    with pytest.raises(ConfigError, match="pool"):
        create_model("resnet_hybrid", pool="max")
    with pytest.raises(ConfigError, match="num_heads"):
        create_model("resnet_hybrid", embed_dim=100, num_heads=8)


def test_wrong_input_shape_is_a_clear_error() -> None:
    model = create_model("resnet20", in_chans=1)
    with pytest.raises(ConfigError, match=r"C=1, got shape \(2, 3, 32, 32\)"):
        model(torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("norm", ["batch", "group", "layer", nn.InstanceNorm2d])
def test_norm_accepts_a_name_or_a_class(norm: object) -> None:
    model = create_model("resnet20", norm=norm, num_classes=4)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", nn.Hardswish])
def test_act_accepts_a_name_or_a_class(act: object) -> None:
    model = create_model("resnet8", act=act)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_zero_init_last_makes_each_block_start_as_identity() -> None:
    model = create_model("resnet18", zero_init_last=True)
    for stage in model.stages:
        for block in stage:
            assert torch.count_nonzero(block.bn2.weight) == 0
    preact = create_model("preact_resnet18", zero_init_last=True)
    assert torch.count_nonzero(preact.layer1[0].conv2.weight) == 0


def test_drop_path_is_random_in_training_and_off_in_eval() -> None:
    model = create_model("resnet20", drop_path_rate=0.5)
    x = torch.randn(8, 3, 16, 16)
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    rates = [getattr(blk.drop_path, "drop_prob", 0.0) for stage in model.stages for blk in stage]
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.5)


def test_width_multiplier_scales_channels() -> None:
    half = create_model("resnet20", width=0.5)
    assert [f["num_chs"] for f in half.feature_info] == [8, 16, 32]
    double = create_model("resnet18", width=2.0, device="meta")
    assert double.num_features == 1024


def test_se_adds_squeeze_excitation_to_every_block() -> None:
    plain = create_model("resnet20", device="meta")
    se = create_model("resnet20", se=True, device="meta")
    assert sum(p.numel() for p in se.parameters()) > sum(p.numel() for p in plain.parameters())
    assert all(hasattr(blk.se, "fc1") for s in se.stages for blk in s)


@pytest.mark.parametrize("name", ["resnet20", "resnet9_s", "resnet_hybrid", "resnet_tabular"])
def test_gradient_checkpointing_gives_the_same_gradients(name: str) -> None:
    torch.manual_seed(0)
    x = tiny_batch(name, batch=4)
    grads, layer_calls = [], []
    for enable in (False, True):
        torch.manual_seed(1)
        model = create_model(name, grad_checkpointing=enable, num_classes=5)
        model.train()
        calls: list[int] = []
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                m.register_forward_hook(lambda *_, c=calls: c.append(1))
        model(x).sum().backward()
        layer_calls.append(len(calls))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert layer_calls[1] > layer_calls[0]  # checkpointed layers run again during backward
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


def test_hybrid_pools_with_class_token_or_mean_and_takes_other_sizes() -> None:
    for pool in ("cls", "mean"):
        model = create_model("resnet_hybrid", pool=pool, img_size=64, depth=1).eval()
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1000)  # interpolated positions
        tokens = model.forward_features(torch.randn(1, 3, 64, 64))
        assert tokens.shape[1] == 4 + (pool == "cls")  # 64 / 32 = 2 -> 2x2 tokens


def test_resnet1d_takes_sequences() -> None:
    model = create_model("resnet1d_18", in_chans=2, num_classes=5)
    maps = model.forward_intermediates(torch.randn(3, 2, 1000))
    assert [m.shape[-1] for m in maps] == [250, 125, 63, 32]
    assert model(torch.randn(3, 2, 1000)).shape == (3, 5)


def test_tabular_takes_feature_vectors() -> None:
    model = create_model("resnet_tabular", in_features=30, num_classes=3, norm="layer")
    assert model(torch.randn(5, 30)).shape == (5, 3)


@settings(max_examples=25, deadline=None)
@given(
    depth=st.sampled_from([8, 20, 32]),
    in_chans=st.integers(1, 4),
    num_classes=st.integers(1, 20),
    height=st.integers(4, 40),
    width_px=st.integers(4, 40),
    width=st.sampled_from([0.25, 0.5, 1.0, 1.5]),
)
def test_cifar_models_accept_any_reasonable_input(
    depth: int, in_chans: int, num_classes: int, height: int, width_px: int, width: float
) -> None:
    model = create_model(
        f"resnet{depth}", in_chans=in_chans, num_classes=num_classes, width=width
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, height, width_px))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_building_on_meta_matches_profile_on_cpu() -> None:
    meta = profile(create_model("resnet20", device="meta"), (3, 32, 32))
    cpu = profile(create_model("resnet20"), (3, 32, 32))
    assert meta == cpu
