"""The ground floor: the nouns every other floor shares, defined once, with no torch.

- :mod:`~pe_probe.core.pe`: the PE config, its knobs and presets;
- :mod:`~pe_probe.core.hook_points`: the hook-name scheme;
- :mod:`~pe_probe.core.rundir`: the run directory and its files;
- :mod:`~pe_probe.core.report`: the probe report container;
- :mod:`~pe_probe.core.errors` and :mod:`~pe_probe.core.io`: input errors and atomic writes.
"""

from .errors import CheckpointError, DataError, PEProbeError, UnknownNameError
from .hook_points import INPUT, LAST, hook_point_names, layer_hooks
from .pe import KNOB_NAMES, KNOBS, PE_MODES, PRESET, PRESETS, PEConfig, PEKnobs, resolve_pe_config
from .report import ProbeReport
from .rundir import RunDir

__all__ = [
    "CheckpointError", "DataError", "INPUT", "KNOBS", "KNOB_NAMES", "LAST", "PEConfig", "PEKnobs", "PEProbeError",
    "PE_MODES", "PRESET", "PRESETS", "ProbeReport", "RunDir", "UnknownNameError", "hook_point_names", "layer_hooks",
    "resolve_pe_config",
]
