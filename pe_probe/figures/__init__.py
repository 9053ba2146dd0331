"""Figures floor: tidy DataFrames -> matplotlib axes, specs -> files. Never imports torch, computes nothing.

Plot functions take a DataFrame (or arrays for maps) and an optional ``ax``, draw and return it. A spec
(:mod:`~pe_probe.figures.spec`, shipped as package data) names a plot of :data:`~pe_probe.figures.plots.PLOTS`,
whose numbers come from :mod:`pe_probe.analysis.figure_data`; :func:`render_all` turns specs and
:class:`~pe_probe.analysis.runs.RunResult` lists into PNG/PDF/CSV + ``index.md``.
"""

from .accuracy import accuracy_bars
from .causal import site_lines
from .correlation import correlation_lines
from .heatmaps import heatmap_grid, map_heatmap
from .last_ln import last_ln_channels
from .pe_similarity import pe_similarity_heatmap, pe_similarity_row
from .plots import PLOTS, Plot
from .render import Failed, Rendered, RenderResult, Skipped, render_all, render_spec
from .spec import Spec, builtin_specs_dir, load_spec, load_specs, parse_spec, resolve_specs
from .tables import markdown_table
from .token_norms import token_norm_grid

__all__ = [
    "PLOTS", "Failed", "Plot", "RenderResult", "Rendered", "Skipped", "Spec", "accuracy_bars", "builtin_specs_dir",
    "correlation_lines", "heatmap_grid", "last_ln_channels", "load_spec", "load_specs", "map_heatmap",
    "markdown_table", "parse_spec", "pe_similarity_heatmap", "pe_similarity_row", "render_all", "render_spec",
    "resolve_specs", "site_lines", "token_norm_grid",
]
