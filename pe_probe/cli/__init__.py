"""The ``pe-probe`` command line. Each subcommand lives in its own module and only calls the public API.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed ``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings

from ..core.errors import PEProbeError
from ..core.io import usable_tempdir
from ..core.signals import Terminated, exit_code, terminate_as_interrupt

#: Subcommand modules, in the order ``pe-probe --help`` lists them.
SUBCOMMANDS = ("train", "eval", "probe", "ablate", "attribute", "attention", "figures", "reproduce")

#: Exceptions that mean bad input or a failing file system (one line, exit code 2), not a bug.
USER_ERRORS = (PEProbeError, ValueError, OSError)

#: Set this environment variable to see the traceback of an unexpected error.
DEBUG_ENV = "PE_PROBE_DEBUG"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``PROG: error: MESSAGE; see PROG --help``) and exit code 2,
    instead of the whole usage."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        first = message.splitlines()[0] if message else "bad arguments"
        self.exit(2, f"{self.prog}: error: {first}; see {self.prog} --help\n")


def error_line(exc: BaseException) -> str:
    """One line saying what went wrong: the message's first line (for an error re-raised from a data-loader
    worker, the original one), with the file an ``OSError`` is about."""
    if isinstance(exc, OSError) and not isinstance(exc, PEProbeError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith("Caught ") and len(lines) > 1:
        # torch.utils.data re-raises a worker's error as "Caught X in DataLoader worker N", then its traceback
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return lines[0]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = Parser(
        prog="pe-probe",
        description="Train, hook and measure position embeddings in vision transformers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pe-probe`` console script. Returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, so the hint names its --help
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    # warnings are held until the command ends: printed after its result, one line each, and not at all when it
    # fails (its one error line is then all there is on stderr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            usable_tempdir()  # under `ulimit -f 0` torch's import would fail before any file of ours is written
            with terminate_as_interrupt():  # SIGTERM (kill, timeout, schedulers) is handled like Ctrl-C
                rc = args.func(args)
        except KeyboardInterrupt as exc:  # also Terminated: the clean-up of an interrupt has run
            what = "terminated" if isinstance(exc, Terminated) else "interrupted"
            print(f"pe-probe {args.command}: {what}", file=sys.stderr)
            return exit_code(exc)
        except Exception as exc:  # noqa: BLE001 - every failure is one line and exit code 2
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            msg = error_line(exc)
            if not isinstance(exc, USER_ERRORS):
                msg = f"{type(exc).__name__}: {msg} (an unexpected error; {DEBUG_ENV}=1 prints its traceback)"
            print(f"pe-probe {args.command}: error: {msg}", file=sys.stderr)
            return 2
    seen = set()
    for w in caught:
        line = (str(w.message).strip().splitlines() or [w.category.__name__])[0]
        if line not in seen:
            seen.add(line)
            print(f"pe-probe {args.command}: warning: {line}", file=sys.stderr)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
