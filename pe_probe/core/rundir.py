"""The run directory: the one type that knows a run's files and reads and writes them atomically.

A run directory is written by ``pe_probe.train`` and read by every floor above it (loading, evaluation,
probing, figures, reproduction). Its files:

==================== ==========================================================================
``config.json``      what was trained: model name and kwargs, PE config, data, recipe (JSON)
``model.safetensors`` the weights (rewritten at the end of every epoch)
``metrics.jsonl``    one JSON record per finished epoch
``state.pt``         the resume state (written by the training floor, read with ``weights_only``)
``summary.json``     written last, only once training completed
``eval.json``        every ``pe-probe eval`` result, one entry per data set and split
``probe/``           the saved probe report of the run (:class:`~pe_probe.core.report.ProbeReport`)
``probe_history.csv`` metrics of the probes taken during training (``epoch, layer, metric, value``)
``ablation.csv``     the PE ablation of the run (``site, pe_kind, layer, intervention, metric, value``),
                     with ``ablation.json`` (what was run: images, effect, seed, cost)
``attribution.csv``  the PE attribution of the run (``site, pe_kind, layer, metric, value``), with
                     ``attribution.json`` (what was run, and the per-token maps)
==================== ==========================================================================

The JSON files are handled here (torch-free); the torch floor writes the weights and the resume state
through :meth:`RunDir.atomic`, so every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from .attention import ATTENTION_CSV, ATTENTION_JSON, RESOLUTION_CSV, RESOLUTION_JSON, SHUFFLE_CSV, SHUFFLE_JSON
from .causal import ABLATION_CSV, ABLATION_JSON, ATTRIBUTION_CSV, ATTRIBUTION_JSON
from .errors import CheckpointError
from .io import atomic_path, write_json, write_text

#: Keys every ``config.json`` has.
CONFIG_KEYS = ("model", "model_kwargs", "num_classes", "data")
#: ``config.json`` keys other libraries write beside their weights and a run's config never has: Hugging Face
#: transformers' ``model_type``, a timm hub folder's ``architecture``. Such a folder is a checkpoint
#: (``pe_probe.load_checkpoint``), never a run.
FOREIGN_CONFIG_KEYS = {"model_type": "Hugging Face transformers", "architecture": "timm hub"}


def foreign_config(config: Any) -> str | None:
    """The library whose ``config.json`` this is (:data:`FOREIGN_CONFIG_KEYS`), or None for a run's (or any
    other) config."""
    if not isinstance(config, dict) or "model_kwargs" in config:
        return None
    return next((lib for key, lib in FOREIGN_CONFIG_KEYS.items() if key in config), None)


class RunDir:
    """A run directory at ``path`` (which need not exist yet). Paths are attributes; readers raise
    :class:`~pe_probe.core.errors.CheckpointError` for missing or corrupt files where a file is required."""

    CONFIG = "config.json"
    WEIGHTS = "model.safetensors"
    METRICS = "metrics.jsonl"
    STATE = "state.pt"
    SUMMARY = "summary.json"
    EVAL = "eval.json"
    PROBE = "probe"
    PROBE_HISTORY = "probe_history.csv"
    ABLATION, ABLATION_META = ABLATION_CSV, ABLATION_JSON
    ATTRIBUTION, ATTRIBUTION_META = ATTRIBUTION_CSV, ATTRIBUTION_JSON
    ATTENTION, ATTENTION_META = ATTENTION_CSV, ATTENTION_JSON
    SHUFFLE, SHUFFLE_META = SHUFFLE_CSV, SHUFFLE_JSON
    RESOLUTION, RESOLUTION_META = RESOLUTION_CSV, RESOLUTION_JSON

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ paths and state
    @property
    def name(self) -> str:
        """The directory's name (how figures and reports name the run)."""
        return self.path.name

    def file(self, name: str) -> Path:
        """The path of file ``name`` inside the run."""
        return self.path / name

    config_path = property(lambda self: self.path / self.CONFIG, doc="``config.json``")
    weights_path = property(lambda self: self.path / self.WEIGHTS, doc="``model.safetensors``")
    metrics_path = property(lambda self: self.path / self.METRICS, doc="``metrics.jsonl``")
    state_path = property(lambda self: self.path / self.STATE, doc="``state.pt``")
    summary_path = property(lambda self: self.path / self.SUMMARY, doc="``summary.json``")
    eval_path = property(lambda self: self.path / self.EVAL, doc="``eval.json``")
    probe_dir = property(lambda self: self.path / self.PROBE, doc="``probe/``: the saved probe report")
    probe_history_path = property(lambda self: self.path / self.PROBE_HISTORY, doc="``probe_history.csv``")
    ablation_path = property(lambda self: self.path / self.ABLATION, doc="``ablation.csv``")
    attribution_path = property(lambda self: self.path / self.ATTRIBUTION, doc="``attribution.csv``")
    attention_path = property(lambda self: self.path / self.ATTENTION, doc="``attention.csv``")
    shuffle_path = property(lambda self: self.path / self.SHUFFLE, doc="``shuffle.csv``")
    resolution_path = property(lambda self: self.path / self.RESOLUTION, doc="``resolution.csv``")

    def is_run(self) -> bool:
        """Whether the directory holds a run (it has a ``config.json``, not another library's)."""
        return self.config_path.is_file() and self._foreign() is None

    def _foreign(self) -> str | None:
        try:
            return foreign_config(json.loads(self.config_path.read_text()))
        except (OSError, ValueError):
            return None  # unreadable: reading it as a run gives the precise error

    def is_complete(self) -> bool:
        """Whether training completed (``summary.json`` exists)."""
        return self.summary_path.is_file()

    def lock(self, what: str | None = None):
        """The run's writer lock (:func:`pe_probe.core.locks.folder_lock`; creates the directory): one writer at
        a time; another raises :class:`~pe_probe.core.locks.FolderLockedError` naming the holder at once."""
        from .locks import folder_lock

        return folder_lock(self.path, what)

    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[Path]:
        """A temporary path that is renamed onto file ``name`` of the run only if the block succeeds."""
        with atomic_path(self.file(name)) as tmp:
            yield tmp

    @classmethod
    def find(cls, root: str | os.PathLike) -> list["RunDir"]:
        """Every run directory under ``root`` (any depth), sorted by path."""
        runs = (cls(p.parent) for p in sorted(Path(root).rglob(cls.CONFIG)))
        return [r for r in runs if r._foreign() is None]  # a Hugging Face or timm hub folder is no run

    # ------------------------------------------------------------------ JSON files
    def _read_json(self, path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path} is corrupt: {exc}") from None
        except OSError as exc:
            raise CheckpointError(f"cannot read {what} {path}: {exc.strerror or exc}") from None

    def read_config(self) -> dict:
        """``config.json``; :class:`CheckpointError` when the directory or file is missing or unreadable."""
        if not self.path.is_dir():
            raise CheckpointError(f"run directory {self.path} does not exist")
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path} is not a pe-probe run directory (no {self.CONFIG})")
        config = self._read_json(self.config_path, "run config")
        if not isinstance(config, dict):
            raise CheckpointError(f"{self.config_path} is not a JSON object")
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing and foreign_config(config):
            raise CheckpointError(f"{self.path} is a {foreign_config(config)} folder, not a pe-probe run directory; "
                                  "load it with pe_probe.load_checkpoint (pe-probe probe/ablate/attribute take it)")
        if missing:
            raise CheckpointError(f"{self.config_path} lacks {', '.join(missing)}")
        check_config_types(config, self.config_path)
        return config

    def write_config(self, config: dict) -> None:
        """Write ``config.json``."""
        write_json(self.config_path, config)

    def read_summary(self) -> dict | None:
        """``summary.json``, or None while training has not completed."""
        if not self.summary_path.is_file():
            return None
        summary = self._read_json(self.summary_path, "run summary")
        if not isinstance(summary, dict):
            raise CheckpointError(f"{self.summary_path} is not a JSON object")
        return summary

    def write_summary(self, summary: dict) -> None:
        """Write ``summary.json`` (do this last: its presence marks a complete run)."""
        write_json(self.summary_path, summary)

    def read_metrics(self) -> list[dict]:
        """The per-epoch records of ``metrics.jsonl`` (empty if there is none yet)."""
        if not self.metrics_path.exists():
            return []
        if not self.metrics_path.is_file():  # a FIFO or a device would block the read
            raise CheckpointError(f"{self.metrics_path} is not a regular file")
        try:
            return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.metrics_path} is corrupt: {exc}") from None

    def write_metrics(self, records: list[dict]) -> None:
        """Rewrite ``metrics.jsonl`` with ``records`` (atomic, so a kill never leaves half a line)."""
        write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def read_evals(self) -> list[dict]:
        """Every evaluation recorded in ``eval.json`` (a list; an old single-result file reads as one entry)."""
        if not self.eval_path.is_file():
            return []
        data = self._read_json(self.eval_path, "evaluation record")
        data = data if isinstance(data, list) else [data]
        if not all(isinstance(e, dict) for e in data):
            raise CheckpointError(f"{self.eval_path} is not a list of JSON objects; move it away to start a new one")
        return data

    def record_eval(self, entry: dict, key: tuple[str, ...] = ("dataset", "data_dir", "split")) -> list[dict]:
        """Add ``entry`` to ``eval.json``, replacing an earlier entry with the same ``key`` fields; returns all."""
        entries = [e for e in self.read_evals() if any(e.get(k) != entry.get(k) for k in key)]
        entries.append(entry)
        write_json(self.eval_path, entries)
        return entries

    def data_config(self, config: dict | None = None) -> dict:
        """timm-style data config of the run (what its images must look like): ``input_size`` (C, H, W),
        ``mean``, ``std``, ``interpolation``, ``crop_pct``, plus ``dataset``."""
        data = (config or self.read_config())["data"]
        return {
            "dataset": data.get("dataset"),
            "input_size": (int(data["in_chans"]), int(data["img_size"]), int(data["img_size"])),
            "mean": tuple(data["mean"]),
            "std": tuple(data["std"]),
            "interpolation": data.get("interpolation", "bicubic"),
            "crop_pct": data.get("crop_pct", 1.0),
        }


