"""Analyses of probe statistics (numpy/pandas only: no torch, no matplotlib)."""

from .metrics import (
    cosine_matrix,
    last_ln_params,
    last_ln_stats,
    norm_trends,
    pe_self_similarity,
    pe_similarity_grid,
    pe_similarity_matrix,
    pearson,
    summary_frame,
    tok_pe_alignment,
    tok_pe_correlation,
)
from .report import ProbeReport

__all__ = [
    "ProbeReport", "cosine_matrix", "last_ln_params", "last_ln_stats", "norm_trends", "pe_self_similarity",
    "pe_similarity_grid", "pe_similarity_matrix", "pearson", "summary_frame", "tok_pe_alignment",
    "tok_pe_correlation",
]
