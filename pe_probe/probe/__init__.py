"""Probe (torch layer): named hook points, one-batch capture and streaming statistics.

This layer returns plain statistics; :func:`pe_probe.probe` (in ``pe_probe.api``) wraps them in a
``ProbeReport``. ``pe_probe.probe`` (the package attribute) is that function once ``pe_probe`` is imported;
import submodules by their full dotted path (``from pe_probe.probe.hooks import capture``).
"""

from .adapter import ModelView, view_model
from .checks import mpvg_constant_offset_check
from .hooks import capture, hook_names
from .stream import stream_statistics

__all__ = ["ModelView", "capture", "hook_names", "mpvg_constant_offset_check", "stream_statistics", "view_model"]
