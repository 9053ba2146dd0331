"""The plots a spec can name: each pairs an analysis function (the numbers, :mod:`pe_probe.analysis.figure_data`)
with a drawing of them (this floor). A new kind of figure is one data function there, one draw function
here and one entry in :data:`PLOTS`; a new figure of an existing kind is just a spec file.

Draw functions take the :class:`~pe_probe.analysis.figure_data.FigureData`, the spec's options and its
title, and return a ``matplotlib.figure.Figure`` (figures) or Markdown text (tables). They compute nothing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..analysis import attention as at_
from ..analysis import figure_data as fd_
from ..analysis.figure_data import FigureData
from .accuracy import accuracy_bars
from .causal import draw_ablation, draw_attribution
from .correlation import correlation_lines
from .heatmaps import heatmap_grid
from .last_ln import last_ln_channels
from .pe_similarity import pe_similarity_heatmap, pe_similarity_row
from .tables import markdown_table
from .token_norms import token_norm_grid

DataFn = Callable[..., FigureData]
DrawFn = Callable[[FigureData, Mapping[str, Any], str], Any]


@dataclass(frozen=True)
class Plot:
    """A plot specs can name: ``kind`` (figure or table), its ``data`` function (analysis floor), its ``draw``
    function (this floor) and the ``options`` a spec may set, with their defaults."""

    name: str
    kind: str
    data: DataFn
    draw: DrawFn
    options: Mapping[str, Any]
    needs_group: bool = False

    @property
    def doc(self) -> str:
        """First line of the data function's docstring."""
        return (self.data.__doc__ or "").strip().splitlines()[0] if self.data.__doc__ else ""


def _figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def _titled(title: str, subject: str) -> str:
    return f"{title} ({subject})" if subject else title


def _wrap(title: str, width_in: float, fontsize: float = 10) -> str:
    """``title`` wrapped to lines that fit ``width_in`` inches at ``fontsize`` (never clipped at the edges)."""
    chars = max(20, int(width_in * 72 / (0.7 * fontsize)))
    return "\n".join(textwrap.wrap(title, chars))


