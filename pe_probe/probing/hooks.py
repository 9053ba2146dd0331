"""Hook names and one-batch capture. Hooks are registered in ``try`` and always removed in ``finally``."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from ..families import Tap
from .adapter import AdapterKind, ModelView, view_model
from .inputs import check_images


def hook_names(model: nn.Module, adapter: AdapterKind = "auto") -> list[str]:
    """The hook names ``model`` offers, in forward order, as its PE family (:func:`pe_probe.families.family_for`)
    lists them.

    pe_probe models: ``hook_pos_embed``, per block ``blocks.{i}.hook_resid_pre``, ``blocks.{i}.hook_tok``,
    ``blocks.{i}.hook_pe`` (only blocks that receive a PE), ``blocks.{i}.hook_resid_post``, then
    ``hook_last_ln_in``, ``hook_last_ln_out``, ``hook_last_pe`` (only with a PE in the Last LN) and
    ``hook_pooled``. Other timm ViTs with a ``pos_embed`` get the same names, with every ``hook_pe`` derived (see
    :func:`pe_probe.probing.adapter.view_model`) and no ``hook_last_pe``. Other families add their sites
    (``blocks.{l}.attn.hook_rope``, ``blocks.{l}.attn.hook_attn_bias``, ``pos_block.{s}.hook_peg``, ...); a model
    without a PE has the universal names only.
    """
    return view_model(model, adapter).names()


@contextlib.contextmanager
def recording(view: ModelView, names: Iterable[str],
              store: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Register forward hooks that store the named module activations into the yielded dict.

    ``store``: the dict to fill (default: a new one), e.g. a
    :meth:`~pe_probe.probing.accumulate.RunningStats.feed` that consumes each block as it arrives. Every
    handle is removed on exit, also when the body (or a registration) raises. Derived names are not
    filled here (they need no forward pass); see :func:`fill_derived`.
    """
    store = {} if store is None else store
    handles = []

    def make(name: str, tap: Tap):
        if tap.flatten is None and not isinstance(tap.arg, str):  # the common case, kept cheap
            if tap.side == "out":
                def hook(module, args, output):
                    store[name] = output
            else:
                i = tap.arg

                def hook(module, args, output):
                    store[name] = args[i]
            return hook, False

        def hook_kw(module, args, kwargs, output):
            store[name] = tap.read(args, kwargs, output)
        return hook_kw, True

    taps = view.tap_map()
    try:
        for name in names:
            tap = taps.get(name)
            if tap is not None:
                fn, kw = make(name, tap)
                handles.append(tap.module.register_forward_hook(fn, with_kwargs=kw))
        yield store
    finally:
        for h in handles:
            h.remove()


def fill_derived(view: ModelView, names: Iterable[str], store: dict[str, torch.Tensor]) -> None:
    """Compute the image-independent derived tensors among ``names`` into ``store``.

    Call it while no recording hook is registered: derived PEs run ``norm1``, which the timm taps watch.
    """
    derived = view.derived()
    for name in names:
        fn = derived.get(name)
        if fn is not None:
            store[name] = fn()


@contextlib.contextmanager
def eval_inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``torch.inference_mode()`` for the block; every module's train flag is restored after.

    ``model.eval()`` runs only when some module is in training mode, and exactly those modules get their
    flag back (a model with some submodules frozen in eval mode keeps them so); a model already in eval
    mode costs no ``eval()``/``train()`` traversal (a few ms for a DeiT, per call).
    """
    training = [m for m in model.modules() if m.training]
    try:
        if training:
            model.eval()
        with torch.inference_mode():
            yield
    finally:
        for m in training:
            m.training = True


@contextlib.contextmanager
def eval_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on (gradient-based attribution cannot run under ``inference_mode``); every
    module's train flag is restored after, as in :func:`eval_inference`."""
    training = [m for m in model.modules() if m.training]
    try:
        if training:
            model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m in training:
            m.training = True


def capture(
    model: nn.Module,
    images: torch.Tensor,
    names: Iterable[str] | None = None,
    *,
    adapter: AdapterKind = "auto",
) -> dict[str, torch.Tensor]:
    """Run one batch through ``model`` (eval mode, inference mode) and return the named activations.

    ``images``: (B, C, H, W) at the model's input size (checked before the model runs;
    :class:`~pe_probe.core.errors.DataError` otherwise). ``names``: hook names (default: all of
    :func:`hook_names`); unknown names raise :class:`~pe_probe.core.errors.UnknownNameError` before any hook is
    registered. Block tensors are (B, T, D) with the prefix tokens first; PE tensors are (1, T, D);
    ``hook_pooled`` is (B, D). Tensors are detached copies on the model's device. No hook survives the call.
    """
    view = view_model(model, adapter)
    names = view.names() if names is None else ([names] if isinstance(names, str) else list(names))
    view.check_names(names)
    images = check_images(images, view)
    with eval_inference(model):
        derived: dict[str, torch.Tensor] = {}
        fill_derived(view, names, derived)  # before any hook exists: norm1(pos_embed) must not trip them
        with recording(view, names) as store:
            view.run(images)
        store.update(derived)
    # clone outside inference mode: plain tensors, usable with autograd, never aliasing a parameter
    return {n: store[n].detach().clone() for n in names}
