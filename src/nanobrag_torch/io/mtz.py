"""MTZ files (CCP4 reflection data) through gemmi: a column of amplitudes, expanded to P1.

Column choice (say which on stdout): `column` (-mtz_column LABEL) if given; by
default the first mean amplitude among AMPLITUDES (then any other column of type
F), else an anomalous pair F(+)/F(-) (type G), else the square root of an
intensity among INTENSITIES (then any other of type J), else of an anomalous
intensity pair I(+)/I(-) (type K). A member of a pair selects the pair: F(+) goes
to hkl and its symmetry mates, F(-) to their Friedel mates (kept apart).
Missing values (NaN) are skipped; negative intensities give F = 0.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import INPUT_LIMIT, check_regular
from nanobrag_torch.io._optional import require
from nanobrag_torch.io.sf import (amplitudes_from_intensities, describe_expansion, expand_to_p1,
                                  finite_rows, hkl_data, valid_cell)

AMPLITUDES = ("F", "FP", "FOBS", "F-obs", "F_obs", "FMODEL", "F-model", "FC", "FCALC", "F-calc")
INTENSITIES = ("I", "IMEAN", "IOBS", "I-obs", "I_obs")
KINDS = {"F": "amplitude", "G": "anomalous amplitude", "J": "intensity", "K": "anomalous intensity"}


def read_mtz(path, column: Optional[str] = None, default_F: float = 0.0):
    """(HKLData in P1, messages) from a merged MTZ file."""
    check_regular(path, INPUT_LIMIT, "an MTZ file")
    gemmi = require("gemmi")
    try:
        mtz = gemmi.read_mtz_file(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise ConfigError(f"{path}: cannot read the MTZ file ({err})") from None
    labels = [c.label for c in mtz.columns]
    if "M/ISYM" in labels or mtz.batches:
        raise ConfigError(f"{path}: unmerged MTZ (M/ISYM and batches); merge it first "
                          f"(e.g. with aimless)")
    plus, minus = _choose(path, mtz, column)
    hkl = np.asarray(mtz.make_miller_array(), dtype=np.int64)
    kind = plus.type
    values = [np.asarray(plus.array, dtype=np.float64)]
    if minus is not None:
        values.append(np.asarray(minus.array, dtype=np.float64))
    negative = 0
    if kind in "JK":
        converted = [amplitudes_from_intensities(v) for v in values]
        values = [c[0] for c in converted]
        negative = sum(c[1] for c in converted)
    spacegroup = mtz.spacegroup.hm if mtz.spacegroup is not None else "P 1"
    ok = [finite_rows(v) for v in values]
    if minus is None:
        p1_hkl, p1_F = expand_to_p1(hkl[ok[0]], values[0][ok[0]], mtz.spacegroup or "P 1")
        n_in = int(ok[0].sum())
    else:
        p1_hkl, p1_F = expand_to_p1(hkl[ok[0]], values[0][ok[0]], mtz.spacegroup or "P 1",
                                    F_minus=values[1][ok[1]], hkl_minus=hkl[ok[1]])
        n_in = int((ok[0] | ok[1]).sum())
    if n_in == 0:
        raise ConfigError(f"{path}: column {plus.label} has no values")
    cell = _cell(mtz, plus)
    hkl_out = hkl_data(p1_hkl, p1_F, default_F, source=str(path), cell=cell, spacegroup=spacegroup)
    what = plus.label if minus is None else f"{plus.label}/{minus.label} (kept apart)"
    if kind in "JK":
        what = f"sqrt({what})" + (f", {negative} negative intensities set to F = 0"
                                  if negative else "")
    return hkl_out, [f"reading {path}: F = {what}; {describe_expansion(n_in, p1_hkl, spacegroup)}"]


def _cell(mtz, col):
    cell = col.dataset.cell if col.dataset is not None else mtz.cell
    params = tuple(float(x) for x in cell.parameters)
    if not valid_cell(params):
        params = tuple(float(x) for x in mtz.cell.parameters)
    return params if valid_cell(params) else None


def _choose(path, mtz, column):
    """(column, partner or None) following the module's rules."""
    cols = {c.label: c for c in mtz.columns}
    usable = [c for c in mtz.columns if c.type in KINDS]
    if column is not None:
        col = cols.get(column)
        if col is None:
            raise ConfigError(f"{path}: no column {column!r} (columns: {_listing(mtz)})")
        if col.type not in KINDS:
            raise ConfigError(f"{path}: column {column} has MTZ type {col.type}, not an "
                              f"amplitude (F, G) or intensity (J, K)")
        if col.type in "GK":
            return _pair(path, cols, col)
        return col, None
    for kind, names in (("F", AMPLITUDES), ("G", ()), ("J", INTENSITIES), ("K", ())):
        for name in names:
            if name in cols and cols[name].type == kind:
                return cols[name], None
        for col in usable:
            if col.type == kind:
                return _pair(path, cols, col) if kind in "GK" else (col, None)
    raise ConfigError(f"{path}: no amplitude or intensity column (columns: {_listing(mtz)})")


def _pair(path, cols, col):
    """An anomalous column and its partner, (plus, minus)."""
    label = col.label
    swaps = [("(+)", "(-)"), ("(-)", "(+)"), ("PLUS", "MINUS"), ("MINUS", "PLUS"),
             ("plus", "minus"), ("minus", "plus"), ("+", "-"), ("-", "+")]
    for a, b in swaps:
        if a in label:
            other = cols.get(b.join(label.rsplit(a, 1)))
            if other is not None and other.type == col.type and other is not col:
                is_plus = a in ("(+)", "PLUS", "plus", "+")
                return (col, other) if is_plus else (other, col)
    raise ConfigError(f"{path}: anomalous column {label} has no F(+)/F(-) partner column")


def _listing(mtz) -> str:
    return ", ".join(f"{c.label} ({c.type})" for c in mtz.columns)
