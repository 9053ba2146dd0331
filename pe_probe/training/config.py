"""What a user asks for: :class:`TrainConfig`, one flat frozen value with three parts, none of them spelled here.

- :class:`RunOptions`: what to train on and how to run (output directory, model, data, seed, device, ...);
- the PE knobs: :class:`~pe_probe.core.pe.PEKnobs`, generated from :class:`~pe_probe.core.pe.PEConfig`;
- the hyperparameter overrides, generated from :class:`~pe_probe.training.recipes.Hyperparameters`
  (None: the recipe's value).

``pe-probe train`` builds one flag per field from these definitions (:mod:`pe_probe.cli._fields`), so a
field cannot lack a flag. Every hyperparameter left as None comes from the recipe (:func:`recipe_for`);
resolution happens once, before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ..core.errors import UnknownNameError
from ..core.pe import PEKnobs
from .recipes import (
    DEFAULT_RECIPE_FOR_DATASET, HYPERPARAMETERS, SMALL_IMAGE_MAX, SMALL_IMAGE_RECIPE, Hyperparameters, Recipe,
    get_recipe,
)


def _opt(default: Any, help: str, *, runtime: bool = False, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "runtime": runtime, **extra})


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What to train on and how to run. Fields marked ``runtime`` only say how to run, not what is
    trained: they may differ when a run is resumed."""

    out: Optional[str | os.PathLike] = _opt(None, "the run directory to create (or to continue with --resume)",
                                            runtime=True, required=True)
    model: Optional[str] = _opt(None, "a registered timm model name (pe_* variants take the PE knobs); "
                                      "default: the recipe's")
    dataset: Optional[str] = _opt(None, "digits, cifar10, cifar100 or imagefolder; default: the recipe's")
    data_dir: Optional[str | os.PathLike] = _opt(None, "folder of the data set's files (not needed for digits)",
                                                 runtime=True)
    recipe: Optional[str] = _opt(None, "named hyperparameter preset (default: digits -> digits, cifar10/cifar100 "
                                       "-> vit_lite_cifar, imagefolder -> vit_lite_cifar when the model's input "
                                       "(without --model: the folder's images) is at most 64 px, else deit; "
                                       "config.json records the choice and why as recipe.name and recipe.reason)")
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "extra model constructor kwargs, KEY=VALUE (values read as JSON); merged over the recipe's, "
                "which apply only to the recipe's own model", "runtime": False})
    seed: int = _opt(0, "seeds Python, NumPy and torch; the data order is a function of (seed, epoch)")
    deterministic: bool = _opt(False, "torch deterministic algorithms (bit-exact resume on CPU)")
    device: Optional[str] = _opt(None, "cuda or cpu (default: cuda when available)", runtime=True)
    amp: Optional[bool] = _opt(None, "bf16 autocast (default: on for CUDA, off on CPU)", runtime=True)
    num_workers: Optional[int] = _opt(None, "data-loader worker processes (default: fits the machine: 0 for "
                                            "digits and on CPU with <= 2 cores, on CUDA cores - 1 up to 8)",
                                      runtime=True)
    num_threads: Optional[int] = _opt(None, "torch CPU threads during the run (default: torch's)", runtime=True)
    checkpoint_every: int = _opt(0, "also save the resume state every N optimizer steps (0: epoch ends only)",
                                 runtime=True)
    probe_every: int = _opt(0, "probe the first --probe-images validation images after every N epochs (and after "
                               "the last) and append every report metric to RUN/probe_history.csv (0: off); recorded in "
                               "config.json: a resumed run keeps it")
    probe_images: int = _opt(256, "how many validation images --probe-every probes (the first ones: the images "
                                  "pe-probe probe RUN --max-images K streams); recorded in config.json")
    skip_bad: bool = _opt(False, "leave out image files that are not regular files or do not decode (every file "
                                 "is checked before training; without this flag the first bad one stops the run "
                                 "before anything is written); summary.json counts them as skipped_images")
    resume: bool = _opt(False, "continue the run in --out from its last saved state", runtime=True)
    download: bool = _opt(False, "let torchvision download CIFAR into --data-dir", runtime=True)
    progress: bool = _opt(True, "tqdm progress bars", runtime=True)
    verbose: bool = _opt(True, "one summary line per epoch", runtime=True, negative="--quiet")


def _overrides_of(cls: type) -> type:
    """A dataclass with every field of ``cls`` made optional (default None: keep the recipe's value)."""
    fields = [(f.name, Optional[f.type] if not isinstance(f.type, str) else f"Optional[{f.type}]",
               field(default=None, metadata=dict(f.metadata))) for f in dataclasses.fields(cls)]
    out = dataclasses.make_dataclass("HyperparameterOverrides", fields, frozen=True, kw_only=True)
    out.__module__ = __name__
    out.__doc__ = "One optional override per :class:`~pe_probe.training.recipes.Hyperparameters` field."
    return out


