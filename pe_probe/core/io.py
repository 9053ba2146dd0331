"""Safe file writes: nothing half-written is ever left at the destination, files follow the umask, and output
paths stay inside their output folder.

Every writer of pe_probe goes through :func:`atomic_path` (a temporary file beside the target, renamed onto it
only when complete). A process killed mid-write leaves only such a temporary file
(``.NAME.pe-probe-XXXXXXXX.tmp``, a name no user file has; a render's temporary folder is named the same way);
:func:`remove_stale_temps` removes them (and only them) the next time a writer holds the folder's lock. A write that fails for lack of space or a file-size limit,
also inside torch or safetensors, raises an ``OSError`` naming the destination (``No space left on device:
PATH``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import PEProbeError

#: Suffix of the temporary files of :func:`atomic_path`.
TEMP_SUFFIX = ".tmp"
#: What follows ``.NAME.`` in the name of every temporary file of :func:`atomic_path` (before its random part).
TEMP_MARK = "pe-probe-"


def is_temp(name: str) -> bool:
    """Whether ``name`` is the name of a temporary file of :func:`atomic_path` (``.NAME.pe-probe-XXXXXXXX.tmp``)."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    stem = name[1:-len(TEMP_SUFFIX)]
    _, dot, rand = stem.rpartition("." + TEMP_MARK)
    return bool(dot) and len(rand) >= 8 and rand.isascii() and all(c.isalnum() or c == "_" for c in rand)


#: Messages of a failed write inside torch's or safetensors' writers, mapped to the errno they stand for.
_WRITE_FAILURES = (("no space left", errno.ENOSPC), ("os error 28", errno.ENOSPC), ("file too large", errno.EFBIG),
                   ("os error 27", errno.EFBIG))


def _write_error(exc: BaseException, path: Path, tmp: Path | None = None) -> OSError | None:
    """The ``OSError`` naming ``path`` that a failed write ``exc`` stands for, or None if it is not one.

    An ``OSError`` without a file name (or naming the temporary file) gets ``path``; a RuntimeError of torch's
    zip writer (``unexpected pos``, a short write) or safetensors' ``SafetensorError`` becomes ENOSPC / EFBIG
    from its text, or from the free space and the file-size limit when the text does not say."""
    if isinstance(exc, OSError):
        if exc.errno is None or exc.filename not in (None, str(tmp)):
            return None
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    text = str(exc).lower()
    code = next((c for needle, c in _WRITE_FAILURES if needle in text), None)
    if code is None and ("unexpected pos" in text or "error while serializing" in text):
        code = errno.ENOSPC if _disk_full(path.parent) else errno.EFBIG if _size_limited() else None
    return None if code is None else OSError(code, os.strerror(code), str(path))


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def _size_limited() -> bool:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return soft != resource.RLIM_INFINITY


def usable_tempdir() -> None:
    """Let :func:`tempfile.gettempdir` answer under a file-size limit (``ulimit -f 0``).

    Python's search writes a 4-byte probe file into each candidate folder and gives up when the write fails, so
    under a zero limit every ``import torch`` (which asks for the folder at import time) raises "No usable
    temporary directory". When the limit is set, the first writable candidate is taken without the probe: the
    write that then fails is pe-probe's own, and it names its file (``File too large: PATH``).
    """
    import tempfile

    try:
        tempfile.gettempdir()
    except OSError:
        if not _size_limited():
            raise
        for cand in tempfile._candidate_tempdir_list():  # noqa: SLF001 - the same candidates, in the same order
            if os.path.isdir(cand) and os.access(cand, os.W_OK | os.X_OK):
                tempfile.tempdir = cand
                return
        raise


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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_MARK}", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise (_write_error(exc, path) or exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except Exception as exc:
        named = _write_error(exc, path, tmp_path)
        if named is None:
            raise
        raise named from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """``json.dumps``'s ``default`` for pe-probe's files: paths as strings, tuples as lists, scalars with an
    ``item()`` (numpy, torch) as plain numbers; anything else raises ``TypeError``. A report's id hashes its
    metadata through it, as ``meta.json`` holds it."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted writer left in ``directory``: the temporary files of :func:`atomic_path` and
    the temporary folders named the same way (a killed render's, :func:`pe_probe.figures.render_all`), with
    their contents; symlinks and every other name are kept. Not recursive otherwise.

    Call it only while holding the folder's lock (:func:`pe_probe.core.locks.folder_lock` does), so that no
    running writer's temporary file is taken. Returns the removed paths.
    """
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if is_temp(p.name):
            try:
                mode = p.lstat().st_mode
                if stat.S_ISREG(mode):
                    p.unlink()
                elif stat.S_ISDIR(mode):
                    shutil.rmtree(p)
                else:
                    continue
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
