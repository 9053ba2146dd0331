"""Safe file writes: nothing half-written is ever left at the destination, files follow the umask, and output
paths stay inside their output folder.

Every writer of pe_probe goes through :func:`atomic_path` (a temporary file beside the target, renamed onto it
only when complete). A process killed mid-write leaves only such a temporary file (``.NAME.XXXXXXXX.tmp``);
:func:`remove_stale_temps` removes them the next time a writer holds the folder's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import PEProbeError

#: Suffix of the temporary files of :func:`atomic_path`.
TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions of any new file under the process's umask (0644 under umask 022), not the
    0600 of a raw temporary file. A symlink at ``path`` is replaced, never written through.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files an interrupted :func:`atomic_path` left in ``directory`` (not recursive).

    Call it only while holding the folder's lock (:func:`pe_probe.core.locks.folder_lock` does), so that no
    running writer's temporary file is taken. Returns the removed paths.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.name.count(".") >= 3:
            try:
                if stat.S_ISREG(p.lstat().st_mode):
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:
                pass
    return removed


class UnsafePathError(PEProbeError, ValueError):
    """An output path would leave its output folder (``..``, an absolute name) or write through a symlink."""


def contained(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """``root / name``, checked: ``name`` is relative, has no ``..`` part, and no existing part of the path below
    ``root`` (nor the target itself) is a symlink, so a write there stays inside ``root``.

    Raises :class:`UnsafePathError` otherwise.
    """
    root = Path(root)
    rel = Path(name)
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts) or not rel.parts:
        raise UnsafePathError(f"output name {str(name)!r} must be a plain relative name inside {root}")
    current = root
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            raise UnsafePathError(f"{current} is a symbolic link; pe-probe does not write through links")
    return current
