"""PE families (torch floor): one module per way a model delivers position, and a registry that picks one.

``family_for(model)`` returns the :class:`~pe_probe.families.base.Family` that reads ``model``: the first
registered family, by descending :attr:`~pe_probe.families.base.Family.priority`, whose ``recognise(model)`` is
true. Probing, capture, ablation, attribution and :func:`pe_probe.hook_names` all go through it, so a new PE
family is one module here (a :class:`Family` subclass decorated with :func:`register_family`) plus its tests.
Every module of this package is imported on the first lookup, so a module dropped in here registers itself;
a family defined elsewhere (a test, a user's package) registers with :func:`register_family` and works the same.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from ..core.errors import UnsupportedModelError
from .base import Family, Site, Tap, replace_additive, replaced

_REGISTRY: dict[str, type[Family]] = {}
_order: list[str] = []  # registration order, the tie-break between equal priorities
_loaded = False
_INTERNAL = {"base"}  # modules of this package that define no family


def register_family(cls: type[Family]) -> type[Family]:
    """Add ``cls`` (a :class:`Family` subclass with a unique non-empty ``name``) to the registry; returns it, so
    it can decorate the class. Registering a name again replaces the earlier class (re-imports, tests)."""
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise TypeError(f"{cls!r} is not a Family subclass")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    from ..core.hook_points import check_kind

    check_kind(cls.pe_kind)
    if cls.name not in _REGISTRY:
        _order.append(cls.name)
    _REGISTRY[cls.name] = cls
    return cls


def unregister_family(name: str) -> None:
    """Remove the family ``name`` from the registry (a no-op when absent); for tests that register toys."""
    if _REGISTRY.pop(name, None) is not None:
        _order.remove(name)


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _INTERNAL and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def families() -> list[type[Family]]:
    """The registered families in the order :func:`family_for` tries them (priority, then registration)."""
    _load_builtin()
    return sorted((_REGISTRY[n] for n in _order), key=lambda c: -c.priority)


def get_family(name: str) -> type[Family]:
    """The registered family called ``name``; :class:`~pe_probe.core.errors.UnknownNameError` otherwise."""
    from ..core.errors import UnknownNameError

    _load_builtin()
    if name not in _REGISTRY:
        raise UnknownNameError(f"PE family {name!r} is unknown; registered: {[c.name for c in families()]}")
    return _REGISTRY[name]


def family_for(model: nn.Module, family: str | None = None) -> Family:
    """The :class:`Family` instance that reads ``model`` (validated: unsupported features raise
    :class:`~pe_probe.core.errors.UnsupportedModelError` in one line). ``family``: force one by name (its
    recogniser must still accept the model)."""
    if isinstance(model, Family):
        return model
    if family is not None:
        cls = get_family(family)
        if not cls.recognise(model):
            raise UnsupportedModelError(f"the {family} family does not read a {type(model).__name__}")
        return cls(model)
    for cls in families():
        if cls.recognise(model):
            return cls(model)
    raise UnsupportedModelError(
        f"no PE family reads a {type(model).__name__}: it is neither a timm VisionTransformer nor a model another "
        f"registered family recognises ({', '.join(c.name for c in families())})")


__all__ = ["Family", "Site", "Tap", "families", "family_for", "get_family", "register_family", "replace_additive",
           "replaced", "unregister_family"]
