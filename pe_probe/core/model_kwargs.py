"""Model constructor kwargs are untrusted input: a ``config.json`` (a run's, a hub folder's) or a flag hands them
to ``timm.create_model``, which also reads a few of its own keywords (``checkpoint_path`` loads a file,
``pretrained`` downloads). This module checks what such kwargs may hold before anything is built (torch-free);
the model-specific checks (known keys, value types, sizes) are :mod:`pe_probe.models.limits`.
"""

from __future__ import annotations

import math
from typing import Any

#: Keywords that ``timm.create_model`` / ``build_model_with_cfg`` consume themselves (loading files, downloading,
#: scripting, feature extraction) or that place the model (``device``, ``dtype``): never taken from a config or
#: a flag. pe_probe builds every model with ``pretrained=False`` on the CPU and loads weights itself.
FORBIDDEN_KWARGS = frozenset({
    "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "scriptable",
    "exportable", "no_jit", "model_cfg", "feature_cfg", "features_only", "pretrained_strict",
    "pretrained_filter_fn", "kwargs_filter", "pretrained_model_args", "out_indices", "device", "dtype",
})

#: How deep a kwarg value may nest lists/dicts (``[8, 8]``, ``{"k": [1, 2]}``).
MAX_DEPTH = 4


def _json_value(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, str, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_DEPTH:
        return False
    if isinstance(value, (list, tuple)):
        return all(_json_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v, depth + 1) for k, v in value.items())
    return False


def check_model_kwargs(kwargs: Any, where: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """``kwargs`` as a dict, checked: string keys, none of :data:`FORBIDDEN_KWARGS`, and JSON values only
    (numbers finite; no callables or other objects: a layer is named by a string, e.g. ``act_layer="gelu"``).

    ``where`` names the source in the message (``"config.json model_kwargs"``, ``"--model-kwargs"``); ``error``
    is the exception raised (``ValueError`` for a user's flags, ``CheckpointError`` for a file).
    """
    if not isinstance(kwargs, dict):
        raise error(f"{where} must be a JSON object of constructor keywords, not {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise error(f"{where}: {key!r} is not a keyword name")
        if key in FORBIDDEN_KWARGS:
            raise error(f"{where}: {key} is not allowed (pe-probe builds models untrained on the CPU and loads "
                        "weights itself; a config may not name files to load, downloads or devices)")
        if not _json_value(value):
            raise error(f"{where}: {key}={value!r} is not a plain JSON value (a number, string, bool, null or a "
                        "list of them; layers are named by strings)")
    return dict(kwargs)
