"""The two statistical tests drift detection needs, in numpy: no SciPy in the serving install.

* :func:`ks_2samp`: the two-sample Kolmogorov-Smirnov test, column by column, with the
  asymptotic p-value SciPy's ``ks_2samp(method="asymp")`` gives: the one-sample
  distribution of ``D`` at the effective size ``en = round(m n / (m + n))``. In its tail
  (``en D^2 >= 2.2``) that is twice the exact one-sided tail (Birnbaum & Tingey), as in
  SciPy; above, Kolmogorov's limit with Stephens' correction
  (``Q((sqrt(en) + 0.12 + 0.11 / sqrt(en)) D)``; Press et al., *Numerical Recipes*, 14.3).
  Within 3% of SciPy's p-value from windows of 20 up, down to 1e-8
  (tests/monitor/test_stats.py).
* :func:`chi2_sf`: the chi-square survival function, the regularised upper incomplete gamma
  function ``Q(k / 2, x / 2)`` by its series or continued fraction (*Numerical Recipes* 6.2),
  to 1e-12 of SciPy's.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["chi2_sf", "kolmogorov_sf", "ks_2samp", "ks_sf", "ks_statistic", "smirnov_sf"]

_EPS = 1e-15
_MAX_TERMS = 1000


def ks_statistic(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    """The largest distance between the empirical CDFs of two 1-D samples."""
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def kolmogorov_sf(x: float) -> float:
    """``P(K > x)`` for Kolmogorov's limiting distribution ``K``.

    ``2 sum (-1)^(k-1) exp(-2 k^2 x^2)`` where it converges fast (x >= 1), and the Jacobi
    theta form ``1 - sqrt(2 pi) / x sum exp(-(2k-1)^2 pi^2 / (8 x^2))`` below.
    """
    if x <= 0.1:  # 1 - Q(0.1) is below 1e-50
        return 1.0
    if x < 1.0:
        total, factor = 0.0, -(math.pi**2) / (8 * x * x)
        for k in range(1, _MAX_TERMS):
            term = math.exp(factor * (2 * k - 1) ** 2)
            total += term
            if term < _EPS * total:
                break
        return min(1.0, max(0.0, 1.0 - math.sqrt(2 * math.pi) / x * total))
    total, sign = 0.0, 1.0
    for k in range(1, _MAX_TERMS):
        term = math.exp(-2.0 * k * k * x * x)
        total += sign * term
        if term < _EPS * abs(total) or term == 0.0:
            break
        sign = -sign
    return min(1.0, max(0.0, 2.0 * total))


def smirnov_sf(n: int, d: float) -> float:
    """``P(D+_n >= d)``, the one-sided one-sample KS statistic's tail, exactly
    (Birnbaum & Tingey 1951), summed in logs."""
    if d <= 0:
        return 1.0
    if d >= 1:
        return 0.0
    j = np.arange(math.floor(n * (1 - d)) + 1, dtype=np.float64)
    left = 1.0 - d - j / n
    keep = left > 0
    j, left = j[keep], left[keep]
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    k = j.astype(np.int64)
    log_choose = log_factorial[n] - log_factorial[k] - log_factorial[n - k]
    logs = log_choose + (n - j) * np.log(left) + (j - 1) * np.log(d + j / n)
    return float(min(1.0, np.exp(math.log(d) + logs).sum()))


def ks_sf(n: int, d: float) -> float:
    """``P(D_n > d)`` for the two-sided one-sample KS statistic of ``n`` points.

    In the tail (``n d^2 >= 2.2``, p below about 0.02), twice the exact one-sided tail,
    which is where SciPy evaluates it the same way (the two tails then hardly overlap);
    above, Kolmogorov's distribution with Stephens' correction.
    """
    if n * d * d >= 2.2:
        return min(1.0, 2.0 * smirnov_sf(n, d))
    root = math.sqrt(n)
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def ks_2samp(
    reference: NDArray[np.floating], window: NDArray[np.floating]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Two-sided two-sample KS test of each column (1-D inputs: one column).

    Returns:
        ``(statistics, p_values)``, one of each per column.
    """
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    if ref.ndim == 1:
        ref, win = ref[:, None], win[:, None]
    m, n = len(ref), len(win)
    effective = max(1, round(m * n / (m + n)))
    statistics = np.array([ks_statistic(ref[:, j], win[:, j]) for j in range(ref.shape[1])])
    p_values = np.array([ks_sf(effective, d) for d in statistics])
    return statistics, p_values


def chi2_sf(x: float, df: int) -> float:
    """``P(X > x)`` for ``X`` chi-square with ``df`` degrees of freedom (``df >= 1``)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if x <= 0:
        return 1.0
    a, y = df / 2.0, x / 2.0
    log_prefix = a * math.log(y) - y - math.lgamma(a)
    if y < a + 1.0:  # the series of P(a, y) converges fast here
        term = total = 1.0 / a
        for n in range(1, _MAX_TERMS):
            term *= y / (a + n)
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_prefix)))
    # Q(a, y) by Lentz's continued fraction.
    tiny = 1e-300
    b = y + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, _MAX_TERMS):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return min(1.0, max(0.0, math.exp(log_prefix) * h))
