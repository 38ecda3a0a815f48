"""Optimisers with their weight-decay exclusions, and the weight EMA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetkit.config import OptimConfig
from resnetkit.errors import ConfigError
from resnetkit.models import create_model
from resnetkit.train.optim import ModelEMA, build_optimizer, param_groups


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


@pytest.mark.parametrize(
    ("cfg", "message"),
    [(OptimConfig(name="lamb"), "use sgd or adamw"), (OptimConfig(lr=0.0), "must be positive")],
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
