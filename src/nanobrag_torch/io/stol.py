"""Amorphous-scattering tables (-stol / -4stol / -Q): two columns, stol (or Q) and F."""
from __future__ import annotations

import numpy as np

from nanobrag_torch.io._textfile import read_text_table


def read_stol(path, strict: bool = False) -> np.ndarray:
    """(n, 2) float64 as the C's read_text_file reads it: column 0 as in the file
    (stol in 1/Angstrom, or Q; the caller applies the -4stol/-Q/1e10 factor), column 1 F.

    NaN where a value is missing. Empty or unreadable file, or nan/inf numbers:
    ConfigError (the C exits 9 on the first two). strict=True (spec mode): every
    line must be numbers only, at most 2 of them (text is an error naming the
    line, where the C reads it as zeros).
    """
    return read_text_table(path, 2, strict, "stol table")
