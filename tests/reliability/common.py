"""Small fixtures for the reliability tests: tiny image folders, damaged image files, and ``pe-probe`` run in a
real subprocess (one torch thread, this checkout's code first on the path)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def make_folder(root: Path, classes=("a", "b"), n: int = 12, size: int = 8, splits=("train", "val")) -> Path:
    """``root/<split>/<class>/<i>.jpg``: tiny colour JPEGs, ``n`` per class and split."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:03d}.jpg")
    return root


def jpeg_bytes(size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20000) -> bytes:
    """A 100-byte PNG that claims ``side`` x ``side`` pixels (400 M at the default: over twice Pillow's limit)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


#: Damaged files by name: what each writes at a path (FIFO and loops are made by :func:`plant`).
DAMAGE = ("truncated", "text", "empty", "bomb", "fifo", "loop", "dirloop", "unreadable")


def plant(folder: Path, kind: str) -> Path:
    """Put one damaged file of ``kind`` (:data:`DAMAGE`) into class folder ``folder``; returns its path."""
    path = folder / f"bad_{kind}.jpg"
    if kind == "truncated":
        path.write_bytes(jpeg_bytes()[:200])
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "bomb":
        path = path.with_suffix(".png")
        path.write_bytes(bomb_png())
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        os.symlink(path.name, path)  # a link to itself
    elif kind == "dirloop":
        (folder / "deeper").mkdir()
        path = folder / "deeper" / "up"
        os.symlink("..", path)  # deeper/up -> folder: a folder inside itself
    elif kind == "unreadable":
        path.write_bytes(jpeg_bytes())
        path.chmod(0)
    else:
        raise ValueError(kind)
    return path


def env(**extra: str) -> dict:
    """The environment of a pe-probe subprocess: this checkout first on the path, one thread."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return out


def pe_probe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pe_probe", *map(str, args)]


def run_cli(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``pe-probe ARGS`` in a subprocess; returns the completed process (text output)."""
    return subprocess.run(pe_probe_cmd(*args), env=env(), capture_output=True, text=True, timeout=timeout, **kwargs)


def listing(root: Path) -> list[str]:
    """Every path under ``root`` (relative, sorted), without following links."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))
