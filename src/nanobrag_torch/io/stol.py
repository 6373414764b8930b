"""Amorphous-scattering tables (-stol / -4stol / -Q): two columns, stol (or Q) and F."""
from __future__ import annotations

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import atomic_write, where
from nanobrag_torch.io._textfile import read_text_table


def read_stol(path, strict: bool = False) -> np.ndarray:
    """(n, 2) float64 as the C's read_text_file reads it: column 0 as in the file
    (stol in 1/Angstrom, or Q; the caller applies the -4stol/-Q/1e10 factor), column 1 F.

    NaN where a value is missing. Empty or unreadable file: ConfigError (the C exits 9).
    Both modes: nan or infinite numbers are refused with file:line.
    strict=True (spec mode): every line must hold exactly two numbers (no comment
    lines or text, which the C reads as (0, 0) points) and the abscissae must rise
    strictly (repeated ones make the C's interpolation divide 0 by 0).
    """
    rows, lines = read_text_table(path, 2, strict, "stol table", lines=True)
    if strict:
        short = np.flatnonzero(np.isnan(rows[:, 1]))
        if short.size:
            raise ConfigError(f"{where(path, lines[short[0]])}: 1 column, a stol table needs 2 "
                              f"(stol F)")
        bad = np.flatnonzero(~(np.diff(rows[:, 0]) > 0))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(f"{where(path, lines[i + 1])}: the first column must rise "
                              f"strictly: {rows[i + 1, 0]:g} follows {rows[i, 0]:g}")
    return rows


def write_stol_rows(path, lines) -> None:
    """Write text lines (already formatted, without newlines) atomically (-img's output.stol)."""
    atomic_write(path, ["".join(line + "\n" for line in lines).encode()])
