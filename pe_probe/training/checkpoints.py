"""Weights, resume states and loading: the torch side of a run directory (:class:`~pe_probe.core.rundir.RunDir`
knows the files and the JSON ones).

Every file is written atomically. ``state.pt`` holds only tensors and plain containers and is read with
``torch.load(weights_only=True)``; the weights are shared as safetensors. Nothing here unpickles code.
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import timm
import torch
from torch import nn

from ..core.errors import CheckpointError
from ..core.rundir import RunDir

STATE_FORMAT = 1


# ---------------------------------------------------------------------------------------------- writing
def save_weights(run: RunDir, model: nn.Module) -> None:
    """Write the model's state dict as the run's ``model.safetensors``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with run.atomic(RunDir.WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def save_state(run: RunDir, state: dict) -> None:
    """Write the run's resume state ``state.pt``."""
    with run.atomic(RunDir.STATE) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)


def load_state(run: RunDir) -> dict | None:
    """The resume state, or None when the run has not saved one yet; :class:`CheckpointError` if corrupt."""
    path = run.state_path
    if not path.exists():
        return None
    if not path.is_file():  # a FIFO or a device would block the read
        raise CheckpointError(f"{path} is not a regular file")
    check_zip_sizes(path)
    try:
        with quiet_pickle_protocol():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means a corrupt file
        raise CheckpointError(unreadable_protocol(path) or
                              f"{path} is corrupt or not a pe-probe resume state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a pe-probe resume state (format {STATE_FORMAT})")
    return state


#: The warning torch's weights_only unpickler gives for every pickle protocol but 2 (torch.save's default), on a
#: file it loads and on one it refuses alike: it says nothing about the file, so pe-probe's loaders silence it.
PROTOCOL_WARNING = r"Detected pickle protocol \d+ in the checkpoint"


@contextlib.contextmanager
def quiet_pickle_protocol() -> Iterator[None]:
    """Silence exactly torch's :data:`PROTOCOL_WARNING` inside the block (around a ``weights_only`` load)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PROTOCOL_WARNING, category=UserWarning)
        yield


def pickle_protocol(path: Path) -> int | None:
    """The pickle protocol of a torch checkpoint (its ``data.pkl`` in a zip, else the file's first pickle), or
    None when it is not a pickle; read from its first two bytes, nothing is unpickled."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"), None)
                if name is None:
                    return None
                with z.open(name) as f:
                    head = f.read(2)
        else:
            with open(path, "rb") as f:
                head = f.read(2)
    except (OSError, zipfile.BadZipFile, ValueError, NotImplementedError):
        return None
    return head[1] if len(head) == 2 and head[0] == 0x80 else None  # PROTO opcode, then the protocol


def unreadable_protocol(path: Path) -> str | None:
    """The one-line reason a failed ``weights_only`` load of ``path`` failed when it is the pickle protocol (4
    or 5: framed pickles, which torch's weights_only unpickler does not read), else None."""
    protocol = pickle_protocol(path)
    if protocol is None or protocol < 4:
        return None
    return (f"{path} is a pickle of protocol {protocol}, which torch's weights_only loader cannot read, so nothing "
            "of it was loaded or run (pe-probe unpickles no other way): re-save it with torch.save's default "
            "protocol, or as .safetensors")


#: A torch zip may declare at most this many times its size on disk (plus :data:`ZIP_SLACK` bytes) of tensor data:
#: ``torch.save`` stores tensors uncompressed, so more means compressed storages (a zip bomb).
ZIP_FACTOR, ZIP_SLACK = 2, 1 << 20


