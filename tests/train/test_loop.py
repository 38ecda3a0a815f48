"""The training loop as users rely on it: reproducible, resumable, guarded, complete."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnetkit.config import AugmentConfig, OptimConfig, TrainConfig, to_dict
from resnetkit.data import AugmentedBatch
from resnetkit.errors import ConfigError, TrainingError
from resnetkit.models import load_model
from resnetkit.train import load_checkpoint, train
from resnetkit.train.loop import Trainer, drift_reference
from resnetkit.train.setup import build_model, load_train_data, model_kwargs

from .conftest import tiny_config


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _metrics(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _losses(run_dir: Path) -> list[tuple[float, float]]:
    return [(m["train_loss"], m["val_loss"]) for m in _metrics(run_dir)]


def test_run_directory_holds_everything_later_stages_read(tmp_path: Path) -> None:
    result = train(tiny_config(), tmp_path / "run")
    run = tmp_path / "run"
    for name in ["config.toml", "metrics.jsonl", "model.safetensors", "model.json"]:
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "latest.pt").is_file()
    assert (run / "checkpoints" / "best.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and len(summary["dataset"]["fingerprint"]) == 64
    model, card = load_model(run)
    assert (
        card.labels[0] == "T-shirt/top"
        and card.preprocessing is not None
        and card.preprocessing.channels == 1
    )
    assert card.extra["profile"]["params"] == sum(p.numel() for p in model.parameters())
    drift = load_file(str(run / "drift_reference.safetensors"))
    assert drift["embeddings"].shape == (64, model.num_features)
    torch.testing.assert_close(drift["probabilities"].sum(1), torch.ones(64))
    assert result.epochs_run == 2 and len(_metrics(run)) == 2
    for record in _metrics(run):  # what each epoch cost: CPU time, and dollars both ways
        assert record["epoch_cpu_seconds"] > 0
        assert record["epoch_usd_allocation"] > 0 and record["epoch_usd_usage"] > 0


def test_drift_reference_without_validation_split_is_a_bounded_sample_of_every_class() -> None:
    cfg = tiny_config(data=dataclasses.replace(tiny_config().data, val_fraction=0.0))
    data = load_train_data(cfg.data, cfg.seed)
    ordered = torch.argsort(data.train.labels, stable=True)  # as an ImageFolder stores it
    by_class = dataclasses.replace(
        data,
        train=dataclasses.replace(
            data.train, images=data.train.images[ordered], labels=data.train.labels[ordered]
        ),
    )
    model = build_model(cfg, model_kwargs(cfg, data), torch.device("cpu"), data)
    reference = drift_reference(model, by_class, max_samples=100)
    assert reference["embeddings"].shape == (100, model.num_features)
    assert reference["labels"].unique().tolist() == list(range(10))


def test_same_seed_gives_the_same_loss_curve_bit_for_bit(tmp_path: Path) -> None:
    train(tiny_config(), tmp_path / "a")
    train(tiny_config(), tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    train(tiny_config(seed=1), tmp_path / "c")
    assert _losses(tmp_path / "c") != _losses(tmp_path / "a")


_KILLABLE = textwrap.dedent(
    """
    import json, sys
    from resnetkit.config import TrainConfig, from_dict
    from resnetkit.train import train
    cfg = from_dict(TrainConfig, json.loads(sys.argv[1]))
    train(cfg, sys.argv[2])
    """
)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    # Alternating flips depend on the epoch and the samples' indices: resuming mid-epoch
    # must recompute them, where random crops come from the restored generator.
    # Small crops in the first two epochs: the resumed epoch must still use them.
    cfg = tiny_config(epochs=3, checkpoint_every_steps=3, ema_decay=0.9)
    augment = dataclasses.replace(
        cfg.augment, alternate_flips=True, small_crop=22, small_crop_epochs=2
    )
    cfg = dataclasses.replace(cfg, augment=augment)
    train(cfg, tmp_path / "uninterrupted")

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, json.dumps(to_dict(cfg)), str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    position = None
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file():
            position = load_checkpoint(latest)["position"]
            if position["epoch"] == 1 and position["step"] > 0:  # mid-way through epoch 2
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert position is not None and position["step"] > 0
    assert not (run / "model.safetensors").exists()

    train(cfg, run, resume=True)
    _assert_same_weights(tmp_path / "uninterrupted", run)
    assert _losses(tmp_path / "uninterrupted") == _losses(run)


def test_whitening_stem_is_fitted_to_the_training_data_and_saved(tmp_path: Path) -> None:
    model_cfg = dataclasses.replace(
        tiny_config().model, arch="resnet9_s", kwargs={"width": 0.5, "stem": "whiten"}
    )
    train(tiny_config(model=model_cfg, epochs=1), tmp_path / "a")
    train(tiny_config(model=model_cfg, epochs=1), tmp_path / "b")
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    filters = _weights(tmp_path / "a")["stem.0.weight"]  # fixed: the fit, not trained
    assert filters.shape == (8, 1, 2, 2)
    rows = filters[:4].reshape(4, 4)  # eigenvectors / sqrt(eigenvalue): orthogonal rows
    gram = rows @ rows.T
    assert gram.diagonal().amin() > 0
    torch.testing.assert_close(gram, torch.diag(gram.diagonal()), atol=1e-4, rtol=0)
    model, _ = load_model(tmp_path / "a")
    torch.testing.assert_close(model.stem[0].weight, filters)


def test_non_finite_loss_stops_with_step_and_intact_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(
        optim=OptimConfig(lr=1e12, warmup_epochs=0.0, schedule="constant"),
        precision="fp32",
        checkpoint_every_steps=1,
        epochs=3,
    )
    with pytest.raises(TrainingError, match=r"diverged at epoch \d+ step \d+.*latest.pt"):
        train(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_existing_run_is_not_overwritten_and_resume_needs_the_same_config(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1)
    train(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="batch_size"):
        train(dataclasses.replace(cfg, batch_size=64), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_early_stopping_ends_a_run_that_no_longer_improves(tmp_path: Path) -> None:
    cfg = tiny_config(
        epochs=6,
        early_stop_patience=1,
        optim=OptimConfig(lr=1e-12, schedule="constant", warmup_epochs=0.0),
    )
    result = train(cfg, tmp_path / "run")
    assert result.stopped_early and result.epochs_run == 2


def test_frozen_backbone_trains_only_the_head_and_keeps_bn_statistics(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1)
    train(cfg, tmp_path / "source")
    frozen = tiny_config(
        epochs=1, init_from=str(tmp_path / "source" / "model.safetensors"), freeze="backbone"
    )
    train(frozen, tmp_path / "frozen")
    before, after = _weights(tmp_path / "source"), _weights(tmp_path / "frozen")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}


def test_init_from_another_head_size_keeps_the_backbone(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1)
    train(cfg, tmp_path / "source")
    transfer = dataclasses.replace(
        tiny_config(init_from=str(tmp_path / "source" / "model.safetensors")),
        model=dataclasses.replace(cfg.model, kwargs={"width": 0.5, "num_classes": 4}),
    )
    trainer = Trainer(transfer, tmp_path / "transfer")
    source = _weights(tmp_path / "source")
    own = trainer.model.state_dict()
    assert own["fc.weight"].shape == (4, 32)
    assert torch.equal(own["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])


class _InputSizes(Trainer):
    """Records the side of the training inputs in each epoch."""

    sizes: frozenset[tuple[int, int]] = frozenset()

    def compute_loss(
        self, logits: torch.Tensor, batch: AugmentedBatch, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.sizes = self.sizes | {(self.epoch, inputs.shape[-1])}
        return super().compute_loss(logits, batch, inputs)


def test_small_crops_train_the_first_epochs_and_full_size_the_rest(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=3)
    augment = dataclasses.replace(cfg.augment, small_crop=20, small_crop_epochs=2)
    trainer = _InputSizes(dataclasses.replace(cfg, augment=augment), tmp_path / "run")
    trainer.fit()
    assert trainer.sizes == {(0, 20), (1, 20), (2, 28)}


def test_the_last_epoch_is_full_size_whatever_the_small_crop_epochs(tmp_path: Path) -> None:
    # A recipe with 3 small-crop epochs run with --epochs 2: the model still ends at the size
    # it is tested at.
    cfg = tiny_config(epochs=2)
    augment = dataclasses.replace(cfg.augment, small_crop=20, small_crop_epochs=3)
    trainer = _InputSizes(dataclasses.replace(cfg, augment=augment), tmp_path / "run")
    trainer.fit()
    assert trainer.sizes == {(0, 20), (1, 28)}


class _StemBias(Trainer):
    """Records the whitening stem's bias, and whether it took a gradient, after each epoch."""

    biases: list[tuple[torch.Tensor, bool]]

    def _train_epoch(self) -> None:
        super()._train_epoch()
        bias = self.model.stem[0].bias
        self.biases = [*getattr(self, "biases", []), (bias.detach().clone(), bias.grad is not None)]


