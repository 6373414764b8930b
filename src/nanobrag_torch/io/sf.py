"""Structure factors from files or arrays -> the simulator's HKLData (the C's dense P1 grid).

nanoBragg looks F(h, k, l) up directly, with no symmetry: a file's reflections
(an asymmetric unit in its space group) are expanded here to every symmetry
mate and Friedel mate, as the P1 list one would otherwise prepare by hand.
The grid is then built exactly as io.hkl builds it from a text file holding
that list (same index ranges, padding slab, default_F fill, last entry wins),
so `-hkl X.mtz` and `-hkl X_p1.hkl` give the same image.

    hkl = structure_factors("data.mtz")                  # column chosen as on the CLI
    hkl = structure_factors("model.pdb", dmin_A=1.5)     # F from the atoms (io.model)
    hkl = structure_factors(miller, F, spacegroup="P 21 21 21")   # arrays
    cfg.crystal.hkl = hkl; cfg.crystal.cell = list(hkl.cell)

Readers: io.mtz (MTZ), io.sfcif (mmCIF structure factors), io.model (atomic
models), io.hkl (text), all through `read_structure_factors`.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from nanobrag_torch.config import HKLData
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io.hkl import _grid_shape, _store

P1_NAMES = ("P 1", "P1", "1")


def hkl_data(hkl, F, default_F: float = 0.0, source: str = "", cell=None,
             spacegroup: str = "P 1") -> HKLData:
    """The dense grid of P1 entries hkl (n, 3) integers and F (n,), last entry winning.

    Identical to io.hkl.read_hkl of a text file with the same lines in the same order.
    """
    hkl = np.asarray(hkl)
    F = np.asarray(F, dtype=np.float64).reshape(-1)
    if hkl.ndim != 2 or hkl.shape[1] != 3 or len(hkl) != len(F):
        raise ValueError(f"need Miller indices (n, 3) and F (n,), got {hkl.shape} and {F.shape}")
    if len(hkl) == 0:
        raise ConfigError(f"{source or 'structure factors'}: no reflections")
    if not np.all(np.isfinite(F)):
        raise ConfigError(f"{source or 'structure factors'}: F must be finite numbers")
    idx = hkl.astype(np.int64)
    if not np.array_equal(idx, hkl):
        raise ValueError("Miller indices must be integers")
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    bounds = (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))
    ranges = tuple(int(hi[i] - lo[i] + 1) for i in range(3))
    shape = _grid_shape(source, ranges, bounds)
    grid = np.zeros(shape, dtype=np.float64)
    if float(default_F) != 0.0:
        grid[:ranges[0], :ranges[1], :ranges[2]] = float(default_F)
    _store(source, grid, np.column_stack([idx.astype(np.float64), F]), tuple(lo))
    return HKLData(F=grid, h_min=bounds[0], h_max=bounds[1], k_min=bounds[2], k_max=bounds[3],
                   l_min=bounds[4], l_max=bounds[5], hkls=len(F), source=str(source),
                   cell=None if cell is None else tuple(float(x) for x in cell),
                   spacegroup=str(spacegroup))


def rotations(spacegroup) -> np.ndarray:
    """The point-group rotations (m, 3, 3) of a space group (gemmi name or object), as
    integer matrices acting on row vectors of Miller indices: h' = h @ R."""
    if isinstance(spacegroup, str) and spacegroup.strip() in P1_NAMES:
        return np.eye(3, dtype=np.int64)[None]
    from nanobrag_torch.io._optional import require
    gemmi = require("gemmi")
    sg = spacegroup
    if isinstance(sg, str):
        sg = gemmi.find_spacegroup_by_name(sg)
        if sg is None:
            raise ConfigError(f"unknown space group {spacegroup!r}")
    ops = sg.operations()
    mats = [np.array(op.rot, dtype=np.int64) // op.DEN for op in ops.sym_ops]
    return np.unique(np.stack(mats), axis=0)


def expand_to_p1(hkl, F, spacegroup="P 1", F_minus=None, hkl_minus=None):
    """Every symmetry mate and Friedel mate of the reflections: (hkl (n, 3), F (n,)).

    hkl (m, 3) with F (m,): unique reflections in `spacegroup`. Each goes to R h for
    every rotation R of the point group, with the same amplitude, and to -R h (Friedel).
    Anomalous data: F holds F(+) at hkl, F_minus F(-) at hkl_minus (default hkl); then
    R h gets F(+) and -R h gets F(-), so the pairs stay apart. Order: all F(+) (or F)
    entries by rotation, then the Friedel entries (equal duplicates are harmless:
    the last one wins in the grid).
    """
    R = rotations(spacegroup)
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    F = np.asarray(F, dtype=np.float64).reshape(-1)
    plus = np.einsum("nj,rji->rni", hkl, R).reshape(-1, 3)
    F_plus = np.tile(F, len(R))
    if F_minus is None:
        minus_hkl, F_m = plus, F_plus
    else:
        src = hkl if hkl_minus is None else np.asarray(hkl_minus, dtype=np.int64).reshape(-1, 3)
        minus_hkl = np.einsum("nj,rji->rni", src, R).reshape(-1, 3)
        F_m = np.tile(np.asarray(F_minus, dtype=np.float64).reshape(-1), len(R))
    return np.concatenate([plus, -minus_hkl]), np.concatenate([F_plus, F_m])


def file_kind(path) -> str:
    """'mtz', 'cif-sf' (mmCIF with _refln), 'cif-model' (mmCIF with _atom_site), 'pdb' or
    'text' (anything else, e.g. an h k l F list), from the file's content."""
    from nanobrag_torch.io._common import open_input
    try:
        fh, _ = open_input(path)        # a FIFO or device is not opened (it could block)
    except ConfigError:
        return "text"                   # the text reader reports the file problem
    try:
        with fh:
            head = fh.read(1 << 20)
            if head[:4] == b"MTZ ":
                return "mtz"
            text = head.lstrip()
            while text.startswith(b"#"):
                text = text.split(b"\n", 1)[-1].lstrip() if b"\n" in text else b""
            if text[:5].lower() == b"data_":
                rest = head
                while True:
                    if b"_refln." in rest or b"_diffrn_refln." in rest:
                        return "cif-sf"
                    if b"_atom_site." in rest:
                        return "cif-model"
                    rest = fh.read(1 << 24)
                    if not rest:
                        return "text"
    except OSError:
        return "text"            # the text reader reports the file problem
    for line in head.split(b"\n")[:2000]:
        if line[:6] in (b"ATOM  ", b"HETATM", b"CRYST1"):
            return "pdb"
    return "text"


def read_structure_factors(path, *, column: Optional[str] = None, default_F: float = 0.0,
                           dmin_A: Optional[float] = None, strict: bool = True,
                           kind: Optional[str] = None):
    """(HKLData, messages) from any structure-factor source file; see structure_factors."""
    kind = kind or file_kind(path)
    if kind == "mtz":
        from nanobrag_torch.io.mtz import read_mtz
        return read_mtz(path, column=column, default_F=default_F)
    if kind == "cif-sf":
        from nanobrag_torch.io.sfcif import read_sf_cif
        return read_sf_cif(path, column=column, default_F=default_F)
    if kind in ("pdb", "cif-model"):
        if dmin_A is None or not dmin_A > 0:
            raise ConfigError(f"{path}: an atomic model; F from atoms needs a resolution "
                              f"limit (dmin_A > 0)")
        from nanobrag_torch.io.model import model_structure_factors
        return model_structure_factors(path, dmin_A, default_F=default_F)
    if column is not None:
        raise ConfigError(f"{path}: a text 'h k l F' list has no columns to choose "
                          f"(column {column!r} is for MTZ or mmCIF files)")
    from nanobrag_torch.io.hkl import read_hkl_with_messages
    return read_hkl_with_messages(path, default_F, strict)


def structure_factors(source, F=None, *, spacegroup: Optional[str] = None, cell=None,
                      column: Optional[str] = None, dmin_A: Optional[float] = None,
                      default_F: float = 0.0) -> HKLData:
    """The structure-factor grid the simulator takes (cfg.crystal.hkl), from a file or arrays.

    source: a path to an MTZ file, an mmCIF structure-factor file, an atomic model
        (PDB or mmCIF; F computed by gemmi to dmin_A, see io.model) or a text h k l F
        list; or Miller indices (n, 3) with F (n,) given separately; or an (n, 4) array
        of h k l F.
    spacegroup: for arrays, the space group they are unique in (default P 1: only
        Friedel mates are added). Files carry their own.
    cell: for arrays, recorded as HKLData.cell (files carry their own).
    column: MTZ column label or mmCIF _refln tag (default: the CLI's choice, see io.mtz).
    Returns HKLData with F expanded to P1 (symmetry and Friedel mates), .cell and
    .spacegroup from the file where it has them.
    """
    if isinstance(source, (str, os.PathLike)):
        hkl, _ = read_structure_factors(source, column=column, default_F=default_F, dmin_A=dmin_A)
        return hkl
    arr = np.asarray(source)
    if F is None:
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"give Miller indices (n, 3) and F (n,), or one (n, 4) array of "
                             f"h k l F; got shape {arr.shape}")
        arr, F = arr[:, :3], arr[:, 3]
    F = np.asarray(F, dtype=np.float64).reshape(-1)
    if np.any(np.asarray(arr) != np.rint(arr)):
        raise ValueError("Miller indices must be integers")
    sg = spacegroup or "P 1"
    p1_hkl, p1_F = expand_to_p1(np.rint(arr).astype(np.int64), F, sg)
    return hkl_data(p1_hkl, p1_F, default_F, source="arrays", cell=cell, spacegroup=sg)


