"""Every image file of a folder checked before anything reads it for training, evaluation or probing.

Listing (:func:`list_images`): the files of each class folder, in torchvision ``ImageFolder``'s order, with
symbolic-link loops detected instead of followed forever. Checking (:func:`scan_images`): each file's type
with ``stat`` first (a FIFO, device or socket named ``.jpg`` is never opened, so nothing hangs), then it is
opened and decoded (JPEGs at 1/8 scale: every coded byte is still read, so truncation and corrupt data show;
the inverse DCT is skipped), with a pixel-count check against Pillow's decompression-bomb limit. Checks run
in a thread pool for large files (Pillow releases the GIL while decoding), on one thread for small ones (where
Python's own work, under the GIL, dominates); a file's verdict is remembered for the life of the
process by path, size, mtime and inode, so the second data set built from the same files (the validation
split, a probe during training) costs only ``stat`` calls. BENCHMARKS.md (section 6) has the cost.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from ..core.errors import DataError

#: File extensions read as images (torchvision's ``IMG_EXTENSIONS``, which ``ImageFolder`` reads).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: Files per task of the thread pool (amortises the pool's own overhead on small images).
CHUNK = 64
#: At most this many scanning threads.
MAX_THREADS = 32
#: Files smaller than this (bytes, median) are scanned on one thread (see :func:`default_threads`).
SMALL_FILE = 16 * 1024

_cache: dict[tuple, str | None] = {}
_cache_lock = threading.Lock()


class BadImagesError(DataError):
    """Image files that cannot be read; ``bad`` maps each path to why. The message names the first one."""

    def __init__(self, message: str, bad: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.bad = dict(bad or {})


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _os_reason(exc: OSError, path: str) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop"
    if exc.errno == errno.ENOENT:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or type(exc).__name__


def check_image(path: str) -> str | None:
    """Why image file ``path`` cannot be read (one short phrase), or None when it opens and decodes."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _os_reason(exc, path)
    if not stat.S_ISREG(st.st_mode):
        return f"{_kind(st.st_mode)}, not an image file"
    if st.st_size == 0:
        return "an empty file (0 bytes)"
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    reason = _decode(path)
    with _cache_lock:
        _cache[key] = reason
    return reason


def _decode(path: str) -> str | None:
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the stat above still cannot block the open
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return _os_reason(exc, path)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            with _open_image(fh, path) as img:
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and img.width * img.height > limit:
                    return (f"a decompression bomb ({img.width}x{img.height} px, over Pillow's limit of "
                            f"{limit} pixels)")
                if img.format == "JPEG":
                    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
    except Image.DecompressionBombError:
        return "a decompression bomb (over twice Pillow's pixel limit)"
    except UnidentifiedImageError:
        return "not an image file (Pillow cannot identify its format)"
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:  # what Pillow raises for bad data
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"not a readable image ({text[:100]})"
    finally:
        if fd >= 0:
            os.close(fd)
    return None


def _open_image(fh, path: str) -> Image.Image:
    """``Image.open``, trying the format the file's extension names first (a third of the time of a small JPEG
    goes to asking every other format whether the file is theirs), then every format."""
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if fmt is not None:
        try:
            return Image.open(fh, formats=[fmt])
        except UnidentifiedImageError:
            fh.seek(0)
    return Image.open(fh)


