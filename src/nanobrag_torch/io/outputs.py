"""The output files of a run: checked before it starts, written whole, all or nothing.

    outputs = OutputSet([floatfile, intfile], inputs=[hkl_file, mat_file], optional=[dump_file])
    notes = outputs.check()            # ConfigError for the first bad path (before any work)
    with outputs.staged() as stage:
        stage.write(floatfile, data)   # bytes, an iterable of bytes, or a callable(file)
        ...
    # leaving the block normally puts every file in place; an exception (or Ctrl-C)
    # removes the temporary files and leaves every existing file as it was

`check()` refuses, naming the path: a directory, a socket, a missing or
unwritable folder, a read-only file, a name longer than the file system's
limit, a path that is an input file of the run (same inode, so links and
hard links count), and the same file given twice (character devices such as
/dev/null excepted). An `optional` output (the Fdump.bin cache) that cannot be
written is dropped with a note instead, as nanoBragg.c only warns.

How each kind of path is written (nanoBragg.c simply fopen()s each one):

- a new name or a regular file: written to a temporary name beside it,
  ``.<name>.<8 hex digits>.tmp`` with the name shortened as needed to stay
  within the file system's NAME_MAX (a legal 250-byte name works), then
  renamed over it once every output of the run is complete. A replaced file
  keeps its permission bits.
- a symlink to a regular file, or a dangling one: the file it points to is
  replaced that way; the link itself stays a link.
- a device (/dev/null, /dev/full), a FIFO, or a link into /proc such as
  /proc/self/fd/1 or /dev/stdout: written through, as the C does, when the
  run commits and before any rename, so that a failure there (ENOSPC on
  /dev/full, a FIFO nobody reads) still leaves no file renamed. A FIFO without
  a reader is an error rather than a hang.

SIGINT and SIGTERM that arrive while the files are being renamed are held
until the renames are done, then delivered; the exception they raise carries
``outputs_written = True``.
"""
from __future__ import annotations

import errno
import os
import secrets
import signal
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from nanobrag_torch.errors import ConfigError

Data = Union[bytes, bytearray, memoryview, Iterable[bytes], Callable]

_PROC_PREFIXES = ("/proc/", "/dev/fd/", "/dev/stdout", "/dev/stderr", "/dev/stdin")


@dataclass
class _Target:
    path: str            # as given
    final: str           # the file written (a link's target for links)
    through: bool        # written through at commit (device, FIFO, /proc link)
    key: tuple           # identity, for duplicates: (dev, ino) or ("new", realpath)
    mode: int | None     # permission bits of the file replaced
    optional: bool
    chardev: bool = False
    label: str = ""

    @property
    def named(self) -> str:
        return f"{self.label} {self.path}" if self.label else self.path


def _error(path, reason) -> ConfigError:
    return ConfigError(f"{path}: {reason}")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _via_proc(path: str) -> bool:
    """True if path is, or its link chain passes through, /proc (or a pipe/socket link)."""
    cur = os.path.abspath(path)
    for _ in range(40):
        if cur.startswith(_PROC_PREFIXES):
            return True
        if not os.path.islink(cur):
            return False
        try:
            target = os.readlink(cur)
        except OSError:
            return False
        if target.startswith(("pipe:[", "socket:[", "anon_inode:")):
            return True
        cur = os.path.normpath(os.path.join(os.path.dirname(cur), target))
    return False


def _resolve(path, optional: bool) -> _Target:
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not p:
        raise _error("''", "empty output file name")
    if p.endswith(("/", "/.", "/..")) or p in (".", ".."):
        raise _error(p, "is a folder name, not a file name")
    try:
        lst = os.lstat(p)
    except FileNotFoundError:
        lst = None
    except OSError as exc:
        raise _error(p, f"cannot write file ({_os_reason(exc)})") from None
    final, st = p, lst
    if lst is not None and stat.S_ISLNK(lst.st_mode):
        if _via_proc(p):
            return _through(p, optional)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            st = None                      # dangling: the C's fopen would create the target
        except OSError as exc:
            raise _error(p, f"cannot write file ({_os_reason(exc)})") from None
        final = os.path.realpath(p)
    if st is None or stat.S_ISREG(st.st_mode):
        return _in_folder(p, final, st, optional)
    if stat.S_ISDIR(st.st_mode):
        raise _error(p, "is a directory")
    if stat.S_ISSOCK(st.st_mode):
        raise _error(p, "is a socket; cannot write an image there")
    return _through(p, optional)           # character/block device or FIFO


