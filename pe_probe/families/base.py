"""The interface every PE family implements: how to recognise a model, read its token stream, find its PE
sites, capture them and intervene on them. One family is one module of :mod:`pe_probe.families`.

A :class:`Family` is built once per call from a model (``family_for(model)``): its constructor validates the
model and raises :class:`~pe_probe.core.errors.UnsupportedModelError` with one line naming what it cannot
measure and why. The instance then offers

- the **universal structure** every ViT has (:attr:`Family.blocks` in forward order, numbered globally
  ``0..L-1`` across stages; the stream entering each block as (B, T, D) through :meth:`Family.stream_taps`;
  prefix tokens, patch grid, the final norm and the pooling) from which the per-layer quantities every
  model gets are measured (token norms, the token stream at each block);
- its **PE sites** (:meth:`Family.sites`): a :class:`Site` per place a PE term enters the computation, with a
  stable hook name (:mod:`pe_probe.core.hook_points`), a kind (:data:`~pe_probe.core.hook_points.PE_KINDS`),
  a layer, and a module whose output *is* the term while :meth:`Family.run` runs the model. A term that is
  not a module output (a parameter added inside a timm method, a ``rope=`` keyword) is routed by the family
  through a :class:`~pe_probe.models.HookPoint` it owns (``torch.func.functional_call`` with a tapped
  parameter, a forward pre-hook with kwargs), so capture (a forward hook reading it), intervention (a forward
  hook replacing it) and attribution (captum on that module) are the same code for every kind;
- **interventions** (:meth:`Family.replacement`): what ``zero`` (the PE *off*: zero table, identity rotation,
  zero bias, a PEG whose conv adds nothing), ``mean`` and ``shuffle`` do to a site's term, or one line saying
  why an intervention makes no sense for that kind;
- **probe quantities**: which blocks the probe's token-vs-PE statistics compare against an additive PE
  (:attr:`Family.receiving_blocks`, ``blocks.{l}.hook_pe``; derived from the model where the PE is not a term
  of that block, :attr:`Family.pe_derived`), image-independent tensors (:meth:`Family.derived`) and arrays
  stored in the report (:meth:`Family.static_arrays`).

Everything a family registers on the model is removed in ``finally``; no parameter is ever written and
timm's forward is never copied. A minimal family (see ``tests/families/test_registry.py``)::

    from pe_probe.families import Family, Site, register_family
    from pe_probe.core import hook_points as H

    @register_family
    class ToyFamily(Family):
        name, pe_kind, priority = "toy", "absolute", 200

        @classmethod
        def recognise(cls, model):
            return isinstance(model, ToyViT)

        def __init__(self, model):
            super().__init__(model)
            self.blocks = list(model.blocks)
            self.embed_dim, self.num_prefix_tokens, self.grid = model.dim, 0, model.grid
            self.img_size, self.in_chans, self.global_pool = model.img_size, 3, "avg"
            self.final_norm = model.norm

        def sites(self, effect="direct"):
            return [Site(H.INPUT_PE, "absolute", H.INPUT, self.model.hook_pe, tok=self.model.patch_embed)]

        def pool(self, x):
            return x.mean(1)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from ..core import hook_points as H
from ..core.causal import EFFECTS, INTERVENTIONS
from ..core.errors import UnknownNameError, UnsupportedModelError


@dataclass(frozen=True)
class Tap:
    """Where one named activation is read: the input (``side="in"``: positional argument ``arg``, or the
    keyword ``arg`` when it is a str) or the output (``side="out"``) of ``module``.

    ``flatten``: turns the tensor read there into the (B, T, D) layout the statistics expect (e.g. Swin's
    (B, H, W, C) stream); None when it already is.
    """

    module: nn.Module
    side: Literal["in", "out"] = "out"
    arg: int | str = 0
    flatten: Callable[[torch.Tensor], torch.Tensor] | None = None

    def read(self, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
        """The tensor this tap names, from a forward hook's ``args``, ``kwargs`` and ``output``."""
        if self.side == "out":
            x = output
        elif isinstance(self.arg, str):
            x = kwargs[self.arg]
        else:
            x = args[self.arg]
        return x if self.flatten is None else self.flatten(x)


