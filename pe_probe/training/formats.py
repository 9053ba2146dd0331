"""The checkpoints researchers hold, read into a model for probing: :func:`load_checkpoint`.

Accepted (docs/probe.md, "Bring your own checkpoint"):

- a pe-probe run directory (``config.json`` with ``model`` + ``model.safetensors``);
- a timm hub-style folder (``config.json`` with ``architecture`` + ``model.safetensors`` or ``pytorch_model.bin``,
  as ``timm.models._hub.save_for_hf(..., safe_serialization=True)`` writes it), built like timm's ``local-dir:``;
- a file: ``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` / ``.pth.tar`` holding a state dict or a training
  checkpoint dict (weights under ``model``, ``state_dict``, ``model_ema`` or ``state_dict_ema``; ``module.`` and
  ``_orig_mod.`` prefixes removed with timm's ``clean_state_dict``), e.g. DeiT's, LaPE's or timm's
  ``train.py``'s;
- another library's ViT, converted to the timm model that computes the same outputs
  (:mod:`pe_probe.models.foreign`): a torchvision ``VisionTransformer`` state dict, an open_clip / OpenAI CLIP
  state dict (whole model or visual tower), or a Hugging Face transformers folder (``config.json`` with
  ``model_type`` + ``model.safetensors`` or ``pytorch_model.bin``: ViT, DeiT, DINOv2).

Pickled files are read with timm's loader and ``torch.load(weights_only=True)``: tensors, plain containers and
``argparse.Namespace`` (training arguments) only. A file that needs any other global is refused before anything
is run. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import nn

from ..core.errors import CheckpointError, UnknownNameError
from ..core.rundir import RunDir
from ..models.limits import check_buildable
from .checkpoints import load_state_dict_checked

#: Suffixes of pickled (``torch.save``) checkpoint files.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar")
#: Where training checkpoints keep their weights, in the order timm's ``load_state_dict`` looks (EMA: with
#: ``use_ema`` only).
WEIGHT_KEYS = ("state_dict", "model")
EMA_KEYS = ("state_dict_ema", "model_ema")

#: LaPE (Yu et al., github.com/Ingrid725/LaPE) ``--join-type`` -> pe-probe preset. ``share`` adds the PE to the
#: residual stream before every block, which no pe-probe scheme computes.
LAPE_JOIN_TYPES = {"LaPE": "lape", "basic": "default"}
#: LaPE ``--pe`` values stored as an absolute ``pos_embed`` table (``2D_RPE`` is a relative bias: refused).
LAPE_TABLE_PES = ("learnable", "1D_sin", "2D_sin")


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_checkpoint` read and how it chose the model.

    Attributes:
        path: the checkpoint given (file or folder).
        format: ``run``, ``hub``, ``hf`` (a Hugging Face folder), ``safetensors`` or ``torch``.
        weights_file: the file the weights came from.
        weights_key: the entry of a training checkpoint that held them (``model``, ``model_ema``,
            ``state_dict``, ``state_dict_ema``), or None for a bare state dict.
        model: the timm model name; ``model_source`` says where it came from.
        model_kwargs: the constructor kwargs that were given or recorded (the model's own defaults aside).
        scheme: the resolved PE configuration of a pe_* model (``pe_mode`` and every knob), else None;
            ``scheme_source`` says how it was chosen.
        pos_embed_resampled: ``{"from": [h, w], "to": [h, w], "method": ...}`` when the PE was interpolated
            to another patch grid, else None.
        data: what the checkpoint says about its images: a run's ``config.json`` ``data`` (with its
            ``signature``), or ``img_size``/``in_chans``/``mean``/``std``/``crop_pct``/``interpolation`` from a
            hub config or LaPE's arguments; empty when nothing is recorded.
    """

    path: str
    format: str
    weights_file: str
    weights_key: str | None
    model: str
    model_source: str
    model_kwargs: dict
    scheme: dict | None
    scheme_source: str
    pos_embed_resampled: dict | None
    data: dict = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """The entries a probe report records about its checkpoint (``pe_probe.probe(..., meta=...)``)."""
        return {
            "checkpoint": self.path, "checkpoint_format": self.format, "weights_file": self.weights_file,
            "weights_key": self.weights_key, "model_source": self.model_source, "scheme": self.scheme,
            "scheme_source": self.scheme_source, "pos_embed_resampled": self.pos_embed_resampled,
        }


