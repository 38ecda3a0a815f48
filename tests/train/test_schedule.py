"""Learning-rate schedules: warmup, then a decay that ends where it should."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnetkit.errors import ConfigError
from resnetkit.train.schedule import MAX_WARMUP_FRACTION, SCHEDULES, lr_factor, warmup_steps

DECAYING = ("cosine", "linear", "onecycle")


@st.composite
def schedules(draw: st.DrawFn) -> tuple[str, int, int, float]:
    total = draw(st.integers(1, 5000))
    warmup = draw(st.integers(0, total))
    return draw(st.sampled_from(SCHEDULES)), total, warmup, draw(st.floats(0.0, 0.5))


@given(schedules())
def test_the_factor_stays_between_the_floor_and_the_peak(s: tuple[str, int, int, float]) -> None:
    kind, total, warmup, floor = s
    for step in range(0, total + 2, max(1, total // 50)):
        f = lr_factor(step, total, warmup_steps=warmup, kind=kind, min_ratio=floor)
        assert (f > 0.0 if step < warmup else floor - 1e-12 <= f) and f <= 1.0 + 1e-12


@given(schedules())
def test_warmup_rises_and_the_decay_never_rises(s: tuple[str, int, int, float]) -> None:
    kind, total, warmup, floor = s
    factors = [
        lr_factor(step, total, warmup_steps=warmup, kind=kind, min_ratio=floor)
        for step in range(total)
    ]
    rising, falling = factors[:warmup], factors[warmup:]
    assert all(a < b for a, b in itertools.pairwise(rising))
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(falling))


@pytest.mark.parametrize("kind", DECAYING)
def test_decay_starts_at_the_peak_and_ends_at_the_floor(kind: str) -> None:
    assert lr_factor(10, 110, warmup_steps=10, kind=kind, min_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor(110, 110, warmup_steps=10, kind=kind, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(9, 110, warmup_steps=10, kind=kind) == pytest.approx(1.0)


def test_linear_is_half_way_at_half_of_the_decay_and_cosine_too() -> None:
    assert lr_factor(60, 110, warmup_steps=10, kind="linear") == pytest.approx(0.5)
    assert lr_factor(60, 110, warmup_steps=10, kind="cosine") == pytest.approx(0.5)
    quarter = lr_factor(35, 110, warmup_steps=10, kind="cosine")
    assert quarter == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_onecycle_warms_up_from_a_25th_of_the_peak() -> None:
    assert lr_factor(0, 100, warmup_steps=100, kind="onecycle") == pytest.approx(
        1 / 25 + 0.96 / 100
    )
    assert lr_factor(0, 100, warmup_steps=100, kind="cosine") == pytest.approx(1 / 100)


def test_constant_holds_the_peak_after_warmup() -> None:
    assert [lr_factor(s, 10, warmup_steps=2, kind="constant") for s in range(4)] == [
        0.5,
        1.0,
        1.0,
        1.0,
    ]


def test_an_unknown_schedule_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="cosine, linear, onecycle, constant"):
        lr_factor(0, 10, kind="step")


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_a_short_run_warms_up_for_a_fraction_of_it_and_ends_annealed(epochs: int) -> None:
    # The default recipe asks for one epoch of warm-up; a 1-epoch run must still anneal.
    steps_per_epoch = 222  # Fashion-MNIST, batch 256, 5% held out
    total = epochs * steps_per_epoch
    warmup = warmup_steps(1.0, steps_per_epoch, total)
    assert warmup <= math.ceil(MAX_WARMUP_FRACTION * total)
    factors = [lr_factor(s, total, warmup_steps=warmup, kind="cosine") for s in range(total)]
    assert max(factors) == pytest.approx(1.0, abs=1e-6)
    assert factors[-1] < 0.01  # annealed, not stuck at the peak


def test_a_long_run_keeps_the_warmup_it_asked_for() -> None:
    assert warmup_steps(1.2, 222, 6 * 222) == round(1.2 * 222)  # the quickstart recipe
    with pytest.raises(ConfigError, match="warmup_epochs"):
        warmup_steps(-1, 10, 100)
