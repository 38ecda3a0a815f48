"""Adversarial training: a real, seeded tiny run resists PGD better, and resumes exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from resnetkit.config import AdversarialConfig, TrainConfig
from resnetkit.data import AugmentSpec, augment_batch, compute_preprocessing, load_dataset
from resnetkit.errors import ConfigError
from resnetkit.export import load_model_ref
from resnetkit.models import create_model
from resnetkit.train import train
from resnetkit.train.adversarial import (
    PixelSpaceModel,
    adversarial_batch,
    attack,
    pgd,
    worst_case_accuracy,
)
from resnetkit.train.loop import Trainer

from .conftest import tiny_config

EPS = 0.1  # the target eps; small enough that a tiny run can learn to resist it


def _adversarial(cfg: TrainConfig, **kwargs: object) -> TrainConfig:
    return dataclasses.replace(cfg, adversarial=AdversarialConfig(**kwargs))  # type: ignore[arg-type]


def _pgd_accuracy(run: Path, count: int = 256) -> float:
    loaded = load_model_ref(str(run))
    model = PixelSpaceModel(loaded.module("cpu"), loaded.spec)
    test = loaded.dataset("test", limit=count)
    pixels = test.images.float() / 255
    gen = torch.Generator().manual_seed(0)
    adv = pgd(model, pixels, test.labels, EPS, steps=10, generator=gen)
    with torch.no_grad():
        return float((model(adv).argmax(1) == test.labels).float().mean())


@pytest.mark.slow
def test_fast_fgsm_training_raises_pgd_accuracy_at_small_eps(tmp_path: Path) -> None:
    # Four epochs of 8 steps: the plain model falls to ~0% under PGD at eps 0.1, the
    # adversarially trained one keeps ~16% (seeded, so the same numbers every run).
    cfg = tiny_config(epochs=4)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, label_smoothing=0.0))
    train(cfg, tmp_path / "plain")
    train(_adversarial(cfg, method="fgsm-rs", eps=EPS), tmp_path / "adv")
    plain, adv = _pgd_accuracy(tmp_path / "plain"), _pgd_accuracy(tmp_path / "adv")
    assert adv >= plain + 0.08, (plain, adv)


class _CrashAtStep5(Trainer):
    """Dies after the 5th step, past the checkpoint at step 3: what a kill leaves behind."""

    def after_step(self) -> None:
        if self.global_step == 4:  # counted before the increment: this is the 5th step
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "clean_weight"), [("fgsm-rs", 0.0), ("pgd", 0.0), ("fgsm-rs", 0.5)]
)
def test_resume_with_adversarial_training_matches_uninterrupted_run(
    tmp_path: Path, method: str, clean_weight: float
) -> None:
    cfg = _adversarial(
        tiny_config(epochs=1, checkpoint_every_steps=3),
        method=method, eps=0.1, steps=2, clean_weight=clean_weight,
    )  # fmt: skip
    train(cfg, tmp_path / "uninterrupted")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crashed", trainer=_CrashAtStep5)
    assert not (tmp_path / "crashed" / "model.safetensors").exists()
    train(cfg, tmp_path / "crashed", resume=True)
    a = load_file(str(tmp_path / "uninterrupted" / "model.safetensors"))
    b = load_file(str(tmp_path / "crashed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "fgsm"}, "adversarial.method"),
        ({"method": "pgd", "eps": 1.5}, "adversarial.eps"),
        ({"method": "pgd", "steps": 0}, "adversarial.steps"),
        ({"method": "fgsm-rs", "alpha": -0.1}, "adversarial.alpha"),
        ({"method": "fgsm-rs", "clean_weight": 1.0}, "adversarial.clean_weight"),
        ({"method": "fgsm-rs", "clean_weight": -0.5}, "adversarial.clean_weight"),
    ],
)
def test_bad_adversarial_settings_fail_before_any_work(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(_adversarial(tiny_config(), **settings), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_clean_weight_leaves_its_share_clean_and_the_batch_loss_is_the_mixed_objective() -> None:
    data = load_dataset("fashion-mnist", "train", limit=32)
    spec = compute_preprocessing(data)
    model = create_model("resnet8", in_chans=1, num_classes=10, width=0.25).eval()
    gen = torch.Generator().manual_seed(0)
    batch = augment_batch(data.images, data.labels, AugmentSpec(hflip=False), spec, gen)
    cfg = AdversarialConfig("fgsm-rs", eps=0.1, clean_weight=0.25)
    x = adversarial_batch(
        model, batch, cfg, spec, torch.Generator().manual_seed(1), contextlib.nullcontext
    )
    assert torch.equal(x[:8], batch.images[:8])  # round(0.25 * 32) images stay clean
    # The other 24 are exactly the attack of those 24 alone, from the same random start.
    rest = dataclasses.replace(
        batch, images=batch.images[8:], targets=batch.targets[8:],
        partner_targets=batch.partner_targets[8:],
    )  # fmt: skip
    all_attacked = dataclasses.replace(cfg, clean_weight=0.0)
    expected = adversarial_batch(
        model, rest, all_attacked, spec, torch.Generator().manual_seed(1), contextlib.nullcontext
    )
    assert torch.equal(x[8:], expected)
    assert float((x[8:] - batch.images[8:]).abs().amax(dim=(1, 2, 3)).min()) > 0
    with torch.no_grad():
        logits = model(x)
        mixed = batch.cross_entropy(logits)
        clean = F.cross_entropy(logits[:8], batch.targets[:8])
        adv = F.cross_entropy(logits[8:], batch.targets[8:])
    torch.testing.assert_close(mixed, 0.25 * clean + 0.75 * adv)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[PixelSpaceModel, torch.Tensor, torch.Tensor]:
    from tests.export.rundir import trained_run_dir

    loaded = load_model_ref(str(trained_run_dir(str(tmp_path_factory.getbasetemp()))))
    test = loaded.dataset("test", limit=200)
    return (
        PixelSpaceModel(loaded.module("cpu"), loaded.spec),
        test.images.float() / 255,
        test.labels,
    )


def _accuracy(model: PixelSpaceModel, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(pixels).argmax(1) == labels).float().mean())


@pytest.mark.slow
def test_attacks_stay_in_the_eps_ball_and_the_pixel_range_and_order_as_expected(
    trained: tuple[PixelSpaceModel, torch.Tensor, torch.Tensor],
) -> None:
    model, pixels, labels = trained
    clean = _accuracy(model, pixels, labels)
    previous_pgd = clean
    for eps in (0.02, 0.05, 0.1):
        gen = torch.Generator().manual_seed(0)
        adv_fgsm = attack("fgsm", model, pixels, labels, eps)
        adv_pgd = attack("pgd", model, pixels, labels, eps, steps=10, generator=gen)
        for adv in (adv_fgsm, adv_pgd):
            assert float((adv - pixels).abs().max()) <= eps + 1e-6
            assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        fgsm_acc, pgd_acc = _accuracy(model, adv_fgsm, labels), _accuracy(model, adv_pgd, labels)
        assert clean >= fgsm_acc >= pgd_acc
        assert pgd_acc <= previous_pgd
        previous_pgd = pgd_acc
    assert previous_pgd < clean - 0.3  # eps 0.1 breaks an undefended model


@pytest.mark.slow
def test_our_pgd_matches_torchattacks(
    trained: tuple[PixelSpaceModel, torch.Tensor, torch.Tensor],
) -> None:
    torchattacks = pytest.importorskip(
        "torchattacks", reason="torchattacks is a test-only extra (pip install --no-deps)"
    )
    model, pixels, labels = trained
    for eps in (0.05, 0.1):
        ours = pgd(model, pixels, labels, eps, steps=10, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        theirs = torchattacks.PGD(
            model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True
        )(pixels, labels)
        # The goal: within 1 point (with the same seed both draw the same start).
        assert abs(_accuracy(model, ours, labels) - _accuracy(model, theirs, labels)) <= 0.01


def test_adversarial_section_is_read_from_toml_and_written_back(tmp_path: Path) -> None:
    from resnetkit.config import from_dict, load_toml, save_toml, to_dict

    path = tmp_path / "config.toml"
    path.write_text(
        'epochs = 1\n\n[adversarial]\nmethod = "pgd"\neps = 0.05\nsteps = 3\nclean_weight = 0.5\n'
    )
    cfg = from_dict(TrainConfig, load_toml(path))
    assert cfg.adversarial == AdversarialConfig(method="pgd", eps=0.05, steps=3, clean_weight=0.5)
    save_toml(tmp_path / "again.toml", to_dict(cfg))
    assert from_dict(TrainConfig, load_toml(tmp_path / "again.toml")) == cfg
    with pytest.raises(ConfigError, match=r"adversarial\.epsilon"):
        from_dict(TrainConfig, {"adversarial": {"epsilon": 0.1}})


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.dictionaries(
                st.tuples(st.sampled_from(["fgsm", "pgd"]), st.sampled_from([0.05, 0.1, 0.2])),
                st.lists(st.booleans(), min_size=n, max_size=n),
                max_size=6,
            ),
        )
    )
)
def test_worst_case_accuracy_is_the_per_image_worst_within_each_budget(case: tuple) -> None:
    clean_rows, attack_rows = case
    clean = torch.tensor(clean_rows)
    correct = {key: torch.tensor(rows) for key, rows in attack_rows.items()}
    budgets = [0.05, 0.1, 0.2, 0.3]
    worst = worst_case_accuracy(clean, correct, budgets)
    for budget, value in zip(budgets, worst, strict=True):
        survivors = [
            i for i in range(len(clean_rows))
            if clean_rows[i] and all(rows[i] for (_, e), rows in attack_rows.items() if e <= budget)
        ]  # fmt: skip
        assert value == pytest.approx(len(survivors) / len(clean_rows))
        assert value <= float(clean.float().mean()) + 1e-9
        for (_, e), right in correct.items():
            if e <= budget:
                assert value <= float(right.float().mean()) + 1e-9
    assert all(b <= a for a, b in itertools.pairwise(worst))  # never increases
