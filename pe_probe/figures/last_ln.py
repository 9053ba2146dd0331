"""The Last LN's gamma or beta per channel, with variance-of-beta and cosine annotations (Fig 6)."""

from __future__ import annotations

import pandas as pd

from ._axes import current_ax


def last_ln_channels(data: pd.DataFrame, ax=None, *, param: str = "beta", hue: str = "series",
                     stats: pd.DataFrame | None = None, digits: int = 3):
    """One line per ``hue`` value of ``data[param]`` over ``data["channel"]``.

    ``stats`` (columns ``series`` and any of ``var_beta``, ``cosine`` with their ``_ci_low`` / ``_ci_high``,
    ``n_seeds``, ``paper_var_beta``, ``paper_cosine``) is written into each series' legend entry, e.g.
    ``PVG: var(beta)=0.239 [0.2, 0.28] (paper 0.2387)``, with ``digits`` significant digits, and the legend then
    sits outside the axes on the right. Returns ``ax``.
    """
    ax = current_ax(ax)
    by = {} if stats is None else {r["series"]: r for r in stats.to_dict("records")}
    for i, (name, df) in enumerate(data.groupby(hue, sort=False)):
        df = df.sort_values("channel")
        label = str(name) + (f"\n{stat_text(by[name], digits)}" if name in by else "")
        ax.plot(df["channel"].to_numpy(), df[param].to_numpy(dtype=float), linewidth=0.8, color=f"C{i}",
                label=label)
    ax.set_xlabel("channel")
    ax.set_ylabel(param)
    if by:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=7)
    return ax


def _sig(value, digits: int) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}g}"


def stat_text(row, digits: int = 3) -> str:
    """``var(beta)=m [lo, hi] (paper p)\ncos(before, after)=...`` for one stats row, with ``digits``
    significant digits (small variances stay readable)."""
    parts = []
    for key, label in (("var_beta", "var(beta)"), ("cosine", "cos(before, after)")):
        if key not in row:
            continue
        text = f"{label}={_sig(row[key], digits)}"
        lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
        if lo is not None and lo == lo:
            text += f" [{_sig(lo, digits)}, {_sig(hi, digits)}]"
        ref = row.get(f"paper_{key}")
        if ref is not None and not (isinstance(ref, float) and ref != ref):
            text += f" (paper {_sig(ref, 4)})"
        parts.append(text)
    return "\n".join(parts)
