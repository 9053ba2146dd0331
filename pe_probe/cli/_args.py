"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from ..core.causal import EFFECTS


def parse_kv(items: list[str] | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    """``["embed_dim=64", "mlp_ratio=2.0", "qkv_bias=false"]`` -> kwargs (values read as JSON, else strings).

    ``True``/``False``/``None`` are accepted as Python spells them. A malformed item, or a key given twice,
    raises ``ValueError`` naming ``flag``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        literal = {"True": "true", "False": "false", "None": "null"}.get(raw, raw)
        try:
            value = json.loads(literal)
        except json.JSONDecodeError:
            value = raw
        key = key.strip()
        if key in out:
            raise ValueError(f"{flag}: {key} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def parse_sites(items: list[str] | None) -> list[str | int] | None:
    """``--sites`` values: layer numbers (``-2`` input, ``-1`` Last LN, ``i`` block) or hook names."""
    if not items:
        return None
    out: list[str | int] = []
    for item in items:
        try:
            out.append(int(item))
        except ValueError:
            out.append(item)
    return out


def add_site_args(p: argparse.ArgumentParser) -> None:
    """``--sites`` and ``--effect`` of the ``ablate`` and ``attribute`` commands."""
    p.add_argument("--sites", nargs="+", metavar="SITE",
                   help="PE sites to analyse: layers (-2 input, -1 Last LN, i block) or hook names "
                        "(blocks.3.hook_pe, hook_input_pe, hook_last_pe, hook_pos_embed); default: every site")
    p.add_argument("--effect", choices=EFFECTS, default=EFFECTS[0],
                   help="direct: change only the term added at the site (default); total: also what later "
                        "blocks and the Last LN read from it (the PE chain)")


def holding(attr: str, run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run`` holding the writer lock of the folder named by flag ``attr`` (e.g. ``--out``) from the start, so a
    second command writing there stops at once (:func:`pe_probe.core.locks.folder_lock`; a folder it creates
    and leaves empty is removed again).

    Under torchrun (``WORLD_SIZE`` > 1) the command first joins the process group (so the API shards the
    images over the processes); rank 0 alone takes the lock and writes (``args.writer``), and a failure that
    rank 0 reports for the whole job is not printed again by the other ranks (exit code 2)."""

    def locked(args: argparse.Namespace) -> int:
        from ..probing.distributed import joined_group, main_lock, quiet_peers  # [issue 22] (torch: when run)

        with joined_group(getattr(args, "device", None)), main_lock(getattr(args, attr)) as writer, quiet_peers():
            args.writer = writer
            return run(args)

    locked.__doc__ = run.__doc__
    return locked
