"""Source files (-sourcefile): X Y Z weight lambda per line."""
from __future__ import annotations

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import where
from nanobrag_torch.io._textfile import read_text_table

SOURCE_COLUMNS = ("X", "Y", "Z", "weight", "lambda")


def read_sourcefile(path, strict: bool = True) -> np.ndarray:
    """(n, 5) float64: X Y Z (m), weight, lambda (m) per source; NaN where a column is missing.

    Read exactly like the C's read_text_file (delimiters " \\t,;:!", blank
    lines skipped); the caller applies the defaults to NaN entries.
    C quirk kept in both modes: on a last line without a trailing newline (or
    a "\\r\\n" line) the missing trailing columns read as 0, not NaN (SPEC 3.4).
    strict=True (spec mode): a line that is not just numbers (e.g. "# comment",
    which the C reads as a source at the origin with wavelength 0), more than
    5 columns, or no sources at all is a ConfigError naming the file and line;
    so are values without meaning: a wavelength <= 0, a negative weight, a
    source at the origin (it has no direction).
    strict=False: the C's reading, comment lines included.
    Both: nan or infinite numbers are refused with file:line.
    """
    table, lines = read_text_table(path, len(SOURCE_COLUMNS), strict, "source file", lines=True)
    if strict:
        for row, lineno in zip(table, lines):
            _check_source(path, lineno, row)
    return table


def _check_source(path, lineno: int, row: np.ndarray) -> None:
    x, y, z, weight, lam = row
    at = where(path, lineno)
    if lam <= 0:            # NaN (missing) compares False: the default wavelength applies
        hint = (" (on a last line without a newline, missing columns read as 0, as in "
                "nanoBragg.c)" if lam == 0 else "")
        raise ConfigError(f"{at}: wavelength {lam:g} m must be > 0{hint}")
    if weight < 0:
        raise ConfigError(f"{at}: weight {weight:g} must be >= 0")
    if x == 0 and y == 0 and z == 0:
        raise ConfigError(f"{at}: a source at the origin (0, 0, 0) has no direction")
