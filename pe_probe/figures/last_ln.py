"""The Last LN's gamma or beta per channel, with variance-of-beta and cosine annotations (Fig 6)."""

from __future__ import annotations

import pandas as pd

from ._axes import current_ax, fmt_num


def last_ln_channels(data: pd.DataFrame, ax=None, *, param: str = "beta", hue: str = "series",
                     stats: pd.DataFrame | None = None, digits: int = 4):
    """One line per ``hue`` value of ``data[param]`` over ``data["channel"]``.

    ``stats`` (columns ``series`` and any of ``var_beta``, ``cosine``, ``paper_var_beta``, ``paper_cosine``)
    is written into each series' legend entry, e.g. ``PVG: var(beta)=0.2387 (paper 0.2387)``, and the
    legend then sits outside the axes on the right. Returns ``ax``.
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


def stat_text(row, digits: int = 4) -> str:
    """``var(beta)=... (paper ...), cos(before, after)=... (paper ...)`` for one stats row."""
    parts = []
    for key, label in (("var_beta", "var(beta)"), ("cosine", "cos(before, after)")):
        if key not in row:
            continue
        text = f"{label}={fmt_num(row[key], digits)}"
        ref = row.get(f"paper_{key}")
        if ref is not None and not (isinstance(ref, float) and ref != ref):
            text += f" (paper {fmt_num(ref, digits)})"
        parts.append(text)
    return ", ".join(parts)
