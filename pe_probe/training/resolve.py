"""From what a user asks for to what is built: the one place a run's recipe, model, data set, model kwargs and
depth are decided (:func:`resolve_run`).

``pe-probe train`` (through :func:`~pe_probe.training.loop.plan_run`), ``pe-probe reproduce`` and its ``--plan``
all ask this function, so a reproduction plans exactly the runs the training code will build: a 32-px image
folder gets ViT-Lite's recipe and its 7 blocks, and the Table 5 runs are placed on those 7 blocks.
Reads no images except a few headers of an image folder (to choose its recipe); builds no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import UnknownNameError
from ..core.model_kwargs import check_model_kwargs
from ..core.pe import KNOB_NAMES, PEConfig, resolve_pe_config
from .config import TrainConfig, recipe_for
from .recipes import Recipe


@dataclass(frozen=True)
class ResolvedRun:
    """What a :class:`~pe_probe.training.TrainConfig` trains, decided before any data is read.

    Attributes:
        recipe: the recipe with the config's overrides (its ``reason`` says why it was chosen).
        model: the timm model name.
        dataset: the data set's name.
        model_kwargs: the constructor kwargs: the recipe's (for its own model), the user's, every PE knob
            resolved (pe_* models) and ``drop_path_rate``; the data set adds ``num_classes``, ``img_size`` and
            ``in_chans`` when it is built.
        depth: the model's number of blocks (None for a timm model that is not a pe_* model).
        pe_config: the resolved PE configuration (None for other timm models).
    """

    recipe: Recipe
    model: str
    dataset: str
    model_kwargs: dict[str, Any]
    depth: int | None
    pe_config: PEConfig | None

    def describe(self) -> str:
        """One line: model, depth, PE scheme and recipe."""
        pe = f", pe_mode={self.model_kwargs.get('pe_mode')}" if self.pe_config is not None else ""
        depth = f", {self.depth} blocks" if self.depth is not None else ""
        return f"{self.model}{depth}{pe} on {self.dataset}, recipe {self.recipe.name} ({self.recipe.reason})"


def resolve_run(cfg: TrainConfig) -> ResolvedRun:
    """Resolve ``cfg`` into the recipe, model, data set, kwargs and depth the training code builds.

    Checks names (model, data set, recipe), the kwargs (:func:`~pe_probe.models.limits.check_buildable`) and
    the PE knobs against the model's depth (``last_ln_pe=11`` on a 7-block model is a ``ValueError`` naming
    the knob); writes nothing.
    """
    import timm

    from ..data import dataset_info
    from ..models import VARIANT_ARGS
    from ..models.limits import check_buildable

    recipe = recipe_for(cfg)
    model = cfg.model or recipe.model
    if model is None:
        raise ValueError(f"recipe {recipe.name!r} has no default model; name one with --model")
    if not timm.is_model(model):
        raise UnknownNameError(f"unknown model {model!r}; pe-probe's models: {', '.join(VARIANT_ARGS)} (or any timm "
                               "model)")
    dataset = cfg.dataset or recipe.dataset
    dataset_info(dataset)  # an unknown name is an UnknownNameError here, before any folder is read

    kwargs = dict(recipe.model_kwargs) if model == recipe.model else {}
    kwargs.update(check_model_kwargs(cfg.model_kwargs, "model_kwargs"))
    kwargs, pe = _resolve_pe(cfg, kwargs, model, VARIANT_ARGS)
    kwargs.setdefault("drop_path_rate", recipe.drop_path_rate)
    check_buildable(model, kwargs, where="model_kwargs")  # names, types and size, before any data is read
    depth = kwargs.get("depth", VARIANT_ARGS.get(model, {}).get("depth"))
    if pe is not None:
        pe.validate(int(depth))  # e.g. last_ln_pe=11 names no block of a 7-block model
    return ResolvedRun(recipe=recipe, model=model, dataset=dataset, model_kwargs=kwargs,
                       depth=None if depth is None else int(depth), pe_config=pe)


def _resolve_pe(cfg: TrainConfig, kwargs: dict, model: str, variants: dict) -> tuple[dict, PEConfig | None]:
    """The model kwargs with every PE knob resolved (pe_* models), or a clear error (other timm models)."""
    given = cfg.given()  # the PE knobs the user set (PEKnobs)
    if model not in variants:
        bad = sorted(k for k in given if k != "global_pool")
        if bad:
            raise ValueError(f"{model} is not a pe-probe model: the PE knobs {bad} apply to pe_* models only")
        return {**kwargs, **given}, None
    names = ("pe_mode", *KNOB_NAMES)
    merged = {**{k: kwargs[k] for k in names if k in kwargs}, **given}
    mode = merged.pop("pe_mode", "default")
    pe = resolve_pe_config(mode, **merged)
    out = {k: v for k, v in kwargs.items() if k not in names}
    out.update(pe_mode=mode, **pe.to_kwargs())
    return out, pe


