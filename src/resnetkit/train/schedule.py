"""Learning-rate schedules as pure functions of the step, so resuming needs no state."""

from __future__ import annotations

import math

from resnetkit.errors import ConfigError

__all__ = ["MAX_WARMUP_FRACTION", "SCHEDULES", "lr_factor", "warmup_steps"]

SCHEDULES = ("cosine", "linear", "onecycle", "constant")
#: Warm-up never takes more than this share of a run: a one-epoch run with the default one
#: epoch of warm-up would otherwise end at the peak learning rate, never annealed.
MAX_WARMUP_FRACTION = 0.25


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up steps: ``warmup_epochs`` of steps, at most a quarter of the run.

    Raises:
        ConfigError: a negative ``warmup_epochs``.
    """
    if warmup_epochs < 0:
        raise ConfigError(f"optim.warmup_epochs must be >= 0, got {warmup_epochs}")
    wanted = round(warmup_epochs * steps_per_epoch)
    return min(wanted, math.ceil(MAX_WARMUP_FRACTION * total_steps))


def lr_factor(
    step: int,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    kind: str = "cosine",
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total_steps``.

    Linear warmup from ~0 to 1 over ``warmup_steps``, then decay to ``min_ratio``:
    ``cosine`` (half cosine), ``linear``, ``onecycle`` (cosine down from the peak to
    ``min_ratio`` after a warmup that starts at 1/25 of the peak, as in Smith 2018) or
    ``constant``.

    Raises:
        ConfigError: for an unknown kind.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"schedule {kind!r} is not known; use one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        start = 1 / 25 if kind == "onecycle" else 0.0
        return start + (1 - start) * (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    # Cosine and one-cycle anneal along a half cosine; linear decays in a straight line.
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    shape = 1.0 - progress if kind == "linear" else cosine
    return min_ratio + (1.0 - min_ratio) * shape
