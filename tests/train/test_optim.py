"""Optimisers with their weight-decay exclusions, and the weight EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnetkit.config import OptimConfig
from resnetkit.errors import ConfigError
from resnetkit.models import create_model
from resnetkit.train.optim import ModelEMA, Muon, build_optimizer, orthogonalize, param_groups


def test_norm_weights_and_biases_are_not_decayed() -> None:
    model = create_model("resnet8", in_chans=1, num_classes=10)
    frozen_name, frozen = next(iter(model.named_parameters()))
    frozen.requires_grad_(False)
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    decayed = {n for n, p in named.items() if any(p is q for q in decay["params"])}
    exempt = {n for n, p in named.items() if any(p is q for q in no_decay["params"])}
    assert decayed and exempt and not decayed & exempt
    assert all(named[n].ndim > 1 for n in decayed)  # conv and linear weights
    assert all(named[n].ndim == 1 for n in exempt)  # BN scales and shifts, the fc bias
    assert "fc.bias" in exempt and "fc.weight" in decayed
    assert decayed | exempt == set(named) - {frozen_name}  # frozen parameters are left out


def test_sgd_is_nesterov_only_with_momentum() -> None:
    model = nn.Linear(3, 2)
    sgd = build_optimizer(model, OptimConfig(momentum=0.9, nesterov=True))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] is True
    plain = build_optimizer(model, OptimConfig(momentum=0.0, nesterov=True))
    assert plain.defaults["nesterov"] is False  # torch refuses Nesterov without momentum


def test_adamw_takes_the_betas() -> None:
    opt = build_optimizer(nn.Linear(3, 2), OptimConfig(name="adamw", lr=1e-3, betas=(0.8, 0.95)))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.95)


@pytest.mark.parametrize("shape", [(32, 288), (300, 20), (64, 576), (40, 70)])
def test_orthogonalize_sets_every_singular_value_near_one(shape: tuple[int, int]) -> None:
    update = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    update[:, 0] *= 100  # one direction far stronger than the rest
    out = orthogonalize(update)
    assert out.shape == update.shape
    singular = torch.linalg.svdvals(out)
    assert singular.amin() > 0.6 and singular.amax() < 1.3, singular
    # the same directions: U V^T of the input's SVD, up to the iteration's spread
    u, _, vh = torch.linalg.svd(update, full_matrices=False)
    cosine = (out * (u @ vh)).sum() / (out.norm() * (u @ vh).norm())
    assert cosine > 0.95


def _plain_newton_schulz(update: torch.Tensor, steps: int) -> torch.Tensor:
    x = update.double() / update.double().norm()  # the textbook iteration, in float64
    for _ in range(steps):
        gram = x @ x.mT
        x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
    return x


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(1, 48),
    ratio=st.integers(1, 12),  # 1: square, the plain route
    rank=st.integers(1, 48),
    steps=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_orthogonalize_in_gram_space_is_the_plain_iteration(
    m: int, ratio: int, rank: int, steps: int, seed: int
) -> None:
    # Wide matrices take the m x m Gram route; low-rank ones (gradients often are) are where
    # float32 round-off could blow up the directions the update barely has. A float32 Gram
    # matrix resolves singular values only down to about sqrt(eps) of the largest, so the
    # route is looser than the plain float32 iteration (worst seen in 20,000 draws at up to 5
    # steps, Muon's: 8e-4, against 1e-5), yet far inside what Muon needs; the unstable q^2 G
    # form is off by 10.
    g = torch.Generator().manual_seed(seed)
    rank = min(rank, m)
    update = torch.randn(m, rank, generator=g) @ torch.randn(rank, m * ratio, generator=g)
    update += 1e-5 * torch.randn(update.shape, generator=g)
    expected = _plain_newton_schulz(update, steps)
    out = orthogonalize(update, steps=steps)
    assert out.dtype == update.dtype
    tall = orthogonalize(update.mT.contiguous(), steps=steps).mT
    for result in out, tall:
        assert float((result.double() - expected).norm() / expected.norm()) < 1e-2


def test_muon_orthogonalises_the_filters_and_takes_sgd_for_the_rest() -> None:
    model = create_model("resnet8", in_chans=1, num_classes=10)
    cfg = OptimConfig(name="muon", lr=0.1, muon_lr=0.05, muon_momentum=0.8, weight_decay=1e-3)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, Muon)
    muon, *rest = opt.param_groups
    assert muon["orthogonalize"] and muon["lr"] == 0.05 and muon["momentum"] == 0.8
    assert all(p.ndim == 4 for p in muon["params"]) and muon["params"]
    assert not any(g["orthogonalize"] for g in rest)
    assert all(p.ndim < 4 for g in rest for p in g["params"])
    decayed = {id(p) for g in rest if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(model.fc.weight)}
    everything = [p for g in opt.param_groups for p in g["params"]]
    assert len(everything) == len(list(model.parameters()))

    # One step on a filter: rescaled to norm sqrt(out), then moved by lr x orthogonalised step.
    conv = model.conv1.weight if hasattr(model, "conv1") else muon["params"][0]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before, grad = conv.detach().clone(), conv.grad.clone()
    opt.step()
    scaled = before * conv.shape[0] ** 0.5 / before.norm()
    nesterov = grad * (1 + 0.8)  # the first step's buffer is the gradient itself
    expected = scaled - 0.05 * orthogonalize(nesterov.reshape(len(grad), -1)).view_as(grad)
    torch.testing.assert_close(conv.detach(), expected)


def test_muon_matches_torch_sgd_where_it_does_not_orthogonalise() -> None:
    torch.manual_seed(0)
    ours, theirs = nn.Linear(4, 3), nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    cfg = OptimConfig(name="muon", lr=0.1, momentum=0.9, weight_decay=1e-2)
    a = build_optimizer(ours, cfg)
    b = build_optimizer(theirs, OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2))
    for _ in range(3):
        x = torch.randn(8, 4)
        for model, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(ours.weight, theirs.weight)
    torch.testing.assert_close(ours.bias, theirs.bias)


def test_muon_state_resumes_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    cfg = OptimConfig(name="muon", lr=0.1)
    opt = build_optimizer(model, cfg)
    x = torch.randn(4, 2, 6, 6)

    def step(m: nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()

    step(model, opt)
    resumed = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    resumed.load_state_dict(model.state_dict())
    other = build_optimizer(resumed, cfg)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if read from a file
    step(model, opt)
    step(resumed, other)
    torch.testing.assert_close(resumed[0].weight, model[0].weight, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (OptimConfig(name="lamb"), "use sgd, adamw or muon"),
        (OptimConfig(lr=0.0), "must be positive"),
        (OptimConfig(name="muon", muon_lr=0.0), "muon_lr must be positive"),
        (OptimConfig(name="muon", muon_momentum=1.0), r"must be in \[0, 1\)"),
    ],
)
def test_bad_optimiser_settings_are_config_errors(cfg: OptimConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_optimizer(nn.Linear(3, 2), cfg)


def test_ema_follows_the_weights_with_a_warmed_up_decay() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 7
    ema.update(model)
    d = min(0.9, 2 / 11)  # the first update's decay is warmed up
    expected = d * start + (1 - d) * model[0].weight.detach()
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_state_round_trips() -> None:
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            model.weight.mul_(1.5)
        ema.update(model)
    other = ModelEMA(nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3
    torch.testing.assert_close(other.module.weight, ema.module.weight)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_ema_decay_outside_the_open_interval_is_refused(decay: float) -> None:
    with pytest.raises(ConfigError, match="ema_decay"):
        ModelEMA(nn.Linear(2, 2), decay)