def default_threads(paths: Sequence[str]) -> int:
    """Scanning threads for ``paths``: every usable core when the files are large enough for decoding (which
    releases the GIL) to dominate, else 1: for small files (median of a sample under :data:`SMALL_FILE` bytes,
    e.g. 32-px JPEGs) the time goes to Python code that holds the GIL, and more threads only contend for it
    (BENCHMARKS.md, section 7)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    sizes = []
    for p in paths[:: max(1, len(paths) // 64)][:64]:
        try:
            sizes.append(os.stat(p).st_size)
        except OSError:
            pass
    return 1 if not sizes or sorted(sizes)[len(sizes) // 2] < SMALL_FILE else cpus


def scan_images(paths: Sequence[str], *, threads: int | None = None) -> dict[str, str]:
    """Check every file of ``paths`` (:func:`check_image`) in a thread pool (``threads``; default
    :func:`default_threads`); returns ``{bad path: why}``."""
    paths = list(paths)
    if not paths:
        return {}
    Image.init()  # load Pillow's format plugins once, before the threads use them
    if threads is None:
        threads = default_threads(paths)
    threads = max(1, min(MAX_THREADS, threads, (len(paths) + CHUNK - 1) // CHUNK))
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with warnings.catch_warnings():  # the bomb check reports these files; Pillow's own warning is noise then
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if threads == 1:
            results = [[check_image(p) for p in chunk] for chunk in chunks]
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="pe-probe-scan") as pool:
                results = list(pool.map(lambda chunk: [check_image(p) for p in chunk], chunks))
    return {p: r for chunk, res in zip(chunks, results) for p, r in zip(chunk, res) if r is not None}


def list_images(root: str | os.PathLike, classes: Sequence[str]) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """``(samples, bad)``: ``(path, class index)`` of every file with an image extension under each
    ``root/<class>`` (symbolic links followed), in the order torchvision's ``ImageFolder`` lists them, and the
    folders that could not be walked (a symbolic link loop, an unreadable folder) with why."""
    samples: list[tuple[str, int]] = []
    bad: dict[str, str] = {}
    for index, name in enumerate(classes):
        top = os.path.join(os.fspath(root), name)
        files: list[tuple[str, list[str]]] = []
        _walk(top, files, bad, ancestors=())
        for folder, names in sorted(files):
            samples.extend((os.path.join(folder, f), index) for f in sorted(names)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
    return samples, bad


def _walk(folder: str, out: list[tuple[str, list[str]]], bad: dict[str, str], ancestors: tuple) -> None:
    try:
        st = os.stat(folder)
        entries = list(os.scandir(folder))
    except OSError as exc:
        bad[folder] = _os_reason(exc, folder)
        return
    here = (st.st_dev, st.st_ino)
    if here in ancestors:
        bad[folder] = "a symbolic link loop (a folder inside itself)"
        return
    names, subdirs = [], []
    for e in entries:
        try:
            is_dir = e.is_dir()  # follows symbolic links, as os.walk(followlinks=True) does
        except OSError:
            is_dir = False
        (subdirs if is_dir else names).append(e.name)
    out.append((folder, names))
    for d in sorted(subdirs):
        _walk(os.path.join(folder, d), out, bad, ancestors + (here,))


def describe_bad(bad: dict[str, str], where: str | os.PathLike) -> str:
    """One line: how many files under ``where`` are bad, the first one and why."""
    first = sorted(bad)[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{len(bad)} unreadable image file(s) under {where}: {first} is {bad[first]}{more}"


def check_folder_images(samples: list[tuple[str, int]], walk_bad: dict[str, str], where: str | os.PathLike, *,
                        skip_bad: bool) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """``samples`` without the bad files, and ``{bad path: why}``; without ``skip_bad`` any bad file or folder
    raises :class:`BadImagesError` (one line naming the first, and the way around it)."""
    bad = {**walk_bad, **scan_images([p for p, _ in samples])}
    if bad and not skip_bad:
        raise BadImagesError(describe_bad(bad, where) + "; fix or remove it, or pass --skip-bad (skip_bad=True) "
                             "to leave bad files out", bad)
    return [s for s in samples if s[0] not in bad], bad


def clear_cache() -> None:
    """Forget every remembered verdict (tests, or files changed in place with the same size and mtime)."""
    with _cache_lock:
        _cache.clear()


__all__ = ["BadImagesError", "IMAGE_EXTENSIONS", "check_folder_images", "check_image", "clear_cache",
           "default_threads", "describe_bad", "list_images", "scan_images"]

