"""Render every spec the available runs support: ``<id>.png/.pdf/.csv`` (tables ``.csv/.md``) + ``index.md``.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot, so no global state and no GUI
backend); every file is written atomically.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.claims import ClaimResult, evaluate_claim
from ..analysis.paper import reference
from ..analysis.runs import RunResult
from ..analysis.select import select_runs
from ..core.io import TEMP_MARK, TEMP_SUFFIX, atomic_path, contained, write_text
from ..core.locks import folder_lock
from .plots import PLOTS
from .spec import Spec, load_specs, resolve_specs

log = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "pdf")
#: Moved into place last, after every figure: an output folder with an index is a complete set (or says what is
#: missing).
INDEX, CLAIMS = "index.md", "claims.csv"


@dataclass
class Rendered:
    """A spec that was drawn: its files by extension, the runs it used, what its data shows (``findings``) and
    its claims evaluated on those runs."""

    spec: Spec
    files: dict[str, Path]
    runs: list[str]
    notes: list[str] = field(default_factory=list)
    table: str | None = None
    findings: list[str] = field(default_factory=list)
    claims: list[ClaimResult] = field(default_factory=list)


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
    claims_csv: Path | None = None

    @property
    def claims(self) -> list[ClaimResult]:
        """Every claim evaluated, figure by figure."""
        return [c for r in self.rendered for c in r.claims]

    @property
    def ok(self) -> bool:
        """True when no spec failed (skipped specs are fine)."""
        return not self.failed

    def files(self) -> list[Path]:
        """Every file written, index included."""
        out = [p for r in self.rendered for p in r.files.values()]
        return out + [p for p in (self.claims_csv, self.index) if p is not None]


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
                files[fmt] = contained(out_dir, f"{spec.id}.{fmt}")
                with atomic_path(files[fmt]) as tmp:
                    drawn.savefig(tmp, format=fmt, dpi=dpi)
                drawn.set_layout_engine("none")  # keep the first layout: the same figure, faster
        finally:
            drawn.clear()
    files["csv"] = contained(out_dir, f"{spec.id}.csv")
    with atomic_path(files["csv"]) as tmp:
        data.data.to_csv(tmp, index=False)
    if plot.kind == "table":
        table = drawn
        files["md"] = contained(out_dir, f"{spec.id}.md")
        write_text(files["md"], f"# {spec.title}\n\n{spec.caption}\n\n{table}")
    claims = [evaluate_claim(c, sel, spec.id) for c in spec.claims]
    return Rendered(spec=spec, files=files, runs=[r.name for r in sel.all_runs()], notes=sel.notes + data.notes,
                    table=table, findings=data.findings, claims=claims)


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

    All or nothing: under the folder's lock (:func:`~pe_probe.core.locks.folder_lock`) every file is first
    written into a temporary folder inside ``out_dir`` (``.render.pe-probe-XXXXXXXX.tmp``), and only a render
    that finished is renamed into place: the figure files, then ``claims.csv``, then ``index.md`` last (the
    previous ``index.md`` and ``claims.csv`` are removed just before these renames, so not even a kill amid
    them leaves an index describing another set). A render that fails (``strict`` and a plot raising, a failing
    file system: disk full, a file-size limit, permission denied; an interrupt) leaves ``out_dir`` as it was,
    the previous set with its index, and no temporary folder; the error names the file in ``out_dir``. Each
    destination is checked with :func:`~pe_probe.core.io.contained`.
    """
    out_dir = Path(out_dir)
    result = RenderResult(out_dir=out_dir)
    specs = _as_specs(specs, spec_dir)
    # one writer; a render is moved into place only once it is complete (taking the lock removes a killed
    # render's temporary folder: core.io.remove_stale_temps)
    with folder_lock(out_dir):
        try:
            stage = Path(tempfile.mkdtemp(prefix=f".{_STAGE}.{TEMP_MARK}", suffix=TEMP_SUFFIX, dir=out_dir))
        except OSError as exc:  # a full disk or a read-only folder: name the output folder
            raise OSError(exc.errno, exc.strerror, str(out_dir)) from exc
        try:
            try:
                _render_into(stage, runs, specs, result, strict=strict, dpi=dpi)
                _move_into_place(result, stage, out_dir)
            except OSError as exc:  # name the file as it would be in out_dir, not in the temporary folder
                named = _renamed_error(exc, stage, out_dir)
                if named is None:
                    raise
                raise named from exc
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return result


#: Name of the temporary folder a render is written into (``.render.pe-probe-XXXXXXXX.tmp``).
_STAGE = "render"


def _render_into(stage: Path, runs, specs, result: RenderResult, *, strict: bool, dpi: int) -> None:
    """Draw every spec, then claims.csv and index.md, into ``stage``; fills ``result`` (paths inside ``stage``)."""
    for spec in specs:
        try:
            item = render_spec(spec, runs, stage, dpi=dpi)
        except OSError:  # the disk, not the figure: stop (nothing is moved into place)
            raise
        except Exception as exc:  # one broken figure must not lose the others
            if strict:
                raise
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.error("figure %s failed: %s (listed in index.md)", spec.id, error)  # one line on stderr
            log.debug("figure %s failed:\n%s", spec.id, traceback.format_exc())
            result.failed.append(Failed(spec=spec, error=error))
            continue
        (result.rendered if isinstance(item, Rendered) else result.skipped).append(item)
    result.claims_csv = stage / CLAIMS
    write_text(result.claims_csv, claims_frame(result).to_csv(index=False))
    result.index = stage / INDEX
    write_text(result.index, index_markdown(result, runs))


