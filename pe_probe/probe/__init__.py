"""Probe (torch layer): named hook points, one-batch capture and streaming statistics.

Note: ``pe_probe.probe`` (the package attribute) is the :func:`probe` function once ``pe_probe`` is
imported; import submodules by their full dotted path (``from pe_probe.probe.hooks import capture``).
"""

from .adapter import ModelView, view_model
from .checks import mpvg_constant_offset_check
from .hooks import capture, hook_names
from .stream import probe

__all__ = ["ModelView", "capture", "hook_names", "mpvg_constant_offset_check", "probe", "view_model"]