@dataclass(frozen=True)
class Site:
    """One PE term of a model's forward pass.

    ``name``: its stable hook name (``hook_input_pe``, ``blocks.{l}.hook_pe``, ``blocks.{l}.attn.hook_rope``,
    ``blocks.{l}.attn.hook_attn_bias``, ``pos_block.{s}.hook_peg``, ...; :mod:`pe_probe.core.hook_points`).
    ``kind``: one of :data:`~pe_probe.core.hook_points.PE_KINDS`. ``layer``: the global block index that
    receives the term (:data:`~pe_probe.core.hook_points.INPUT` for the input, :data:`~pe_probe.core.hook_points.LAST`
    for the Last LN; a PEG of stage ``s`` carries the index of the block it follows). ``module``: a module
    whose output is exactly the term while :meth:`Family.run` runs (forward hooks there read or replace it).
    ``additive``: whether the term is added to a token stream ((Q, T, D), Q = 1 or B); rotary tables and
    attention biases are not. ``tok``: for an additive term, the module whose output is the token term of the
    same sum (attribution splits the sum into the two; None: only ``tokens="keep"`` attribution). ``n_prefix``:
    the term's leading rows that belong to no patch (``mean``/``shuffle`` keep them). ``interventions``: those
    that make sense for this site (:meth:`Family.replacement` refuses the others in one line). ``note``: one
    line on what the term is, for reports and docs.
    """

    name: str
    kind: str
    layer: int
    module: nn.Module
    additive: bool = True
    tok: nn.Module | None = None
    n_prefix: int = 0
    interventions: tuple[str, ...] = INTERVENTIONS
    note: str = ""

    def __post_init__(self) -> None:
        H.check_kind(self.kind)

    @property
    def hook(self) -> str:
        """The site's hook name (same as :attr:`name`; the column ``site`` of every frame)."""
        return self.name

    @property
    def pe(self) -> nn.Module:
        """The module whose output is the term (same as :attr:`module`)."""
        return self.module