def test_the_whitening_bias_trains_only_in_its_first_epochs(tmp_path: Path) -> None:
    model_cfg = dataclasses.replace(
        tiny_config().model, arch="resnet9_s", kwargs={"width": 0.5, "stem": "whiten"}
    )
    optim = dataclasses.replace(tiny_config().optim, whiten_bias_epochs=1)
    trainer = _StemBias(tiny_config(model=model_cfg, optim=optim, epochs=3), tmp_path / "run")
    fc_before = trainer.model.fc.weight.detach().clone()
    trainer.fit()
    (first, grad0), (second, grad1), (third, grad2) = trainer.biases
    assert grad0 and not grad1 and not grad2  # no gradient computed once it stops
    assert first.abs().amax() > 0  # it moved from zero in the first epoch...
    assert torch.equal(first, second) and torch.equal(second, third)  # ...and not after
    assert not torch.equal(trainer.model.fc.weight, fc_before)  # the rest still trains
    negative = dataclasses.replace(optim, whiten_bias_epochs=-1)
    with pytest.raises(ConfigError, match="whiten_bias_epochs must be >= 0"):
        train(tiny_config(model=model_cfg, optim=negative), tmp_path / "negative")
    assert not (tmp_path / "negative").exists()


def test_a_model_without_a_whitening_stem_ignores_whiten_bias_epochs(tmp_path: Path) -> None:
    # The quickstart recipe with --model resnet8: the setting is the recipe's stem's, like its
    # stem argument, which the other model does not take either.
    optim = dataclasses.replace(tiny_config().optim, whiten_bias_epochs=1)
    train(tiny_config(optim=optim, epochs=1), tmp_path / "resnet8")
    assert (tmp_path / "resnet8" / "model.safetensors").is_file()


