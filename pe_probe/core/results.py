"""``Result``: the shape every tidy measurement of pe_probe shares (torch-free, pandas only on call).

A result is a list of ``rows`` (tuples in the order of the subclass's :attr:`Result.COLUMNS`, typed by
:attr:`Result.TYPES`) and a JSON-able ``meta`` (what was run). It gives a tidy pandas frame on request
(:meth:`Result.frame`; pandas is imported there, never when :mod:`pe_probe.core` is), and saves as a CSV +
JSON pair (:meth:`Result.save`, :meth:`Result.load`) written to temporary names and renamed together, the JSON
carrying :attr:`Result.SCHEMA_VERSION`: a pair of another schema, or whose header is not :attr:`Result.COLUMNS`,
is refused with one line (:class:`~pe_probe.core.errors.CheckpointError`), so caches are measured again.

A new result kind is a dataclass subclass with ``rows`` and ``meta`` fields (plus its own extras), its
``COLUMNS``/``TYPES``, file names and ``KIND``; extras that go into the JSON use :meth:`Result._extra_json` and
:meth:`Result._from_parts`. :class:`~pe_probe.core.causal.AblationResult` and
:class:`~pe_probe.core.causal.AttributionResult` are the first two.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from .errors import CheckpointError
from .io import atomic_path, write_json

#: Where a result's JSON records its schema.
SCHEMA_KEY = "schema_version"


def write_rows(path: str | os.PathLike, columns: tuple[str, ...], rows: list) -> None:
    """``rows`` as CSV with the header ``columns`` (floats in full precision: ``repr``) into ``path``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([repr(float(v)) if isinstance(v, float) else v for v in r])
    Path(path).write_text(buf.getvalue())


class Result:
    """Base of the tidy result containers (see the module docstring). Subclasses are dataclasses with ``rows``
    and ``meta`` and set the class attributes below."""

    #: Column names of every row, in order.
    COLUMNS: ClassVar[tuple[str, ...]] = ()
    #: Column -> Python type its CSV text is read back as (``int``, ``float``; columns not listed: ``str``).
    TYPES: ClassVar[dict[str, type]] = {}
    #: File names of the pair and what the result is called in messages.
    CSV: ClassVar[str] = ""
    JSON: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    #: Version of the saved layout of this kind.
    SCHEMA_VERSION: ClassVar[int] = 1

    rows: list
    meta: dict[str, Any]

    # ------------------------------------------------------------------ views
    def frame(self):
        """The rows as a tidy pandas DataFrame with :attr:`COLUMNS`, typed by :attr:`TYPES` (built on each call;
        no ``attrs``: what was run is :attr:`meta`)."""
        import pandas as pd

        frame = pd.DataFrame([tuple(r) for r in self.rows], columns=list(self.COLUMNS))
        dtypes = {c: {int: "int64", float: "float64"}[t] for c, t in self.TYPES.items() if t in (int, float)}
        return frame.astype(dtypes)

    @property
    def sites(self) -> list[str]:
        """The sites in forward order as the rows give them (results with a ``site`` column only)."""
        if "site" not in self.COLUMNS:
            raise AttributeError(f"a {self.KIND} result has no site column")
        i = self.COLUMNS.index("site")
        return list(dict.fromkeys(r[i] for r in self.rows))

    # ------------------------------------------------------------------ persistence
    def _extra_json(self) -> dict[str, Any]:
        """What the subclass stores in the JSON besides ``meta`` (e.g. attribution maps)."""
        return {}

    @classmethod
    def _from_parts(cls, rows: list, meta: dict[str, Any]) -> Result:
        """The result from read rows and JSON (the subclass pops its extras from ``meta``)."""
        return cls(rows, meta)  # type: ignore[call-arg]

    def _pair_id(self) -> str | None:
        """An id written into both files of the pair and checked on read (None: none; issue 24 fills it)."""
        return None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<CSV>`` (the rows) and ``<JSON>`` (``meta``, ``schema_version`` and the extras) into
        ``directory``, both to temporary names renamed only when both are complete (an error leaves the
        previous pair as it was). Returns the CSV's path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, SCHEMA_KEY: self.SCHEMA_VERSION, **self._extra_json()}
        with atomic_path(out / self.JSON) as tmp_json, atomic_path(out / self.CSV) as tmp_csv:
            write_json(tmp_json, meta)
            write_rows(tmp_csv, self.COLUMNS, self.rows)
        return out / self.CSV

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Result:
        """The result :meth:`save` wrote to ``directory``; :class:`~pe_probe.core.errors.CheckpointError` in one
        line for a missing, corrupt or other-schema pair."""
        folder = Path(directory)
        csv_path, json_path = folder / cls.CSV, folder / cls.JSON
        try:
            meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
            text = csv_path.read_text()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"cannot read the {cls.KIND} in {folder}: {type(exc).__name__}: {exc}") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{json_path} is not a JSON object")
        lines = list(csv.reader(io.StringIO(text)))
        header = lines[0] if lines else []
        version = meta.get(SCHEMA_KEY)
        if tuple(header) != cls.COLUMNS or version not in (None, cls.SCHEMA_VERSION):
            raise CheckpointError(f"{csv_path}: {cls.KIND} of schema {version or 1} (columns {header}); this "
                                  f"pe_probe reads schema {cls.SCHEMA_VERSION} ({list(cls.COLUMNS)}): measure it again")
        types = [cls.TYPES.get(c, str) for c in cls.COLUMNS]
        rows = []
        for i, line in enumerate(lines[1:], start=2):
            try:
                rows.append(tuple(t(v) for t, v in zip(types, line, strict=True)))
            except ValueError as exc:
                raise CheckpointError(f"{csv_path}, line {i}: {exc}") from None
        meta.pop(SCHEMA_KEY, None)
        return cls._from_parts(rows, meta)