class Family:
    """A PE family: one way models deliver position, and how pe_probe measures and intervenes on it.

    Subclasses set the class attributes :attr:`name` (unique), :attr:`pe_kind` (the main kind of its sites,
    one of :data:`~pe_probe.core.hook_points.PE_KINDS`), :attr:`priority` (higher is tried first by
    :func:`~pe_probe.families.family_for`), implement :meth:`recognise`, and in ``__init__`` (after
    ``super().__init__(model)``) validate the model and fill the structure attributes below. Everything else
    has a default that fits a pre-norm ViT whose blocks have ``norm1``; override what differs.

    Structure attributes (set by ``__init__``): ``blocks`` (forward order, global index), ``embed_dim`` (width
    of the final norm's tokens), ``num_prefix_tokens`` (class, distillation and register tokens), ``grid``
    (the input patch grid), ``img_size``, ``in_chans``, ``global_pool`` (``token``, ``avg``, ``map``, ...),
    ``final_norm`` (the norm acting on every token before pooling, the "Last LN"; None where there is none),
    ``receiving_blocks`` (blocks the probe compares with an additive PE ``blocks.{l}.hook_pe``),
    ``last_ln_pe`` (the chain index of a PE added after the Last LN, else None), ``pe_derived`` (whether those
    per-block PEs are derived from the model rather than terms of its forward), ``input_pe`` (whether an
    additive PE enters at the input, ``hook_input_pe``), ``uniform`` (every block's stream is (B, T, D) with
    the same T and D: the probe's fast stacked statistics apply; hierarchical models set False).
    """

    #: Unique family name (``meta["family"]`` of every report).
    name: ClassVar[str] = ""
    #: The main PE kind of the family's sites.
    pe_kind: ClassVar[str] = "none"
    #: Order in which :func:`~pe_probe.families.family_for` tries recognisers (higher first).
    priority: ClassVar[int] = 0
    #: What reports call the family's reader (``meta["adapter"]``); defaults to :attr:`name`.
    adapter: ClassVar[str] = ""
    #: One line each for the docs' family table: what the family measures, and what it cannot.
    measures: ClassVar[str] = ""
    limits: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.blocks: list[nn.Module] = []
        self.embed_dim = 0
        self.num_prefix_tokens = 0
        self.grid: tuple[int, int] = (0, 0)
        self.img_size: tuple[int, int] = (0, 0)
        self.in_chans = 3
        self.global_pool = ""
        self.final_norm: nn.Module | None = None
        self.receiving_blocks: list[int] = []
        self.last_ln_pe: int | None = None
        self.pe_derived = False
        self.input_pe = False
        self.uniform = True

    # ------------------------------------------------------------------ recognition
    @classmethod
    def recognise(cls, model: nn.Module) -> bool:
        """Whether this family reads ``model`` (cheap: type and attribute checks only, never raises)."""
        raise NotImplementedError

    @classmethod
    def unsupported(cls, what: str) -> UnsupportedModelError:
        """The one-line error for a model this family recognises but cannot measure: ``family: what``."""
        return UnsupportedModelError(f"{cls.name} family: {what}")

    # ------------------------------------------------------------------ universal structure
    @property
    def kind(self) -> str:
        """The reader's name recorded in reports (:attr:`adapter`, else :attr:`name`)."""
        return self.adapter or self.name

    @property
    def depth(self) -> int:
        """Number of transformer blocks (all stages)."""
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        """Tokens per image entering the first block, prefix tokens included."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    @property
    def last_norm(self) -> nn.Module | None:
        """The Last LN (same as :attr:`final_norm`)."""
        return self.final_norm

    @property
    def pe_mode(self) -> str:
        """The model's PE scheme (``pe_mode`` of pe_* models), else the family name."""
        return getattr(self.model, "pe_mode", None) or self.name

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """The stream tensor ``x`` of a block in (B, T, D) layout; identity here, (B, H, W, C) families override."""
        return x

    def stream_taps(self) -> dict[str, Tap]:
        """Taps of the universal names: per block ``hook_resid_pre`` (input of ``norm1``), ``hook_tok`` (its
        output) and ``hook_resid_post`` (the block's output), then ``hook_last_ln_in`` / ``hook_last_ln_out``
        (around :attr:`final_norm`, where there is one). Override for blocks without ``norm1``."""
        taps: dict[str, Tap] = {}
        for i, blk in enumerate(self.blocks):
            norm1 = getattr(blk, "norm1", None)
            if norm1 is None:
                raise self.unsupported(f"block {i} ({type(blk).__name__}) has no norm1; the family must say "
                                       "where its token stream is read (stream_taps)")
            taps[H.block_hook(i, H.RESID_PRE)] = Tap(norm1, "in", flatten=self._flat())
            taps[H.block_hook(i, H.TOK)] = Tap(norm1, "out", flatten=self._flat())
            taps[H.block_hook(i, H.RESID_POST)] = Tap(blk, "out", flatten=self._flat())
        if self.final_norm is not None:
            taps[H.LAST_LN_IN] = Tap(self.final_norm, "in", flatten=self._flat())
            taps[H.LAST_LN_OUT] = Tap(self.final_norm, "out", flatten=self._flat())
        return taps

    def _flat(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None if type(self).flatten is Family.flatten else self.flatten

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """The model's pooling of the final (B, T, D) tokens to (B, D) (timm's ``model.pool`` where present)."""
        pool = getattr(self.model, "pool", None)
        if pool is None:
            raise self.unsupported("the model has no pool(); the family must define pool")
        return pool(x)

    # ------------------------------------------------------------------ PE sites
    def sites(self, effect: str = "direct") -> list[Site]:
        """The PE sites in forward order. ``effect="total"`` may give other modules (a chain value every later
        reader sees) where the family distinguishes the two; the default has none (a model without a PE)."""
        return []

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The model's logits for ``images``, run so that every tap and every site's module apply (default:
        ``model(images)``; families routing a term through their own HookPoint override this)."""
        return self.model(images)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Context in which plain ``model(x)`` calls (from outside code) also route the family's terms through
        its site modules; default: nothing to do. Families that route by functional_call leave it so and
        callers use :meth:`run`."""
        yield

    def replacement(self, site: Site, kind: str, perm: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function that replaces ``site``'s term under intervention ``kind`` (``zero``: the PE off;
        ``mean``: every patch row the mean patch row; ``shuffle``: patch rows permuted by ``perm``).

        The default serves additive terms (:func:`replace_additive`); non-additive kinds override it.
        Raises :class:`~pe_probe.core.errors.UnknownNameError` in one line for an intervention that makes
        no sense for the site.
        """
        if kind not in site.interventions:
            raise UnknownNameError(f"{site.name}: intervention {kind!r} does not apply to a {site.kind} site; "
                                   f"valid here: {site.interventions}")
        if not site.additive:
            raise UnknownNameError(f"{site.name}: the {self.name} family defines no {kind!r} for its "
                                   f"non-additive {site.kind} term")
        return lambda term: replace_additive(term, kind, site.n_prefix, perm)

    def baseline(self, site: Site, term: torch.Tensor, baseline: str) -> torch.Tensor:
        """The attribution baseline of ``site``'s term (``zero``: the PE off, ``mean``: its row mean)."""
        return self.replacement(site, "zero" if baseline == "zero" else "mean")(term)

    # ------------------------------------------------------------------ resuming (optional fast path)
    def resume_names(self) -> list[str]:
        """What an intact pass must record so a site at a block can rerun from there (empty: not resumable)."""
        return []

    def resume(self, site: Site, rec: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Logits with ``site``'s replacement active, rerun from the intact activations ``rec`` recorded for
        :meth:`resume_names`; and the number of blocks that ran. Only where :meth:`resume_names` is non-empty."""
        raise NotImplementedError(f"the {self.name} family cannot rerun from a layer")

    # ------------------------------------------------------------------ probe quantities and names
    def derived(self) -> dict[str, Callable[[], torch.Tensor]]:
        """Image-independent tensors by hook name (no forward pass needed: ``hook_pos_embed``, derived PEs)."""
        return {}

    def static_arrays(self) -> dict[str, np.ndarray]:
        """Image-independent float64 arrays stored in the probe report (e.g. ``pos_embed``)."""
        return {}

    def taps(self) -> dict[str, Tap]:
        """Every name read by a forward hook: :meth:`stream_taps` plus each direct site's module output
        (names that :meth:`derived` computes are left out)."""
        taps = self.stream_taps()
        derived = self.derived()
        for s in self.sites("direct"):
            if s.name not in derived and s.name not in taps:
                taps[s.name] = Tap(s.module, "out")
        return taps

    def tap_map(self) -> dict[str, Tap]:
        """:meth:`taps`, computed once per family instance (recording reads it every batch)."""
        cached = self.__dict__.get("_tap_map")
        if cached is None:
            cached = self._tap_map = self.taps()
        return cached

    def names(self) -> list[str]:
        """Every hook name the model offers, in forward order (:func:`pe_probe.hook_names`).

        Default order: input sites, then per block ``hook_resid_pre``, ``hook_tok``, ``hook_pe`` (receiving
        blocks), the block's other sites, ``hook_resid_post``; then the Last LN names and the Last-LN site.
        """
        sites = self.sites("direct")
        by_layer: dict[int, list[str]] = {}
        for s in sites:
            by_layer.setdefault(s.layer, []).append(s.name)
        derived = self.derived()
        names = [n for n in (H.POS_EMBED,) if n in derived] + [n for n in by_layer.get(H.INPUT, []) if n != H.POS_EMBED]
        for i in range(self.depth):
            pe = H.block_hook(i, H.PE)
            names += [H.block_hook(i, H.RESID_PRE), H.block_hook(i, H.TOK)]
            names += [pe] if i in self.receiving_blocks else []
            names += [n for n in by_layer.get(i, []) if n != pe]
            names.append(H.block_hook(i, H.RESID_POST))
        if self.final_norm is not None:
            names += [H.LAST_LN_IN, H.LAST_LN_OUT]
        names += [n for n in by_layer.get(H.LAST, [])]
        return list(dict.fromkeys(names))

    def check_names(self, names: Sequence[str]) -> None:
        """Raise :class:`~pe_probe.core.errors.UnknownNameError` listing the valid names when one is not offered."""
        valid = self.names()
        bad = [n for n in names if n not in valid]
        if bad:
            raise UnknownNameError(f"unknown hook name(s) {bad}; this model offers: {valid}")

    def find_sites(self, effect: str = "direct", select: Sequence[str | int] | str | int | None = None) -> list[Site]:
        """:meth:`sites` filtered by ``select`` (hook names or layer ints); unknown ones raise
        :class:`~pe_probe.core.errors.UnknownNameError`, as does a model without any site."""
        if effect not in EFFECTS:
            raise UnknownNameError(f"effect={effect!r} is unknown; valid values: {EFFECTS}")
        sites = self.sites(effect)
        if select is not None:
            wanted = [select] if isinstance(select, (str, int)) else list(select)
            known = {s.name for s in sites} | {s.layer for s in sites}
            bad = [w for w in wanted if w not in known]
            if bad:
                raise UnknownNameError(f"unknown PE site(s) {bad}; this model has: {[s.name for s in sites]} "
                                       f"(layers {[s.layer for s in sites]})")
            sites = [s for s in sites if s.name in wanted or s.layer in wanted]
        if not sites:
            raise UnknownNameError(f"the model ({self.name} family, pe_kind={self.pe_kind}) has no PE site to "
                                   "analyse" + (f" among {list(select)}" if select else ""))
        return sites

    def meta(self) -> dict[str, Any]:
        """What reports record about the family: its name, main kind and every direct site's name and kind."""
        sites = self.sites("direct")
        return {"family": self.name, "pe_kind": self.pe_kind,
                "pe_sites": {s.name: {"kind": s.kind, "layer": s.layer} for s in sites}}


def replace_additive(term: torch.Tensor, kind: str, n_prefix: int, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``term`` (…, T, D) with its position information removed:

    - ``zero``: every row 0, the prefix rows included (the PE off);
    - ``mean``: every patch row replaced by the mean patch row (position removed, offset kept);
    - ``shuffle``: the patch rows permuted by ``perm`` (row t gets row ``perm[t]``).

    ``mean`` and ``shuffle`` keep the ``n_prefix`` leading rows: the class slot's PE is part of that token's
    constant identity, not position among patches.
    """
    if kind == "zero":
        return torch.zeros_like(term)
    patches = term[..., n_prefix:, :]
    if kind == "mean":
        new = patches.mean(dim=-2, keepdim=True).expand_as(patches)
    elif kind == "shuffle":
        if perm is None:
            raise ValueError("shuffle needs a permutation (shuffle_permutation)")
        new = patches[..., perm.to(term.device), :]
    else:
        raise UnknownNameError(f"intervention {kind!r} is unknown; valid values: {INTERVENTIONS}")
    return torch.cat([term[..., :n_prefix, :], new], dim=-2)


@contextlib.contextmanager
def replaced(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, ``module``'s output is ``fn(output)``; the hook is removed on exit, also after errors."""
    handle = module.register_forward_hook(lambda mod, args, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


__all__ = ["Family", "Site", "Tap", "replace_additive", "replaced"]
