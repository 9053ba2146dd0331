"""The training loop: timm's AdamW, cosine schedule with warm-up, mixup/cutmix, label smoothing, RandAugment.

One function, :func:`run_training`, runs single-process on CPU or CUDA (bf16 autocast) and multi-process under
torchrun with DistributedDataParallel. Every input is checked before the run directory is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .._version import __version__
from ..core.errors import CheckpointError, DataError, PEProbeError
from ..core.io import is_temp
from ..core.locks import LOCK_FILE
from ..core.rundir import RunDir
from ..data import build_dataset, dataset_info
from ..data.workers import default_num_workers
from ..models.limits import check_buildable
from .checkpoints import load_state, load_state_dict_checked, rng_state, save_state, save_weights, set_rng_state
from .config import RUNTIME_FIELDS, TrainConfig, check_run_options
from .distributed import DistEnv, all_gather, all_sum, barrier, init_distributed, shutdown
from .evaluation import autocast_for, run_eval
from .recipes import Recipe
from .resolve import resolve_run
from .sampler import EpochSampler, SeededItems, _mix


class TrainingDivergedError(PEProbeError, RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass
class Plan:
    """Everything a run needs, checked and built before anything is written."""

    cfg: TrainConfig
    recipe: Recipe
    model: nn.Module
    train_set: Dataset
    val_set: Dataset
    config: dict
    steps_per_epoch: int
    bad_images: dict = dataclasses.field(default_factory=dict)  # files left out with skip_bad: path -> why


# ---------------------------------------------------------------------------------------------- planning
def _image_format(model_name: str, kwargs: dict) -> tuple[int, int]:
    """``(img_size, in_chans)`` of the model to build, from its kwargs or timm's default config."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    default = (cfg.input_size if cfg is not None else None) or (3, 224, 224)
    size = kwargs.get("img_size", default[-1])
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"img_size={size} must be square")
        size = size[0]
    return int(size), int(kwargs.get("in_chans", default[0]))