# ---------------------------------------------------------------------------------------------- key layout
def _ranges(xs: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2, 5"``."""
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(f"{start}-{x}" if x != start else f"{x}")
            start = None
    return ", ".join(out)


@dataclass(frozen=True)
class PELayout:
    """What a state dict's keys show about its PE scheme: which blocks have a PE LayerNorm (``pe_norm``),
    whether the Last LN has one (``last_pe_norm``), and whether there is a class token.

    The keys cannot show whether the PE is also added to the input, whether the chain is hierarchical, which
    PE feeds the Last LN (``last_ln_pe`` 0 or k) or whether a fixed table was sin-cos: those come from the
    preset (docs/probe.md).
    """

    depth: int
    pe_blocks: tuple[int, ...]
    last_pe: bool
    cls_token: bool

    @classmethod
    def of(cls, keys) -> "PELayout":
        """The layout of a state dict (or of its keys)."""
        keys = list(keys)
        blocks = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
        pe = sorted({int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.pe_norm\.", k))})
        return cls(len(blocks), tuple(pe), any(k.startswith("last_pe_norm.") for k in keys), "cls_token" in keys)

    def describe(self) -> str:
        """e.g. ``"pe_norm in blocks 0-11 of 12, no last_pe_norm, a cls_token"``."""
        pe = f"pe_norm in blocks {_ranges(self.pe_blocks)} of {self.depth}" if self.pe_blocks else "no pe_norm"
        return f"{pe}, {'a' if self.last_pe else 'no'} last_pe_norm, {'a' if self.cls_token else 'no'} cls_token"

    def fitting_kwargs(self) -> dict[str, Any] | None:
        """The preset and knobs of a pe_* model with these keys, or None when no scheme has them.

        No ``pe_norm``: ``default``; blocks 1..L-1: ``pvg`` (``mpvg`` with ``last_pe_norm``); blocks 0..L-1:
        ``lape`` (``mpvg`` with ``pe_layer0=True`` when there is a ``last_pe_norm``). ``last_pe_norm`` without
        any block PE: ``default`` with ``last_ln_pe=0``. ``global_pool``: ``token`` with a class token, else ``avg``.
        """
        blocks, depth = set(self.pe_blocks), self.depth
        if not blocks:
            out: dict[str, Any] = {"pe_mode": "default", **({"last_ln_pe": 0} if self.last_pe else {})}
        elif depth > 1 and blocks == set(range(1, depth)):
            out = {"pe_mode": "mpvg" if self.last_pe else "pvg"}
        elif blocks == set(range(depth)):
            out = {"pe_mode": "mpvg", "pe_layer0": True} if self.last_pe else {"pe_mode": "lape"}
        else:
            return None
        out["global_pool"] = "token" if self.cls_token else "avg"
        return out


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# ---------------------------------------------------------------------------------------------- reading files
def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _torch_load(file: Path) -> Any:
    """timm's checkpoint loader: ``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allowed
    beyond tensors and plain containers; any other global refuses the file before it is unpickled."""
    from timm.models._helpers import _torch_load as timm_torch_load

    from .checkpoints import check_zip_sizes, quiet_pickle_protocol, unreadable_protocol

    check_zip_sizes(file)  # declared storage sizes against the file's, before anything is inflated
    try:
        with quiet_pickle_protocol():
            return timm_torch_load(str(file), map_location="cpu", weights_only=True)
    except RuntimeError as exc:
        if "weights_only" not in str(exc):
            raise CheckpointError(f"{file} is corrupt or not a torch checkpoint ({str(exc).splitlines()[0][:120]})") \
                from None
        try:
            with quiet_pickle_protocol():
                unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
        except Exception:  # noqa: BLE001 - only the message depends on it
            unsafe = ""
        if not unsafe and (protocol := unreadable_protocol(file)):  # no code found, but a framed pickle
            raise CheckpointError(protocol) from None
        raise CheckpointError(
            f"{file} needs pickled objects other than tensors and argparse.Namespace ({unsafe or 'unknown globals'}); "
            "pe-probe never unpickles code, so nothing was loaded: save its state dict with "
            "torch.save(model.state_dict(), ...) or as .safetensors") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means the file is unreadable
        raise CheckpointError(unreadable_protocol(file) or
                              f"{file} is corrupt or not a torch checkpoint ({type(exc).__name__})") from None


def read_weights(file: Path, *, use_ema: bool) -> tuple[dict[str, torch.Tensor], str | None, dict]:
    """``(state dict, weights key or None, training arguments)`` of a weights file.

    The key: with ``use_ema`` the first of :data:`EMA_KEYS` present (none: :class:`CheckpointError`), else the
    first of :data:`WEIGHT_KEYS` (timm's order); a dict of tensors is itself the state dict. Unlike timm's
    ``load_state_dict`` the default is the trained weights, not EMA: what DeiT's and LaPE's evaluation score.
    The training arguments are the checkpoint's ``args`` (an ``argparse.Namespace`` or a dict) plus timm's
    ``arch``.
    """
    from timm.models import clean_state_dict

    name = file.name.lower()
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            ckpt: Any = load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{file} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") \
                from None
    elif name.endswith(TORCH_SUFFIXES):
        ckpt = _torch_load(file)
    else:
        raise CheckpointError(f"{file} is neither a run directory nor a checkpoint file pe-probe reads (a timm hub "
                              f"folder, .safetensors, {', '.join(TORCH_SUFFIXES)})")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{file} holds a {type(ckpt).__name__}, not a state dict or a checkpoint dict")
    key: str | None = None
    if use_ema:
        key = next((k for k in EMA_KEYS if ckpt.get(k) is not None), None)
        if key is None:
            raise CheckpointError(f"{file} has no EMA weights (no {' or '.join(EMA_KEYS)}); load it without --ema")
    elif not _is_state_dict(ckpt):
        key = next((k for k in WEIGHT_KEYS if isinstance(ckpt.get(k), dict)), None)
        ema = next((k for k in EMA_KEYS if ckpt.get(k) is not None), None)
        if key is None and ema is not None:
            raise CheckpointError(f"{file} holds only EMA weights ({ema}), no trained ones "
                                  f"({' or '.join(WEIGHT_KEYS)}): load them with --ema (use_ema=True)")
        if key is None:
            raise CheckpointError(f"{file} holds no weights pe-probe knows: top-level keys "
                                  f"{sorted(map(str, ckpt))[:8]}; expected a state dict, or a checkpoint with {', '.join(WEIGHT_KEYS + EMA_KEYS)}")
    sd = ckpt if key is None else ckpt[key]
    if not _is_state_dict(sd):
        raise CheckpointError(f"{file}: {key or 'the file'} is not a state dict (name -> tensor)")
    args = ckpt.get("args") if key is not None else None
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {}
    if key is not None and isinstance(ckpt.get("arch"), str):  # timm's train.py
        args.setdefault("model", ckpt["arch"])
    return dict(clean_state_dict(sd)), key, args


def _image_size(value: Any) -> tuple[int, int] | None:
    """An image size as recorded (``224``, ``[224, 224]``, ``(3, 224, 224)``) -> ``(H, W)``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(isinstance(v, int) for v in value):
        return (int(value[-2]), int(value[-1]))
    return None


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class _Source:
    """A checkpoint read but not yet built: weights plus what it records about its model."""

    format: str
    weights_file: Path
    state_dict: dict[str, torch.Tensor]
    weights_key: str | None
    model: str | None
    model_source: str
    kwargs: dict                   # recorded constructor kwargs (a hub folder's model_args, a run's model_kwargs)
    scheme_source: str | None      # how a recorded pe_mode was chosen (None: nothing recorded)
    trained_size: tuple[int, int] | None
    data: dict
    build: Callable[[str, dict], nn.Module]  # (model name, kwargs beyond the recorded ones) -> model


def _create(name: str, kwargs: dict) -> nn.Module:
    return timm.create_model(name, pretrained=False, **kwargs)


def _run_source(path: Path, model: str | None, use_ema: bool) -> _Source:
    from .evaluation import run_signature

    rd = RunDir(path)
    config = rd.read_config()
    if model:
        raise CheckpointError("a run directory names its own model; pass a model name only with a checkpoint file")
    if use_ema:
        raise CheckpointError(f"{path} is a pe-probe run: it holds one set of weights and no EMA; drop --ema")
    if not rd.weights_path.is_file():
        raise CheckpointError(f"{rd.weights_path} does not exist (the run has not finished an epoch yet)")
    sd, key, _ = read_weights(rd.weights_path, use_ema=False)
    recorded = dict(config["model_kwargs"])
    data = dict(config["data"])
    data["signature"] = run_signature(config).to_dict()
    return _Source("run", rd.weights_path, sd, key, config["model"], "the run's config.json", recorded,
                   "the run's config.json" if "pe_mode" in recorded else None,
                   _image_size(data.get("img_size")), data,
                   lambda name, extra: _create(name, {**recorded, **extra}))


def _hub_weights_file(path: Path) -> Path:
    """The weights file of a hub folder, in timm's order of preference (``local-dir:`` loading)."""
    from timm.models._hub import _EXT_PRIORITY, _PREFERRED_FILES

    for name in _PREFERRED_FILES:
        if (path / name).is_file():
            return path / name
    for ext in _EXT_PRIORITY:
        files = sorted(path.glob(f"*{ext}"))
        if files:
            return files[0]
    raise CheckpointError(f"{path} has a timm config.json but no weights file ({', '.join(_PREFERRED_FILES[:2])}, ...)")


def _is_hub_folder(path: Path) -> bool:
    """Whether ``path/config.json`` is a timm model config (``architecture``) rather than a pe-probe run's."""
    try:
        cfg = json.loads((path / RunDir.CONFIG).read_text())
    except (OSError, ValueError):
        return False  # reading it as a run gives the precise error
    return isinstance(cfg, dict) and "architecture" in cfg and "model_kwargs" not in cfg


def _hub_source(path: Path, model: str | None, use_ema: bool) -> _Source:
    from timm.models._hub import load_model_config_from_path

    try:
        pretrained_cfg, arch, model_args = load_model_config_from_path(path)
    except (KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path / 'config.json'} is not a timm model config ({type(exc).__name__}: {exc})") \
            from None
    if model and model != arch:
        raise CheckpointError(f"{path} names its own model in config.json ({arch}); drop --model {model}")
    file = _hub_weights_file(path)
    sd, key, _ = read_weights(file, use_ema=use_ema)
    model_args = dict(model_args or {})
    size = _image_size(model_args.get("img_size")) or _image_size(pretrained_cfg.get("input_size"))
    input_size = pretrained_cfg.get("input_size") or (model_args.get("in_chans", 3), *(size or (None, None)))
    data = {k: v for k, v in {
        "img_size": size[0] if size and size[0] == size[1] else (list(size) if size else None),
        "in_chans": input_size[0], "mean": list(pretrained_cfg["mean"]) if pretrained_cfg.get("mean") else None,
        "std": list(pretrained_cfg["std"]) if pretrained_cfg.get("std") else None,
        "crop_pct": pretrained_cfg.get("crop_pct"), "interpolation": pretrained_cfg.get("interpolation"),
    }.items() if v is not None}
    return _Source("hub", file, sd, key, arch, "the folder's config.json (architecture)", model_args,
                   "the folder's config.json (model_args)" if "pe_mode" in model_args else None, size, data,
                   lambda name, extra: timm.create_model(f"local-dir:{path}", pretrained=False, **extra))


def _lape_source(file: Path, sd: dict, key: str | None, args: dict, model: str | None) -> _Source:
    """A checkpoint written by LaPE's ``main.py``: its ``args`` name the DeiT, the join type and the PE."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from ..models import VARIANT_ARGS

    join, pe, lape_model = args.get("join_type"), args.get("pe", "learnable"), str(args.get("model", ""))
    if join == "share":
        raise CheckpointError(f"{file} is a LaPE checkpoint with join_type='share' (one PE added to the residual "
                              "stream before every block); no pe-probe scheme computes that")
    if join not in LAPE_JOIN_TYPES:
        raise CheckpointError(f"{file}: LaPE join_type={join!r} is not supported; supported: "
                              f"{', '.join(LAPE_JOIN_TYPES)}")
    if pe not in LAPE_TABLE_PES:
        raise CheckpointError(f"{file}: LaPE pe={pe!r} (a relative position bias, no absolute PE table) is not "
                              f"supported; supported: {', '.join(LAPE_TABLE_PES)}")
    if "distilled" in lape_model or "dist_token" in sd:
        raise CheckpointError(f"{file}: LaPE model {lape_model!r} is a distilled DeiT (distillation token and "
                              "head); pe-probe has no distilled variant")
    if model:
        name, name_source = model, "given"
    else:
        name, name_source = f"pe_{lape_model}", f"LaPE's args.model={lape_model!r}"
        if name not in VARIANT_ARGS:
            known = ", ".join(n[3:] for n in VARIANT_ARGS if n.startswith("pe_deit"))
            raise CheckpointError(f"{file}: LaPE model {lape_model!r} has no pe-probe counterpart (known: {known}); "
                                  "pass --model NAME to choose one")
    if "pos_embed" in sd and sd["pos_embed"].ndim == 2:  # pe=1D_sin stores an (N+1, D) table
        sd["pos_embed"] = sd["pos_embed"][None]
    kwargs: dict[str, Any] = {"pe_mode": LAPE_JOIN_TYPES[join]} if name in VARIANT_ARGS else {}
    size = _image_size(args.get("input_size"))
    if size is not None:
        kwargs["img_size"] = size[0] if size[0] == size[1] else list(size)
    # LaPE's evaluation transform (datasets.py): resize to input_size (bicubic) + centre crop, i.e. crop_pct 1.0,
    # with ImageNet statistics for every data set.
    data = {"img_size": kwargs.get("img_size"), "in_chans": 3, "mean": list(IMAGENET_DEFAULT_MEAN),
            "std": list(IMAGENET_DEFAULT_STD), "crop_pct": 1.0, "interpolation": "bicubic"}
    scheme_source = f"LaPE's args.join_type={join!r}" if "pe_mode" in kwargs else None
    return _Source("torch", file, sd, key, name, name_source, kwargs, scheme_source, size,
                   {k: v for k, v in data.items() if v is not None},
                   lambda n, extra: _create(n, {**kwargs, **extra}))


def _file_source(file: Path, model: str | None, use_ema: bool) -> _Source:
    sd, key, args = read_weights(file, use_ema=use_ema)
    fmt = "safetensors" if file.name.lower().endswith(".safetensors") else "torch"
    if (foreign := _foreign_file_source(file, sd, key, model, fmt)) is not None:
        return foreign
    if args.get("join_type") is not None:
        return _lape_source(file, sd, key, args, model)
    if model:
        name, name_source = model, "given"
    elif isinstance(args.get("model"), str):
        name, name_source = args["model"], "the checkpoint's args.model"
    else:
        raise CheckpointError(f"{file} does not name its model (no args.model); pass the timm model name with "
                              "--model NAME (load_checkpoint(path, model=...))")
    size = _image_size(args.get("input_size")) or _image_size(args.get("img_size"))
    # timm's train.py records its --model-kwargs (a dict) and, when given, --mean / --std in args
    recorded = dict(args["model_kwargs"]) if isinstance(args.get("model_kwargs"), dict) else {}
    if size:
        recorded["img_size"] = size[0] if size[0] == size[1] else list(size)
    data = {k: [float(v) for v in args[k]] for k in ("mean", "std") if isinstance(args.get(k), (list, tuple))}
    return _Source(fmt, file, sd, key, name, name_source, recorded, None, size, data,
                   lambda n, extra: _create(n, {**recorded, **extra}))


# ---------------------------------------------------------------------------------------------- other libraries
def _foreign_source(fmt: str, file: Path, foreign: Any, key: str | None, model: str | None, data: dict) -> _Source:
    """A converted torchvision / Hugging Face / open_clip ViT (:class:`pe_probe.models.foreign.Foreign`)."""
    from ..models.foreign import set_layer_norm_eps

    kwargs, size = dict(foreign.kwargs), foreign.kwargs["img_size"]
    source = foreign.described + "".join(f"; {n}" for n in foreign.notes)
    return _Source(fmt, file, foreign.state_dict, key, model or foreign.model, "given" if model else source, kwargs,
                   None, (size, size), {"img_size": size, "in_chans": kwargs.get("in_chans", 3), **data},
                   lambda n, extra: set_layer_norm_eps(_create(n, {**kwargs, **extra}), foreign.layer_norm_eps))


def _foreign_file_source(file: Path, sd: dict, key: str | None, model: str | None, fmt: str) -> _Source | None:
    """A state dict of a torchvision ``VisionTransformer`` or an open_clip / OpenAI CLIP visual tower, converted
    to timm's names (None for any other state dict). Neither records its head count (the standard size's, else
    width / 64: :func:`pe_probe.models.foreign.guess_heads`; ``--model-arg num_heads=N`` otherwise) nor, for
    CLIP, its activation (GELU; ``--model-arg act_layer=quick_gelu`` for OpenAI's weights)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from ..models import foreign

    if foreign.is_torchvision_vit(sd):
        return _foreign_source(fmt, file, foreign.from_torchvision(sd), key, model,
                               {"mean": list(IMAGENET_DEFAULT_MEAN), "std": list(IMAGENET_DEFAULT_STD)})
    if foreign.clip_prefix(sd) is not None:
        return _foreign_source(fmt, file, foreign.from_open_clip(sd), key, model,
                               {"mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)})
    return None


#: The weights files of a Hugging Face transformers folder, in ``from_pretrained``'s order.
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _hf_config(path: Path) -> dict | None:
    """``path/config.json`` when it is a Hugging Face transformers config (``model_type``, no run's
    ``model_kwargs``: :func:`pe_probe.core.rundir.foreign_config`), else None."""
    from ..core.rundir import FOREIGN_CONFIG_KEYS, foreign_config

    try:
        cfg = json.loads((path / RunDir.CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return cfg if foreign_config(cfg) == FOREIGN_CONFIG_KEYS["model_type"] else None


def _hf_source(path: Path, model: str | None, use_ema: bool) -> _Source:
    """A Hugging Face transformers folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, as
    ``save_pretrained`` writes it): ViT, DeiT, DINOv2; image statistics from ``preprocessor_config.json``."""
    from ..models.foreign import from_hf

    if use_ema:
        raise CheckpointError(f"{path} is a Hugging Face folder: it holds one set of weights and no EMA; drop --ema")
    cfg = _hf_config(path) or {}
    file = next((path / n for n in HF_WEIGHTS if (path / n).is_file()), None)
    if file is None:
        sharded = sorted(p.name for p in path.glob("*.index.json"))
        why = f" (sharded weights {sharded[0]} are not read)" if sharded else ""
        raise CheckpointError(f"{path} is a Hugging Face folder without {' or '.join(HF_WEIGHTS)}{why}")
    sd, key, _ = read_weights(file, use_ema=False)
    data: dict = {}
    try:
        pre = json.loads((path / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        pre = {}
    if isinstance(pre, dict):
        for ours, theirs in (("mean", "image_mean"), ("std", "image_std")):
            if isinstance(pre.get(theirs), list) and len(pre[theirs]) == 3:
                data[ours] = [float(v) for v in pre[theirs]]
    return _foreign_source("hf", file, from_hf(cfg, sd), key, model, data)


# ---------------------------------------------------------------------------------------------- building
def _pos_embed_grid(model: nn.Module, sd: dict, file: Path, resample: bool,
                    trained_size: tuple[int, int] | None) -> dict | None:
    """Check that the state dict's ``pos_embed`` is for the model's patch grid; with ``resample``, interpolate
    it with timm's ``resample_abs_pos_embed`` (bicubic). Returns what was resampled, or None."""
    from timm.layers import resample_abs_pos_embed

    pe, own = sd.get("pos_embed"), getattr(model, "pos_embed", None)
    patch_embed = getattr(model, "patch_embed", None)
    proj = sd.get("patch_embed.proj.weight")
    ph, pw = (int(v) for v in patch_embed.patch_size) if patch_embed is not None else (None, None)
    if patch_embed is not None and isinstance(proj, torch.Tensor) and proj.ndim == 4 and tuple(proj.shape[-2:]) != (ph, pw):
        # another patch size, not another image size: the knob that fits is patch_size (and the image size
        # that gives the checkpoint's grid with it)
        cp = tuple(int(v) for v in proj.shape[-2:])
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0))
        n = pe.shape[1] - prefix if isinstance(pe, torch.Tensor) and pe.ndim == 3 else 0
        side = math.isqrt(n) if n > 0 and math.isqrt(n) ** 2 == n else None
        fix = f"patch_size={cp[0] if cp[0] == cp[1] else list(cp)}"
        if side is not None and side * cp[0] != int(patch_embed.img_size[0]):
            fix += f" --model-arg img_size={side * cp[0]}"
        raise CheckpointError(
            f"{file} was trained with {cp[0]}x{cp[1]} patches (patch_embed.proj.weight), the model has {ph}x{pw}: "
            f"build it with the checkpoint's patch size (--model-arg {fix})")
    if (not isinstance(own, torch.Tensor) or pe is None or patch_embed is None or pe.ndim != 3
            or pe.shape == own.shape or pe.shape[-1] != own.shape[-1]):
        return None
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0))
    new = tuple(int(g) for g in patch_embed.grid_size)
    ph, pw = (int(p) for p in patch_embed.patch_size)
    n = pe.shape[1] - prefix
    old = None
    if trained_size is not None and (trained_size[0] // ph) * (trained_size[1] // pw) == n:
        old = (trained_size[0] // ph, trained_size[1] // pw)
    elif n > 0 and math.isqrt(n) ** 2 == n:
        old = (math.isqrt(n), math.isqrt(n))
    if old is None or old == new:
        return None  # not a patch grid of another size: the key check reports the shapes
    if not resample:
        fix = old[0] * ph if old[0] * ph == old[1] * pw else [old[0] * ph, old[1] * pw]
        raise CheckpointError(
            f"{file} holds a PE for a {old[0]}x{old[1]} patch grid ({old[0] * ph}x{old[1] * pw} px images), the "
            f"model has a {new[0]}x{new[1]} grid ({new[0] * ph}x{new[1] * pw} px): build the model at the "
            f"checkpoint's size (--model-arg img_size={fix}) or pass --resample-pos-embed "
            "(resample_pos_embed=True) to interpolate the PE to the model's grid")
    sd["pos_embed"] = resample_abs_pos_embed(pe, new_size=list(new), old_size=list(old), num_prefix_tokens=prefix)
    return {"from": list(old), "to": list(new), "method": "bicubic (timm resample_abs_pos_embed)"}


def load_checkpoint(
    path: str | os.PathLike,
    model: str | None = None,
    *,
    device: str | torch.device = "cpu",
    use_ema: bool = False,
    resample_pos_embed: bool = False,
    **model_kwargs: Any,
) -> tuple[nn.Module, CheckpointInfo]:
    """Load a checkpoint for probing: ``(model in eval mode, CheckpointInfo)``.

    ``path``: a pe-probe run directory, a timm hub-style folder, a Hugging Face transformers folder, or a
    ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` / ``.pth.tar`` file with a state dict or a training checkpoint
    (module docstring). torchvision, Hugging Face and open_clip ViTs load with no flags as the equivalent timm
    model (name and architecture read from the weights' shapes and the config; docs/probe.md).

    - **Model name**: ``model`` when given, else what the checkpoint records (a training checkpoint's
      ``args.model`` or ``arch``, a hub folder's ``architecture``, a run's ``config.json``); with neither a
      :class:`CheckpointError` asks for ``--model``. LaPE's checkpoints (``args.join_type``) become the matching
      ``pe_deit_*`` with its ``lape`` (``LaPE``) or ``default`` (``basic``) preset; ``share``, ``2D_RPE`` and
      distilled models are refused.
    - **PE scheme** of a pe_* model: ``pe_mode`` in ``model_kwargs``, else what the checkpoint records, else
      inferred from its keys (:meth:`PELayout.fitting_kwargs`). Keys that contradict the scheme (e.g.
      ``pe_norm`` layers loaded as ``default``, or into a timm ViT) raise an error naming the scheme that fits.
    - **Weights**: the trained weights (``model``/``state_dict``); ``use_ema=True`` takes ``model_ema`` /
      ``state_dict_ema`` (timm's ``load_state_dict`` would default to EMA).
    - **Image size**: a ``pos_embed`` for another patch grid is an error naming both grids, unless
      ``resample_pos_embed=True`` interpolates it (timm's ``resample_abs_pos_embed``).
    - ``model_kwargs`` override the recorded constructor kwargs (``img_size=...``, ``pe_mode=...``);
      ``num_classes`` defaults to the rows of ``head.weight``.

    Raises :class:`CheckpointError` / :class:`~pe_probe.core.errors.UnknownNameError` on bad input; a pickle
    that needs other globals than tensors and ``argparse.Namespace`` is refused before any of it runs.
    Nothing on disk is changed.
    """
    from ..models import VARIANT_ARGS

    if model is not None and not isinstance(model, str):
        raise ValueError(f"model={model!r} must be a timm model name (a string) or None")
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir():
        if not (path / RunDir.CONFIG).is_file():
            raise CheckpointError(f"{path} is neither a pe-probe run directory nor a timm hub folder (no "
                                  f"{RunDir.CONFIG})")
        src = (_hub_source(path, model, use_ema) if _is_hub_folder(path) else _hf_source(path, model, use_ema)
               if _hf_config(path) is not None else _run_source(path, model, use_ema))
    elif not path.is_file():  # a FIFO, a device or a link loop would block or fail the read
        raise CheckpointError(f"{path} is neither a folder nor a regular file")
    else:
        src = _file_source(path, model, use_ema)
    name = src.model
    if not timm.is_model(name):
        where = "" if src.model_source == "given" else f" (from {src.model_source}); pass --model NAME"
        raise UnknownNameError(f"unknown timm model {name!r}{where}")

    sd, user = src.state_dict, dict(model_kwargs)
    layout = PELayout.of(sd)
    extra = dict(user)
    is_pe = name in VARIANT_ARGS
    scheme_source = "not a pe-probe model"
    if is_pe:
        if "pe_mode" in user:
            scheme_source = f"pe_mode={user['pe_mode']!r} given"
        elif src.scheme_source is not None:
            scheme_source = src.scheme_source
        else:
            fit = layout.fitting_kwargs()
            if fit is None:
                raise CheckpointError(f"{src.weights_file}: the state dict has {layout.describe()}, which no "
                                      "pe-probe scheme has; pass pe_mode and knobs with --model-arg")
            extra = {**fit, **extra}
            scheme_source = (f"inferred from the state-dict keys ({layout.describe()}): {_kwargs_text(fit)}; "
                             "input add, hierarchy and the Last-LN PE source are the preset's")
    if "head.weight" in sd and "num_classes" not in user and "num_classes" not in src.kwargs:
        extra["num_classes"] = int(sd["head.weight"].shape[0])
    # recorded kwargs are untrusted and the user's may be mistyped: checked (no file-loading keywords, types,
    # a size the weights can match) before anything is built
    check_buildable(name, {**src.kwargs, **extra}, where=f"model kwargs for {src.weights_file}", error=CheckpointError,
                    weights_numel=sum(t.numel() for t in sd.values()))
    try:
        net = src.build(name, extra)
    except (TypeError, ValueError, KeyError, RuntimeError, AssertionError) as exc:
        raise CheckpointError(f"cannot build {name} with {_kwargs_text({**src.kwargs, **extra})}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    own = PELayout.of(net.state_dict())
    pe_differs = (own.pe_blocks, own.last_pe) != (layout.pe_blocks, layout.last_pe)
    if pe_differs or (is_pe and own.cls_token != layout.cls_token):
        fit = layout.fitting_kwargs()
        if is_pe:
            how = f"as pe_mode={net.pe_mode!r} ({scheme_source})"
            hint = f"{_kwargs_text(fit)} fits these keys (--model-arg)" if fit else "no pe-probe scheme has them"
        else:
            how = "(timm)"
            target = f"pe_{name}" if f"pe_{name}" in VARIANT_ARGS else "a pe_* model"
            hint = f"load it as {target} with {_kwargs_text(fit)}" if fit else "no pe-probe scheme has them"
        raise CheckpointError(f"{src.weights_file}: the state dict has {layout.describe()}, but {name} {how} has "
                              f"{own.describe()}; {hint}")
    resampled = _pos_embed_grid(net, sd, src.weights_file, resample_pos_embed, src.trained_size)
    load_state_dict_checked(net, sd, src.weights_file)
    pe_config = getattr(net, "pe_config", None)
    scheme = {"pe_mode": net.pe_mode, **dataclasses.asdict(pe_config)} if pe_config is not None else None
    info = CheckpointInfo(
        path=str(path), format=src.format, weights_file=str(src.weights_file), weights_key=src.weights_key,
        model=name, model_source=src.model_source, model_kwargs={**src.kwargs, **extra}, scheme=scheme,
        scheme_source=scheme_source, pos_embed_resampled=resampled, data=src.data,
    )
    return net.to(device).eval(), info