def check_zip_sizes(path: Path, max_bytes: int | None = None) -> None:
    """Refuse a torch zip checkpoint whose tensor entries declare more bytes than ``ZIP_FACTOR`` times the
    file (or than ``max_bytes``), from the zip's directory alone: nothing is unpickled or inflated. Other files
    (a legacy pickle, safetensors) pass: their reader allocates no more than the file holds."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            declared = sum(i.file_size for i in z.infolist() if "/data/" in f"/{i.filename}")
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or not a torch checkpoint ({type(exc).__name__})") from None
    size = path.stat().st_size
    limit = ZIP_FACTOR * size + ZIP_SLACK if max_bytes is None else min(max_bytes, ZIP_FACTOR * size + ZIP_SLACK)
    if declared > limit:
        raise CheckpointError(f"{path} declares {declared / 2**20:.0f} MiB of tensors in a {size / 2**20:.1f} MiB "
                              "file (compressed storages, as in a zip bomb); refused before reading it")


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict:
    """This process's Python, NumPy and torch (CPU and CUDA) random states, as weights-only-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Run:
    """A run directory loaded back: the model in eval mode and the run's records.

    Attributes:
        run_dir: the directory.
        model: the rebuilt model with the saved weights, in eval mode.
        config: ``config.json`` as a dict.
        summary: ``summary.json`` as a dict, or None if training did not complete.
        data_config: timm-style data config: ``input_size`` (C, H, W), ``mean``, ``std``, ``interpolation``,
            ``crop_pct``, plus ``dataset``.
        metrics: the per-epoch records of ``metrics.jsonl``.
    """

    run_dir: Path
    model: nn.Module
    config: dict
    summary: dict | None
    data_config: dict
    metrics: list[dict] = field(default_factory=list)


def build_model_from_config(config: dict, *, weights_numel: int | None = None,
                            where: str = "config.json model_kwargs") -> nn.Module:
    """A freshly initialised model of the architecture ``config`` describes.

    ``config`` is untrusted: its kwargs are checked (:func:`pe_probe.models.limits.check_buildable`: no keywords
    that load files or download, known keys and types, a size this machine holds and, with ``weights_numel``,
    one the weights file can match) before anything is allocated.
    """
    import pe_probe.models  # noqa: F401  (registers the pe_* variants)
    from ..models.limits import check_buildable

    name = config["model"]
    if not timm.is_model(name):
        raise CheckpointError(f"the run's model {name!r} is not a registered timm model")
    kwargs = check_buildable(name, config["model_kwargs"], where=where, error=CheckpointError,
                             weights_numel=weights_numel)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot rebuild {name} from config.json: {msg}") from None


def weights_file_numel(path: Path) -> int:
    """How many numbers a safetensors file holds, from its header alone (nothing is loaded)."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (the run has not finished an epoch yet)")
    try:
        with safe_open(str(path), "pt") as f:
            return sum(int(np.prod(f.get_slice(k).get_shape(), dtype=np.int64)) for k in f.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load ``model.safetensors`` into ``model``; :class:`CheckpointError` if corrupt or for another model."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (the run has not finished an epoch yet)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    load_state_dict_checked(model, tensors, path)


def load_state_dict_checked(model: nn.Module, tensors: dict[str, torch.Tensor], source: Any) -> None:
    """``model.load_state_dict(tensors)``, turning any mismatch into one-line :class:`CheckpointError`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shape = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    # a float parameter from integer (or bool) numbers is another file's tensor, not these weights
    kind = sorted(k for k in set(own) & set(tensors) if own[k].is_floating_point() != tensors[k].is_floating_point()
                  or own[k].is_complex() != tensors[k].is_complex())
    if missing or extra or shape or kind:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if extra:
            parts.append(f"unexpected {extra[:3]}")
        if shape:
            k = shape[0]
            parts.append(f"shape of {k} is {tuple(tensors[k].shape)}, model has {tuple(own[k].shape)}")
        if kind:
            k = kind[0]
            parts.append(f"{k} is {str(tensors[k].dtype).removeprefix('torch.')}, model has "
                         f"{str(own[k].dtype).removeprefix('torch.')}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(tensors)


def load_run(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> Run:
    """Load a run directory: rebuild the model from ``config.json`` and load ``model.safetensors``.

    Raises :class:`~pe_probe.core.errors.CheckpointError` when the directory, its config or its weights are
    missing, corrupt, or do not fit the architecture.
    """
    rd = RunDir(run_dir)
    config = rd.read_config()
    model = build_model_from_config(config, weights_numel=weights_file_numel(rd.weights_path),
                                    where=f"{rd.config_path} model_kwargs")
    load_weights(model, rd.weights_path)
    model.to(device).eval()
    return Run(run_dir=rd.path, model=model, config=config, summary=rd.read_summary(),
               data_config=rd.data_config(config), metrics=rd.read_metrics())


def load_model(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run directory, in eval mode (see :func:`load_run`)."""
    return load_run(run_dir, device=device).model
