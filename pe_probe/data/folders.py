"""Data sets read from disk: torchvision's CIFAR-10/100 and ImageNet-style image folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from ..core.errors import DataError
from ..core.vocab import SPLITS
from .scan import IMAGE_EXTENSIONS, check_folder_images, list_images

#: Fraction of each class held out for validation when an image folder has no ``val/`` split.
FOLDER_VAL_FRACTION = 0.1
FOLDER_SPLIT_SEED = 0

_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def build_cifar(name: str, data_dir: Path, *, train: bool, transform: Callable, download: bool) -> Dataset:
    """torchvision's CIFAR-10/100 under ``data_dir`` (the folder holding ``cifar-10-batches-py/``).

    torchvision checks each file's MD5 against the official release before reading it, so only the
    genuine CIFAR files are ever unpickled.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    if not download and not (data_dir / _CIFAR_DIRS[name]).is_dir():
        raise DataError(
            f"{name} not found: {data_dir} has no {_CIFAR_DIRS[name]}/ folder; "
            "pass --download (download=True) to fetch it"
        )
    try:
        ds = cls(root=str(data_dir), train=train, transform=transform, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"{name} in {data_dir} is incomplete or corrupt ({exc}); pass --download to fetch it") from None
    ds.num_classes = len(ds.classes)
    return ds


class _Loader:
    """Open an image file and convert it to ``mode`` (a class, so data-loader workers can pickle it). The files
    were checked when the data set was built; one that broke since raises a one-line :class:`DataError`."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Image.Image:
        try:
            with open(path, "rb") as f:
                return Image.open(f).convert(self.mode)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise DataError(f"cannot read image {path} (it changed after the data set was checked?): "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


class _CheckedImageFolder(ImageFolder):
    """torchvision's ``ImageFolder`` whose file list is walked without following symbolic-link loops and whose
    every file is checked (:mod:`pe_probe.data.scan`) before the data set exists; ``bad`` maps the files left
    out (``skip_bad``) to why."""

    def __init__(self, root: str, *, skip_bad: bool, **kwargs) -> None:
        self.skip_bad = skip_bad
        self.bad: dict[str, str] = {}
        super().__init__(root, **kwargs)

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples, walk_bad = list_images(directory, sorted(class_to_idx, key=class_to_idx.get))
        samples, self.bad = check_folder_images(samples, walk_bad, directory, skip_bad=self.skip_bad)
        empty = sorted(set(class_to_idx) - {Path(p).relative_to(directory).parts[0] for p, _ in samples})
        if empty:
            raise DataError(f"no readable image in class folder(s) {', '.join(empty[:5])} of {directory} "
                            f"(image files end in {', '.join(IMAGE_EXTENSIONS)})")
        return samples


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())




def folder_layout(data_dir: Path) -> str:
    """``"train+val"`` (ImageNet layout), ``"train"`` or ``"val"`` (one of the two), ``"plain"`` (a folder of
    class folders) or ``"none"``."""
    tr, va = _has_class_folders(data_dir / "train"), _has_class_folders(data_dir / "val")
    if tr or va:
        return "train+val" if tr and va else ("train" if tr else "val")
    if (data_dir / "train").exists() or (data_dir / "val").exists():
        return "none"  # train/ or val/ without class folders: not a folder of classes named "train"
    return "plain" if _has_class_folders(data_dir) else "none"


def split_root(data_dir: Path, split: str) -> tuple[Path, str]:
    """Where ``split`` of an image folder comes from: ``(folder of class folders, part)`` with part ``"all"``
    (every image of that folder) or ``"train"``/``"val"`` (the fixed per-class 90/10 split of it).

    - ``train/`` and ``val/``: train -> ``train/``, val -> ``val/``; ``all`` is refused (pick one).
    - ``train/`` alone, or a plain folder of class folders: train / val -> its 90 % / 10 % per class,
      ``all`` -> every image.
    - ``val/`` alone: val and all -> ``val/``; train is refused (there is nothing to train on).
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is unknown; valid: {', '.join(SPLITS)}")
    layout = folder_layout(data_dir)
    if layout == "none":
        raise DataError(f"{data_dir} holds no class folders (expected train/<class>/ and val/<class>/, or <class>/)")
    if layout == "train+val":
        if split == "all":
            raise DataError(f"{data_dir} has train/ and val/; split 'all' reads a plain folder of class folders: "
                            "choose --split val or train (or point --data-dir at one folder of classes)")
        return data_dir / split, "all"
    if layout == "val":
        if split == "train":
            raise DataError(f"{data_dir} has val/ but no train/ to take a train split from")
        return data_dir / "val", "all"
    root = data_dir / "train" if layout == "train" else data_dir
    return root, split


