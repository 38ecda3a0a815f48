"""Unstructured magnitude pruning: exact counts, the smallest weights, zeros kept while tuning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnetkit import ConfigError, create_model, profile
from resnetkit.compress.sparse import (
    SparseTrainer,
    magnitude_prune,
    measure_sparsity,
    sparse_finetune,
)
from resnetkit.models import load_model, save_model
from resnetkit.train import load_checkpoint

from ..train.conftest import tiny_config


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            m.weight.detach().flatten()
            for m in model.modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        ]
    )


@settings(max_examples=25, deadline=None)
@given(ratio=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_exactly_the_smallest_weights_are_zeroed(ratio: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = create_model("resnet8", width=0.5, in_chans=1, num_classes=10)
    before = _weights(model).abs()
    sparsity = magnitude_prune(model, ratio)
    after = _weights(model)
    assert sparsity.zeros == int((after == 0).sum()) == round(ratio * before.numel())
    pruned, kept = before[after == 0], before[after != 0]
    if pruned.numel() and kept.numel():
        assert pruned.max() <= kept.min()  # one global threshold, nothing larger is cut
    assert torch.equal(after[after != 0].abs(), kept)  # the rest is untouched


def test_global_threshold_prunes_layers_unevenly_and_keeps_shapes() -> None:
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1, num_classes=10)
    size = (1, 28, 28)
    macs = profile(model, size).macs
    sparsity = magnitude_prune(model, 0.5)
    assert sparsity.ratio == pytest.approx(0.5, abs=1e-6)
    shares = list(sparsity.per_layer.values())
    assert min(shares) < 0.4 and max(shares) > 0.5  # wide layers have smaller weights
    assert profile(model, size).macs == macs  # dense kernels: nothing gets cheaper
    assert measure_sparsity(model) == sparsity


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_ratio_outside_zero_to_one_is_refused(ratio: float) -> None:
    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
        magnitude_prune(create_model("resnet8"), ratio)


def test_a_model_without_conv_or_linear_layers_is_refused() -> None:
    with pytest.raises(ConfigError, match="no convolution or linear weights"):
        magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)


def test_fine_tuning_keeps_the_zeros_and_moves_the_rest(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1, checkpoint_every_steps=3, ema_decay=0.9)
    torch.manual_seed(0)
    model = create_model("resnet8", width=0.5, in_chans=1, num_classes=10)
    magnitude_prune(model, 0.6)
    save_model(model, tmp_path / "init", arch="resnet8", kwargs={"width": 0.5, "in_chans": 1})
    init = tmp_path / "init" / "model.safetensors"
    cfg = dataclasses.replace(cfg, init_from=str(init))
    sparse_finetune(cfg, tmp_path / "run")
    tuned, _ = load_model(tmp_path / "run")  # the EMA weights: averaged after the masks
    start, end = _weights(model), _weights(tuned)
    assert torch.equal(end == 0, start == 0)
    assert not torch.equal(start, end)  # the kept weights trained
    live = create_model("resnet8", width=0.5, in_chans=1, num_classes=10)
    live.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["model"])
    assert torch.equal(_weights(live) == 0, start == 0)  # the live weights, not only the EMA
    resumed = SparseTrainer(cfg, tmp_path / "run", resume=True)  # masks rebuilt from the checkpoint
    assert torch.equal(torch.cat([m.flatten() for m in resumed._masks]) == 0, start == 0)


def test_sparse_fine_tuning_needs_a_starting_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set init_from"):
        sparse_finetune(tiny_config(), tmp_path / "run")
