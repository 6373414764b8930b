"""Structure factors from an atomic model (PDB or mmCIF) through gemmi, expanded to P1.

F(hkl) of the first model to d_min, as gemmi computes it for refinement programs:
the atoms' electron density (International Tables Vol. C 4-Gaussian X-ray form
factors, "IT92", with each atom's B factor or ANISOU tensor and occupancy) is
sampled on a grid finer than d_min/3 (rate 1.5) and Fourier transformed
(DensityCalculatorX with refmac-compatible blurring, removed again after the
transform). It agrees with a direct summation over atoms to ~2e-5 of the largest F.
Not modelled: bulk solvent (so low-resolution F are too strong compared with
measured data), anomalous scattering (f', f'' = 0: no Friedel differences) and
hydrogens absent from the file. F(000) is left out.
"""
from __future__ import annotations

import numpy as np

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io._common import INPUT_LIMIT, check_regular
from nanobrag_torch.io._optional import require
from nanobrag_torch.io.sf import describe_expansion, expand_to_p1, hkl_data, valid_cell

METHOD = ("gemmi DensityCalculatorX (FFT of the model density; IT92 X-ray form factors, "
          "B factors and occupancies; no bulk solvent, no anomalous f', f'')")


def read_model(path):
    """(gemmi.Structure, cell (6,)): a model with atoms and a crystal unit cell, or ConfigError."""
    check_regular(path, INPUT_LIMIT, "an atomic model")
    gemmi = require("gemmi")
    try:
        st = gemmi.read_structure(str(path), format=gemmi.CoorFormat.Detect)
    except (RuntimeError, ValueError, OSError) as err:
        raise ConfigError(f"{path}: cannot read the atomic model ({err})") from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise ConfigError(f"{path}: no atoms in the model")
    cell = tuple(float(x) for x in st.cell.parameters)
    if not valid_cell(cell) or cell[:3] == (1.0, 1.0, 1.0):
        raise ConfigError(f"{path}: the model has no crystal unit cell (CRYST1 / _cell)")
    return st, cell


def model_cell(path) -> tuple:
    """The model's unit cell a b c alpha beta gamma."""
    return read_model(path)[1]


def model_structure_factors(path, dmin_A: float, default_F: float = 0.0):
    """(HKLData in P1, messages): |F| of the model to dmin_A (Angstrom)."""
    gemmi = require("gemmi")
    dmin = float(dmin_A)
    if not dmin > 0:
        raise ConfigError(f"{path}: the resolution limit must be > 0 A, got {dmin_A}")
    st, cell = read_model(path)
    sg = st.find_spacegroup()
    if sg is None:
        raise ConfigError(f"{path}: the model has no (known) space group "
                          f"({st.spacegroup_hm!r})")
    st.setup_entities()
    model = st[0]
    dc = gemmi.DensityCalculatorX()
    dc.d_min = dmin
    dc.rate = 1.5
    dc.set_grid_cell_and_spacegroup(st)
    dc.set_refmac_compatible_blur(model)
    dc.put_model_density_on_grid(model)
    grid = gemmi.transform_map_to_f_phi(dc.grid, half_l=True)
    asu = grid.prepare_asu_data(dmin=dmin, unblur=dc.blur)
    hkl = np.asarray(asu.miller_array, dtype=np.int64)
    F = np.abs(np.asarray(asu.value_array))
    p1_hkl, p1_F = expand_to_p1(hkl, F, sg)
    out = hkl_data(p1_hkl, p1_F, default_F, source=str(path), cell=cell, spacegroup=sg.hm)
    return out, [f"F from the model {path} ({model.count_atom_sites()} atoms of its first "
                 f"model) to {dmin:.4g} A by {METHOD}; "
                 f"{describe_expansion(len(F), p1_hkl, sg.hm)}"]
