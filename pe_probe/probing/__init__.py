"""Probing (torch floor): named hook points, one-batch capture, the streaming probe, ablation and attribution,
all reading the model through its PE family (:func:`pe_probe.families.family_for`).

:func:`probe` streams a data set through a ViT and returns a :class:`~pe_probe.core.report.ProbeReport`;
:func:`capture` returns the named activations of one batch; :func:`hook_names` lists what a model offers.
"""

from .ablation import run_ablation
from .adapter import ModelView, view_model
from .attribution import run_attribution
from .checks import mpvg_constant_offset_check
from .hooks import capture, hook_names
from .stream import probe

#: ``pe_probe.ablate`` / ``pe_probe.attribute``: they return the core result containers
#: (:class:`~pe_probe.core.causal.AblationResult`, :class:`~pe_probe.core.causal.AttributionResult`).
ablate, attribute = run_ablation, run_attribution

__all__ = ["ModelView", "ablate", "attribute", "capture", "hook_names", "mpvg_constant_offset_check", "probe",
           "run_ablation", "run_attribution", "view_model"]