#: One optional override per hyperparameter (generated, so no hyperparameter is listed twice).
HyperparameterOverrides = _overrides_of(Hyperparameters)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(HyperparameterOverrides, PEKnobs, RunOptions):  # type: ignore[misc, valid-type]
    """One training run: :class:`RunOptions` + the PE knobs (:class:`~pe_probe.core.pe.PEKnobs`) + one optional
    override per hyperparameter (unset: the recipe's; ``randaugment="none"`` and ``clip_grad=0`` switch off what
    the recipe turns on). ``TrainConfig.field_help()`` lists every field with its help text.
    """

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names raise ``ValueError``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; see pe_probe.training.TrainConfig")
        return dataclasses.replace(self, **changes)

    def args(self) -> dict[str, Any]:
        """The fields that define what is trained (no runtime fields), JSON-ready."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
        d["model_kwargs"] = dict(self.model_kwargs)
        if d["scale"] is not None:
            d["scale"] = list(d["scale"])
        return d

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Every field's help text, by field name."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


#: Fields that only say how to run, not what is trained; they may differ when a run is resumed.
RUNTIME_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunOptions) if f.metadata.get("runtime"))


def choose_recipe(cfg: TrainConfig) -> tuple[str, str]:
    """``(recipe name, why)`` for ``cfg``: the named recipe, else the data set's default; an image folder gets
    the small-image recipe when the model's input (without a named model: the folder's images) is at most
    :data:`~pe_probe.training.recipes.SMALL_IMAGE_MAX` pixels, else ``deit``."""
    if cfg.recipe is not None:
        return cfg.recipe, "named with --recipe"
    if cfg.dataset is None:
        return "digits", "no --dataset or --recipe given: the CPU recipe on digits"
    if cfg.dataset not in DEFAULT_RECIPE_FOR_DATASET:
        raise UnknownNameError(f"unknown dataset {cfg.dataset!r}; valid names: {', '.join(DEFAULT_RECIPE_FOR_DATASET)}")
    if cfg.dataset != "imagefolder":
        return DEFAULT_RECIPE_FOR_DATASET[cfg.dataset], f"the default recipe for {cfg.dataset}"
    if cfg.model is not None:
        size, what = _model_input_size(cfg.model, cfg.model_kwargs), f"the input of {cfg.model}"
    else:
        from ..data.folders import folder_image_size

        size, what = folder_image_size(cfg.data_dir), "the folder's images"
    if size is not None and size <= SMALL_IMAGE_MAX:
        return SMALL_IMAGE_RECIPE, (f"imagefolder, {what} {size} px (<= {SMALL_IMAGE_MAX} px): "
                                    "the small-image recipe (CIFAR, 32 px)")
    size_text = f"{size} px" if size is not None else "of several sizes"
    return DEFAULT_RECIPE_FOR_DATASET["imagefolder"], (f"imagefolder, {what} {size_text} (> {SMALL_IMAGE_MAX} px): "
                                                       "the ImageNet recipe (DeiT, 224 px)")


def _model_input_size(model: str, model_kwargs: dict) -> int | None:
    """The input side of ``model`` as built with ``model_kwargs`` (its ``img_size``, else timm's default
    config); None when timm does not know the model (the run's planning reports that)."""
    size = model_kwargs.get("img_size")
    if size is None:
        import timm

        import pe_probe.models  # noqa: F401  (registers the pe_* variants)

        cfg = timm.models.get_pretrained_cfg(model) if timm.is_model(model) else None
        size = cfg.input_size[-1] if cfg is not None and cfg.input_size else None
    if isinstance(size, (list, tuple)):
        size = max(size)
    return None if size is None else int(size)


def recipe_for(cfg: TrainConfig) -> Recipe:
    """The recipe named by ``cfg`` (or chosen by :func:`choose_recipe`), with ``cfg``'s hyperparameter
    overrides; its ``reason`` says why it was chosen."""
    name, reason = choose_recipe(cfg)
    recipe = get_recipe(name).replace(reason=reason)
    changes = {k: getattr(cfg, k) for k in HYPERPARAMETERS if getattr(cfg, k) is not None}
    if isinstance(changes.get("scale"), (list, tuple)):
        changes["scale"] = tuple(changes["scale"])
    if str(changes.get("randaugment", "")).lower() == "none":  # "none" switches the recipe's RandAugment off
        changes["randaugment"] = None
    if changes.get("clip_grad") == 0:  # 0 switches clipping off
        changes["clip_grad"] = None
    base_epochs = recipe.epochs
    recipe = recipe.replace(**changes)
    if cfg.warmup_epochs is None and _is_int(recipe.epochs) and recipe.warmup_epochs > recipe.epochs:
        # a shortened run: scale the warm-up
        recipe = recipe.replace(warmup_epochs=recipe.warmup_epochs * recipe.epochs / base_epochs)
    _check_hyperparameters(recipe)
    return recipe


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: Hyperparameters that are finite numbers, with the range each must lie in: (low, high, high included).
_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, False), "min_lr": (0.0, math.inf, False), "warmup_lr": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False), "warmup_epochs": (0.0, math.inf, False),
    "label_smoothing": (0.0, 1.0, False), "mixup": (0.0, math.inf, False), "cutmix": (0.0, math.inf, False),
    "mixup_prob": (0.0, 1.0, True), "mixup_switch_prob": (0.0, 1.0, True), "re_prob": (0.0, 1.0, True),
    "drop_path_rate": (0.0, 1.0, False),
}


