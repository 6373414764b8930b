"""Binary PGM (P5) images, written like nanoBragg.c's -pgmfile output."""
from __future__ import annotations

import re

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import as_numpy, atomic_write, read_bytes
from nanobrag_torch.io.cnum import fmt_g


def pgm_header(width: int, height: int, scale: float) -> bytes:
    """b"P5\\n<F> <S>\\n# pixels scaled by <scale %g>\\n255\\n" (the C's %lg is %g)."""
    return f"P5\n{int(width)} {int(height)}\n# pixels scaled by {fmt_g(float(scale))}\n255\n".encode()


def write_pgm(path, data: np.ndarray, scale: float) -> None:
    """Write data (uint8, shape (spixels, fpixels), fast index fastest) as a P5 PGM.

    scale is only recorded in the comment line. Written atomically.
    """
    atomic_write(path, pgm_chunks(data, scale))


def pgm_chunks(data, scale: float) -> list[bytes]:
    """The bytes write_pgm writes, for io.outputs.Stage.write."""
    arr = as_numpy(data)
    if arr.ndim != 2:
        raise ValueError(f"PGM data must be 2-D (spixels, fpixels), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"PGM data must be uint8, got dtype {arr.dtype}")
    height, width = arr.shape
    return [pgm_header(width, height, scale), np.ascontiguousarray(arr).tobytes()]


# whitespace and whole-line comments, then a number (one way to match: no backtracking blow-up)
_TOKEN = re.compile(rb"(?:[ \t\n\v\f\r]|#[^\n]*(?:\n|\Z))*([0-9]+)")


def read_pgm(path) -> np.ndarray:
    """Read a binary 8-bit PGM (P5, maxval <= 255): uint8 array (height, width).

    Comments ('#' to end of line) may appear between header fields; exactly
    one whitespace byte separates maxval from the pixel bytes.
    """
    raw = read_bytes(path, 1 << 32, "a PGM image")
    if not raw.startswith(b"P5"):
        raise ConfigError(f"{path}: not a binary PGM image (does not begin with 'P5')")
    pos, fields = 2, []
    for _ in range(3):
        m = _TOKEN.match(raw, pos)
        if m is None:
            raise ConfigError(f"{path}: malformed PGM header")
        fields.append(int(m.group(1)))
        pos = m.end()
    width, height, maxval = fields
    if not 0 < maxval < 256:
        raise ConfigError(f"{path}: only 8-bit PGM images are supported (maxval {maxval})")
    pos += 1   # the single whitespace byte after maxval
    if len(raw) < pos + width * height:
        raise ConfigError(f"{path}: too short for a {width} x {height} PGM image")
    return np.frombuffer(raw, np.uint8, count=width * height, offset=pos).reshape(height, width).copy()
