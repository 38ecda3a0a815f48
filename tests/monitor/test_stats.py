"""The numpy KS and chi-square tests against SciPy's (a test-only dependency here)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from resnetkit.monitor.stats import chi2_sf, kolmogorov_sf, ks_2samp, smirnov_sf


@given(st.floats(min_value=0.0, max_value=4.0))
def test_kolmogorov_sf_is_scipys_kstwobign(x: float) -> None:
    assert kolmogorov_sf(x) == pytest.approx(stats.kstwobign.sf(x), rel=1e-12, abs=1e-15)


@given(
    st.integers(min_value=1, max_value=200),
    st.floats(min_value=0.0, max_value=400.0, allow_subnormal=False),
)
def test_chi2_sf_is_scipys(df: int, x: float) -> None:
    assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-10, abs=1e-300)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=20, max_value=400),
    st.integers(min_value=20, max_value=3000),
    st.floats(min_value=0.0, max_value=0.8),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_ks_2samp_agrees_with_scipys_asymptotic_test(
    m: int, n: int, shift: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    reference, window = rng.normal(size=(n, 3)), rng.normal(shift, size=(m, 3))
    statistics, p_values = ks_2samp(reference, window)
    scipy = stats.ks_2samp(reference, window, axis=0, method="asymp")
    np.testing.assert_allclose(statistics, scipy.statistic, rtol=0, atol=1e-12)
    for ours, theirs in zip(p_values, scipy.pvalue, strict=True):
        if theirs >= 1e-8:
            assert ours == pytest.approx(theirs, rel=0.05)
        else:
            assert ours < 1e-7


@given(st.integers(min_value=1, max_value=3000), st.floats(min_value=0.0, max_value=1.0))
def test_smirnov_sf_is_scipys(n: int, d: float) -> None:
    from scipy import special

    assert smirnov_sf(n, d) == pytest.approx(special.smirnov(n, d), rel=1e-9, abs=1e-300)


def test_one_dimensional_samples_give_one_column() -> None:
    rng = np.random.default_rng(0)
    statistics, p_values = ks_2samp(rng.normal(size=500), rng.normal(size=200))
    assert statistics.shape == p_values.shape == (1,)
    assert 0.0 <= p_values[0] <= 1.0


def test_chi2_sf_refuses_no_degrees_of_freedom() -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        chi2_sf(1.0, 0)
