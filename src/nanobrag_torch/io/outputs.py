"""The output files of a run: checked before it starts, written whole, all or nothing.

    outputs = OutputSet([("-floatfile", floatfile), intfile], inputs=[("-hkl", hkl_file)],
                        optional=[("-dump", dump_file)])
    notes = outputs.check()            # ConfigError for the first bad path (before any work)
    with outputs.staged():
        write_float_image(floatfile, image)   # every io writer writes into the stage
        ...
    # leaving the block normally puts every file in place; an exception (or Ctrl-C)
    # removes the temporary files and leaves every existing file as it was

Inside `staged()` the io writers (`atomic_write` for bytes, `atomic_path` for
libraries that write a file themselves: fabio, h5py, Pillow) stage their file
in the active transaction instead of renaming it at once, so the public
writers (writers.py, io.*) work unchanged both on their own and in a run. A
write to a path that is not one of the set's outputs is a ValueError (the
run forgot to declare it, so it was not checked).

`check()` refuses, naming the path (and its flag, for (label, path) entries):
a directory, a socket, a missing or unwritable folder, a read-only file, a
name longer than the file system's limit, a path that is an input file of
the run (same inode, so links and hard links count), and the same file given
twice (character devices such as /dev/null excepted). An `optional` output
(the Fdump.bin cache) that cannot be written is dropped with a note instead,
as nanoBragg.c only warns; one that is an input is still refused.

How each kind of path is written (nanoBragg.c simply fopen()s each one):

- a new name or a regular file: written to a temporary name beside it,
  ``.<name>.<8 hex digits>.tmp`` with the name shortened as needed to stay
  within the file system's NAME_MAX (a legal 250-byte name works), then
  renamed over it once every output of the run is complete. A replaced file
  keeps its permission bits. Should a rename fail part-way, the files already
  renamed are put back (the replaced ones from a hard link kept until then).
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

import contextvars
import errno
import os
import secrets
import shutil
import signal
import stat
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Union

from nanobrag_torch.errors import ConfigError

Data = Union[bytes, bytearray, memoryview, Iterable[bytes], Callable]

_PROC_PREFIXES = ("/proc/", "/dev/fd/", "/dev/stdout", "/dev/stderr", "/dev/stdin")

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("nanobrag_torch_stage", default=None)


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


def _resolve(p: str, optional: bool) -> _Target:
    if not p:
        raise _error("''", "empty output file name")
    if "\0" in p:
        raise _error(repr(p), "a file name cannot contain a NUL byte")
    if p.endswith(("/", "/.", "/..")) or p in (".", ".."):
        raise _error(p, "is a folder name, not a file name")
    try:
        lst = os.lstat(p)
    except FileNotFoundError:
        lst = None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            folder = os.path.dirname(p) or "."
            name = os.fsencode(os.path.basename(p))
            raise _error(p, f"cannot write file (the name is {len(name)} bytes long, more than "
                            f"the file system's limit of {_name_max(folder)})") from None
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


def temp_name(final: str, suffix: str = ".tmp") -> str:
    """A fresh hidden name beside `final` whose length stays within NAME_MAX."""
    folder, base = os.path.split(final)
    limit = _name_max(folder or ".")
    tag = secrets.token_hex(4)
    name = f".{base}.{tag}{suffix}"
    while len(os.fsencode(name)) > limit and base:
        base = base[:-1]
        name = f".{base}.{tag}{suffix}"
    return os.path.join(folder, name)


def _split(item):
    """(label, path) of an entry given as a path or as (label, path), e.g. ("-floatfile", "a.bin")."""
    label, path = item if isinstance(item, tuple) else ("", item)
    if path is None:
        return label, None
    path = os.fspath(path)
    return label, os.fsdecode(path) if isinstance(path, bytes) else path


def _key(path) -> str:
    path = os.fspath(path)
    return os.fsdecode(path) if isinstance(path, bytes) else path


class OutputSet:
    """The files one run writes: `paths` (required) and `optional` ones (a cache).

    inputs: the files the run reads; no output may be one of them. Any entry may
    be a path or a (label, path) pair; messages then begin with "label path:"
    (the command lines pass their flag names). None entries are skipped.
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
                raise _error(named, "is given twice as an output" if first == named else
                             f"is the same file as the output {first}")
            seen.setdefault(t.key, named)
            self.targets.setdefault(p, t)
        self._checked = True
        return notes

    @contextmanager
    def staged(self):
        """The transaction: io writers inside the block stage into it (the Stage is also
        yielded); commits when the block ends normally, else discards everything."""
        if not self._checked:
            self.check()
        stage = Stage(self)
        token = _ACTIVE.set(stage)
        try:
            yield stage
        except BaseException:
            stage.discard()
            raise
        finally:
            _ACTIVE.reset(token)
        stage.commit()