def known_optimizer(name: Any) -> bool:
    """Whether timm's ``create_optimizer_v2`` knows optimizer ``name`` (with an optional ``lookahead_`` prefix)."""
    from timm.optim import list_optimizers

    if not isinstance(name, str):
        return False
    base = name.lower().removeprefix("lookahead_")
    return base in list_optimizers()


def _check_hyperparameters(r: Recipe) -> None:
    """Every hyperparameter of ``r`` of the right type, finite and in range, and the optimizer known to timm:
    a ``ValueError`` naming the first that is not (before anything is built or written)."""
    for name in ("epochs", "batch_size"):
        value = getattr(r, name)
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer of at least 1")
    for name, (lo, hi, hi_ok) in _RANGES.items():
        value = getattr(r, name)
        if not _is_number(value):
            raise ValueError(f"{name}={value!r} must be a finite number")
        if value < lo or value > hi or (value == hi and not hi_ok):
            raise ValueError(f"{name}={value!r} must be in [{lo:g}, {hi:g}{']' if hi_ok else ')'}")
    if r.lr <= 0:
        raise ValueError(f"lr={r.lr!r} must be positive")
    if r.warmup_epochs > r.epochs:
        raise ValueError(f"warmup_epochs={r.warmup_epochs} must be in [0, epochs={r.epochs}]")
    if r.clip_grad is not None and not (_is_number(r.clip_grad) and r.clip_grad > 0):
        raise ValueError(f"clip_grad={r.clip_grad!r} must be a positive finite number (0: off)")
    if r.scale is not None and not (len(r.scale) == 2 and all(_is_number(v) for v in r.scale)
                                    and 0 < r.scale[0] <= r.scale[1] <= 1):
        raise ValueError(f"scale={r.scale!r} must be two numbers 0 < low <= high <= 1 (fractions of the image area)")
    if not isinstance(r.augment, bool):
        raise ValueError(f"augment={r.augment!r} must be true or false")
    if r.randaugment is not None and not isinstance(r.randaugment, str):
        raise ValueError(f"randaugment={r.randaugment!r} must be a timm policy string or none")
    if not known_optimizer(r.opt):
        raise UnknownNameError(f"unknown optimizer opt={r.opt!r}; timm's create_optimizer_v2 knows e.g. adamw, sgd, "
                               "lamb, adan (timm.optim.list_optimizers())")
    if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
        raise ValueError(f"batch_size={r.batch_size} must be even with mixup/cutmix")


#: Run options that are integers, with their least value (None allowed where the field's default is None).
_RUN_INTS = {"num_workers": 0, "num_threads": 1, "checkpoint_every": 0, "probe_every": 0, "probe_images": 1}
_RUN_BOOLS = ("deterministic", "download", "resume", "progress", "verbose", "skip_bad")


def check_run_options(cfg: "TrainConfig") -> None:
    """The run options of ``cfg`` of the right type and in range (``ValueError`` naming the first that is not)."""
    for name, low in _RUN_INTS.items():
        value = getattr(cfg, name)
        if value is None and getattr(TrainConfig, name, 0) is None:
            continue
        if not _is_int(value) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer of at least {low}")
    if not _is_int(cfg.seed) or abs(cfg.seed) >= 2**63:
        raise ValueError(f"seed={cfg.seed!r} must be an integer")
    for name in _RUN_BOOLS:
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name}={getattr(cfg, name)!r} must be true or false")
    if cfg.amp is not None and not isinstance(cfg.amp, bool):
        raise ValueError(f"amp={cfg.amp!r} must be true, false or None")
    for name in ("model", "dataset", "recipe", "device"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name}={value!r} must be a name (a string)")
    if not isinstance(cfg.model_kwargs, dict):
        raise ValueError(f"model_kwargs must be a dict of constructor keywords, not {type(cfg.model_kwargs).__name__}")
