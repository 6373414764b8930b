"""MOSFLM orientation matrix files (-mat)."""
from __future__ import annotations

import math
import re

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import MiB, read_prefix, show, where
from nanobrag_torch.io.cnum import c_atof, is_c_number

MAT_PREFIX = 1 * MiB        # the 9 numbers must be within the file's first MiB (only they are read)

_TOKEN = re.compile(rb"[^ \t\n\v\f\r]+")


def read_mat(path) -> np.ndarray:
    """The first 9 numbers of a MOSFLM matrix file as a (3, 3) float64 array.

    Row i holds the i-th three numbers (normally the i-th line): the x, y, z
    components of (a*, b*, c*), in the file's units (1/Angstrom times the
    wavelength; the caller divides it out). The rest of the file (U matrix,
    missets, cell) is ignored, as by the C's three fscanf("%lg%lg%lg"), and
    only the first MAT_PREFIX bytes are read.
    Raises ConfigError (with file:line) when the file holds fewer than 9
    leading numbers, or one of them is not finite.
    """
    raw, more = read_prefix(path, MAT_PREFIX)
    values = []
    for m in _TOKEN.finditer(raw):
        if len(values) == 9:
            break
        if more and m.end() == len(raw):
            break                           # a token cut by the prefix limit
        text = m.group().decode("latin-1")
        at = where(path, raw.count(b"\n", 0, m.start()) + 1)
        if not is_c_number(text):
            raise ConfigError(f"{at}: expected 9 numbers (the A matrix), "
                              f"got '{show(text)}' after {len(values)}")
        value = c_atof(text)
        if not math.isfinite(value):
            raise ConfigError(f"{at}: '{show(text)}' is not a finite number (the A matrix)")
        values.append(value)
    if len(values) < 9:
        within = f" within its first {MAT_PREFIX // MiB} MiB" if more else ""
        raise ConfigError(f"{path}: expected 9 numbers (the A matrix), found {len(values)}{within}")
    return np.array(values, dtype=np.float64).reshape(3, 3)
