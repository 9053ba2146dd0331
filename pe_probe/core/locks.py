"""One writer per folder: an exclusive lock (``fcntl.flock``) on a lock file inside the folder.

``train``, ``eval``, ``probe``, ``figures`` and ``reproduce`` hold the lock of every folder they write while
they write it. A second writer fails at once with :class:`FolderLockedError`, whose one-line message names the
holder (process id, command, start time); the lock is released when the holder exits, also when it is killed,
so a stale lock file never blocks anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import PEProbeError
from .io import remove_stale_temps

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


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the block; stale temporary files of
    interrupted writes in the folder are removed once the lock is held.

    ``what`` describes the holder in the message a second writer gets (default: this process's command line).
    Raises :class:`FolderLockedError` at once if another process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(f"{folder} is in use by {_holder(path)}; wait for it to finish") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "command": what or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        remove_stale_temps(folder)
        yield path
    finally:
        os.close(fd)  # releases the lock
