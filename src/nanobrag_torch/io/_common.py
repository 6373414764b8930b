"""Shared helpers for the file readers/writers: opening inputs safely, writing, messages.

Every input file is opened through `open_input`: only regular files are read
(a FIFO would block forever, /dev/zero never ends, a directory is no file),
and each reader states how much it reads (a size limit, a prefix, or
streaming in blocks). Messages name the file, and the line as ``path:N:``.
"""
from __future__ import annotations

import contextlib
import os
import stat
from typing import Iterable

import numpy as np

from nanobrag_torch.errors import ConfigError

MiB = 1 << 20
INPUT_LIMIT = 4096 * MiB     # crystallographic files read whole by a library (gemmi)


def where(path, lineno: int) -> str:
    """'path:N', the place of a message about line N (1-based) of a file."""
    return f"{path}:{lineno}"


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return None if stat.S_ISREG(mode) else "not a regular file"


def open_input(path):
    """(binary file object, size in bytes) of a regular file, else a one-line ConfigError.

    Opened without blocking (a FIFO with no writer would otherwise hang the
    open), then checked with fstat on the open descriptor, so what is read is
    what was checked.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind is not None:
            raise ConfigError(f"{path}: is {kind}; input files must be regular files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def check_regular(path, limit: int | None = None, what: str = "this kind of file") -> int:
    """The size of a regular file of at most `limit` bytes (for readers that open the file
    themselves, such as gemmi's), else the one-line ConfigError of open_input."""
    fh, size = open_input(path)
    fh.close()
    if limit is not None and size > limit:
        raise ConfigError(f"{path}: {size_text(size)} ({size} bytes), above the "
                          f"{size_text(limit)} limit for {what}; refused")
    return size


def size_text(n: float) -> str:
    """A byte count for messages: '1.75 GB', '64 MiB' style kept short and exact enough."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n // (1 << 20):d} MiB"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def read_bytes(path, limit: int | None = None, what: str = "this kind of file") -> bytes:
    """The whole file (a regular file of at most `limit` bytes), or a ConfigError naming it.

    Files above the limit are refused, not read in part; /proc files report
    size 0, so the read itself is bounded too.
    """
    fh, size = open_input(path)
    with fh:
        if limit is not None and size > limit:
            raise ConfigError(f"{path}: {size_text(size)} ({size} bytes), above the "
                              f"{size_text(limit)} limit for {what}; refused")
        try:
            raw = fh.read() if limit is None else fh.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if limit is not None and len(raw) > limit:
        raise ConfigError(f"{path}: more than the {size_text(limit)} limit for {what}; refused")
    return raw


def read_prefix(path, limit: int) -> tuple[bytes, bool]:
    """(at most the first `limit` bytes of a regular file, whether the file goes on)."""
    fh, _ = open_input(path)
    with fh:
        try:
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return raw[:limit], len(raw) > limit


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, within a cgroup limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
            if text == "max":
                continue
            with open(used_file) as fh:
                room = int(text) - int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if room < (1 << 50):            # cgroup v1 reports "no limit" as a huge number
            avail = room if avail is None else min(avail, room)
    return avail


def check_memory(path, nbytes: int, what: str) -> None:
    """ConfigError naming path if `what` (nbytes) cannot fit in the memory available now."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ConfigError(f"{path}: {what} needs {size_text(nbytes)} of memory, "
                          f"only {size_text(max(avail, 0))} is available; refused")


def atomic_write(path, chunks: Iterable[bytes]) -> None:
    """Write chunks to path so that it appears complete or not at all (see io.outputs).

    On its own: a temporary file beside the target is renamed over it when
    complete; a failure part-way leaves no partial file (an older file stays
    untouched); symlinks are followed (the link stays), devices written through.
    Inside `OutputSet.staged()`: staged in that run's transaction instead.
    """
    from nanobrag_torch.io.outputs import write_output
    write_output(path, chunks)


def show(text, limit: int = 60) -> str:
    """A file excerpt safe for a one-line message: control bytes escaped, long text cut."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = text.strip(" \t\r\n")
    out = "".join(c if " " <= c <= "~" or c > "\xa0" else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def as_numpy(x) -> np.ndarray:
    """A numpy view of x; torch tensors are detached and moved to the CPU (torch not imported)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path to write path's file at (by any library), put in place on success.

    The file has path's own base name (writers that record the file name, such as
    CBF's data block, see the real one) and is made by the library itself (so with
    the usual permissions); on an error nothing appears at path and an older file
    there stays. Inside `OutputSet.staged()` it is staged in that run's transaction.
    """
    from nanobrag_torch.io.outputs import output_path
    with output_path(path) as tmp:
        yield tmp