def plan_run(cfg: TrainConfig, env: DistEnv) -> Plan:
    """Resolve the run (:func:`~pe_probe.training.resolve.resolve_run`: recipe, model, kwargs, depth), check the
    data, build the data sets and the model. Writes nothing."""
    resolved = resolve_run(cfg)
    recipe, model_name, dataset = resolved.recipe, resolved.model, resolved.dataset
    info = dataset_info(dataset)
    kwargs = dict(resolved.model_kwargs)
    img_size, in_chans = _image_format(model_name, kwargs)

    aug = {}
    if recipe.augment:
        aug = dict(auto_augment=recipe.randaugment, re_prob=recipe.re_prob, scale=recipe.scale)
    mean, std = info.normalization(in_chans) if in_chans in (1, 3) else (None, None)
    common = dict(data_dir=cfg.data_dir, img_size=img_size, in_chans=in_chans, mean=mean, std=std)
    train_set = build_dataset(dataset, train=True, augment=recipe.augment, download=cfg.download and env.is_main,
                              skip_bad=cfg.skip_bad, **common, **aug)
    val_set = build_dataset(dataset, train=False, augment=False, skip_bad=cfg.skip_bad, **common)
    bad = {**getattr(train_set, "bad", {}), **getattr(val_set, "bad", {})}
    num_classes = int(train_set.num_classes)
    if num_classes < 2:  # image folders say which folder to use instead (pe_probe.data.folders)
        raise DataError(f"{dataset} has {num_classes} class: a classifier needs at least two")
    if kwargs.setdefault("num_classes", num_classes) != num_classes:
        raise ValueError(f"model_kwargs num_classes={kwargs['num_classes']} but {dataset} has {num_classes} classes")
    kwargs.update(img_size=img_size, in_chans=in_chans)
    steps = len(train_set) // (recipe.batch_size * env.world_size)
    if steps == 0:
        raise DataError(
            f"the training set has {len(train_set)} images, fewer than one batch of {recipe.batch_size} "
            f"on each of {env.world_size} process(es)"
        )

    _seed_everything(cfg.seed)  # the same initial weights on every process and every attempt
    check_buildable(model_name, kwargs, where="model_kwargs")  # again, with the data set's classes and image size
    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot build {model_name} with these kwargs: {msg}") from None
    pe_config = getattr(model, "pe_config", None)
    config = {
        "model": model_name,
        "model_kwargs": kwargs,
        "pe_config": dataclasses.asdict(pe_config) if pe_config is not None else None,
        "num_classes": num_classes,
        "data": {
            "dataset": dataset, "img_size": img_size, "in_chans": in_chans, "mean": list(mean), "std": list(std),
            "data_dir": str(Path(cfg.data_dir).expanduser().resolve()) if cfg.data_dir is not None else None,
            "crop_pct": info.crop_pct, "interpolation": "bicubic", "signature": train_set.signature.to_dict(),
            "skip_bad": cfg.skip_bad,
        },
        "recipe": {"name": recipe.name, "reason": recipe.reason, **recipe.hyperparameters(), "seed": cfg.seed,
                   "deterministic": cfg.deterministic, "args": cfg.args()},
        "pe_probe_version": __version__,
    }
    return Plan(cfg=cfg, recipe=recipe, model=model, train_set=train_set, val_set=val_set,
                config=json.loads(json.dumps(config)), steps_per_epoch=steps, bad_images=bad)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _merge_resume(cfg: TrainConfig, stored: dict, run: RunDir) -> TrainConfig:
    """The stored run's arguments, with ``cfg``'s runtime fields; a conflicting explicit value is an error."""
    args = stored.get("recipe", {}).get("args")
    if not isinstance(args, dict):
        raise CheckpointError(f"{run.config_path} lacks recipe.args; it was not written by pe_probe.train")
    defaults = TrainConfig()
    given = cfg.args()
    for key, value in given.items():
        default = getattr(defaults, key)
        default = dict(default) if isinstance(default, dict) else default
        if value != default and key in args and value != args[key]:
            raise ValueError(
                f"{key}={value!r} differs from the run's {args[key]!r}; a resumed run keeps its configuration"
            )
    runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS}
    if runtime["data_dir"] is None:
        runtime["data_dir"] = stored.get("data", {}).get("data_dir")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = {k: v for k, v in args.items() if k in known and k not in RUNTIME_FIELDS}
    fields.update({k: v for k, v in given.items() if k not in args})  # options newer than the run: as given
    if isinstance(fields.get("scale"), list):
        fields["scale"] = tuple(fields["scale"])
    merged = TrainConfig(**fields, **runtime)
    try:
        check_run_options(merged)
    except ValueError as exc:
        raise CheckpointError(f"{run.config_path}: recipe.args: {exc}") from None
    return merged


# ---------------------------------------------------------------------------------------------- running
#: ``callback(model=, epoch=, epochs=, run=, config=)``, called on the main process at the end of every epoch,
#: after the evaluation and before the resume state is saved (so a resumed run repeats it for that epoch).
EpochCallback = Callable[..., Any]


def run_training(config: TrainConfig | None = None, /, *, callbacks: Sequence[EpochCallback] = (),
                 **options: Any) -> Path:
    """Train a model and return its run directory (``config.json``, ``model.safetensors``, ``metrics.jsonl``,
    ``state.pt``, and ``summary.json`` once complete).

    Pass a :class:`TrainConfig`, keyword options (its field names), or both (options override the config):
    ``run_training(out="runs/mpvg", pe_mode="mpvg")`` trains the ``digits`` recipe's tiny ViT on CPU.
    With ``resume=True`` an existing run continues from its last saved state with its stored configuration.
    Bad input raises a :class:`~pe_probe.core.errors.PEProbeError` subclass or ``ValueError`` before anything is
    written; a NaN loss raises :class:`TrainingDivergedError` naming the step. ``callbacks`` run at the end of
    every epoch (:data:`EpochCallback`); ``probe_every`` needs the one :func:`pe_probe.train` adds (the probe
    history is computed by the analysis floor, above this one).
    """
    cfg = config if config is not None else TrainConfig()
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"run_training() takes a TrainConfig or keyword options, not {type(cfg).__name__}")
    if options:
        cfg = cfg.replace(**options)
    if cfg.out is None:
        raise ValueError("train needs out=... (the run directory to create)")
    check_run_options(cfg)
    if cfg.probe_every and not callbacks:
        raise ValueError("probe_every records a probe history: train with pe_probe.train, which adds it")
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    env = init_distributed(cfg.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, RunDir(cfg.out), env, tuple(callbacks))
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
        shutdown(env)


