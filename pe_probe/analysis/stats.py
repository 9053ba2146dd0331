"""Statistics over seeds: means with 95% confidence intervals, and differences of two groups.

With n seeds (independent training runs of the same configuration) the interval of a mean is Student's t
interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (sd with ddof=1); the interval of a difference of two means
is Welch's (unequal variances, Welch-Satterthwaite degrees of freedom). With one seed there is no interval
(NaN bounds). No torch, no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as _st

CONFIDENCE = 0.95


class Interval(NamedTuple):
    """A mean (or difference of means) with its confidence interval and the number of values behind it."""

    mean: float
    low: float
    high: float
    n: int


def _finite(values: Iterable[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64)
    return a[np.isfinite(a)]


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of the finite ``values`` with Student's t interval (NaN bounds for fewer than 2 values)."""
    a = _finite(values)
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(a.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * a.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def ci_bounds(values: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` of :func:`mean_interval`: the error-bar function the figures hand to seaborn."""
    iv = mean_interval(values)
    return iv.low, iv.high


def difference_interval(a: Iterable[float], b: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """``mean(a) - mean(b)`` with Welch's t interval; ``n`` is the smaller group size (NaN bounds below 2)."""
    a, b = _finite(a), _finite(b)
    n = min(len(a), len(b))
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    diff = float(a.mean() - b.mean())
    if n < 2:
        return Interval(diff, math.nan, math.nan, n)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, n)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(_st.t.ppf(0.5 + confidence / 2, df) * se)
    return Interval(diff, diff - half, diff + half, n)


def with_seed_summary(frame: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """``frame`` (one row per seed) with ``n_seeds``, ``mean``, ``ci_low``, ``ci_high`` of ``value`` per ``by``
    group added to every row of the group (group order kept)."""
    frame = frame.copy()
    out = {"n_seeds": [], "mean": [], "ci_low": [], "ci_high": []}
    keys = frame[list(by)].astype(str).agg("\x1f".join, axis=1) if by else pd.Series([""] * len(frame))
    summaries = {k: mean_interval(frame.loc[keys == k, value]) for k in dict.fromkeys(keys)}
    for k in keys:
        iv = summaries[k]
        out["n_seeds"].append(iv.n)
        out["mean"].append(iv.mean)
        out["ci_low"].append(iv.low)
        out["ci_high"].append(iv.high)
    for col, vals in out.items():
        frame[col] = vals
    return frame
