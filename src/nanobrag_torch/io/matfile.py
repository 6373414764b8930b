"""MOSFLM orientation matrix files (-mat)."""
from __future__ import annotations

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import read_bytes, show
from nanobrag_torch.io.cnum import c_atof, is_c_number


def read_mat(path) -> np.ndarray:
    """The first 9 numbers of a MOSFLM matrix file as a (3, 3) float64 array.

    Row i holds the i-th three numbers (normally the i-th line): the x, y, z
    components of (a*, b*, c*), in the file's units (1/Angstrom times the
    wavelength; the caller divides it out). The rest of the file (U matrix,
    missets, cell) is ignored, as by the C's three fscanf("%lg%lg%lg").
    Raises ConfigError when the file holds fewer than 9 leading numbers.
    """
    tokens = read_bytes(path).split(maxsplit=9)[:9]
    values = []
    for tok in tokens:
        text = tok.decode("latin-1")
        if not is_c_number(text):
            raise ConfigError(f"{path}: expected 9 numbers (the A matrix), "
                              f"got '{show(text)}' after {len(values)}")
        values.append(c_atof(text))
    if len(values) < 9:
        raise ConfigError(f"{path}: expected 9 numbers (the A matrix), found {len(values)}")
    return np.array(values, dtype=np.float64).reshape(3, 3)
