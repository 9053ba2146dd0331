"""What a data set's images are before any resizing: their size, their channels and the number of classes.

A run records the signature of the data it was trained on (``config.json`` ``data.signature``); evaluating or
probing the run on data with another signature is refused (:func:`check_fits`), because the transforms would
otherwise resize and convert any image to the model's input and score it without a word (a 32-px colour
CIFAR model "evaluating" 8-px grey digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

from ..core.errors import DataError

#: PIL modes of one-channel images; everything else counts as colour.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"})

#: Image files opened (headers only) to find a folder's signature, spread evenly over the files.
SAMPLE_FILES = 64


@dataclass(frozen=True)
class DataSignature:
    """Image size ``(H, W)`` (None: the images differ in size, or it is not known), channels (1 grey,
    3 colour; None: not known) and number of classes (None: not known)."""

    size: tuple[int, int] | None
    channels: int | None
    num_classes: int | None

    def describe(self, no_size: str = "variable-size ") -> str:
        """e.g. ``"32x32 colour images, 10 classes"``; ``no_size`` stands for a size of None."""
        size = f"{self.size[0]}x{self.size[1]} " if self.size else no_size
        kind = {1: "grey ", 3: "colour "}.get(self.channels, "")
        classes = f"{self.num_classes} classes" if self.num_classes is not None else ""
        images = f"{size}{kind}images" if size or kind else ""
        return ", ".join(p for p in (images, classes) if p) or "any images"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"size": [H, W] | None, "channels": ..., "num_classes": ...}``."""
        return {"size": list(self.size) if self.size else None, "channels": self.channels,
                "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSignature":
        """The inverse of :meth:`to_dict`."""
        size = d.get("size")
        return cls(tuple(int(v) for v in size) if size else None, d.get("channels"), d.get("num_classes"))


def files_signature(paths: Sequence[str], num_classes: int | None) -> DataSignature:
    """The signature of image files: up to :data:`SAMPLE_FILES` of them, evenly spread, are opened (headers
    only; nothing is decoded)."""
    if not paths:
        return DataSignature(None, None, num_classes)
    step = max(1, len(paths) // SAMPLE_FILES)
    sizes, modes = set(), set()
    for p in list(paths)[::step][:SAMPLE_FILES]:
        try:
            with Image.open(p) as img:
                sizes.add((img.height, img.width))
                modes.add(img.mode)
        except (OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {p}: {exc}") from None
    size = next(iter(sizes)) if len(sizes) == 1 else None
    channels = 1 if modes <= GREY_MODES else 3
    return DataSignature(size, channels, num_classes)


def check_fits(expected: DataSignature, got: DataSignature, what: str,
               against: str = "the run was trained on") -> None:
    """Raise a one-line :class:`DataError` when ``got`` (the data about to be used, named ``what``) differs
    from ``expected`` (what the run was trained on; ``against`` says so in the message) in image size, channels
    or class count. Fields that are None in ``expected`` are not compared; a fixed expected size needs the same
    fixed size."""
    bad = []
    if expected.size is not None and got.size != expected.size:
        bad.append("image size")
    if expected.channels is not None and got.channels is not None and got.channels != expected.channels:
        bad.append("channels")
    if expected.num_classes is not None and got.num_classes is not None and got.num_classes != expected.num_classes:
        bad.append("class count")
    if bad:
        which = bad[0] if len(bad) == 1 else f"{', '.join(bad[:-1])} and {bad[-1]}"
        raise DataError(f"{what} does not fit the model ({which}): it has {got.describe()}; "
                        f"{against} {expected.describe(no_size='')}")
