"""Analysis floor: probe reports and runs in, numbers out as tidy pandas DataFrames (no torch, no matplotlib).

- :mod:`~pe_probe.analysis.metrics`: per-layer metrics of one :class:`~pe_probe.core.report.ProbeReport`;
- :mod:`~pe_probe.analysis.position`: how much position each layer carries (decomposition, decoding, logit share);
- :mod:`~pe_probe.analysis.causal`: PE ablation and attribution results as tidy frames, saved and read back;
- :mod:`~pe_probe.analysis.runs`: a finished run as plain data (:class:`RunResult`);
- :mod:`~pe_probe.analysis.select`: which runs a figure gets;
- :mod:`~pe_probe.analysis.figure_data`: the numbers behind every figure and table;
- :mod:`~pe_probe.analysis.paper`: the numbers the paper reports.
"""

from .metrics import (
    cosine_matrix,
    last_ln_params,
    last_ln_stats,
    norm_trends,
    pe_self_similarity,
    pe_similarity_grid,
    pe_similarity_matrix,
    pearson,
    save_report,
    summary_frame,
    tok_pe_alignment,
    tok_pe_correlation,
)
from .causal import (Attribution, ablation_frame, attribution_of, read_ablation, read_attribution, save_ablation,
                     save_attribution, site_table)
from .position import logit_decomposition, position_decoding, position_variance
from .runs import RunResult

__all__ = [
    "Attribution", "ablation_frame", "attribution_of", "read_ablation", "read_attribution", "save_ablation",
    "save_attribution", "RunResult", "cosine_matrix", "last_ln_params", "last_ln_stats", "norm_trends", "pe_self_similarity",
    "pe_similarity_grid", "pe_similarity_matrix", "pearson", "save_report", "summary_frame", "tok_pe_alignment",
    "site_table", "tok_pe_correlation", "logit_decomposition", "position_decoding", "position_variance",
]