def cell_mismatch(a, b, tol: float = 0.01) -> bool:
    """True when two cells (a b c alpha beta gamma) differ by more than tol (relative) anywhere."""
    return any(abs(x - y) > tol * max(abs(y), 1e-12) for x, y in zip(a, b))


def cell_text(cell) -> str:
    return " ".join(f"{float(x):g}" for x in cell)


def describe_expansion(n_in: int, hkl_p1, spacegroup: str) -> str:
    idx = np.asarray(hkl_p1, dtype=np.int64)
    idx = idx - idx.min(axis=0)
    span = idx.max(axis=0) + 1
    seen = np.zeros(int(np.prod(span)), dtype=bool)     # the size of the F grid
    seen[(idx[:, 0] * span[1] + idx[:, 1]) * span[2] + idx[:, 2]] = True
    unique = int(seen.sum())
    return f"{n_in} reflections in {spacegroup} -> {unique} in P1 with symmetry and Friedel mates"


def finite_rows(*arrays):
    """A mask of the rows where every array is a finite number (MTZ/mmCIF missing: NaN)."""
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a, dtype=np.float64))
    return ok


def amplitudes_from_intensities(I) -> tuple[np.ndarray, int]:
    """sqrt(I), negative intensities set to 0; also returns how many were negative."""
    I = np.asarray(I, dtype=np.float64)
    negative = int((I < 0).sum())
    return np.sqrt(np.maximum(I, 0.0)), negative


def valid_cell(cell) -> bool:
    return cell is not None and all(math.isfinite(x) and x > 0 for x in cell)
