"""What a model may be built from: the keys and value types a pe_* model takes, and its size, checked before a
single tensor is allocated.

A ``config.json`` saying ``depth=100000`` or ``embed_dim=100000`` would otherwise allocate for minutes (and then
fail to load a weights file of 0.2 M parameters). :func:`check_buildable` refuses such kwargs from the numbers
alone: for pe_* models from a closed-form parameter count (:func:`estimate_params`); for other timm models by
building them on PyTorch's ``meta`` device (shapes only, no memory) after a bound on every integer.
"""

from __future__ import annotations

import inspect
import math
import os
import typing
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from ..core.model_kwargs import check_model_kwargs
from ..core.pe import KNOB_NAMES
from .registry import VARIANT_ARGS
from .vit import _FIXED_KWARGS

#: Bounds no real ViT comes near (ViT-22B: 48 blocks, 6144 dims); past them building alone takes minutes.
MAX_DEPTH = 1024
MAX_EMBED_DIM = 65536
MAX_TOKENS = 65536  # patch tokens (a 256 x 256 grid); attention costs tokens squared
MAX_CLASSES = 1_000_000
#: Any integer kwarg of a model that is not a pe_* model (their sizes are only known by building them).
MAX_INT = 100_000
#: A model whose closed-form count exceeds the weights it would load by this factor cannot match them.
WEIGHTS_SLACK = 2.0

_VIT_PARAMS = {n: p for n, p in inspect.signature(VisionTransformer.__init__).parameters.items()
               if n not in ("self", "device", "dtype")}
_VIT_HINTS = typing.get_type_hints(VisionTransformer.__init__)
#: Class-valued keywords a JSON config cannot hold (a string names a layer where timm accepts one).
_CLASS_ONLY = ("embed_layer", "block_fn", "mlp_layer")
#: Keywords a pe_* model takes: timm's ViT keywords it does not fix itself, the preset and the PE knobs.
PE_MODEL_KEYS = frozenset(
    {n for n in _VIT_PARAMS if n not in _FIXED_KWARGS and n not in _CLASS_ONLY} | {"pe_mode", *KNOB_NAMES})