# ---------------------------------------------------------------------------------------------- config types
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_is_number(x) for x in v)


def _optional(test):
    return lambda v: v is None or test(v)


#: ``config.json``'s typed entries: key path -> (test, what the value must be). Optional keys may be absent.
_CONFIG_TYPES: dict[tuple[str, ...], tuple[Any, str, bool]] = {
    ("model",): (lambda v: isinstance(v, str) and bool(v), "a model name", True),
    ("model_kwargs",): (lambda v: isinstance(v, dict), "an object", True),
    ("num_classes",): (lambda v: _is_int(v) and v >= 1, "a positive integer", True),
    ("data",): (lambda v: isinstance(v, dict), "an object", True),
    ("data", "dataset"): (lambda v: isinstance(v, str), "a data-set name", True),
    ("data", "img_size"): (lambda v: _is_int(v) and v >= 1, "a positive integer", True),
    ("data", "in_chans"): (lambda v: _is_int(v) and v >= 1, "a positive integer", True),
    ("data", "mean"): (_numbers, "a list of numbers", True),
    ("data", "std"): (lambda v: _numbers(v) and all(x > 0 for x in v), "a list of positive numbers", True),
    ("data", "data_dir"): (_optional(lambda v: isinstance(v, str)), "a path or null", False),
    ("data", "crop_pct"): (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]", False),
    ("data", "interpolation"): (lambda v: isinstance(v, str), "a string", False),
    ("data", "skip_bad"): (lambda v: isinstance(v, bool), "true or false", False),
    ("data", "signature"): (_optional(lambda v: isinstance(v, dict)), "an object or null", False),
    ("pe_config",): (_optional(lambda v: isinstance(v, dict)), "an object or null", False),
    ("recipe",): (lambda v: isinstance(v, dict), "an object", False),
    ("recipe", "args"): (lambda v: isinstance(v, dict), "an object", False),
}


def check_config_types(config: dict, path: Any = "config.json") -> None:
    """:class:`CheckpointError` naming the first entry of ``config`` (a run's ``config.json``, read from
    ``path``) whose JSON type is wrong; the model kwargs themselves are checked where the model is built."""
    for keys, (test, what, required) in _CONFIG_TYPES.items():
        node: Any = config
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or keys[-1] not in node:
            if required and isinstance(node, dict):
                raise CheckpointError(f"{path} lacks {'.'.join(keys)}")
            continue
        value = node[keys[-1]]
        if not test(value):
            raise CheckpointError(f"{path}: {'.'.join(keys)} must be {what}, not {json.dumps(value)[:60]}")
    sig = config["data"].get("signature")
    if isinstance(sig, dict):
        size = sig.get("size")
        ok = (size is None or (isinstance(size, list) and len(size) == 2 and all(_is_int(x) and x > 0 for x in size))) \
            and all(sig.get(k) is None or _is_int(sig.get(k)) for k in ("channels", "num_classes"))
        if not ok:
            raise CheckpointError(f"{path}: data.signature must hold size [H, W] (or null), channels and "
                                  "num_classes as integers")