def test_ema_weights_are_the_ones_saved(tmp_path: Path) -> None:
    train(tiny_config(epochs=1, ema_decay=0.5), tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    saved = _weights(tmp_path / "run")
    assert torch.equal(saved["fc.weight"], state["ema"]["module"]["fc.weight"])
    assert not torch.equal(saved["fc.weight"], state["model"]["fc.weight"])


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(tiny_config(precision="fp16", device="cpu"), tmp_path / "a")
    with pytest.raises(ConfigError, match="freeze"):
        train(tiny_config(freeze="everything"), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"optim\.name"):
        train(tiny_config(optim=OptimConfig(name="lion")), tmp_path / "c")
    with pytest.raises(ConfigError, match="tta_shift"):
        train(tiny_config(tta_shift=-1), tmp_path / "d")  # refused before training, not after
    with pytest.raises(ConfigError, match=r"small_crop = 40 does not fit .* use 1 to 32"):
        train(tiny_config(augment=AugmentConfig(small_crop=40)), tmp_path / "e")
    with pytest.raises(ConfigError, match="small_crop_epochs"):
        train(tiny_config(augment=AugmentConfig(small_crop_epochs=-1)), tmp_path / "f")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_training_with_mixed_precision(tmp_path: Path, precision: str) -> None:
    cfg = tiny_config(device="cuda", precision=precision, channels_last=True)
    result = train(cfg, tmp_path / "run")
    assert result.val_accuracy is not None and result.val_accuracy > 0.3
    assert isinstance(cfg, TrainConfig)