def _through(p: str, optional: bool) -> _Target:
    try:
        st = os.stat(p)
    except OSError as exc:
        raise _error(p, f"cannot write file ({_os_reason(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise _error(p, "is a directory")
    if not os.access(p, os.W_OK):
        raise _error(p, "cannot write file (permission denied)")
    return _Target(p, p, True, (st.st_dev, st.st_ino), None, optional,
                   chardev=stat.S_ISCHR(st.st_mode))


def _in_folder(p: str, final: str, st, optional: bool) -> _Target:
    folder = os.path.dirname(final) or "."
    if not os.path.isdir(folder):
        raise _error(p, f"cannot write file (the folder {folder} does not exist)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _error(p, f"cannot write file (the folder {folder} is not writable)")
    name = os.path.basename(final)
    limit = _name_max(folder)
    if len(os.fsencode(name)) > limit:
        raise _error(p, f"cannot write file (the name is {len(os.fsencode(name))} bytes long, "
                        f"more than the file system's limit of {limit})")
    if st is None:
        return _Target(p, final, False, ("new", os.path.realpath(final)), None, optional)
    if not os.access(final, os.W_OK):
        raise _error(p, "cannot write file (the file is read-only)")
    return _Target(p, final, False, (st.st_dev, st.st_ino), stat.S_IMODE(st.st_mode), optional)


def _identity(path):
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def temp_name(final: str) -> str:
    """A fresh temporary name beside `final` whose length stays within NAME_MAX."""
    folder, base = os.path.split(final)
    limit = _name_max(folder or ".")
    tag = secrets.token_hex(4)
    name = f".{base}.{tag}.tmp"
    while len(os.fsencode(name)) > limit and base:
        base = base[:-1]
        name = f".{base}.{tag}.tmp"
    return os.path.join(folder, name)


def _split(item):
    """(label, path) of an entry given as a path or as (label, path), e.g. ("-floatfile", "a.bin")."""
    label, path = item if isinstance(item, tuple) else ("", item)
    return label, None if path is None else os.fsdecode(os.fspath(path))


class OutputSet:
    """The files one run writes: `paths` (required) and `optional` ones (a cache).

    inputs: the files the run reads; no output may be one of them. Any entry may
    be a path or a (label, path) pair; messages then begin with "label path:"
    (the CLI passes its flag names).
    """

    def __init__(self, paths: Iterable, inputs: Iterable = (), optional: Iterable = ()):
        entries = [(*_split(p), False) for p in paths if p is not None]
        entries += [(*_split(p), True) for p in optional if p is not None]
        self.entries = [e for e in entries if e[1] is not None]
        self.inputs = [i for i in map(_split, (p for p in inputs if p is not None))
                       if i[1] is not None]
        self.targets: dict[str, _Target] = {}
        self.dropped: dict[str, str] = {}
        self._checked = False

    @property
    def paths(self) -> list[str]:
        return [path for _, path, _ in self.entries]

    def check(self) -> list[str]:
        """Check every path (see the module doc); returns notes on dropped optional outputs."""
        self.targets, self.dropped = {}, {}
        inputs = {}
        for label, p in self.inputs:
            ident = _identity(p)
            if ident is not None:
                inputs.setdefault(ident, f"{label} {p}" if label else p)
        seen: dict[tuple, str] = {}
        notes = []
        for label, p, optional in self.entries:
            named = f"{label} {p}" if label else p
            try:
                t = _resolve(p, optional)
            except ConfigError as err:
                msg = f"{label} {err}" if label else str(err)
                if not optional:
                    raise ConfigError(msg) from None
                self.dropped[p] = msg
                notes.append(msg)
                continue
            t.label = label
            if t.key in inputs:
                raise _error(named, f"is the input file {inputs[t.key]} of this run; "
                                    f"refusing to overwrite it")
            if t.key in seen and not t.chardev:
                first = seen[t.key]
                raise _error(named, f"is the same file as the output {first}")
            seen.setdefault(t.key, named)
            self.targets.setdefault(p, t)
        self._checked = True
        return notes

    @contextmanager
    def staged(self):
        """A Stage to write into; commits when the block ends normally, else discards."""
        if not self._checked:
            self.check()
        stage = Stage(self)
        try:
            yield stage
        except BaseException:
            stage.discard()
            raise
        stage.commit()


class Stage:
    """Temporary files of an OutputSet being written (see OutputSet.staged)."""

    def __init__(self, outputs: OutputSet):
        self.outputs = outputs
        self._temps: list[tuple[_Target, str]] = []
        self._through: list[tuple[_Target, Data]] = []
        self._written: set[str] = set()
        self.committed = False

    def write(self, path, data: Data) -> bool:
        """Stage one output; True if staged, False if it is an optional output that was dropped.

        data: bytes, an iterable of bytes (consumed once) or a callable taking a
        binary file. Required outputs that cannot be written raise ConfigError.
        """
        p = os.fsdecode(os.fspath(path))
        if p in self.outputs.dropped:
            return False
        t = self.outputs.targets.get(p)
        if t is None:
            raise ValueError(f"{p} is not one of the outputs of this OutputSet")
        if t.through:                        # /dev/null may take several outputs
            self._through.append((t, data))
            return True
        if p in self._written:
            raise ValueError(f"{p} is written twice")
        self._written.add(p)
        try:
            tmp, fd = self._create(t)
        except OSError as exc:
            return self._failed(t, exc)
        self._temps.append((t, tmp))
        try:
            if t.mode is not None:
                os.fchmod(fd, t.mode)
            with os.fdopen(fd, "wb") as fh:
                _emit(fh, data)
        except OSError as exc:
            self._remove(t, tmp)
            return self._failed(t, exc)
        return True

    @staticmethod
    def _create(t: _Target):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _ in range(10):
            tmp = temp_name(t.final)
            try:
                return tmp, os.open(tmp, flags, 0o666)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temporary name beside {t.final}")

    def _remove(self, t: _Target, tmp: str) -> None:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        self._temps = [(u, x) for u, x in self._temps if x != tmp]

    def _failed(self, t: _Target, exc: OSError) -> bool:
        if t.optional:
            self.outputs.dropped[t.path] = f"{t.named}: cannot write file ({_os_reason(exc)})"
            return False
        raise _error(t.named, f"cannot write file ({_os_reason(exc)})") from None

    def discard(self) -> None:
        """Remove every temporary file; nothing of this stage stays on disk."""
        with _signals_held(redeliver=False):
            for _, tmp in self._temps:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            self._temps, self._through = [], []

    def commit(self) -> None:
        """Write the write-through outputs, then rename every temporary file into place."""
        with _signals_held(redeliver=True) as held:
            for t, data in self._through:
                try:
                    _write_through(t, data)
                except OSError as exc:
                    if t.optional:
                        self.outputs.dropped[t.path] = f"{t.named}: {_os_reason(exc)}"
                        continue
                    self.discard()
                    reason = ("no process is reading this FIFO" if exc.errno == errno.ENXIO
                              else _os_reason(exc))
                    raise _error(t.named, f"cannot write file ({reason})") from None
            for i, (t, tmp) in enumerate(self._temps):
                try:
                    os.replace(tmp, t.final)
                except OSError as exc:
                    self._temps = self._temps[i:]
                    self.discard()
                    raise _error(t.named, f"cannot write file ({_os_reason(exc)})") from None
            self._temps, self._through = [], []
            self.committed = True
            held.done = True


def _emit(fh, data: Data) -> None:
    if callable(data):
        data(fh)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        fh.write(data)
    else:
        for chunk in data:
            fh.write(chunk)


def _write_through(t: _Target, data: Data) -> None:
    # O_NONBLOCK only for the open: a FIFO without a reader fails (ENXIO) instead of hanging
    flags = (os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(t.path, flags)
    try:
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "wb") as fh:
        _emit(fh, data)


class _Held:
    done = False


@contextmanager
def _signals_held(redeliver: bool):
    """Hold SIGINT/SIGTERM during the block (main thread only); deliver them after it."""
    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    got: list[int] = []
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
        except (ValueError, OSError):
            pass
    try:
        yield held
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if got and redeliver:
        try:
            signal.raise_signal(got[0])
        except BaseException as exc:
            exc.outputs_written = held.done
            raise
