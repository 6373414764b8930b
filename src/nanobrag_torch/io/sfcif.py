"""mmCIF structure-factor files (e.g. a PDB entry's -sf.cif) through gemmi, expanded to P1.

The first data block holding merged reflections (_refln) with a usable column is
read. Column choice, as for MTZ (io.mtz): `column` (an _refln tag, with or without
the "_refln." prefix) if given; by default the first of AMPLITUDES, else the pair
pdbx_F_plus/pdbx_F_minus (kept apart), else the square root of the first of
INTENSITIES, else of pdbx_I_plus/pdbx_I_minus. Unknown values ('?', '.') are skipped.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import INPUT_LIMIT, check_regular
from nanobrag_torch.io._optional import require
from nanobrag_torch.io.sf import (amplitudes_from_intensities, describe_expansion, expand_to_p1,
                                  finite_rows, hkl_data, valid_cell)

AMPLITUDES = ("F_meas_au", "F_meas", "F_calc_au", "F_calc")
INTENSITIES = ("intensity_meas", "F_squared_meas", "intensity_calc", "F_squared_calc")
PAIRS = {"pdbx_F_plus": "pdbx_F_minus", "pdbx_I_plus": "pdbx_I_minus"}
PAIRS.update({m: p for p, m in list(PAIRS.items())})
_PLUS = ("pdbx_F_plus", "pdbx_I_plus")


def read_sf_cif(path, column: Optional[str] = None, default_F: float = 0.0):
    """(HKLData in P1, messages) from an mmCIF structure-factor file."""
    check_regular(path, INPUT_LIMIT, "an mmCIF file")
    gemmi = require("gemmi")
    try:
        blocks = gemmi.as_refln_blocks(gemmi.cif.read(str(path)))
    except (RuntimeError, ValueError, OSError) as err:
        raise ConfigError(f"{path}: cannot read the mmCIF file ({err})") from None
    merged = [rb for rb in blocks if rb.default_loop is not None and not rb.is_unmerged()]
    if not merged:
        raise ConfigError(f"{path}: no merged reflections (_refln) in the file")
    tag = None if column is None else column.replace("_refln.", "")
    for rb in merged:
        choice = _choose(rb, tag)
        if choice is not None:
            break
    else:
        have = sorted({t for rb in merged for t in rb.column_labels()})
        what = f"no column {tag!r}" if tag else "no amplitude or intensity column"
        raise ConfigError(f"{path}: {what} (columns: {', '.join(have)})")
    tags, intensity = choice
    hkl = np.asarray(rb.make_miller_array(), dtype=np.int64)
    values = [np.asarray(rb.make_float_array(t), dtype=np.float64) for t in tags]
    negative = 0
    if intensity:
        converted = [amplitudes_from_intensities(v) for v in values]
        values, negative = [c[0] for c in converted], sum(c[1] for c in converted)
    sg = rb.spacegroup
    if sg is None:
        raise ConfigError(f"{path}: no space group in data block {rb.block.name}")
    ok = [finite_rows(v) for v in values]
    if len(values) == 1:
        p1_hkl, p1_F = expand_to_p1(hkl[ok[0]], values[0][ok[0]], sg)
        n_in = int(ok[0].sum())
    else:
        p1_hkl, p1_F = expand_to_p1(hkl[ok[0]], values[0][ok[0]], sg,
                                    F_minus=values[1][ok[1]], hkl_minus=hkl[ok[1]])
        n_in = int((ok[0] | ok[1]).sum())
    if n_in == 0:
        raise ConfigError(f"{path}: _refln.{tags[0]} has no values")
    cell = tuple(float(x) for x in rb.cell.parameters)
    out = hkl_data(p1_hkl, p1_F, default_F, source=str(path),
                   cell=cell if valid_cell(cell) else None, spacegroup=sg.hm)
    what = tags[0] if len(tags) == 1 else f"{tags[0]}/{tags[1]} (kept apart)"
    if intensity:
        what = f"sqrt({what})" + (f", {negative} negative intensities set to F = 0"
                                  if negative else "")
    return out, [f"reading {path} (block {rb.block.name}): F = {what}; "
                 f"{describe_expansion(n_in, p1_hkl, sg.hm)}"]


def _choose(rb, tag):
    """((tags...), is_intensity) for this block, or None when it has no such column."""
    have = set(rb.column_labels())
    if tag is not None:
        if tag not in have:
            return None
        intensity = tag in INTENSITIES or tag.startswith("pdbx_I_") or "intensity" in tag
        if tag in PAIRS:
            if PAIRS[tag] not in have:
                return None
            pair = (tag, PAIRS[tag]) if tag in _PLUS else (PAIRS[tag], tag)
            return pair, intensity
        return (tag,), intensity
    for names, pair, intensity in ((AMPLITUDES, ("pdbx_F_plus", "pdbx_F_minus"), False),
                                   (INTENSITIES, ("pdbx_I_plus", "pdbx_I_minus"), True)):
        for name in names:
            if name in have and _has_values(rb, name):
                return (name,), intensity
        if pair[0] in have and pair[1] in have:
            return pair, intensity
    return None


def _has_values(rb, tag) -> bool:
    return bool(np.isfinite(np.asarray(rb.make_float_array(tag))).any())