def _train(cfg: TrainConfig, run: RunDir, env: DistEnv, callbacks: tuple[EpochCallback, ...] = ()) -> Path:
    """Hold the run directory's lock (main process) for the whole run; a fresh run that fails before it saved
    anything leaves no trace (not even the directory, when it created it)."""
    out = run.path
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; choose another --out")
    lock = run.lock() if env.is_main else contextlib.nullcontext()
    with lock:  # on leaving, the lock removes the directory it created if nothing is left in it
        fresh = not run.config_path.exists()
        try:
            return _train_locked(cfg, run, env, callbacks)
        except BaseException:
            if env.is_main and fresh:
                _remove_unsaved(run)
            raise


def _listing(out: Path) -> list[str]:
    """The entries of ``out`` that are not the lock file or stale temporary files."""
    return [p.name for p in out.iterdir() if p.name != LOCK_FILE and not is_temp(p.name)]


def _remove_unsaved(run: RunDir) -> None:
    """After a fresh run failed: if it saved neither a resume state nor an epoch's metrics, remove what it wrote
    (``config.json``, a probe history), so that the same command can simply be run again."""
    if run.state_path.exists() or run.metrics_path.exists():
        return  # an epoch or a state was saved: --resume continues from it
    for name in (RunDir.CONFIG, RunDir.WEIGHTS, RunDir.PROBE_HISTORY):
        with contextlib.suppress(FileNotFoundError):
            run.file(name).unlink()


def _train_locked(cfg: TrainConfig, run: RunDir, env: DistEnv, callbacks: tuple[EpochCallback, ...]) -> Path:
    out = run.path
    stored = None
    if run.config_path.exists():
        if not cfg.resume:
            raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        stored = run.read_config()
        cfg = _merge_resume(cfg, stored, run)
        if cfg.probe_every and not callbacks:  # the run records a probe history: never resume it without one
            raise ValueError(f"{run.config_path} records probe_every={cfg.probe_every}: resume it with "
                             "pe_probe.train (or pe-probe train), which continues its probe history")
    elif out.is_dir() and _listing(out):
        raise ValueError(f"{out} exists and is not a pe-probe run directory; choose another --out")
    plan = plan_run(cfg, env)
    if stored is not None:
        _check_same_run(plan.config, stored, run)
        if run.is_complete():
            if env.is_main and cfg.verbose:
                tqdm.write(f"{out}: training already complete")
            return out
    if plan.bad_images and env.is_main and cfg.verbose:
        first = sorted(plan.bad_images)[0]
        tqdm.write(f"skipping {len(plan.bad_images)} unreadable image file(s) (skip_bad): first {first}, "
                   f"{plan.bad_images[first]}")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if stored is None:
            run.write_config(plan.config)
    barrier(env)
    _Trainer(plan, run, env, callbacks).run()
    return out


def _check_same_run(new: dict, stored: dict, run: RunDir) -> None:
    for key in ("model", "model_kwargs", "num_classes"):
        if new[key] != stored.get(key):
            raise CheckpointError(f"{run.config_path}: {key} does not match what this pe-probe version builds")
    for key in ("dataset", "img_size", "in_chans"):
        if new["data"][key] != stored["data"].get(key):
            raise CheckpointError(f"{run.config_path}: data.{key} does not match the data set")