def active_stage() -> "Stage | None":
    """The Stage of the OutputSet.staged() block running now, or None."""
    return _ACTIVE.get()


class Stage:
    """Temporary files of an OutputSet being written (see OutputSet.staged)."""

    def __init__(self, outputs: OutputSet):
        self.outputs = outputs
        self._temps: list[tuple[_Target, str, str | None]] = []    # (target, file, its temp folder)
        self._through: list[tuple[_Target, Data]] = []
        self._written: set[str] = set()
        self.committed = False

    def _target(self, path) -> _Target | None:
        """The checked target of path; None if it is an optional output that was dropped."""
        p = _key(path)
        if p in self.outputs.dropped:
            return None
        t = self.outputs.targets.get(p)
        if t is None:
            raise ValueError(f"{p} is not one of the checked outputs of this run "
                             f"(add it to the run's OutputSet)")
        if not t.through:                    # /dev/null may take several outputs
            if p in self._written:
                raise ValueError(f"{p} is written twice")
            self._written.add(p)
        return t

    def write(self, path, data: Data) -> bool:
        """Stage one output; True if staged, False if it is an optional output that was dropped.

        data: bytes, an iterable of bytes (consumed once) or a callable taking a
        binary file. Required outputs that cannot be written raise ConfigError.
        """
        t = self._target(path)
        if t is None:
            return False
        if t.through:
            self._through.append((t, data))
            return True
        try:
            tmp, fd = self._create(t)
        except OSError as exc:
            return self._failed(t, exc)
        self._temps.append((t, tmp, None))
        try:
            if t.mode is not None:
                os.fchmod(fd, t.mode)
            with os.fdopen(fd, "wb") as fh:
                _emit(fh, data)
        except OSError as exc:
            self._remove(tmp)
            return self._failed(t, exc)
        return True

    def staged_file(self, path) -> str | None:
        """The temporary file now holding path's staged content (to checksum it), or None."""
        t = self.outputs.targets.get(_key(path))
        for target, tmp, _ in self._temps:
            if target is t:
                return tmp
        return None

    @contextmanager
    def path(self, path):
        """A temporary path for a library to write path's file at (CBF, NeXus, PNG).

        The file has path's own base name (writers that record the name, such as
        CBF's data block, see the real one), in a hidden folder beside the target
        (in the system's temporary folder for a device or FIFO); it is put in
        place at commit. Yields None for a dropped optional output.
        """
        t = self._target(path)
        if t is None:
            yield None
            return
        base = os.path.basename(t.final) or "output"
        try:
            where = (tempfile.mkdtemp(prefix=".nanobrag_torch.", suffix=".tmp") if t.through
                     else self._mkdir(t))
        except OSError as exc:
            self._failed(t, exc)
            yield None
            return
        tmp = os.path.join(where, base)
        self._temps.append((t, tmp, where))
        try:
            yield tmp
            if not os.path.isfile(tmp):
                raise OSError(errno.ENOENT, "the writer made no file")
            if t.mode is not None:
                os.chmod(tmp, t.mode)
        except OSError as exc:
            self._remove(tmp)
            self._failed(t, exc)             # raises, unless the output is optional
            return
        except BaseException:
            self._remove(tmp)
            raise
        if t.through:                        # copied to the device at commit
            self._temps.remove((t, tmp, where))
            self._through.append((t, _FileData(tmp, where)))

    @staticmethod
    def _create(t: _Target):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _ in range(10):
            tmp = temp_name(t.final)
            try:
                return tmp, os.open(tmp, flags, 0o666)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, f"no free temporary name beside {t.final}")

    @staticmethod
    def _mkdir(t: _Target) -> str:
        for _ in range(10):
            folder = temp_name(t.final, ".tmpdir")
            try:
                os.mkdir(folder, 0o700)
                return folder
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, f"no free temporary name beside {t.final}")

    def _remove(self, tmp: str) -> None:
        for entry in [e for e in self._temps if e[1] == tmp]:
            _unlink(entry[1], entry[2])
            self._temps.remove(entry)

    def _failed(self, t: _Target, exc: OSError) -> bool:
        if t.optional:
            self.outputs.dropped[t.path] = f"{t.named}: cannot write file ({_os_reason(exc)})"
            return False
        raise _error(t.named, f"cannot write file ({_os_reason(exc)})") from None

    def discard(self) -> None:
        """Remove every temporary file; nothing of this stage stays on disk."""
        with _signals_held(redeliver=False):
            for _, tmp, folder in self._temps:
                _unlink(tmp, folder)
            for _, data in self._through:
                if isinstance(data, _FileData):
                    _unlink(data.path, data.folder)
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
            for _, data in self._through:
                if isinstance(data, _FileData):
                    _unlink(data.path, data.folder)
            self._through = []
            self._rename_all()
            self.committed = True
            held.done = True

    def _rename_all(self) -> None:
        """Rename every temporary file into place; on a failure put back those renamed."""
        backups = {}
        try:
            for t, _, _ in self._temps:             # the files being replaced, to restore
                if os.path.lexists(t.final) and t.final not in backups:
                    backup = temp_name(t.final, ".old")
                    try:
                        os.link(t.final, backup)
                        backups[t.final] = backup
                    except OSError:
                        pass                        # no hard links here: no restore either
            done = []
            for t, tmp, folder in self._temps:
                try:
                    os.replace(tmp, t.final)
                except OSError as exc:
                    for u in reversed(done):
                        try:
                            if u.final in backups:
                                os.replace(backups.pop(u.final), u.final)
                            else:
                                os.unlink(u.final)
                        except OSError:
                            pass
                    self.discard()
                    raise _error(t.named, f"cannot write file ({_os_reason(exc)})") from None
                done.append(t)
                if folder is not None:
                    _unlink(None, folder)
            self._temps = []
        finally:
            for backup in backups.values():
                _unlink(backup, None)


