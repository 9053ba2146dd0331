"""Render every spec the available runs support: ``<id>.png/.pdf/.csv`` (tables ``.csv/.md``) + ``index.md``.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot, so no global state and no GUI
backend); every file is written atomically.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.paper import reference
from ..analysis.runs import RunResult
from ..analysis.select import select_runs
from ..core.io import atomic_path, write_text
from .plots import PLOTS
from .spec import Spec, load_specs, resolve_specs

log = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "pdf")


@dataclass
class Rendered:
    """A spec that was drawn: its files by extension and the runs it used."""

    spec: Spec
    files: dict[str, Path]
    runs: list[str]
    notes: list[str] = field(default_factory=list)
    table: str | None = None


@dataclass
class Skipped:
    """A spec that lacks runs: what it would need."""

    spec: Spec
    needs: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class Failed:
    """A spec whose plot raised: the error, one line."""

    spec: Spec
    error: str


@dataclass
class RenderResult:
    """What ``render_all`` did, spec by spec, and where the index is."""

    out_dir: Path
    rendered: list[Rendered] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    index: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no spec failed (skipped specs are fine)."""
        return not self.failed

    def files(self) -> list[Path]:
        """Every file written, index included."""
        out = [p for r in self.rendered for p in r.files.values()]
        return out + ([self.index] if self.index else [])


def _as_specs(specs: Sequence[Spec | str | os.PathLike] | None, spec_dir: str | Path | None) -> list[Spec]:
    if specs is None:
        return load_specs(spec_dir)
    return resolve_specs(specs)


def render_spec(spec: Spec, runs: Sequence[RunResult], out_dir: str | Path, *, dpi: int = 150) -> Rendered | Skipped:
    """Draw one spec into ``out_dir``, or say which runs it would need. Plot errors propagate."""
    out_dir = Path(out_dir)
    sel = select_runs(spec.query, runs)
    if not sel.ok:
        return Skipped(spec=spec, needs=sel.missing, notes=sel.notes)
    plot = PLOTS[spec.plot]
    data = plot.data(sel, spec.options, reference(spec.paper) if spec.paper else None)
    drawn = plot.draw(data, spec.options, spec.title)
    files: dict[str, Path] = {}
    table = None
    if plot.kind == "figure":
        try:
            for fmt in FIGURE_FORMATS:
                files[fmt] = out_dir / f"{spec.id}.{fmt}"
                with atomic_path(files[fmt]) as tmp:
                    drawn.savefig(tmp, format=fmt, dpi=dpi)
                drawn.set_layout_engine("none")  # keep the first layout: the same figure, faster
        finally:
            drawn.clear()
    files["csv"] = out_dir / f"{spec.id}.csv"
    with atomic_path(files["csv"]) as tmp:
        data.data.to_csv(tmp, index=False)
    if plot.kind == "table":
        table = drawn
        files["md"] = out_dir / f"{spec.id}.md"
        write_text(files["md"], f"# {spec.title}\n\n{spec.caption}\n\n{table}")
    return Rendered(spec=spec, files=files, runs=[r.name for r in sel.all_runs()], notes=sel.notes + data.notes,
                    table=table)


def render_all(
    runs: Sequence[RunResult],
    out_dir: str | Path,
    specs: Sequence[Spec | str | os.PathLike] | None = None,
    *,
    spec_dir: str | Path | None = None,
    strict: bool = False,
    dpi: int = 150,
) -> RenderResult:
    """Render every spec the ``runs`` support into ``out_dir`` and write ``index.md``.

    ``specs``: Spec objects, spec files, folders of specs or ``"builtin"`` (the shipped specs); default: every
    spec in ``spec_dir`` (default: the shipped specs, :func:`~pe_probe.figures.spec.builtin_specs_dir`). A spec without its runs is skipped (listed in the index with what it needs).
    A plot that raises is recorded in ``failed`` and logged, or re-raised with ``strict=True``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RenderResult(out_dir=out_dir)
    for spec in _as_specs(specs, spec_dir):
        try:
            item = render_spec(spec, runs, out_dir, dpi=dpi)
        except Exception as exc:  # one broken figure must not lose the others
            if strict:
                raise
            log.error("figure %s failed:\n%s", spec.id, traceback.format_exc())
            result.failed.append(Failed(spec=spec, error=f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        (result.rendered if isinstance(item, Rendered) else result.skipped).append(item)
    result.index = out_dir / "index.md"
    write_text(result.index, index_markdown(result, runs))
    return result


def index_markdown(result: RenderResult, runs: Sequence[RunResult] = ()) -> str:
    """The ``index.md`` text: figures (image links + caption), tables inline, then Skipped and Failed."""
    lines = ["# pe-probe figures", ""]
    if runs:
        lines += [f"Rendered from {len(runs)} run(s): " + ", ".join(f"`{r.name}`" for r in runs) + ".", ""]
    figures = [r for r in result.rendered if r.spec.kind == "figure"]
    tables = [r for r in result.rendered if r.spec.kind == "table"]
    if figures:
        lines += ["## Figures", ""]
    for r in figures:
        links = " · ".join(f"[{ext.upper()}]({p.name})" for ext, p in r.files.items() if ext != "png")
        lines += [f"### {r.spec.title}", "", f"![{r.spec.id}]({r.files['png'].name})", "",
                  f"{r.spec.caption} Runs: {', '.join(f'`{n}`' for n in r.runs)}. {links}", ""]
        lines += [f"- {n}" for n in r.notes] + ([""] if r.notes else [])
    if tables:
        lines += ["## Tables", ""]
    for r in tables:
        lines += [f"### {r.spec.title}", "", f"{r.spec.caption} Data: [CSV]({r.files['csv'].name}).", "",
                  (r.table or "").rstrip(), ""]
        lines += [f"- {n}" for n in r.notes] + ([""] if r.notes else [])
    lines += ["## Skipped", ""]
    if not result.skipped:
        lines += ["Nothing was skipped.", ""]
    for s in result.skipped:
        lines.append(f"- **{s.spec.id}** ({s.spec.title}): needs " + "; ".join(s.needs) + ".")
        lines += [f"  - {n}" for n in s.notes]
    lines.append("")
    if result.failed:
        lines += ["## Failed", ""]
        lines += [f"- **{f.spec.id}** ({f.spec.title}): {f.error}" for f in result.failed]
        lines.append("")
    return "\n".join(lines)
