"""Figures layer: tidy data -> matplotlib axes, specs -> files. Never imports torch.

Plot functions take a DataFrame (or arrays for maps) and an optional ``ax``, draw and return it.
``render_all`` turns ``analyses/specs/*.toml`` and a list of ``RunResult`` into PNG/PDF/CSV + ``index.md``.
"""

from .accuracy import accuracy_bars
from .correlation import correlation_lines
from .heatmaps import heatmap_grid, map_heatmap
from .last_ln import last_ln_channels
from .pe_similarity import pe_similarity_matrix, pe_similarity_row
from .registry import PLOTS, Output, register_plot
from .render import Failed, Rendered, RenderResult, Skipped, render_all, render_spec
from .specs import Spec, default_spec_dir, load_spec, load_specs, parse_spec
from .tables import markdown_table
from .token_norms import token_norm_grid

__all__ = [
    "PLOTS", "Failed", "Output", "RenderResult", "Rendered", "Skipped", "Spec",
    "accuracy_bars", "correlation_lines", "default_spec_dir", "heatmap_grid", "last_ln_channels",
    "load_spec", "load_specs", "map_heatmap", "markdown_table", "parse_spec", "pe_similarity_matrix",
    "pe_similarity_row", "register_plot", "render_all", "render_spec", "token_norm_grid",
]
