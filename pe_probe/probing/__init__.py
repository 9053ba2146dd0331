"""Probing (torch floor): named hook points, one-batch capture and the streaming probe.

:func:`probe` streams a data set through a ViT and returns a :class:`~pe_probe.core.report.ProbeReport`;
:func:`capture` returns the named activations of one batch; :func:`hook_names` lists what a model offers.
"""

from .adapter import ModelView, view_model
from .checks import mpvg_constant_offset_check
from .hooks import capture, hook_names
from .stream import probe

__all__ = ["ModelView", "capture", "hook_names", "mpvg_constant_offset_check", "probe", "view_model"]
