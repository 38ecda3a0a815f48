"""The one device and precision policy of training, evaluation and inference loops.

``resolve_device("auto")`` picks CUDA when present; ``resolve_precision(name, device)`` turns
``auto | fp32 | bf16 | fp16`` into an autocast dtype (``None`` = full float32): ``auto`` is
bf16 on a CPU and on CUDA that has it, fp16 on older CUDA. The training loop, its validation,
the end-of-run test evaluation, ``resnetkit eval`` and the drift reference all go through
these two functions, so a run is evaluated at the precision it trained at unless asked
otherwise.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from resnetkit.errors import ConfigError

__all__ = ["PRECISIONS", "autocast", "precision_name", "resolve_device", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs CUDA; use bf16 on a CPU")
        return torch.float16
    if name == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
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