def default_split(name: str, data_dir: str | os.PathLike | None, *, own: bool) -> str:
    """The split an evaluation or a probe reads when none is named: ``"all"`` for a plain folder of class
    folders that is not the run's own training data (a user's test set: every image counts), else ``"val"``."""
    if name == "imagefolder" and data_dir is not None and not own:
        path = Path(data_dir).expanduser()
        if path.is_dir() and folder_layout(path) == "plain":
            return "all"
    return "val"


def describe_split(name: str, data_dir: str | os.PathLike | None, split: str) -> str:
    """What ``split`` reads, in words (for messages and printed results)."""
    if name != "imagefolder" or data_dir is None:
        return {"train": "the training split", "val": "the validation split"}.get(split, split)
    try:
        root, part = split_root(Path(data_dir).expanduser(), split)
    except DataError:
        return split
    if part == "all":
        return f"every image in {root}"
    pct = round(100 * (1 - FOLDER_VAL_FRACTION)) if part == "train" else round(100 * FOLDER_VAL_FRACTION)
    return f"{pct}% of each class of {root} ({'held out from' if part == 'val' else 'used for'} training)"


def reads_training_images(run_data: dict, name: str, data_dir: str | os.PathLike | None, split: str) -> bool:
    """Whether ``split`` of data set ``name`` in ``data_dir`` contains images the run (``config.json``'s
    ``data``) was trained on."""
    run_name, run_dir = run_data.get("dataset"), run_data.get("data_dir")
    if name != "imagefolder" or run_name != "imagefolder":
        same_dir = data_dir is None or run_dir is None or _same(data_dir, run_dir)
        return name == run_name and same_dir and split == "train"
    if data_dir is None or run_dir is None:
        return False
    try:
        tr_root, tr_part = split_root(Path(run_dir).expanduser(), "train")
        ev_root, ev_part = split_root(Path(data_dir).expanduser(), split)
    except DataError:
        return False
    tr_root, ev_root = tr_root.resolve(), ev_root.resolve()
    if tr_root == ev_root:
        return not (tr_part == "train" and ev_part == "val")
    return tr_root.is_relative_to(ev_root) or ev_root.is_relative_to(tr_root)