class _Trainer:
    """One run's mutable state: model, optimizer, schedule, counters."""

    def __init__(self, plan: Plan, run: RunDir, env: DistEnv, callbacks: tuple[EpochCallback, ...] = ()) -> None:
        self.plan, self.cfg, self.r, self.run_dir, self.env = plan, plan.cfg, plan.recipe, run, env
        self.callbacks = callbacks
        self.device = env.device
        self.amp = (self.device.type == "cuda") if self.cfg.amp is None else bool(self.cfg.amp)
        self.model = plan.model.to(self.device)
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if env.distributed else self.model
        )
        r = self.r
        self.optimizer = create_optimizer_v2(self.model, opt=r.opt, lr=r.lr, weight_decay=r.weight_decay)
        self.steps = plan.steps_per_epoch
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="cosine", num_epochs=r.epochs, warmup_epochs=r.warmup_epochs,
            warmup_lr=r.warmup_lr, min_lr=r.min_lr, step_on_epochs=False, updates_per_epoch=self.steps,
        )
        num_classes = plan.config["num_classes"]
        self.mixup = None
        if r.mixup > 0 or r.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, prob=r.mixup_prob,
                               switch_prob=r.mixup_switch_prob, label_smoothing=r.label_smoothing,
                               num_classes=num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif r.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=r.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        nw = self.cfg.num_workers
        self.num_workers = default_num_workers(self.device, in_memory=plan.config["data"]["dataset"] == "digits") \
            if nw is None else nw
        self.epoch, self.batch, self.global_step = 0, 0, 0
        self.accum = {"loss_sum": 0.0, "n": 0.0, "time": 0.0}
        self.records: list[dict] = []
        self._restore()

    # ------------------------------------------------------------------ state
    def _restore(self) -> None:
        state = load_state(self.run_dir) if self.cfg.resume else None
        if state is None:
            _seed_everything(self.cfg.seed + self.env.rank)
            return
        src = self.run_dir.state_path
        try:
            load_state_dict_checked(self.model, state["model"], src)
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch, self.batch, self.global_step = int(state["epoch"]), int(state["batch"]), int(state["step"])
            self.accum = {k: float(v) for k, v in state["accum"].items()}
            rngs = state["rng"]
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{src} does not fit this run ({type(exc).__name__}: {exc})") from None
        if len(rngs) == self.env.world_size:
            set_rng_state(rngs[self.env.rank])
        else:  # another number of processes: the run goes on, but not bit-identically
            _seed_everything(self.cfg.seed + self.env.rank + 7919 * self.global_step)
        self.scheduler.step_update(num_updates=self.global_step)
        self.records = [rec for rec in self.run_dir.read_metrics() if rec.get("epoch", 0) <= self.epoch]

    def _save_state(self) -> None:
        rngs = all_gather(rng_state(), self.env)
        if self.env.is_main:
            save_state(self.run_dir, {
                "epoch": self.epoch, "batch": self.batch, "step": self.global_step,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "accum": dict(self.accum), "rng": rngs, "world_size": self.env.world_size,
            })

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        r, env = self.r, self.env
        show = self.cfg.progress and env.is_main
        bar = tqdm(total=r.epochs, initial=self.epoch, desc="epochs", unit="ep", disable=not show, dynamic_ncols=True)
        try:
            while self.epoch < r.epochs:
                self._train_epoch(show)
                self._end_epoch()
                bar.update(1)
        finally:
            bar.close()
        self._finish()

    def _loader(self) -> DataLoader:
        cfg, env = self.cfg, self.env
        sampler = EpochSampler(len(self.plan.train_set), self.r.batch_size, seed=cfg.seed, epoch=self.epoch,
                               rank=env.rank, world_size=env.world_size, start_batch=self.batch)
        return DataLoader(
            SeededItems(self.plan.train_set, random=self.r.augment), batch_size=self.r.batch_size, sampler=sampler,
            drop_last=True, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(_mix(cfg.seed, self.epoch)),
        )

    def _train_epoch(self, show: bool) -> None:
        self.ddp.train()
        every = self.cfg.checkpoint_every
        steps_bar = tqdm(total=self.steps, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.r.epochs}",
                         leave=False, disable=not show, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for x, y in self._loader():
                loss = self._step(x, y)
                self.batch += 1
                steps_bar.update(1)
                steps_bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if every and self.global_step % every == 0 and self.batch < self.steps:
                    now = time.perf_counter()
                    self.accum["time"] += now - t0
                    self._save_state()
                    t0 = time.perf_counter()
        finally:
            steps_bar.close()
        self.accum["time"] += time.perf_counter() - t0

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        with autocast_for(self.device, self.amp):
            logits = self.ddp(x)
        loss = self.criterion(logits.float(), target)
        value = loss.item()
        bad = 0.0 if math.isfinite(value) else 1.0
        if all_sum([bad], self.env)[0] > 0:
            raise TrainingDivergedError(
                f"loss is {value if bad else 'not finite on another process'} at step {self.global_step + 1} "
                f"(epoch {self.epoch + 1}, batch {self.batch + 1}); lower the learning rate or set clip_grad"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.r.clip_grad is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.r.clip_grad)
        self.optimizer.step()
        self.global_step += 1
        self.scheduler.step_update(num_updates=self.global_step)
        self.accum["loss_sum"] += value * len(x)
        self.accum["n"] += len(x)
        return value

    def _end_epoch(self) -> None:
        env = self.env
        loss_sum, n = all_sum([self.accum["loss_sum"], self.accum["n"]], env)
        seconds = max(all_sum([self.accum["time"]], env)[0] / env.world_size, 1e-9)
        val = run_eval(self.model, self.plan.val_set, batch_size=self.r.batch_size, device=self.device,
                       amp=self.amp, env=env, num_workers=self.num_workers)
        self.epoch += 1
        self.batch = 0
        record = {
            "epoch": self.epoch, "train_loss": loss_sum / max(n, 1), "val_loss": val["loss"], "top1": val["top1"],
            "top5": val["top5"], "lr": self.optimizer.param_groups[0]["lr"], "images_per_sec": n / seconds,
            "step": self.global_step, "epoch_time_s": seconds,
        }
        self.records.append(record)
        self.accum = {"loss_sum": 0.0, "n": 0.0, "time": 0.0}
        if env.is_main and self.callbacks:
            t0 = time.perf_counter()
            for callback in self.callbacks:
                callback(model=self.model, epoch=self.epoch, epochs=self.r.epochs, run=self.run_dir,
                         config=self.plan.config)
            record["callback_time_s"] = time.perf_counter() - t0
        barrier(env)
        if env.is_main:
            save_weights(self.run_dir, self.model)
            self.run_dir.write_metrics(self.records)
        self._save_state()
        if env.is_main and self.cfg.verbose:
            tqdm.write(
                f"epoch {self.epoch}/{self.r.epochs}  train_loss {record['train_loss']:.4f}  "
                f"val_loss {record['val_loss']:.4f}  top1 {record['top1']:.2f}  top5 {record['top5']:.2f}  "
                f"lr {record['lr']:.2e}  {record['images_per_sec']:.0f} img/s  {seconds:.1f}s"
            )

    def _finish(self) -> None:
        if self.env.is_main:
            last = self.records[-1] if self.records else {}
            summary = {
                "top1": last.get("top1"), "top5": last.get("top5"), "val_loss": last.get("val_loss"),
                "train_loss": last.get("train_loss"), "epochs": self.r.epochs, "steps": self.global_step,
                "best_top1": max((rec["top1"] for rec in self.records), default=None),
                "train_time_s": sum(rec.get("epoch_time_s", 0.0) for rec in self.records),
                "world_size": self.env.world_size, "device": self.device.type, "amp_bf16": self.amp,
                "model": self.plan.config["model"], "pe_mode": self.plan.config["model_kwargs"].get("pe_mode"),
                "dataset": self.plan.config["data"]["dataset"], "recipe": self.r.name,
                "skipped_images": len(self.plan.bad_images),
            }
            self.run_dir.write_summary(summary)
        barrier(self.env)