@dataclass
class _FileData:
    """A file a library wrote for a write-through output (copied at commit)."""
    path: str
    folder: str


def _unlink(path, folder) -> None:
    for fn, arg in ((os.unlink, path), (os.rmdir, folder)):
        if arg is not None:
            try:
                fn(arg)
            except OSError:
                pass


def _emit(fh, data: Data) -> None:
    if isinstance(data, _FileData):
        with open(data.path, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)
    elif callable(data):
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


# ------------------------------------------------------------- the io writers' entry points
def write_output(path, data: Data) -> None:
    """Write path whole: into the active stage, or on its own as a one-file OutputSet.

    An optional output of the active stage that cannot be written raises
    ConfigError with the reason (the caller decides whether that is fatal).
    """
    stage = active_stage()
    if stage is None:
        outputs = OutputSet([path])
        with outputs.staged() as stage:
            stage.write(path, data)
        return
    if not stage.write(path, data):
        raise ConfigError(stage.outputs.dropped[_key(path)])


@contextmanager
def output_path(path):
    """A temporary path to write path's file at (by any library): into the active stage,
    or on its own (renamed to path when the block ends without an error)."""
    stage = active_stage()
    if stage is None:
        outputs = OutputSet([path])
        with outputs.staged() as stage, stage.path(path) as tmp:
            yield tmp
        return
    with stage.path(path) as tmp:
        if tmp is None:
            raise ConfigError(stage.outputs.dropped[_key(path)])
        yield tmp


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
        except (ValueError, OSError, TypeError):
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
