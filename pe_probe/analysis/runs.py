"""A finished run as the figures layer sees it: its config, its summary and its probe report.

No torch here: ``RunResult`` holds plain dicts (``config.json`` and ``summary.json`` of the run
directory, :class:`~pe_probe.core.rundir.RunDir`) and an optional ``ProbeReport``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..core.attention import AttentionResult, ResolutionResult, ShuffleResult
from ..core.errors import CheckpointError
from ..core.report import ProbeReport
from ..core.rundir import RunDir
from .causal import read_ablation, read_attribution
from .paper import backbone_of

#: ``model_kwargs`` keys copied into the flat selector view (architecture and scheme).
_MODEL_KWARGS_FIELDS = ("pe_mode", "depth", "embed_dim", "num_heads", "patch_size", "mlp_ratio", "img_size")
#: ``data`` keys copied into the flat selector view.
_DATA_FIELDS = ("dataset", "img_size", "in_chans")


@dataclass
class RunResult:
    """One run: ``name``, its ``config.json`` dict, ``summary.json`` dict (None while unfinished),
    its probe report (None when not probed), and an optional ``role`` and display ``label``."""

    name: str
    config: Mapping[str, Any]
    summary: Mapping[str, Any] | None = None
    report: ProbeReport | None = None
    role: str | None = None
    label: str | None = None
    path: Path | None = None
    history: pd.DataFrame | None = None  #: ``probe_history.csv`` (epoch, layer, metric, value), if recorded
    #: ``ablation.csv`` (site, pe_kind, layer, intervention, metric, value), if computed
    ablation: pd.DataFrame | None = None
    #: ``attribution.csv`` (site, pe_kind, layer, metric, value), if computed
    attribution: pd.DataFrame | None = None
    attention: pd.DataFrame | None = None  #: ``attention.csv`` (site, pe_kind, layer, head, metric, value), if computed
    shuffle: pd.DataFrame | None = None  #: ``shuffle.csv`` (block, metric, value), if computed
    resolution: pd.DataFrame | None = None  #: ``resolution.csv`` (img_size, site, pe_kind, layer, metric, value)

    @property
    def display(self) -> str:
        """The label figures show: ``label`` if given, else :attr:`family`."""
        return self.label or self.family

    @property
    def family(self) -> str:
        """The run's name without a trailing seed suffix (``mpvg-seed2`` -> ``mpvg``): what its seeds share."""
        return _SEED_SUFFIX.sub("", self.name) or self.name

    @property
    def config_key(self) -> str:
        """What was trained, without the seed and the data location: equal for the seeds of one configuration."""
        cfg = self.config
        recipe = {k: v for k, v in (cfg.get("recipe") or {}).items() if k != "seed"}
        if isinstance(recipe.get("args"), Mapping):
            recipe["args"] = {k: v for k, v in recipe["args"].items() if k != "seed"}
        data = {k: v for k, v in (cfg.get("data") or {}).items() if k != "data_dir"}
        key = {"model": cfg.get("model"), "model_kwargs": cfg.get("model_kwargs"), "pe_config": cfg.get("pe_config"),
               "data": data, "recipe": recipe}
        return json.dumps(key, sort_keys=True, default=str)

    @property
    def pe_config(self) -> dict[str, Any]:
        """The PEConfig fields of the run (``config["pe_config"]``)."""
        return dict(self.config.get("pe_config") or {})

    @property
    def top1(self) -> float | None:
        """Top-1 accuracy from the summary, or None while the run has none."""
        if not self.summary or self.summary.get("top1") is None:
            return None
        return float(self.summary["top1"])

    @property
    def seed(self) -> int | None:
        """The training seed (``config["recipe"]["seed"]``), or None when not recorded."""
        seed = (self.config.get("recipe") or {}).get("seed")
        return None if seed is None else int(seed)

    @property
    def backbone(self) -> str:
        """The paper backbone this run used (``pe_probe.analysis.paper.backbone_of``)."""
        return backbone_of(self.config)

    def fields(self) -> dict[str, Any]:
        """A flat view of the run for spec selectors.

        Keys: ``name, role, label, seed, model, backbone, num_classes``, the ``data`` fields (``dataset,
        img_size, in_chans``), ``pe_mode`` and architecture from ``model_kwargs``, and every PEConfig
        field (``layerwise, input_add, layer0, hierarchical, last_ln_pe, global_pool, pe_type``), which
        win over same-named ``model_kwargs``. Nested values stay reachable with dotted selector paths.
        """
        cfg = self.config
        kwargs = cfg.get("model_kwargs") or {}
        data = cfg.get("data") or {}
        flat: dict[str, Any] = {
            "name": self.name,
            "role": self.role,
            "label": self.label,
            "seed": self.seed,
            "model": cfg.get("model"),
            "backbone": self.backbone,
            "num_classes": cfg.get("num_classes"),
        }
        flat.update({k: kwargs[k] for k in _MODEL_KWARGS_FIELDS if k in kwargs})
        flat.update({k: data[k] for k in _DATA_FIELDS if k in data})
        flat.update(self.pe_config)
        return flat

    def lookup(self, path: str) -> Any:
        """The value of selector field ``path``: a flat field or a dotted path into config/summary/meta.

        Raises ``KeyError`` when the run has no such field.
        """
        flat = self.fields()
        if path in flat:
            return flat[path]
        head, _, rest = path.partition(".")
        roots: dict[str, Any] = {
            "summary": self.summary or {},
            "meta": getattr(self.report, "meta", None) or {},
        }
        node: Any = roots[head] if head in roots else self.config.get(head, _MISSING)
        for part in rest.split(".") if rest else ():
            if not isinstance(node, Mapping) or part not in node:
                raise KeyError(path)
            node = node[part]
        if node is _MISSING:
            raise KeyError(path)
        return node

    @classmethod
    def from_dir(cls, path: str | Path | RunDir, report: ProbeReport | None = None, **kwargs: Any) -> "RunResult":
        """Read ``config.json`` and (if present) ``summary.json``, ``probe_history.csv``, ``ablation.csv``,
        ``attribution.csv``, ``attention.csv``, ``shuffle.csv`` and ``resolution.csv`` of a run directory (``kwargs`` given win: e.g. frames just computed)."""
        run = path if isinstance(path, RunDir) else RunDir(path)
        history = pd.read_csv(run.probe_history_path) if run.probe_history_path.is_file() else None
        if "ablation" not in kwargs and run.ablation_path.is_file():
            kwargs["ablation"] = read_ablation(run.path)
        if "attribution" not in kwargs and run.attribution_path.is_file():
            kwargs["attribution"] = read_attribution(run.path).frame
        for name, result in (("attention", AttentionResult), ("shuffle", ShuffleResult), ("resolution", ResolutionResult)):
            if name not in kwargs and (run.path / result.CSV).is_file():
                try:
                    kwargs[name] = result.load(run.path).frame()
                except CheckpointError:  # an unreadable or old cache: the figures that need it skip the run
                    pass
        return cls(name=kwargs.pop("name", run.name), config=run.read_config(), summary=run.read_summary(),
                   report=report, path=run.path, history=history, **kwargs)


_MISSING = object()
_SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$")
