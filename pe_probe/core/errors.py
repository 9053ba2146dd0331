"""Exceptions for bad user input. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations


class PEProbeError(Exception):
    """Base class of pe_probe's input errors (bad files, names, sizes, configurations)."""


class DataError(PEProbeError, ValueError):
    """A data set or data directory is missing, empty, unknown or of the wrong shape."""


class CheckpointError(PEProbeError, ValueError):
    """A run directory or checkpoint is missing, corrupt, or does not fit the model."""


class UnknownNameError(PEProbeError, KeyError):
    """An unknown model, data set, preset or metric name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DataWarning(UserWarning):
    """Data that works but may mislead (e.g. evaluating a run on its own training images). The CLI prints it
    as one ``warning:`` line."""


class UnsupportedModelError(CheckpointError):
    """A model no PE family can read, or a feature of it (a pooling, a head, a dynamic size) that the family
    recognising it cannot measure. The message is one line naming what is unsupported and why."""
