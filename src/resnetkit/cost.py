"""What compute costs, on OpenCost's two bases, from a versioned price file.

The price file (``resnetkit/prices.toml``, or your own copy: ``--prices FILE``) gives dollars
per vCPU-hour and per GiB-hour with its source and date. :func:`cost` turns measured CPU
time, wall time and memory into dollars two ways, as OpenCost defines them:

* **allocation**: what a pod holding the resources pays: for the wall time, the larger of
  the requested and the used CPUs, and of the requested and the used memory;
* **usage**: what was used: the CPU-seconds, and the resident memory over the wall time.

``bench/serve_bench.py`` reports both per 1,000 requests, ``resnetkit train`` per epoch.

This is a base module: it imports nothing of resnetkit but the errors.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
from pathlib import Path

from resnetkit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["DEFAULT_PRICES", "Cost", "Prices", "cost", "load_prices", "peak_rss_gib"]

DEFAULT_PRICES = Path(__file__).with_name("prices.toml")
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int, "currency": str, "source": str, "date": str,
    "vcpu_hour": (int, float), "gib_hour": (int, float),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Prices:
    """One price file: dollars (``currency``) per vCPU-hour and per GiB-hour."""

    version: int
    currency: str
    source: str
    date: str
    vcpu_hour: float
    gib_hour: float

    def describe(self) -> str:
        """``USD, prices v1 of 2026-12-06: 0.031611/vCPU-h, 0.004237/GiB-h``."""
        return (f"{self.currency}, prices v{self.version} of {self.date}: "
                f"{self.vcpu_hour:g}/vCPU-h, {self.gib_hour:g}/GiB-h")  # fmt: skip


def load_prices(path: str | os.PathLike[str] | None = None) -> Prices:
    """The price file at ``path`` (the packaged one without), checked.

    Raises:
        ConfigError: unreadable, not TOML, a field missing or of the wrong type, a negative
            price, or an unknown key; the message names the file and the field.
    """
    p = Path(path) if path is not None else DEFAULT_PRICES
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"price file {p}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"price file {p} is not TOML: {exc}") from exc
    if unknown := sorted(set(raw) - set(_FIELDS)):
        raise ConfigError(f"price file {p}: unknown key(s) {', '.join(unknown)}")
    for key, kind in _FIELDS.items():
        value = raw.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            name = "a number" if isinstance(kind, tuple) else f"a {kind.__name__}"
            raise ConfigError(f"price file {p}: '{key}' is missing or not {name}")
    if raw["vcpu_hour"] < 0 or raw["gib_hour"] < 0:
        raise ConfigError(f"price file {p}: prices must not be negative")
    return Prices(
        version=raw["version"], currency=raw["currency"], source=raw["source"],
        date=raw["date"], vcpu_hour=float(raw["vcpu_hour"]), gib_hour=float(raw["gib_hour"]),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Cost:
    """The CPU time of some work and its price on both bases."""

    cpu_s: float
    wall_s: float
    allocation: float
    usage: float


def cost(
    cpu_s: float,
    wall_s: float,
    prices: Prices,
    *,
    used_gib: float,
    request_cpus: float,
    request_gib: float,
) -> Cost:
    """Price ``cpu_s`` CPU-seconds over ``wall_s`` seconds with ``used_gib`` resident.

    Args:
        request_cpus, request_gib: what the pod (or machine) holds for the work: the
            allocation basis charges the larger of these and what was used.
    """
    if cpu_s < 0 or wall_s < 0 or used_gib < 0:
        raise ValueError("CPU time, wall time and memory must not be negative")
    hours = wall_s / 3600
    used_cpus = cpu_s / wall_s if wall_s > 0 else 0.0
    allocation = hours * (max(request_cpus, used_cpus) * prices.vcpu_hour
                          + max(request_gib, used_gib) * prices.gib_hour)  # fmt: skip
    usage = cpu_s / 3600 * prices.vcpu_hour + used_gib * hours * prices.gib_hour
    return Cost(cpu_s, wall_s, allocation, usage)


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
