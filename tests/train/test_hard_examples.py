"""Late epochs on the hardest images: which images, how many steps, exact resume, bad settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from resnetkit.config import HardExamplesConfig, TrainConfig
from resnetkit.errors import ConfigError
from resnetkit.train import load_checkpoint, train
from resnetkit.train.distributed import DistEnv
from resnetkit.train.hard_examples import HardExamples
from resnetkit.train.loop import Trainer

from .conftest import tiny_config

_ALONE = DistEnv()


def _table(losses: torch.Tensor, fraction: float, random_fraction: float) -> HardExamples:
    cfg = HardExamplesConfig(epochs=1, fraction=fraction, random_fraction=random_fraction)
    table = HardExamples(cfg, 3, losses.numel(), seed=7, device=torch.device("cpu"))
    table.record(torch.arange(losses.numel()), losses)
    table.sync(_ALONE)
    return table


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    fraction=st.floats(0.01, 1.0),
    share=st.floats(0.0, 1.0),
    epoch=st.integers(0, 50),
)
def test_a_hard_epoch_takes_the_highest_losses_and_a_random_share_of_the_rest(
    n: int, fraction: float, share: float, epoch: int
) -> None:
    losses = torch.randperm(n).float()  # distinct, so "the highest" is one set
    table = _table(losses, fraction, share * (1 - fraction))
    order = table.order(epoch)
    assert order.numel() == table.count == len(set(order.tolist()))  # no image twice
    top = set(torch.argsort(losses, descending=True)[: table.top].tolist())
    assert top <= set(order.tolist())
    assert torch.equal(order, table.order(epoch))  # a function of (seed, epoch, losses)


def test_the_random_share_and_the_order_change_from_epoch_to_epoch() -> None:
    table = _table(torch.arange(1000).float(), 0.3, 0.2)
    first, second = table.order(1), table.order(2)
    assert set(range(700, 1000)) <= set(first.tolist()) & set(second.tolist())
    assert set(first.tolist()) != set(second.tolist())  # another random 200 of the rest
    assert first.numel() == second.numel() == 500


def test_sync_merges_only_the_images_trained_on_since_the_last_one() -> None:
    table = _table(torch.ones(6), 0.5, 0.0)
    table.record(torch.tensor([4, 1]), torch.tensor([9.0, 5.0]))
    assert torch.equal(table.losses, torch.ones(6))  # nothing moves before the sync
    table.sync(_ALONE)
    assert table.losses.tolist() == [1, 5, 1, 1, 9, 1]
    assert set(table.order(3).tolist()) == {4, 1, 0}  # among equal losses, the first index
    restored = HardExamples(table.cfg, 3, 6, seed=7, device=torch.device("cpu"))
    restored.load_state_dict(table.state_dict())
    assert torch.equal(restored.order(2), table.order(2))
    with pytest.raises(ConfigError, match="loss table has 6 images, the data 8"):
        HardExamples(table.cfg, 3, 8, seed=7, device=torch.device("cpu")).load_state_dict(
            table.state_dict()
        )


def _hard(
    cfg: TrainConfig, epochs: int = 2, fraction: float = 0.25, rand: float = 0.25
) -> TrainConfig:
    return dataclasses.replace(
        cfg,
        hard_examples=HardExamplesConfig(epochs=epochs, fraction=fraction, random_fraction=rand),
        optim=dataclasses.replace(cfg.optim, schedule="linear"),
    )


class _Seen(Trainer):
    """Records the dataset indices of every step, and the loss table at each epoch's start."""

    seen: dict[int, list[int]]
    tables: dict[int, torch.Tensor]

    def _train_epoch(self) -> None:
        self.seen = getattr(self, "seen", {})
        self.tables = getattr(self, "tables", {})
        assert self.hard is not None
        self.tables[self.epoch] = self.hard.losses.clone()
        super()._train_epoch()

    def _train_step(self, images, labels, flips, indices=None):  # type: ignore[no-untyped-def]
        assert indices is not None
        self.seen.setdefault(self.epoch, []).extend(indices.tolist())
        return super()._train_step(images, labels, flips, indices)


def test_the_hard_epochs_train_on_the_highest_losses_at_the_same_schedule(tmp_path: Path) -> None:
    # 1,024 training images, batches of 128: epochs 2 and 3 of 4 take 256 + 256 of them.
    trainer = _Seen(_hard(tiny_config(epochs=4)), tmp_path / "run")
    trainer.fit()
    assert [len(trainer.seen[e]) for e in range(4)] == [1024, 512, 512, 1024]
    for epoch in (1, 2):
        table = trainer.tables[epoch]
        assert table.min() > 0  # every image's loss is known after the first epoch
        hardest = set(torch.argsort(table, descending=True)[:256].tolist())
        assert hardest <= set(trainer.seen[epoch])
    # The table follows the images trained on: epoch 2's hard set, as seen in epoch 2.
    changed = (trainer.tables[2] != trainer.tables[1]).nonzero().flatten().tolist()
    assert set(changed) == set(trainer.seen[1])
    # The schedule counts the shorter epochs: 24 steps, and a linear decay ends at zero.
    steps = [r["step"] for r in _read_metrics(tmp_path / "run")]
    assert steps == [8, 12, 16, 24] and trainer.total_steps == 24
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def _read_metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class _CrashInHardEpoch(Trainer):
    """Dies after the 11th step: the 3rd of the first hard epoch, past its checkpoint at 10."""

    def after_step(self) -> None:
        if self.global_step == 10:
            raise KeyboardInterrupt


def test_a_run_killed_in_a_hard_epoch_resumes_exactly(tmp_path: Path) -> None:
    cfg = _hard(tiny_config(epochs=4, checkpoint_every_steps=2))
    train(cfg, tmp_path / "uninterrupted")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crashed", trainer=_CrashInHardEpoch)
    position = load_checkpoint(tmp_path / "crashed" / "checkpoints" / "latest.pt")["position"]
    assert (position["epoch"], position["step"]) == (1, 2) and position["order"] is not None
    train(cfg, tmp_path / "crashed", resume=True)
    a = load_file(str(tmp_path / "uninterrupted" / "model.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_shorter_than_the_recipe_keeps_its_first_and_last_epochs_whole(
    tmp_path: Path,
) -> None:
    # A recipe with 8 hard epochs run with --epochs 3: only the middle one can be hard.
    trainer = _Seen(_hard(tiny_config(epochs=3), epochs=8), tmp_path / "three")
    trainer.fit()
    assert [len(trainer.seen[e]) for e in range(3)] == [1024, 512, 1024]
    trainer = _Seen(_hard(tiny_config(epochs=2), epochs=8), tmp_path / "two")
    trainer.fit()
    assert [len(trainer.seen[e]) for e in range(2)] == [1024, 1024]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": -1}, r"hard_examples\.epochs must be >= 0 \(0: off\), got -1"),
        ({"epochs": 1, "fraction": 0.0}, r"hard_examples\.fraction must be in \(0, 1\]"),
        ({"epochs": 1, "fraction": 1.5}, r"hard_examples\.fraction"),
        ({"epochs": 1, "fraction": 0.9, "random_fraction": 0.2}, r"random_fraction .* 0\.1\]"),
        ({"epochs": 1, "random_fraction": -0.1}, r"hard_examples\.random_fraction"),
    ],
)
def test_bad_hard_example_settings_fail_before_any_work(
    tmp_path: Path, settings: dict[str, float], message: str
) -> None:
    cfg = dataclasses.replace(tiny_config(epochs=4), hard_examples=HardExamplesConfig(**settings))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
