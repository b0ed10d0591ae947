"""Correlations with confidence intervals.

Pearson's r and Spearman's rho (and their p-values) come from ``scipy.stats``. Their 95 %
confidence intervals use Fisher's z-transform: ``tanh(atanh(r) +/- z_(1-a/2) * se)`` with
``se = 1 / sqrt(n - 3)`` for Pearson and ``se = sqrt((1 + rho^2 / 2) / (n - 3))`` for Spearman
(Bonett and Wright, 2000). With fewer than 4 points there is no interval (NaN); with fewer than
3 points, or a constant column, there is no correlation either (NaN).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Dict, Optional

import numpy as np

from .._errors import ConfigError


@dataclass(frozen=True)
class Correlation:
    """One correlation: ``r`` (Pearson) and ``rho`` (Spearman), their 95 % CIs, p-values, n."""

    x: str
    y: str
    n: int
    r: float
    r_low: float
    r_high: float
    r_p: float
    rho: float
    rho_low: float
    rho_high: float
    rho_p: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError:
        raise ConfigError(
            "the study analysis computes p-values with SciPy: install it, e.g. "
            "`pip install 'greenml[study]'` (or `pip install scipy`)"
        ) from None
    return stats


def fisher_ci(r: float, n: int, spearman: bool = False, level: float = 0.95) -> tuple:
    """Confidence interval of a correlation coefficient by Fisher's z (see the module doc)."""
    if not math.isfinite(r) or n < 4:
        return (math.nan, math.nan)
    r = max(-1.0, min(1.0, r))
    if abs(r) == 1.0:
        return (r, r)
    se = math.sqrt((1.0 + r * r / 2.0) / (n - 3)) if spearman else 1.0 / math.sqrt(n - 3)
    z = math.atanh(r)
    q = NormalDist().inv_cdf(0.5 + level / 2.0)
    return (math.tanh(z - q * se), math.tanh(z + q * se))


def correlate(x: Any, y: Any, x_name: str = "x", y_name: str = "y") -> Correlation:
    """Pearson and Spearman correlation of two equal-length sequences; NaN pairs are dropped."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.shape != ya.shape:
        raise ConfigError(f"correlate: {x_name} and {y_name} differ in length")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    n = int(xa.size)
    nan = math.nan
    if n < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return Correlation(x_name, y_name, n, nan, nan, nan, nan, nan, nan, nan, nan)
    stats = _scipy_stats()
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    r, r_p = float(pr[0]), float(pr[1])
    rho, rho_p = float(sr[0]), float(sr[1])
    r_low, r_high = fisher_ci(r, n)
    rho_low, rho_high = fisher_ci(rho, n, spearman=True)
    return Correlation(x_name, y_name, n, r, r_low, r_high, r_p, rho, rho_low, rho_high, rho_p)


def fit_line(x: Any, y: Any, log: bool = False) -> Optional[tuple]:
    """Least-squares ``y = a x + b`` (or ``log10 y = a log10 x + b``); None if it cannot fit."""
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    if log:
        ok &= (xa > 0) & (ya > 0)
    xa, ya = xa[ok], ya[ok]
    if xa.size < 2 or np.ptp(xa) == 0:
        return None
    if log:
        xa, ya = np.log10(xa), np.log10(ya)
    a, b = np.polyfit(xa, ya, 1)
    return float(a), float(b)
