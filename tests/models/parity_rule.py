"""A deterministic, RNG-free way to fill a ResNet state dict and its input.

The torchvision parity fixture is produced in a separate virtual environment with a
different torch (and with torchvision), then checked here without torchvision. Random
number generators are not stable across torch versions, so every value comes from a
closed-form rule instead. For element ``k`` (``0 <= k < numel``, row-major) of the entry
named ``key``::

    t(k)       = (crc32(key) + GOLD * k + CHIRP * k**2) mod 2**32     # exact, in uint32
    wave(k)    = sin(2π * t(k) / 2**32)                               # float64, numpy

``GOLD`` and ``CHIRP`` are fixed odd 32-bit constants. The integer phase is exact on every
platform and the sine's argument stays in [0, 2π), so values agree to the last bit or so
everywhere. The quadratic term matters: with a linear phase alone, ``sin(a*k + b)``, every
weight reshaped to (out, fan_in) would be a rank-2 matrix, each layer would pass a 2-D
projection of its input, and the logits would barely depend on the image or on most
layers; with it, weights look like white noise and a single wrong stride, padding or
epsilon moves the logits far beyond the test's tolerance.

Each state-dict entry is an affine map of its wave, chosen by the key's suffix and
the tensor's rank so that activations stay finite and non-trivial through 152 layers:

    ========================  ===========================================================
    entry                     values
    ========================  ===========================================================
    ``*.weight``, ndim >= 2   ``sqrt(2) * gain / sqrt(fan_in) * wave``  (conv and linear;
                              ``fan_in = prod(shape[1:])``, ``gain = WEIGHT_GAIN``; the
                              ``sqrt(2)`` undoes the 1/sqrt(2) RMS of a sine)
    ``*.weight``, ndim == 1   ``1 + 0.1 * wave``                  (norm scale)
    ``*.bias``                ``0.05 * wave``                     (norm shift, fc bias)
    ``*.running_mean``        ``0.05 * wave``
    ``*.running_var``         ``1 + 0.5 * wave``                  (in [0.5, 1.5])
    ``*.num_batches_tracked`` ``0`` (int64, shape as given, normally a scalar)
    ========================  ===========================================================

The input is ``wave("parity_rule.input", B*C*H*W)`` reshaped to ``INPUT_SHAPE``: a
noise image in [-1, 1], roughly the range a normalised photo spans.

This module imports only numpy, torch and the standard library: it is loaded by path from the
fixture script's virtual environment as well as from the test suite. Any change to the
rule changes every expected logit, so bump ``RULE_VERSION`` and regenerate the fixture
(see ``scripts/make_parity_fixture.py``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch

RULE_VERSION = "chirp-crc32-v1"
GOLD = 0x9E3779B9  # 2**32 / golden ratio, odd: consecutive phases spread evenly
CHIRP = 0x2545F491  # odd: the quadratic term that breaks the rank-2 structure
PHASE_MODULUS = 2**32
WEIGHT_GAIN = 1.0
# (B, C, H, W): 80 px halves to 40, 20, 10, 5, 3, so stride-2 padding on odd sizes is covered.
INPUT_SHAPE = (2, 3, 80, 80)
INPUT_KEY = "parity_rule.input"


def wave(key: str, numel: int) -> np.ndarray:
    """Return the rule's float64 sequence in [-1, 1] for one entry (see the module docstring)."""
    # uint32 products wrap mod 2**32, so this is the exact integer phase of the docstring.
    k = np.arange(numel, dtype=np.uint32)
    with np.errstate(over="ignore"):
        t = np.uint32(zlib.crc32(key.encode("utf-8"))) + np.uint32(GOLD) * k
        t += np.uint32(CHIRP) * (k * k)
    return np.sin(t.astype(np.float64) * (2.0 * math.pi / PHASE_MODULUS))


def fill_value(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Return the rule's tensor for one state-dict entry.

    Args:
        key: the state-dict key, e.g. ``"layer1.0.conv1.weight"``.
        shape: the tensor's shape.

    Returns:
        A float64 tensor, or an int64 zero tensor for ``num_batches_tracked``.

    Raises:
        ValueError: the key's suffix is not one the rule knows.
    """
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    suffix = key.rsplit(".", 1)[-1]
    if suffix == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.int64)
    w = wave(key, numel)
    if suffix == "weight" and len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        values = math.sqrt(2.0) * WEIGHT_GAIN / math.sqrt(fan_in) * w
    elif suffix == "weight":
        values = 1.0 + 0.1 * w
    elif suffix in ("bias", "running_mean"):
        values = 0.05 * w
    elif suffix == "running_var":
        values = 1.0 + 0.5 * w
    else:
        raise ValueError(f"parity rule has no value for state-dict key {key!r}")
    return torch.from_numpy(values.reshape(shape).copy())


def fill_state_dict(
    names_and_shapes: Iterable[tuple[str, Sequence[int]]],
) -> dict[str, torch.Tensor]:
    """Fill a state dict from its key names and shapes with the rule above.

    Args:
        names_and_shapes: ``(key, shape)`` pairs, e.g. from
            ``[(k, v.shape) for k, v in model.state_dict().items()]``.

    Returns:
        An ordered dict of float64 tensors (int64 for ``num_batches_tracked``).
    """
    return {key: fill_value(key, shape) for key, shape in names_and_shapes}


def make_input() -> torch.Tensor:
    """Return the rule's float64 input batch of shape ``INPUT_SHAPE``, values in [-1, 1]."""
    return torch.from_numpy(wave(INPUT_KEY, math.prod(INPUT_SHAPE)).reshape(INPUT_SHAPE).copy())


def checksum(state_dict: dict[str, torch.Tensor]) -> float:
    """Return the sum of |value| over all floating entries: a guard that rule and fixture agree."""
    return float(
        sum(float(t.detach().abs().sum()) for t in state_dict.values() if t.is_floating_point())
    )
