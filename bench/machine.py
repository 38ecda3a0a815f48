"""What a benchmark ran on, printed first by every bench: a timing without its machine is no
result (the same project has run on AVX2-only, AVX-512 BF16 and AMX machines)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

#: /proc/cpuinfo flags that change how fast our kernels run, with the names we print.
ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}
PACKAGES = ("torch", "onnxruntime", "numpy", "resnetkit")
#: Environment variables that make PyTorch and oneDNN use fewer instruction sets than the CPU
#: has: how an AVX2-only machine is emulated on a newer one.
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def _cpuinfo() -> tuple[str, set[str]]:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return platform.processor() or platform.machine(), set()
    model, flags = "unknown CPU", set()
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def machine(precision: str | None = None) -> dict[str, Any]:
    """CPU model, usable cores, the instruction sets that matter, package versions.

    Args:
        precision: what the bench computes in (e.g. ``"bfloat16 (precision=auto)"``), printed
            beside the instruction sets, since the two together decide the speed.
    """
    model, flags = _cpuinfo()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "isa": [label for flag, label in ISA_FLAGS.items() if flag in flags],
        "python": platform.python_version(),
        "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)},
        "precision": precision,
        "packages": versions,
        "load_average": os.getloadavg(),
    }


def describe(info: dict[str, Any] | None = None) -> str:
    """One line for the top of a report."""
    info = info or machine()
    isa = ", ".join(info["isa"]) or "no AVX2"
    versions = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    limits = info.get("isa_limits") or {}
    if limits:
        isa += "; limited to " + ", ".join(f"{k}={v}" for k, v in limits.items())
    precision = f"; precision {info['precision']}" if info.get("precision") else ""
    return (
        f"machine: {info['cpu']}, {info['cores']} cores ({isa}){precision}; "
        f"Python {info['python']}, {versions}; load average {load}"
    )


def best_time_s(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, after one untimed warm-up call: the
    machine's best, which is what a peak figure is measured as."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
