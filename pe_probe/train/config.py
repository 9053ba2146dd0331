"""What a user asks for (:class:`TrainConfig`) and what a run actually uses (:class:`ResolvedRun`).

Every hyperparameter left as None in a ``TrainConfig`` comes from the recipe. Resolution happens once, before
anything is written, and yields the exact ``config.json`` content of the run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownNameError
from .recipes import DEFAULT_RECIPE_FOR_DATASET, HYPERPARAMETERS, Recipe, get_recipe

#: ``last_ln_pe`` value that keeps the preset's choice (None is meaningful: no PE in the Last LN).
PRESET = "preset"

#: Fields that only say how to run, not what is trained; they may differ when a run is resumed.
RUNTIME_FIELDS = (
    "out", "data_dir", "resume", "download", "device", "amp", "num_workers", "num_threads", "checkpoint_every",
    "progress", "verbose",
)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Unset (None) hyperparameters come from ``recipe``.

    Attributes:
        out: the run directory to create (or to continue with ``resume``).
        model: a registered timm model name (``pe_*`` variants take the PE knobs below); default: the recipe's.
        dataset: ``digits``, ``cifar10``, ``cifar100`` or ``imagefolder``; default: the recipe's.
        data_dir: where the data set's files are (not needed for ``digits``).
        recipe: a name from :data:`~pe_probe.train.RECIPES`; default: chosen by data set
            (digits -> ``digits``, CIFAR -> ``vit_lite_cifar``, imagefolder -> ``deit``).
        pe_mode, pe_input_add, pe_layer0, pe_hierarchical, last_ln_pe, global_pool, pe_type: the PE knobs of
            :class:`~pe_probe.PEVisionTransformer` (``last_ln_pe="preset"`` keeps the preset's value).
        model_kwargs: any other constructor kwarg (e.g. ``embed_dim``); merged over the recipe's model kwargs,
            which apply only when ``model`` is the recipe's own model.
        epochs ... clip_grad: hyperparameters, see :class:`~pe_probe.train.recipes.Recipe`
            (``randaugment="none"`` and ``clip_grad=0`` switch off what the recipe turns on).
        seed: seeds Python, NumPy and torch; the data order is a function of (seed, epoch).
        deterministic: ``torch.use_deterministic_algorithms(True)`` for the run (bit-exact resume on CPU).
        device: ``"cuda"``, ``"cpu"`` or None (CUDA when available). Under torchrun each process uses its local GPU.
        amp: bf16 autocast; None means on for CUDA, off on CPU.
        num_workers: data-loader worker processes (None: 0 for digits, 4 otherwise).
        num_threads: torch CPU threads during the run (None: leave torch's setting), restored afterwards.
        checkpoint_every: also save the resume state every N optimizer steps (0: only at epoch ends).
        resume: continue the run in ``out`` from its last saved state.
        download: let torchvision download CIFAR into ``data_dir``.
        progress: tqdm bars for epochs and steps.
        verbose: print one summary line per epoch.
    """

    out: str | os.PathLike | None = None
    model: str | None = None
    dataset: str | None = None
    data_dir: str | os.PathLike | None = None
    recipe: str | None = None
    pe_mode: str | None = None
    pe_input_add: bool | None = None
    pe_layer0: bool | None = None
    pe_hierarchical: bool | None = None
    last_ln_pe: int | str | None = PRESET
    global_pool: str | None = None
    pe_type: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    min_lr: float | None = None
    warmup_lr: float | None = None
    opt: str | None = None
    label_smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    mixup_prob: float | None = None
    mixup_switch_prob: float | None = None
    augment: bool | None = None
    randaugment: str | None = None
    re_prob: float | None = None
    scale: tuple[float, float] | None = None
    drop_path_rate: float | None = None
    clip_grad: float | None = None
    seed: int = 0
    deterministic: bool = False
    device: str | None = None
    amp: bool | None = None
    num_workers: int | None = None
    num_threads: int | None = None
    checkpoint_every: int = 0
    resume: bool = False
    download: bool = False
    progress: bool = True
    verbose: bool = True

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed; unknown names raise ``ValueError``."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; see pe_probe.train.TrainConfig")
        return dataclasses.replace(self, **changes)

    def args(self) -> dict[str, Any]:
        """The fields that define what is trained (no runtime fields), JSON-ready."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
        d["model_kwargs"] = dict(self.model_kwargs)
        if d["scale"] is not None:
            d["scale"] = list(d["scale"])
        return d


def recipe_for(cfg: TrainConfig) -> Recipe:
    """The recipe named by ``cfg`` (or chosen by its data set), with ``cfg``'s hyperparameter overrides."""
    if cfg.recipe is not None:
        recipe = get_recipe(cfg.recipe)
    elif cfg.dataset is not None:
        if cfg.dataset not in DEFAULT_RECIPE_FOR_DATASET:
            raise UnknownNameError(
                f"unknown dataset {cfg.dataset!r}; valid names: {', '.join(DEFAULT_RECIPE_FOR_DATASET)}"
            )
        recipe = get_recipe(DEFAULT_RECIPE_FOR_DATASET[cfg.dataset])
    else:
        recipe = get_recipe("digits")
    changes = {k: getattr(cfg, k) for k in HYPERPARAMETERS if getattr(cfg, k) is not None}
    if "scale" in changes:
        changes["scale"] = tuple(changes["scale"])
    if str(changes.get("randaugment", "")).lower() == "none":  # "none" switches the recipe's RandAugment off
        changes["randaugment"] = None
    if changes.get("clip_grad") == 0:  # 0 switches clipping off
        changes["clip_grad"] = None
    base_epochs = recipe.epochs
    recipe = recipe.replace(**changes)
    if cfg.warmup_epochs is None and recipe.warmup_epochs > recipe.epochs:  # shortened run: scale the warm-up
        recipe = recipe.replace(warmup_epochs=recipe.warmup_epochs * recipe.epochs / base_epochs)
    _check_hyperparameters(recipe)
    return recipe


def _check_hyperparameters(r: Recipe) -> None:
    checks = [
        (r.epochs >= 1, f"epochs={r.epochs} must be at least 1"),
        (r.batch_size >= 1, f"batch_size={r.batch_size} must be at least 1"),
        (r.lr > 0, f"lr={r.lr} must be positive"),
        (r.weight_decay >= 0, f"weight_decay={r.weight_decay} must be >= 0"),
        (0 <= r.warmup_epochs <= r.epochs, f"warmup_epochs={r.warmup_epochs} must be in [0, epochs]"),
        (0 <= r.label_smoothing < 1, f"label_smoothing={r.label_smoothing} must be in [0, 1)"),
        (r.mixup >= 0 and r.cutmix >= 0, "mixup and cutmix alphas must be >= 0"),
        (0 <= r.re_prob <= 1, f"re_prob={r.re_prob} must be in [0, 1]"),
        (0 <= r.drop_path_rate < 1, f"drop_path_rate={r.drop_path_rate} must be in [0, 1)"),
        (r.clip_grad is None or r.clip_grad > 0, f"clip_grad={r.clip_grad} must be positive"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
        raise ValueError(f"batch_size={r.batch_size} must be even with mixup/cutmix")
