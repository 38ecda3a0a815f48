"""Prices and OpenCost's two cost bases."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnetkit.cost import DEFAULT_PRICES, Prices, cost, load_prices
from resnetkit.errors import ConfigError

PRICES = Prices(1, "USD", "test", "2026-12-06", vcpu_hour=0.036, gib_hour=0.0036)


def test_the_packaged_price_file_loads_and_names_its_source() -> None:
    prices = load_prices()
    assert prices == load_prices(DEFAULT_PRICES)
    assert prices.vcpu_hour > 0 and prices.gib_hour > 0 and "opencost" in prices.source.lower()
    assert prices.describe().startswith("USD, prices v")


def test_both_bases_by_hand() -> None:
    # 1,800 CPU-seconds over one hour, 2 CPUs held, 0.5 GiB used of 1 GiB held.
    c = cost(1800, 3600, PRICES, used_gib=0.5, request_cpus=2, request_gib=1)
    assert c.allocation == pytest.approx(2 * 0.036 + 1 * 0.0036)
    assert c.usage == pytest.approx(0.5 * 0.036 + 0.5 * 0.0036)
    # Using more than requested: allocation charges what was used.
    over = cost(7200, 3600, PRICES, used_gib=2, request_cpus=1, request_gib=1)
    assert over.allocation == pytest.approx(2 * 0.036 + 2 * 0.0036) == over.usage


@given(
    st.floats(0, 1e6), st.floats(1e-3, 1e6), st.floats(0, 64),
    st.floats(0, 64), st.floats(0, 64),
)  # fmt: skip
def test_allocation_is_never_below_usage(
    cpu_s: float, wall_s: float, used: float, cpus: float, gib: float
) -> None:
    c = cost(cpu_s, wall_s, PRICES, used_gib=used, request_cpus=cpus, request_gib=gib)
    assert c.allocation >= c.usage * (1 - 1e-9) >= 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 1\n", "'currency' is missing"),
        ('version = 1\ncurrency = "USD"\nsource = "s"\ndate = "d"\nvcpu_hour = "cheap"\n'
         "gib_hour = 0.1\n", "'vcpu_hour' is missing or not a number"),
        ('version = 1\ncurrency = "USD"\nsource = "s"\ndate = "d"\nvcpu_hour = -1\n'
         "gib_hour = 0.1\n", "must not be negative"),
        ('version = 1\ncurrency = "USD"\nsource = "s"\ndate = "d"\nvcpu_hour = 1\n'
         "gib_hour = 0.1\nspot = true\n", "unknown key(s) spot"),
        ("vcpu_hour = [", "is not TOML"),
    ],
)  # fmt: skip
def test_a_bad_price_file_is_one_error_naming_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prices(path)


def test_a_missing_price_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_prices(tmp_path / "nope.toml")
