"""The one device and precision policy of training, evaluation and inference loops.

``resolve_device("auto")`` picks CUDA when present; ``resolve_precision(name, device)`` turns
``auto | fp32 | bf16 | fp16`` into an autocast dtype (``None`` = full float32): ``auto`` is
bf16 on a CPU with native bf16 instructions (AVX512-BF16 or AMX) and on CUDA that has it,
fp16 on older CUDA, and float32 on a CPU without them: emulated bf16 matmuls run a hundred
times slower than float32 there (measured on an AVX2-only AMD EPYC: 0.27 against 81 GFLOPS).
The training loop, its validation, the end-of-run test evaluation, ``resnetkit eval`` and the
drift reference all go through these two functions, so a run is evaluated at the precision it
trained at unless asked otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any

import torch

from resnetkit.errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "precision_name", "resolve_device", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

log = logging.getLogger(__name__)

#: ``ONEDNN_MAX_CPU_ISA`` values that still allow native bf16 (oneDNN's names; ``ALL`` and
#: ``DEFAULT`` mean no limit). Any other value (``AVX2``, ``AVX512_CORE_VNNI``, ...) caps oneDNN
#: below AVX512-BF16, where bf16 is emulated and far slower than float32.
BF16_ONEDNN_ISAS = frozenset(
    {
        "ALL",
        "DEFAULT",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512",
        "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
    }
)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX, not capped by the
    ``ONEDNN_MAX_CPU_ISA`` environment variable, which is how an AVX2-only machine is
    emulated on a newer one)."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if limit and limit not in BF16_ONEDNN_ISAS:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN, or a renamed private op
        return False


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None) picks CUDA when present; anything else must be a usable device.

    Raises:
        ConfigError: for an unknown device, or CUDA asked for where there is none.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device {str(name)!r} is not a torch device (cpu, cuda, cuda:1)"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(name)!r} asked for, but CUDA is not available here "
            "(no GPU, or a CPU build of torch); use --device cpu"
        )
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise ConfigError(f"device {device} does not exist: {torch.cuda.device_count()} GPUs")
    if device.type not in ("cpu", "cuda", "meta"):
        raise ConfigError(f"device {device.type!r} is not supported; use cpu or cuda")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device`` (``None`` = float32).

    Raises:
        ConfigError: for an unknown name or fp16 on a CPU.
    """
    if name == "fp32":
        return None
    if name == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            log.warning("bf16 asked for on a CPU without native bf16: expect it to be slow")
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs CUDA; use bf16 on a CPU")
        return torch.float16
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    raise ConfigError(f"precision {name!r} is not known; use {', '.join(PRECISIONS)}")


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` at ``dtype`` on ``device``; a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """``"float32"``, ``"bfloat16"`` or ``"float16"``, for reports."""
    return str(dtype or torch.float32).removeprefix("torch.")
