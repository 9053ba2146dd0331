"""Claims of the paper as tests on our runs: a measured quantity, its 95% interval over seeds, and a verdict.

A figure spec lists the claims its figure tests (``[[claims]]``). Each names a :data:`MEASURES` entry, one
series of the spec (the quantity is the measure's mean over that series' seeds) or two (the difference of
the two means), and the sign the paper expects. The rule is fixed before any run is looked at:

- ``supported``: the 95% interval lies entirely on the expected side of 0;
- ``contradicted``: it lies entirely on the other side;
- ``inconclusive``: it contains 0, or there are fewer than 2 seeds in a series (no interval).

Intervals are Student's t (one series) or Welch's (a difference), see :mod:`pe_probe.analysis.stats`.
No torch, no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..core.hook_points import LAST
from ..core.vocab import VERDICTS
from .metrics import summary_frame
from .runs import RunResult
from .select import Selection
from .stats import Interval, difference_interval, mean_interval

EXPECT = ("negative", "positive")
SUPPORTED, CONTRADICTED, INCONCLUSIVE = VERDICTS


def _metric(run: RunResult, metric: str) -> pd.Series:
    """``metric``'s values per layer (index) in the run's report (empty without a report)."""
    if run.report is None:
        return pd.Series(dtype=float)
    frame = summary_frame(run.report)
    hit = frame[frame["metric"] == metric]
    return pd.Series(hit["value"].to_numpy(dtype=float), index=hit["layer"].to_numpy())


def _block_mean(metric: str) -> Callable[[RunResult], float]:
    def measure(run: RunResult) -> float:
        values = _metric(run, metric)
        values = values[values.index >= 0]
        return float(values.mean()) if len(values) else math.nan
    return measure


def _corr_slope(run: RunResult) -> float:
    values = _metric(run, "tok_pe_corr")
    values = values[values.index >= 0]
    if len(values) < 2:
        return math.nan
    return float(np.polyfit(values.index.to_numpy(dtype=float), values.to_numpy(), 1)[0])


def _at_last_ln(metric: str) -> Callable[[RunResult], float]:
    def measure(run: RunResult) -> float:
        values = _metric(run, metric)
        return float(values.get(LAST, math.nan))
    return measure


@dataclass(frozen=True)
class Measure:
    """A number measured on one run: its function, what it is (for the claims table) and its unit."""

    fn: Callable[[RunResult], float]
    text: str
    unit: str = ""


#: Every quantity a claim can name (per run; a claim takes its mean over seeds).
MEASURES: dict[str, Measure] = {
    "top1": Measure(lambda r: math.nan if r.top1 is None else r.top1, "top-1 accuracy", "%"),
    "corr_mean": Measure(_block_mean("tok_pe_corr"), "token-PE correlation r, mean over the PE-receiving blocks"),
    "corr_slope": Measure(_corr_slope, "slope of the token-PE correlation r over the block index"),
    "corr_position_mean": Measure(_block_mean("tok_pe_corr_position"),
                                  "positional part of r (channel means removed), mean over the PE blocks"),
    "corr_channel_mean": Measure(_block_mean("tok_pe_corr_channel"),
                                 "per-channel part of r (correlation of channel means), mean over the PE blocks"),
    "corr_last_ln": Measure(_at_last_ln("tok_pe_corr"), "correlation of LN(x_L) with the PE added in the Last LN"),
    "beta_var": Measure(_at_last_ln("last_ln_beta_var"), "variance of the Last LN's beta over channels"),
    "cos_before_after": Measure(_at_last_ln("last_ln_cos_before_after"),
                                "cosine of the pooled token before vs after the Last LN"),
}


@dataclass(frozen=True)
class ClaimSpec:
    """One claim: ``measure`` on ``series`` (one key, or two for the difference first - second), the sign the
    paper expects, the paper's statement and numbers, and whether it needs probe reports."""

    id: str
    claim: str
    measure: str
    series: tuple[str, ...]
    expect: str
    paper: str = ""

    @property
    def needs_report(self) -> bool:
        """Whether the measure reads probe reports (every measure but top-1)."""
        return self.measure != "top1"


_CLAIM_KEYS = {"id", "claim", "measure", "series", "expect", "paper"}


