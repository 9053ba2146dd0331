"""Tables as Markdown: numbers formatted, missing values shown as a dash."""

from __future__ import annotations

import math

import pandas as pd


def markdown_table(df: pd.DataFrame, digits: int = 2) -> str:
    """``df`` as a GitHub Markdown table (index dropped); floats with ``digits`` decimals, NaN/None as ``-``."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
