"""Command-line flags generated from dataclass fields, so that every config field has exactly one flag.

A field ``name`` becomes ``--name`` (underscores as dashes) with its ``metadata["help"]``; the type decides
the parsing: ``bool`` -> ``--name/--no-name``, ``int``/``float``/``str`` (optional or not) -> one value,
``Literal[...]`` or ``metadata["choices"]`` -> a choice, ``tuple[float, float]`` -> two values,
``dict`` -> repeatable ``KEY=VALUE`` items (values read as JSON), a nullable PE knob (``last_ln_pe``) ->
``none``, ``preset`` or an int. ``metadata["negative"]`` adds a flag that sets a bool field to False
(``--quiet`` for ``verbose``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Literal

from ._args import parse_kv


def _base_type(tp: Any) -> Any:
    """``tp`` without ``None`` (``Optional[int]`` -> ``int``; ``str | PathLike | None`` -> ``str | PathLike``)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
    return tp


def _is_dict(tp: Any) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _nullable_int(text: str) -> int | str:
    low = text.lower()
    if low in ("none", "preset"):
        return low
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected none, preset or an integer, got {text!r}") from None


def _scalar(tp: Any) -> Any:
    if tp is bool:
        return bool
    if tp in (int, float, str):
        return tp
    return str  # paths and other string-like values


def add_fields(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
               names: Iterable[str] | None = None, *, defaults_none: bool = False) -> list[str]:
    """Add one flag per field of dataclass ``cls`` (or only ``names``) to ``parser``; returns the field names.

    ``defaults_none``: every flag defaults to None (the caller only passes what the user set), instead of the
    field's own default.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    added = []
    for name in (names if names is not None else fields):
        f = fields[name]
        meta = f.metadata
        tp = _base_type(hints[name])
        default = None if defaults_none or f.default is dataclasses.MISSING else f.default
        kw: dict[str, Any] = {"dest": name, "help": meta.get("help", ""), "default": default}
        knob = meta.get("knob")
        choices = meta.get("choices") or (typing.get_args(tp) if typing.get_origin(tp) is Literal else None)
        if knob is not None and knob.nullable:
            kw.update(type=_nullable_int, metavar="{none,preset,0,K}")
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif _is_dict(tp):
            kw.update(nargs="+", action="extend", metavar="KEY=VALUE")
        elif typing.get_origin(tp) is tuple:
            kw.update(nargs=len(typing.get_args(tp)), type=_scalar(typing.get_args(tp)[0]), metavar="X")
        elif choices:
            kw.update(choices=tuple(choices))
        else:
            kw["type"] = _scalar(tp)
        if meta.get("required"):
            kw["required"] = True
        parser.add_argument("--" + name.replace("_", "-"), **kw)
        if meta.get("negative"):
            parser.add_argument(meta["negative"], dest=name, action="store_false",
                                help=f"same as --no-{name.replace('_', '-')}")
        added.append(name)
    return added


def field_values(args: argparse.Namespace, cls: type, names: Iterable[str] | None = None, *,
                 skip_none: bool = False) -> dict[str, Any]:
    """The parsed values of ``cls``'s fields (or ``names``) as keyword arguments for ``cls``.

    ``dict`` fields are built from their ``KEY=VALUE`` items; ``skip_none`` leaves out what the user did not set.
    """
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in (names if names is not None else fields):
        value = getattr(args, name)
        if _is_dict(_base_type(hints[name])):
            value = parse_kv(value, "--" + name.replace("_", "-")) if value is not None else None
            if value is None and not skip_none:
                value = {}
        elif isinstance(value, list):
            value = tuple(value)
        if value is None and skip_none:
            continue
        out[name] = value
    return out


def to_flags(cls: type, values: Any, names: Iterable[str] | None = None) -> list[str]:
    """The flags that give the fields of ``values`` (an instance of dataclass ``cls``) that differ from their
    defaults: the inverse of :func:`add_fields` + :func:`field_values` (``pe-probe reproduce --plan``)."""
    import json

    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: list[str] = []
    for name in (names if names is not None else fields):
        f, value = fields[name], getattr(values, name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if value == default or (isinstance(value, dict) and not value and default is None):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{name.replace('_', '-')}")
        elif isinstance(value, dict):
            out += [flag, *(f"{k}={json.dumps(v)}" for k, v in value.items())]
        elif isinstance(value, (tuple, list)):
            out += [flag, *(str(v) for v in value)]
        elif value is None:
            out += [flag, "none"]  # only nullable knobs reach here (their default is "preset")
        else:
            out += [flag, str(value)]
    return out