def parse_claim(raw: Any, i: int, series_keys: list[str], fail: Callable[[str], Exception]) -> ClaimSpec:
    """A :class:`ClaimSpec` from a spec's ``[[claims]]`` table (``series`` must name the spec's series)."""
    if not isinstance(raw, Mapping):
        raise fail(f"claims[{i}] must be a table")
    unknown = set(raw) - _CLAIM_KEYS
    if unknown:
        raise fail(f"claims[{i}]: unknown key(s) {sorted(unknown)}; valid keys: {sorted(_CLAIM_KEYS)}")
    for key in ("id", "claim", "measure", "series", "expect"):
        if key not in raw:
            raise fail(f"claims[{i}]: {key!r} is required")
    if raw["measure"] not in MEASURES:
        raise fail(f"claims[{i}]: measure {raw['measure']!r} is unknown; valid measures: {sorted(MEASURES)}")
    series = (raw["series"],) if isinstance(raw["series"], str) else tuple(raw["series"])
    if not 1 <= len(series) <= 2 or any(s not in series_keys for s in series):
        raise fail(f"claims[{i}]: series must be one or two of this spec's series keys {series_keys}, "
                   f"got {list(series)}")
    if raw["expect"] not in EXPECT:
        raise fail(f"claims[{i}]: expect={raw['expect']!r} must be one of {EXPECT}")
    return ClaimSpec(id=str(raw["id"]), claim=str(raw["claim"]), measure=raw["measure"], series=series,
                     expect=raw["expect"], paper=str(raw.get("paper", "")))


@dataclass
class ClaimResult:
    """A claim evaluated on our runs."""

    spec: ClaimSpec
    figure: str
    interval: Interval
    values: dict[str, list[float]]  # per series key: the measure per seed
    verdict: str
    reason: str

    def quantity(self, labels: Mapping[str, str] | None = None) -> str:
        """What was measured, in words."""
        labels = labels or {}
        names = [labels.get(s, s) for s in self.spec.series]
        what = MEASURES[self.spec.measure].text
        return f"{what}: {names[0]}" if len(names) == 1 else f"{what}: {names[0]} minus {names[1]}"

    def value_text(self, digits: int = 3) -> str:
        """``value [low, high]`` with the seed counts."""
        iv = self.interval
        if iv.n == 0 or math.isnan(iv.mean):
            return "n/a"
        n = "/".join(str(len(v)) for v in self.values.values())
        ci = f" [{iv.low:.{digits}g}, {iv.high:.{digits}g}]" if not math.isnan(iv.low) else " (no interval)"
        return f"{iv.mean:.{digits}g}{ci} (seeds: {n})"

    def row(self, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The claim as one row of the claims table (and of ``claims.csv``)."""
        iv = self.interval
        return {"figure": self.figure, "claim_id": self.spec.id, "claim": self.spec.claim,
                "quantity": self.quantity(labels), "value": iv.mean, "ci_low": iv.low, "ci_high": iv.high,
                "n_seeds": "/".join(str(len(v)) for v in self.values.values()), "expect": self.spec.expect,
                "paper": self.spec.paper, "verdict": self.verdict, "reason": self.reason}


def evaluate_claim(claim: ClaimSpec, sel: Selection, figure: str = "") -> ClaimResult:
    """Measure ``claim`` on the runs ``sel`` chose for its series and apply the rule (module docstring)."""
    fn = MEASURES[claim.measure].fn
    values = {key: [v for v in (fn(r) for r in sel.runs.get(key, [])) if not math.isnan(v)] for key in claim.series}
    if len(claim.series) == 1:
        iv = mean_interval(values[claim.series[0]])
    else:
        iv = difference_interval(values[claim.series[0]], values[claim.series[1]])
    verdict, reason = judge(iv, claim.expect, [len(v) for v in values.values()])
    return ClaimResult(spec=claim, figure=figure, interval=iv, values=values, verdict=verdict, reason=reason)


def judge(iv: Interval, expect: str, counts: list[int]) -> tuple[str, str]:
    """The verdict of the fixed rule and why (see the module docstring)."""
    side = "< 0" if expect == "negative" else "> 0"
    if min(counts, default=0) == 0:
        return INCONCLUSIVE, "no run to measure"
    if min(counts) < 2 or math.isnan(iv.low):
        return INCONCLUSIVE, "fewer than 2 seeds: no interval"
    below, above = iv.high < 0, iv.low > 0
    if (below and expect == "negative") or (above and expect == "positive"):
        return SUPPORTED, f"95% CI entirely {side}"
    if below or above:
        return CONTRADICTED, f"95% CI entirely on the other side of 0 than expected ({side})"
    return INCONCLUSIVE, "95% CI contains 0"
