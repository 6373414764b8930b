"""Shared helpers for the file readers/writers: reading, atomic writing, messages."""
from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from typing import Iterable

import numpy as np

from nanobrag_torch.errors import ConfigError


def read_bytes(path) -> bytes:
    """The whole file, or ConfigError naming it ("<path>: cannot read (No such file ...)")."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def atomic_write(path, chunks: Iterable[bytes]) -> None:
    """Write chunks to path via a temporary file in the same folder and os.replace.

    A failure part-way leaves no partial file at path (an older file there
    stays untouched). The file gets the usual 0666 & ~umask permissions, as
    the C's fopen would give it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write file ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise ConfigError(f"{path}: cannot write file ({exc.strerror or exc})") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
    """A temporary path to write path's file at (by any library), renamed to path on success.

    The file is made under a hidden folder next to path with path's own base name
    (writers that record the file name, such as CBF's data block, see the real
    one), created by the library itself (so with the usual permissions); on an
    error nothing appears at path and an older file there stays.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    try:
        tmpdir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write file ({exc.strerror or exc})") from None
    tmp = os.path.join(tmpdir, os.path.basename(path))
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write file ({exc.strerror or exc})") from None
    finally:
        _unlink_quietly(tmp)
        try:
            os.rmdir(tmpdir)
        except OSError:
            pass
