"""How the probe reads a model: the :class:`~pe_probe.families.base.Family` the registry picks for it.

``view_model(model)`` is ``pe_probe.families.family_for(model)``: pe_probe's own models are read by the
``layerwise`` family (every name a ``HookPoint``), other timm ViTs with a ``pos_embed`` by the ``absolute``
family (tokens from each block's ``norm1``, the PE a block sees derived as ``norm1_l(pe_in)``, so
``pe_derived=True``), models without a PE by ``none``, and every other registered family by its own module
(docs/probe.md, "Supported families"). ``adapter`` keeps the historical names: ``"pe"`` forces the layer-wise
family, ``"timm"`` the absolute one (e.g. to read a pe_probe model as LaPE's authors read default models).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from ..core.errors import CheckpointError, UnknownNameError
from ..core.vocab import ADAPTERS
from ..families import Family, Tap, family_for

AdapterKind = Literal["auto", "pe", "timm"]
#: adapter name -> the family it forces
_FORCED = {"pe": "layerwise", "timm": "absolute"}

#: What the probe reads of a model (the family instance); kept under its historical name.
ModelView = Family

__all__ = ["ADAPTERS", "AdapterKind", "ModelView", "Tap", "view_model"]


def view_model(model: nn.Module, adapter: AdapterKind | str = "auto") -> Family:
    """The family that reads ``model`` (``adapter="auto"``), or the one ``adapter`` names: ``"pe"`` (layer-wise,
    pe_probe models only), ``"timm"`` (absolute, any timm ``VisionTransformer`` with a ``pos_embed``) or any
    registered family's name. Unsupported models raise :class:`~pe_probe.core.errors.CheckpointError`
    (:class:`~pe_probe.core.errors.UnsupportedModelError`) in one line."""
    if isinstance(model, Family):
        return model
    if adapter == "auto":
        return family_for(model)
    if adapter == "pe":
        from ..models import PEVisionTransformer

        if not isinstance(model, PEVisionTransformer):
            raise CheckpointError("adapter='pe' needs a pe_probe PEVisionTransformer; use adapter='timm'")
    if adapter in _FORCED:
        return family_for(model, _FORCED[adapter])
    from ..families import families

    names = [c.name for c in families()]
    if adapter not in names:
        raise UnknownNameError(f"adapter={adapter!r} is unknown; valid values: {ADAPTERS} or a family {names}")
    return family_for(model, adapter)
