"""The ``pe-probe`` command line. Each subcommand lives in its own module and only calls the public API.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..core.errors import PEProbeError

#: Subcommand modules, in the order ``pe-probe --help`` lists them.
SUBCOMMANDS = ("train", "eval", "probe", "ablate", "attribute", "figures", "reproduce")

#: Exceptions that mean bad input (one line, exit code 2), not a bug.
USER_ERRORS = (PEProbeError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="pe-probe",
        description="Train, hook and measure position embeddings in vision transformers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # subcommand not written yet
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pe-probe`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except USER_ERRORS as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"pe-probe {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pe-probe {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