def max_params() -> int:
    """The most float32 parameters this machine's memory can hold at all (total RAM / 4 bytes)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 4_000_000_000


def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is inspect.Parameter.empty or hint is Any:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str or origin is typing.Literal:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(
            _type_ok(v, a) for v, a in zip(value, args))
    return isinstance(value, str)  # a callable or class: JSON names it with a string


def _describe(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _pe_args(name: str, kwargs: dict) -> dict:
    """Every ViT keyword of pe_* model ``name`` built with ``kwargs``: timm's defaults, the variant's pretrained
    config (classes, input size) and architecture, then ``kwargs``."""
    import timm

    a = {n: p.default for n, p in _VIT_PARAMS.items()}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None:
        a.update(num_classes=cfg.num_classes, in_chans=cfg.input_size[0], img_size=cfg.input_size[-1])
    return {**a, **VARIANT_ARGS[name], **kwargs}


def estimate_params(name: str, kwargs: dict) -> int:
    """The parameter count of pe_* model ``name`` built with ``kwargs`` (closed form, within a few percent)."""
    a = _pe_args(name, kwargs)
    d, depth, k = int(a["embed_dim"]), int(a["depth"]), int(a["num_classes"])
    hidden = int(d * float(a["mlp_ratio"]))
    (ih, iw), (ph, pw) = _pair(a["img_size"]), _pair(a["patch_size"])
    tokens = (ih // ph) * (iw // pw) + 1
    block = 4 * d + 4 * d * d + 4 * d + 2 * d * hidden + hidden + d + 2 * d  # norms, attention, MLP, PE norm
    if a.get("init_values"):
        block += 2 * d
    return int(a["in_chans"]) * ph * pw * d + d + tokens * d + d + depth * block + 4 * d + d * k + k


def _meta_params(name: str, kwargs: dict) -> int | None:
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - building for real reports the problem with the model's own words
        return None
    return sum(t.numel() for t in model.state_dict().values())


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _ints(v)]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    return []


def check_pe_kwargs(name: str, kwargs: dict, where: str, error: type[Exception]) -> None:
    """Keys and value types of pe_* model kwargs, the bounds above, and heads that divide the width."""
    unknown = sorted(set(kwargs) - PE_MODEL_KEYS)
    if unknown:
        fixed = [k for k in unknown if k in _FIXED_KWARGS]
        why = f" ({fixed[0]}: {_FIXED_KWARGS[fixed[0]]})" if fixed else ""
        raise error(f"{where}: {name} takes no keyword(s) {unknown}{why}")
    hints = {**_VIT_HINTS, "pe_mode": str}
    for key, value in kwargs.items():
        if key in KNOB_NAMES:
            continue  # resolve_pe_config checks knob values, with its own messages
        hint = hints.get(key, inspect.Parameter.empty)
        if not _type_ok(value, hint):
            raise error(f"{where}: {key}={value!r} has the wrong type; {name} takes {_describe(hint)}")
    a = _pe_args(name, kwargs)
    (ih, iw), (ph, pw) = _pair(a["img_size"]), _pair(a["patch_size"])
    bounds = [("depth", a["depth"], 1, MAX_DEPTH), ("embed_dim", a["embed_dim"], 1, MAX_EMBED_DIM),
              ("num_heads", a["num_heads"], 1, MAX_EMBED_DIM), ("num_classes", a["num_classes"], 0, MAX_CLASSES),
              ("in_chans", a["in_chans"], 1, 64), ("patch_size", min(ph, pw), 1, min(ih, iw)),
              ("img_size", min(ih, iw), 1, None)]
    for key, value, lo, hi in bounds:
        if value < lo or (hi is not None and value > hi):
            raise error(f"{where}: {key}={value} is out of range (at least {lo}"
                        + (f", at most {hi})" if hi is not None else ")"))
    tokens = (ih // ph) * (iw // pw)
    if tokens > MAX_TOKENS:
        raise error(f"{where}: img_size {ih}x{iw} in {ph}x{pw} patches gives {tokens} tokens; at most {MAX_TOKENS}")
    ratio = float(a["mlp_ratio"])
    if not (math.isfinite(ratio) and 0 < ratio <= 64):
        raise error(f"{where}: mlp_ratio={ratio} must be in (0, 64]")
    if a["embed_dim"] % a["num_heads"]:
        raise error(f"{where}: num_heads={a['num_heads']} does not divide embed_dim={a['embed_dim']} (each head "
                    "gets an equal share of the width)")


def check_buildable(name: str, kwargs: Any, *, where: str, error: type[Exception] = ValueError,
                    weights_numel: int | None = None) -> dict:
    """Check ``kwargs`` for building timm model ``name`` before anything is allocated; returns them.

    Always: :func:`~pe_probe.core.model_kwargs.check_model_kwargs` (no file-loading or device keywords, JSON
    values). pe_* models: known keys, value types, bounds, and a closed-form size; other timm models: every
    integer at most :data:`MAX_INT`, then a size from a build on the ``meta`` device. The size must fit this
    machine's memory (:func:`max_params`) and, with ``weights_numel`` (the numbers in the weights file to
    load), be within :data:`WEIGHTS_SLACK` times it: a model that cannot match its weights is never built.
    """
    kwargs = check_model_kwargs(kwargs, where, error)
    if name in VARIANT_ARGS:
        check_pe_kwargs(name, kwargs, where, error)
        count: int | None = estimate_params(name, kwargs)
    else:
        big = [k for k, v in kwargs.items() if any(abs(i) > MAX_INT for i in _ints(v)) and k != "num_classes"]
        if big or any(i > MAX_CLASSES for i in _ints(kwargs.get("num_classes", 0))):
            key = big[0] if big else "num_classes"
            raise error(f"{where}: {key}={kwargs[key]!r} is out of range for building {name}")
        count = _meta_params(name, kwargs)
    if count is None:
        return kwargs
    limit = max_params()
    if count > limit:
        raise error(f"{where}: {name} with these kwargs has about {count:,} parameters, more than this machine's "
                    f"memory holds ({limit:,} float32 values)")
    if weights_numel is not None and count > WEIGHTS_SLACK * weights_numel + 1_000_000:
        raise error(f"{where}: {name} with these kwargs has about {count:,} parameters but the weights file holds "
                    f"{weights_numel:,} numbers; they cannot match")
    return kwargs
