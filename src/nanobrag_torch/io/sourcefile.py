"""Source files (-sourcefile): X Y Z weight lambda per line."""
from __future__ import annotations

import numpy as np

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
    5 columns, or no sources at all is a ConfigError naming the file and line.
    strict=False: the C's reading, comment lines included.
    """
    return read_text_table(path, len(SOURCE_COLUMNS), strict, "source file")