def _same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def folder_image_size(data_dir: str | os.PathLike | None) -> int | None:
    """The side in pixels of the training images of an image folder (the longer side; None when the sampled
    images differ in size or the folder cannot be read: building the data set then reports the problem).
    Opens at most :data:`~pe_probe.data.signature.SAMPLE_FILES` image headers, spread over the classes."""
    from .signature import SAMPLE_FILES, files_signature

    if data_dir is None:
        return None
    try:
        root, _ = split_root(Path(data_dir).expanduser(), "train")
        classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        per_class = max(1, SAMPLE_FILES // max(1, len(classes)))
        paths = []
        for c in classes[:SAMPLE_FILES]:
            files = sorted(f for f in c.iterdir() if f.name.lower().endswith(IMAGE_EXTENSIONS) and f.is_file())
            paths.extend(str(f) for f in files[:per_class])
        size = files_signature(paths, None).size
    except (DataError, OSError):
        return None
    return None if size is None else max(size)


#: Folder names that mark a data-set root (its splits), never a class: a class folder with one of these names,
#: or holding one, means ``--data-dir`` points above the data set's root.
SPLIT_FOLDER_NAMES = ("train", "val", "test", "validation")


def check_class_folders(root: Path) -> None:
    """:class:`DataError` (one line, naming the folder to use instead) unless ``root``, the folder of class
    folders a split reads, holds at least two classes that look like classes: fewer than two
    would train to 100 % on one label, and class folders named or holding ``train/``, ``val/``, ... are data-set
    roots, so ``--data-dir`` is one level too high."""
    classes = class_folders(root)
    roots = [c for c in classes if c.lower() in SPLIT_FOLDER_NAMES
             or any((root / c / s).is_dir() for s in SPLIT_FOLDER_NAMES)]
    if roots:
        hint = root / roots[0] if roots[0].lower() not in SPLIT_FOLDER_NAMES else root
        raise DataError(f"{root}: class folder(s) {', '.join(roots[:3])} look like a data set's root (train/ or val/ "
                        f"inside, or named so), not a class: is --data-dir one level too high? (try {hint})")
    if len(classes) < 2:
        what = f"one class folder ({classes[0]})" if classes else "no class folder"
        inner = root / classes[0] if classes else root
        deeper = inner.is_dir() and any(e.is_dir() for e in os.scandir(inner))
        raise DataError(f"{root} holds {what}: a classifier needs at least two classes; point --data-dir at the "
                        "folder whose subfolders are the classes" + (f" (try {inner})" if deeper else ""))


def build_imagefolder(
    data_dir: Path, *, split: str, transform: Callable, in_chans: int, skip_bad: bool = False
) -> Dataset:
    """ImageNet layout (``data_dir/train/<class>/*``, ``data_dir/val/<class>/*``) or one folder of classes.

    ``split`` is ``train``, ``val`` or ``all`` (see :func:`split_root`). A single folder of class subfolders
    (or a ``train/`` without ``val/``) is split per class with a fixed seed: ``FOLDER_VAL_FRACTION`` of each
    class goes to validation, always the same files; ``all`` reads every image. ``train/`` and ``val/`` must
    hold the same class folders, at least two (:func:`check_class_folders`). Every image file is checked first (:mod:`pe_probe.data.scan`): a file that
    is not a regular file or does not decode raises :class:`~pe_probe.data.scan.BadImagesError` naming it,
    or with ``skip_bad`` is left out (the data set's ``bad`` maps each to why). The data set has
    ``num_classes``, ``classes``, ``bad`` and ``signature`` (:class:`~pe_probe.data.signature.DataSignature`).
    """
    from .signature import files_signature

    loader = _Loader("L" if in_chans == 1 else "RGB")
    root, part = split_root(data_dir, split)
    check_class_folders(root)
    if folder_layout(data_dir) == "train+val":
        check_same_classes(data_dir)
    try:
        ds = _CheckedImageFolder(str(root), transform=transform, loader=loader, skip_bad=skip_bad)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"no images found under {root}: {str(exc).splitlines()[0]}") from None
    num_classes, bad = len(ds.classes), ds.bad
    paths = [p for p, _ in ds.samples]
    if part != "all":
        idx = _split_indices(ds.targets, part == "train")
        sub = Subset(ds, idx)
        sub.classes, sub.targets = ds.classes, [ds.targets[i] for i in idx]
        paths = [paths[i] for i in idx]
        ds = sub
    if len(ds) == 0:
        raise DataError(f"the {split} split of {data_dir} is empty")
    ds.num_classes = num_classes
    ds.bad = bad
    ds.signature = files_signature(paths, num_classes)
    return ds


def class_folders(folder: Path) -> list[str]:
    """The class names of a folder of class folders, as torchvision's ``ImageFolder`` finds them."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def check_same_classes(data_dir: Path) -> None:
    """:class:`DataError` unless ``data_dir/train`` and ``data_dir/val`` hold the same class folders (a label
    is a class folder's index, so any difference gives the same label to different classes)."""
    train, val = class_folders(data_dir / "train"), class_folders(data_dir / "val")
    if train != val:
        only_t, only_v = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        parts = [f"only in train/: {', '.join(only_t[:5])}" if only_t else "",
                 f"only in val/: {', '.join(only_v[:5])}" if only_v else ""]
        detail = "; ".join(p for p in parts if p) or "the same names in another order"
        raise DataError(f"{data_dir}: train/ has {len(train)} class folders and val/ has {len(val)}, not the same "
                        f"ones ({detail}); labels would mean different classes in each")


def _split_indices(targets: list[int], train: bool) -> list[int]:
    """Deterministic per-class split: the same files go to validation on every machine."""
    rng = np.random.default_rng(FOLDER_SPLIT_SEED)
    targets_a = np.asarray(targets)
    keep: list[int] = []
    for c in np.unique(targets_a):
        members = np.flatnonzero(targets_a == c)
        members = members[rng.permutation(len(members))]
        n_val = max(1, int(round(FOLDER_VAL_FRACTION * len(members)))) if len(members) > 1 else 0
        keep.extend((members[n_val:] if train else members[:n_val]).tolist())
    return sorted(keep)


def check_data_dir(name: str, data_dir: str | os.PathLike | None, *, download: bool) -> Path:
    """``data_dir`` as a Path; :class:`DataError` if it is missing, not a folder or empty."""
    if data_dir is None:
        raise DataError(f"dataset {name!r} needs a data directory (--data-dir)")
    path = Path(data_dir).expanduser()
    if download and name != "imagefolder":
        path.mkdir(parents=True, exist_ok=True)
        return path
    if not path.exists():
        raise DataError(f"data directory {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data directory {path} is not a directory")
    if not any(path.iterdir()):
        raise DataError(f"data directory {path} is empty")
    return path
