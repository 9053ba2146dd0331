"""Signals: SIGTERM (what ``kill``, ``timeout``, schedulers and containers send) handled like Ctrl-C, and worker
processes that die with the process that started them.

- :class:`Terminated` is a :class:`KeyboardInterrupt`, so every clean-up that runs on Ctrl-C (a fresh run that
  saved nothing removes what it wrote, temporary files go, locks are released) runs on SIGTERM too.
- :func:`terminate_as_interrupt` turns SIGTERM into :class:`Terminated` while a command runs (the CLI's ``main``),
  and remembers it (and Ctrl-C) so that one swallowed where it was raised is raised again
  (:func:`raise_if_interrupted`).
- :func:`worker_init` is the initializer of every worker process pe-probe starts (``reproduce --jobs N``): the
  worker gets SIGTERM as soon as its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and SIGTERM is
  :class:`Terminated` there too.

No torch: this is the core floor.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator

#: Exit code of a command stopped by SIGTERM (128 + 15, what a shell reports).
SIGTERM_EXIT = 128 + signal.SIGTERM
#: Exit code of a command stopped by Ctrl-C.
SIGINT_EXIT = 128 + signal.SIGINT

#: ``prctl`` option: the signal this process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where the process was, like Ctrl-C's :class:`KeyboardInterrupt`."""


#: In a worker process (:func:`worker_init`): whether it is running a task (else SIGTERM just ends it).
_busy = False


#: The interrupt the last SIGINT / SIGTERM raised while :func:`terminate_as_interrupt` is active (None: none), kept so
#: that one raised where Python swallows exceptions is not lost (:func:`raise_if_interrupted`).
_received: KeyboardInterrupt | None = None


def _raise_terminated(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    global _received
    if _worker and not _busy:  # an idle worker has nothing to clean up
        _exit_worker()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the clean-up ends the process
    _received = Terminated()
    raise _received


def _raise_interrupt(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
    global _received
    _received = KeyboardInterrupt()
    raise _received


def raise_if_interrupted() -> None:
    """Raise again the interrupt a signal raised in this command (:func:`terminate_as_interrupt`), if any.

    A signal handler's exception is raised wherever the main thread is; when that is a ``__del__``, a weakref or
    garbage-collector callback, Python prints "Exception ignored" and goes on, so Ctrl-C or SIGTERM would be lost
    and a long command (``reproduce`` waiting on its workers) would run to its end. Loops that wait call this
    between waits."""
    if _received is not None:
        raise _received


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` and SIGINT :class:`KeyboardInterrupt` in the main thread,
    both remembered for :func:`raise_if_interrupted` (the previous handlers are restored after). Outside the main
    thread the block runs unchanged (only the main thread can handle signals)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    old_int = signal.getsignal(signal.SIGINT)
    if old_int is signal.default_int_handler:  # Python's Ctrl-C (not one the caller installed, nor ignored)
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
        if old_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, old_int)
        _received = None


def exit_code(exc: KeyboardInterrupt) -> int:
    """143 for :class:`Terminated`, 130 for Ctrl-C."""
    return SIGTERM_EXIT if isinstance(exc, Terminated) else SIGINT_EXIT


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


_worker = False


def _exit_worker() -> None:
    """End this worker now (not the executor's next task), after multiprocessing's exit finalizers (they release
    the named semaphores a task made, e.g. tqdm's lock, which the resource tracker would report as leaked)."""
    import multiprocessing.util

    with contextlib.suppress(Exception):
        multiprocessing.util._exit_function()  # what atexit runs at a normal exit
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(SIGTERM_EXIT)


def worker_init(parent_pid: int) -> None:
    """Initializer of a worker process: SIGTERM raises :class:`Terminated` in a running task (:func:`in_worker`)
    and ends an idle worker, the worker gets SIGTERM when its parent dies, a worker whose parent ``parent_pid``
    is already gone exits at once, and Ctrl-C is left to the parent (which stops its workers with SIGTERM)."""
    global _worker
    _worker = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_terminated)
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(SIGTERM_EXIT)


def in_worker(fn, /, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` as a worker's task: on SIGTERM the task's clean-up runs (``finally`` blocks,
    a fresh run removing what it wrote, locks released), then the worker exits with code 143 instead of taking
    the next task."""
    global _busy
    _busy = True
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        _exit_worker()
    finally:
        _busy = False
