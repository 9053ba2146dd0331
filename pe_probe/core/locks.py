"""One writer per folder: an exclusive lock (``fcntl.flock``) on a lock file inside the folder.

``train``, ``eval``, ``probe``, ``ablate``, ``attribute``, ``attention``, ``figures`` and ``reproduce`` hold the
lock of every folder they write while they write it. A second writer fails at once with
:class:`FolderLockedError`, whose one-line message names the holder (process id, command, start time). The lock is
released when the holder exits, also when it is killed, so a stale lock file never blocks anyone; a holder that
finishes removes the lock file, so only a killed one leaves it behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .errors import PEProbeError
from .io import remove_stale_temps

F = TypeVar("F", bound=Callable[..., Any])

#: The lock file inside a locked folder.
LOCK_FILE = ".pe-probe.lock"


class FolderLockedError(PEProbeError, RuntimeError):
    """Another pe-probe process is writing this folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"process {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('command', '?')}, since {when})"


def _command() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    name = "pe-probe" if name in ("__main__.py", "pe-probe") else name
    return " ".join([name, *sys.argv[1:]])[:200]


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the block; stale temporary files of
    interrupted writes in the folder are removed once the lock is held. A folder this call created is removed
    again at the end if nothing was written to it (a command that failed before writing leaves no folder).

    ``what`` describes the holder in the message a second writer gets (default: this process's command line).
    Raises :class:`FolderLockedError` at once if another process holds it. Taking a lock this process already
    holds (an API call inside a command that locked the same folder) is allowed and does nothing.
    """
    folder = Path(folder)
    created = _missing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    key = os.path.realpath(folder)
    if _held.get(key):  # this process holds it already (a command that locks, calling an API that locks)
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    fd = _acquire(folder, path)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": what or _command()}
        with contextlib.suppress(OSError):  # a full disk: the lock holds without its holder's line (and is removed)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        remove_stale_temps(folder)
        _held[key] = 1
        try:
            yield path
        finally:
            _held.pop(key, None)
            with contextlib.suppress(OSError):
                os.unlink(path)  # still locked: whoever opened this file before now finds it gone and retries
            for made in created:  # folders this call created and nothing was written to: leave no trace
                try:
                    made.rmdir()
                except OSError:
                    break
    finally:
        os.close(fd)  # releases the lock


def _missing(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, innermost first (what ``mkdir(parents=True)`` makes)."""
    out = []
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        out.append(p)
    return out


def _acquire(folder: Path, path: Path) -> int:
    """An open, exclusively locked descriptor of the lock file ``path`` (the one at that path now)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except FileNotFoundError:  # a previous holder removed the (empty) folder it had created
            folder.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderLockedError(f"{folder} is in use by {_holder(path)}; wait for it to finish") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed this file after we opened it: lock the one there now


#: Folders this process holds the lock of (real path -> nesting depth): taking a held lock again is free.
_held: dict[str, int] = {}


def locked_on(param: str) -> Callable[[F], F]:
    """Decorator: run the function holding the lock (:func:`folder_lock`) of the folder its argument ``param``
    names, e.g. ``@locked_on("out")``."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with folder_lock(sig.bind(*args, **kwargs).arguments[param]):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