def _move_into_place(result: RenderResult, stage: Path, out_dir: Path) -> None:
    """Rename the finished render from ``stage`` into ``out_dir``: figures, then claims.csv, index.md last; the
    paths in ``result`` then point into ``out_dir``. Files of failed specs stay behind (and are removed)."""
    moves = [(r, ext, contained(out_dir, p.name)) for r in result.rendered for ext, p in r.files.items()]
    claims, index = contained(out_dir, CLAIMS), contained(out_dir, INDEX)  # every destination checked first
    index.unlink(missing_ok=True)  # from here until the new index is in place, no index describes the folder
    claims.unlink(missing_ok=True)
    for r, ext, target in moves:
        os.replace(r.files[ext], target)
        r.files[ext] = target
    os.replace(result.claims_csv, claims)
    result.claims_csv = claims
    os.replace(result.index, index)
    result.index = index


def _renamed_error(exc: OSError, stage: Path, out_dir: Path) -> OSError | None:
    """``exc`` naming the file in ``out_dir`` where it named one in the temporary folder ``stage`` (else None)."""
    name = exc.filename
    if name is None or exc.errno is None:
        return None
    try:
        rel = Path(name).relative_to(stage)
    except ValueError:
        return None
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(out_dir / rel))


def claims_frame(result: RenderResult):
    """Every claim of every spec as one row: evaluated ones with their values and verdicts, claims of skipped
    or failed specs as ``not tested``."""
    import pandas as pd

    rows = [c.row(_labels(r.spec)) for r in result.rendered for c in r.claims]
    for item, why in [(s, "figure skipped: " + "; ".join(s.needs)) for s in result.skipped] + \
                     [(f, f"figure failed: {f.error}") for f in result.failed]:
        rows += [{"figure": item.spec.id, "claim_id": c.id, "claim": c.claim, "quantity": "", "value": float("nan"),
                  "ci_low": float("nan"), "ci_high": float("nan"), "n_seeds": "0", "expect": c.expect,
                  "paper": c.paper, "verdict": "not tested", "reason": why} for c in item.spec.claims]
    cols = ["figure", "claim_id", "claim", "quantity", "value", "ci_low", "ci_high", "n_seeds", "expect", "paper",
            "verdict", "reason"]
    return pd.DataFrame(rows, columns=cols)


def _labels(spec: Spec) -> dict[str, str]:
    return {s.key: s.label for s in spec.query.series}


def _claims_markdown(result: RenderResult) -> list[str]:
    frame = claims_frame(result)
    if frame.empty:
        return []
    lines = ["## Claims", "",
             "Each claim of the paper that a figure tests, measured on these runs: the quantity, its mean and 95% "
             "confidence interval over seeds (Student's t; Welch's for a difference), the paper's number, and the "
             "verdict of a rule fixed in the figure's spec: **supported** when the interval lies entirely on the "
             "claimed side of 0, **contradicted** when entirely on the other side, **inconclusive** when it "
             "contains 0 or a series has fewer than 2 seeds.", "",
             "| figure | claim (paper) | measured | value [95% CI] (seeds) | paper | verdict |", "|---|---|---|---|---|---|"]
    for row in frame.to_dict("records"):
        if row["verdict"] == "not tested":
            value = "-"
        elif row["value"] != row["value"]:
            value = "n/a"
        else:
            ci = f" [{row['ci_low']:.3g}, {row['ci_high']:.3g}]" if row["ci_low"] == row["ci_low"] else ""
            value = f"{row['value']:.3g}{ci} ({row['n_seeds']})"
        cells = [row["figure"], row["claim"], row["quantity"] or "-", value, row["paper"] or "-",
                 f"**{row['verdict']}** ({row['reason']})"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return lines + ["", "Data: [claims.csv](claims.csv).", ""]


def index_markdown(result: RenderResult, runs: Sequence[RunResult] = ()) -> str:
    """The ``index.md`` text: figures (image links + caption), tables inline, then Skipped and Failed."""
    lines = ["# pe-probe figures", ""]
    if runs:
        lines += [f"Rendered from {len(runs)} run(s): " + ", ".join(f"`{r.name}`" for r in runs) + ".", ""]
    lines += _claims_markdown(result)
    figures = [r for r in result.rendered if r.spec.kind == "figure"]
    tables = [r for r in result.rendered if r.spec.kind == "table"]
    if figures:
        lines += ["## Figures", ""]
    for r in figures:
        links = " · ".join(f"[{ext.upper()}]({p.name})" for ext, p in r.files.items() if ext != "png")
        lines += [f"### {r.spec.title}", "", f"![{r.spec.id}]({r.files['png'].name})", "",
                  f"{r.spec.caption} {_shown(r)}Runs: {', '.join(f'`{n}`' for n in r.runs)}. {links}", ""]
        lines += [f"- {n}" for n in r.notes] + ([""] if r.notes else [])
    if tables:
        lines += ["## Tables", ""]
    for r in tables:
        lines += [f"### {r.spec.title}", "", f"{r.spec.caption} {_shown(r)}Data: [CSV]({r.files['csv'].name}).", "",
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


def _shown(r: Rendered) -> str:
    """The caption's second half: what this data shows, from the figure's data and its claims."""
    parts = [f.rstrip(".") + "." for f in r.findings]
    parts += [f"{c.spec.claim}: {c.verdict} (Claims table)." for c in r.claims]
    return ("Measured: " + " ".join(parts) + " ") if parts else ""