def draw_accuracy_bars(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """One bar per configuration (mean over seeds, 95% CI), its seeds as dots, the paper's values as markers."""
    width = max(4.5, 1.2 * fd.data["label"].nunique() + 2.0)
    fig = _figure(width, 4.0)
    ax = fig.subplots()
    accuracy_bars(fd.data, ax, digits=options["digits"], paper_label=options["paper_label"])
    ax.set_title(_wrap(title, width), fontsize=10)
    return fig


def draw_map_grid(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """A grid of (tokens x channels) heatmaps, one per panel."""
    panels = fd.panels
    fig = _figure(2.3 * panels["column"].nunique(), 5.2)
    heatmap_grid(panels, figure=fig)
    fig.suptitle(_wrap(_titled(title, fd.subject), fig.get_figwidth()), fontsize=10)
    return fig


def draw_last_ln_maps(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """One row of maps per series: LN(x_L), the Last-LN PE, their sum."""
    fig = _figure(8.5, 2.6 * fd.panels["row"].nunique())
    heatmap_grid(fd.panels, figure=fig)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=10)
    return fig


_PART_TITLES = {"tok_pe_corr": "r (the paper's number)", "tok_pe_corr_position": "positional part",
                "tok_pe_corr_channel": "per-channel part"}


def draw_correlation_lines(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """One panel per metric (r and its two parts), one line per configuration (mean over seeds, 95% band, each
    seed thin); the paper's values (rows without a run) dashed on the r panel."""
    data = fd.data
    paper_rows = data["run"].isna()
    metrics = [m for m in _PART_TITLES if m in set(data.loc[~paper_rows, "metric"])] or ["tok_pe_corr"]
    fig = _figure(4.2 * len(metrics), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    for ax, metric in zip(axes, metrics):
        part = data[~paper_rows & (data["metric"] == metric)]
        ref = data[paper_rows & (data["metric"] == metric)]
        paper = dict(zip(ref["layer"], ref["value"])) or None
        correlation_lines(part, ax, paper=paper, paper_label=options["paper_label"],
                          ylabel="Pearson r (token map vs PE map)" if ax is axes[0] else "")
        ax.set_title(_PART_TITLES[metric], fontsize=9)
    fig.suptitle(_wrap(title, 4.2 * len(metrics)), fontsize=10)
    return fig


def draw_metric_lines(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """One panel per metric (``options["metrics"]``, at most 3 a row), one line per configuration (mean over
    seeds, 95% band, each seed thin), x the layer in forward order (L: after the last block) or, with
    ``x = "metric"``, the metrics themselves on one panel."""
    data, metrics = fd.data, list(options["metrics"])
    titles = dict(options["titles"])
    ylim = tuple(options["ylim"]) or None
    by_metric = options["x"] == "metric"
    panels = [None] if by_metric else [m for m in metrics if m in set(data["metric"])] or metrics[:1]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = _figure(4.2 * ncols, 3.6 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, metric in zip(axes, panels):
        part = data if metric is None else data[data["metric"] == metric]
        correlation_lines(part, ax, x="position", ylabel=options["ylabel"], ylim=ylim)
        if by_metric:
            ax.set_xticks(range(len(metrics)), [titles.get(m, m) for m in metrics], rotation=20, fontsize=7)
            ax.set_xlabel("")
        else:
            depth = int(data["position"].max()) if len(data) else 0
            ticks = list(range(depth + 1))
            ax.set_xticks(ticks, [str(t) if t < depth else "L" for t in ticks], fontsize=7)
            ax.set_xlabel("layer (input of block l; L: after the last block)")
            ax.set_title(titles.get(metric, metric), fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(_wrap(title, 4.2 * ncols), fontsize=10)
    return fig


def draw_history(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """Rows: configurations; columns: r and its two parts; x: epoch; one line per PE block (mean over seeds,
    95% band)."""
    data = fd.data
    series = list(dict.fromkeys(data["series"]))
    metrics = [m for m in _PART_TITLES if m in set(data["metric"])]
    fig = _figure(3.6 * len(metrics), 2.6 * len(series) + 0.6)
    axes = np.asarray(fig.subplots(len(series), len(metrics), squeeze=False, sharex=True, sharey=True))
    for i, name in enumerate(series):
        for j, metric in enumerate(metrics):
            part = data[(data["series"] == name) & (data["metric"] == metric)]
            ax = axes[i, j]
            correlation_lines(part, ax, x="epoch", hue="layer", units="run", ylabel=f"{name}\nr" if j == 0 else "")
            ax.set_xlabel("epoch" if i == len(series) - 1 else "")
            if i == 0:
                ax.set_title(_PART_TITLES[metric], fontsize=9)
            if j == 0:
                ax.legend(title="block", fontsize=6, title_fontsize=6, ncols=2)
            elif ax.get_legend() is not None:
                ax.get_legend().remove()
    fig.suptitle(_wrap(title, 3.6 * len(metrics)), fontsize=10)
    return fig


def draw_last_ln_params(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """Gamma and beta per channel, one line per series, with the per-series statistics in the legend."""
    fig = _figure(12.0, 4.0)
    ax_g, ax_b = fig.subplots(1, 2)
    last_ln_channels(fd.data, ax_g, param="gamma")
    last_ln_channels(fd.data, ax_b, param="beta", stats=fd.stats)
    fig.suptitle(_wrap(title, 12.0), fontsize=10)
    return fig


def draw_token_norms(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """Per-token norm maps, rows = images, columns = series x stage."""
    fig = _figure(1.0, 1.0)
    token_norm_grid(fd.panels, figure=fig)
    fig.suptitle(_wrap(title, fig.get_figwidth()), fontsize=10)
    return fig


def draw_pe_similarity(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """Per layer: the PE cosine matrix (top) and one token's row on the patch grid (bottom)."""
    panels = fd.panels.to_dict("records")
    fig = _figure(2.4 * len(panels), 5.0)
    axes = np.asarray(fig.subplots(2, len(panels), squeeze=False))
    for j, p in enumerate(panels):
        pe_similarity_heatmap(p["map"], axes[0, j], title=f"layer {p['layer']}: PE cosine")
        pe_similarity_row(p["map"], p["token"], p["grid"], axes[1, j], title=f"layer {p['layer']}: token {p['token']}")
    fig.colorbar(axes[0, -1].images[0], ax=list(axes.ravel()), shrink=0.6, label="cosine")
    fig.suptitle(_wrap(_titled(title, fd.subject), 2.4 * len(panels)), fontsize=10)
    return fig


def draw_table(fd: FigureData, options: Mapping[str, Any], title: str) -> str:
    """The table as Markdown, with its footnote."""
    md = markdown_table(fd.table, options["digits"])
    return md + (f"\n{fd.footnote}\n" if fd.footnote else "")


#: Axis labels of the attention and input-side metrics (docs/probe.md defines them).
_LABELS = {"attn_distance": "mean attention distance (patches)", "attn_entropy": "attention entropy (nats)",
           "attn_prefix_share": "attention to prefix tokens", "logit_pos_share": "share of logit power with the PE",
           "agree": "predictions unchanged", "top1": "top-1",
           "pos_share": "position share of the token variance", "tok_pe_corr": "Pearson r (token map vs PE map)"}


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def draw_layer_lines(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """One line per configuration through a per-block statistic (mean over seeds, 95% band, each seed thin)."""
    fig = _figure(5.0, 3.8)
    ax = fig.subplots()
    metric = options["metric"]
    share = metric.endswith("share")
    correlation_lines(fd.data, ax, ylabel=_LABELS.get(metric, metric), ylim=(-0.02, 1.02) if share else None,
                      zero_line=share)
    _integer_ticks(ax)
    ax.set_title(_wrap(title, 5.0), fontsize=10)
    return fig


def draw_shuffle_lines(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """One line per configuration: the metric against the side of the shuffled blocks, in patches."""
    fig = _figure(5.0, 3.8)
    ax = fig.subplots()
    correlation_lines(fd.data, ax, x="block", ylabel=_LABELS.get(options["metric"], options["metric"]),
                      xlabel="patches shuffled within blocks of k x k (k)", ylim=(-0.02, 1.02))
    ax.set_xscale("log", base=2)
    ax.set_title(_wrap(title, 5.0), fontsize=10)
    return fig


def draw_resolution_lines(fd: FigureData, options: Mapping[str, Any], title: str) -> Figure:
    """Two panels against the input size: top-1, and the position statistic; the training size marked."""
    fig = _figure(8.4, 3.8)
    axes = fig.subplots(1, 2)
    data = fd.data
    for ax, metric in zip(axes, ["top1", options["metric"]]):
        part = data[data["metric"] == metric]
        correlation_lines(part, ax, x="img_size", ylabel=_LABELS.get(metric, metric), xlabel="input size (px)",
                          ylim=(-0.02, 1.02) if metric == "top1" else None, zero_line=metric != "top1")
        for size in sorted(set(part.loc[part["native"], "img_size"])):
            ax.axvline(size, color="0.6", linestyle=":", linewidth=1)
        _integer_ticks(ax)
    fig.suptitle(_wrap(title, 8.4), fontsize=10)
    return fig


#: Every plot a spec can name.
PLOTS: dict[str, Plot] = {p.name: p for p in (
    Plot("accuracy_bars", "figure", fd_.accuracy_by_scheme, draw_accuracy_bars,
         {"digits": 2, "paper_label": "paper (DeiT-Ti, ImageNet-1K)"}),
    Plot("layer_maps", "figure", fd_.layer_map_panels, draw_map_grid,
         {"layers": [1, 4, 7, 9, 11], "patch_only": False, "paper_depth": 12}),
    Plot("correlation_lines", "figure", fd_.correlation_by_layer, draw_correlation_lines,
         {"patch_only": False, "paper_label": "paper (DeiT-Ti)", "paper_depth": 12}),
    Plot("last_ln_maps", "figure", fd_.last_ln_map_panels, draw_last_ln_maps, {"patch_only": False}),
    Plot("last_ln_params", "figure", fd_.last_ln_by_channel, draw_last_ln_params,
         {"cosine_metric": "last_ln_cos_before_after", "cosine_paper_series": ["pvg_token", "pvg"]}),
    Plot("token_norms", "figure", fd_.token_norm_panels, draw_token_norms, {"n_images": 3}),
    Plot("pe_similarity", "figure", fd_.pe_similarity_panels, draw_pe_similarity,
         {"layers": "receiving", "max_layers": 4, "token": "center"}),
    Plot("history", "figure", fd_.history_by_epoch, draw_history, {}),
    Plot("metric_lines", "figure", fd_.metric_by_layer, draw_metric_lines,
         {"metrics": ["pos_share"], "titles": {}, "x": "layer", "ylim": [], "ylabel": "value"}),
    Plot("ablation", "figure", fd_.ablation_by_layer, draw_ablation,
         {"metric": "agree", "interventions": ["zero", "mean", "shuffle"]}),
    Plot("attribution", "figure", fd_.attribution_by_layer, draw_attribution, {"max_rel_delta": 0.05}),
    Plot("attention_lines", "figure", at_.attention_by_layer, draw_layer_lines, {"metric": "attn_distance"}),
    Plot("shuffle_lines", "figure", at_.shuffle_by_block, draw_shuffle_lines, {"metric": "agree"}),
    Plot("resolution_lines", "figure", at_.resolution_by_size, draw_resolution_lines, {"metric": "pos_share"}),
    Plot("accuracy_table", "table", fd_.accuracy_table, draw_table,
         {"backbones": ["DeiT-Ti", "DeiT-S", "DeiT-B"], "digits": 2}),
    Plot("ablation_table", "table", fd_.ablation_table, draw_table, {"paper_rows": True, "digits": 2},
         needs_group=True),
)}
