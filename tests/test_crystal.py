"""Crystal (SPEC 2): cell construction, misset, -mat, re-derivation, crystal size,
phi and mosaic plans, C-PARITY-001 carryover, rotated cells, mosaic matrices.

Expected values come from SPEC.md or are computed here independently (numpy
rotation matrices, textbook crystallography).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nanobrag_torch import crystal
from nanobrag_torch.cli import config_from_args
from rotations import axis_angle, rx, ry, rz
from nanobrag_torch.config import SimConfig

F64 = torch.float64
RTD = 180.0 * (1.0 / math.pi)
GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
A_MAT = GOLDEN / "inputs" / "A.mat"


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # no stray Fdump.bin


def lattice_of(*args, lam_A=1.0, mode="spec"):
    cfg = config_from_args([str(a) for a in args] + ["-default_F", "1"])
    lam = torch.tensor(lam_A * 1e-10, dtype=F64)
    return crystal.crystal_lattice(cfg, mode, lam, F64, "cpu")


def npv(t):
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


def angle_deg(x, y):
    return math.degrees(math.acos(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)))


def real_A(lat):
    return np.stack([npv(lat.a), npv(lat.b), npv(lat.c)]) * 1e10      # rows a, b, c in Angstrom


def recip(lat):
    return np.stack([npv(lat.a_star), npv(lat.b_star), npv(lat.c_star)])


# --------------------------------------------------------------------------
# cell (SPEC 2.1, 2.4)

def test_triclinic_cell_lengths_exact_and_c_angles():
    """SPEC 2.1 / C-IMPL-BUG-001: cell 70 80 90 75 85 95 -> real-space lengths exactly 70, 80, 90 A
    after re-derivation, angles drift to the C's 75.0391 85.0136 95.0081 deg."""
    lat = lattice_of("-cell", 70, 80, 90, 75, 85, 95)
    a, b, c = real_A(lat)
    assert np.linalg.norm(a) == pytest.approx(70.0, rel=1e-14)
    assert np.linalg.norm(b) == pytest.approx(80.0, rel=1e-14)
    assert np.linalg.norm(c) == pytest.approx(90.0, rel=1e-14)
    assert angle_deg(b, c) == pytest.approx(75.0391, abs=1e-4)
    assert angle_deg(c, a) == pytest.approx(85.0136, abs=1e-4)
    assert angle_deg(a, b) == pytest.approx(95.0081, abs=1e-4)


def test_cell_volume_formula():
    """SPEC 2.1: V = 2abc sqrt(|sin s sin(s-α) sin(s-β) sin(s-γ)|), s = (α+β+γ)/2 (= the textbook
    abc sqrt(1 - cos²α - cos²β - cos²γ + 2 cosα cosβ cosγ))."""
    lat = lattice_of("-cell", 70, 80, 90, 75, 85, 95)
    ca, cb, cg = (math.cos(math.radians(x)) for x in (75, 85, 95))
    V = 70 * 80 * 90 * math.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)
    assert float(lat.V_cell) == pytest.approx(V, rel=1e-12)


def test_cubic_cell_is_orthonormal_along_lab_axes():
    """SPEC 2.1: a cubic cell gives a* = (1/a,0,0) etc., so a, b, c are orthogonal and along x, y, z."""
    lat = lattice_of("-cell", 100)
    A = real_A(lat)
    np.testing.assert_allclose(A, 100 * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(recip(lat), 0.01 * np.eye(3), atol=1e-17)
    assert float(lat.V_cell) == pytest.approx(1e6, rel=1e-14)


@pytest.mark.parametrize("cell", [(100, 100, 100, 90, 90, 90), (50, 60, 70, 90, 90, 90),
                                  (50, 60, 70, 90, 105, 90)])
def test_reciprocal_dot_real_is_identity(cell):
    """SPEC 2.4 step 5-6: a*.a = b*.b = c*.c = 1 and the cross terms 0 (exact where the
    C's c*_z formula equals the textbook one: orthorhombic, monoclinic)."""
    lat = lattice_of("-cell", *cell, "-misset", 10, 20, 30)
    M = recip(lat) @ real_A(lat).T
    np.testing.assert_allclose(M, np.eye(3), atol=1e-13)


def test_triclinic_reciprocal_dot_real_carries_volume_ratio():
    """SPEC 2.4 step 6 (V* not recomputed) with the C's c*_z (SPEC 2.1): for a triclinic cell
    a*.a = b*.b = c*.c = V_real/V_formula (~1.0002 here), cross terms 0."""
    lat = lattice_of("-cell", 70, 80, 90, 75, 85, 95)
    A = real_A(lat)
    M = recip(lat) @ A.T
    V_real = np.dot(A[0], np.cross(A[1], A[2]))
    ratio = V_real / float(lat.V_cell)
    assert ratio == pytest.approx(1.000203, abs=2e-6)
    np.testing.assert_allclose(M, ratio * np.eye(3), atol=1e-13)


def test_misset_order_x_then_y_then_z():
    """SPEC 2.3: -misset rx ry rz rotates the reciprocal axes by Rz.Ry.Rx (X first)."""
    lat0 = lattice_of("-cell", 70, 80, 90, 75, 85, 95)
    lat = lattice_of("-cell", 70, 80, 90, 75, 85, 95, "-misset", 10, 20, 30)
    M = rz(30 / RTD) @ ry(20 / RTD) @ rx(10 / RTD)
    np.testing.assert_allclose(recip(lat), recip(lat0) @ M.T, atol=1e-15)
    np.testing.assert_allclose(real_A(lat), real_A(lat0) @ M.T, atol=1e-11)
    # another order gives a visibly different crystal: the test discriminates
    wrong = rx(10 / RTD) @ ry(20 / RTD) @ rz(30 / RTD)
    assert np.abs(recip(lat) - recip(lat0) @ wrong.T).max() > 1e-3


def test_cubic_misset_rotates_real_axes():
    """SPEC 2.3/2.4: cubic 100 A with misset (0,0,90): a -> +y, b -> -x, c unchanged."""
    lat = lattice_of("-cell", 100, "-misset", 0, 0, 90)
    np.testing.assert_allclose(real_A(lat), [[0, 100, 0], [-100, 0, 0], [0, 0, 100]], atol=1e-12)


@pytest.mark.skipif(not A_MAT.is_file(), reason="corpus A.mat not found")
@pytest.mark.parametrize("lam", [1.0, 2.0])
def test_mat_file_scaled_by_wavelength(lam):
    """SPEC 2.2: -mat columns are a*, b*, c* times λ; they are divided by λ (A); without -cell
    the re-derivation keeps them and a = (b* x c*)/V*."""
    vals = [float(x) for x in A_MAT.read_text().split()[:9]]
    mat = np.array(vals).reshape(3, 3)
    lat = lattice_of("-mat", A_MAT, "-lambda", lam, lam_A=lam)
    astar, bstar, cstar = mat[:, 0] / lam, mat[:, 1] / lam, mat[:, 2] / lam
    np.testing.assert_allclose(recip(lat), np.stack([astar, bstar, cstar]), rtol=1e-12, atol=1e-17)
    Vstar = np.dot(astar, np.cross(bstar, cstar))
    np.testing.assert_allclose(real_A(lat)[0], np.cross(bstar, cstar) / Vstar, rtol=1e-12)
    np.testing.assert_allclose(real_A(lat)[2], np.cross(astar, bstar) / Vstar, rtol=1e-12)
    assert float(lat.V_cell) == pytest.approx(1 / Vstar, rel=1e-12)


@pytest.mark.skipif(not A_MAT.is_file(), reason="corpus A.mat not found")
def test_mat_with_cell_rescales_lengths():
    """SPEC 2.2 / C-DESIGN-FLAW-004: -mat and -cell: the matrix gives directions, the cell gives
    the lengths (real-space lengths = -cell values)."""
    lat = lattice_of("-mat", A_MAT, "-cell", 40, 50, 60, 90, 90, 90)
    A = real_A(lat)
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), [40, 50, 60], rtol=1e-12)
    lat_m = lattice_of("-mat", A_MAT)
    np.testing.assert_allclose(A[0] / 40, real_A(lat_m)[0] / np.linalg.norm(real_A(lat_m)[0]), atol=1e-6)


# --------------------------------------------------------------------------
# crystal size (SPEC 2.5)

def test_crystal_size_from_xtalsize_uses_ceil():
    """SPEC 2.5: Na = ceil(sample_x/|a|) etc.: 0.0005 mm with 70/80/90 A -> 72, 63, 56."""
    lat = lattice_of("-cell", 70, 80, 90, 90, 90, 90, "-xtalsize", 0.0005)
    np.testing.assert_array_equal(npv(lat.n_cells), [72, 63, 56])


def test_crystal_size_per_axis():
    """SPEC 2.5: -sample_x/y/z (mm) set each axis; unset axes keep -N."""
    lat = lattice_of("-cell", 100, "-N", 4, "-sample_y", 0.000705)
    np.testing.assert_array_equal(npv(lat.n_cells), [4, 71, 4])


@pytest.mark.parametrize("args,expect", [
    (["-N", "0"], [1, 1, 1]),
    (["-Na", "3", "-Nb", "0", "-Nc", "5"], [3, 1, 5]),
    (["-N", "7"], [7, 7, 7]),
    ([], [1, 1, 1]),
])
def test_crystal_size_clamped_to_at_least_one(args, expect):
    """SPEC 2.5: Na, Nb, Nc clamped to >= 1 (0 is not preserved)."""
    lat = lattice_of("-cell", 100, *args)
    np.testing.assert_array_equal(npv(lat.n_cells), expect)


# --------------------------------------------------------------------------
# phi (SPEC 2.8), mosaic (SPEC 2.7)

def _phi(osc=None, step=None, steps=None, phi0=0.0):
    cfg = SimConfig()
    cfg.crystal.osc_deg, cfg.crystal.phistep_deg, cfg.crystal.phisteps = osc, step, steps
    cfg.crystal.phi_deg = phi0
    p = crystal.phi_plan(cfg)
    return p.phisteps, float(p.osc_rad) * RTD, float(p.phistep_rad) * RTD


@pytest.mark.parametrize("given,expect", [
    (dict(), (1, 0.0, 0.0)),                                  # nothing
    (dict(step=0.5), (2, 0.5, 0.5)),                          # step only: osc = step, 2 steps
    (dict(osc=2.0), (2, 2.0, 1.0)),                           # osc only: 2 steps, step = osc/2
    (dict(osc=2.0, step=0.3), (7, 2.0, 0.3)),                 # ceil(2/0.3) = 7
    (dict(steps=4), (4, 1.0, 0.25)),                          # steps only: osc = 1 deg
    (dict(steps=4, step=0.5), (2, 0.5, 0.5)),                 # steps + step: osc = step, 2 steps
    (dict(steps=4, osc=2.0), (4, 2.0, 0.5)),                  # steps + osc: step = osc/steps
    (dict(steps=4, osc=2.0, step=0.3), (4, 2.0, 0.3)),        # all three: as given
    (dict(steps=0), (1, 1.0, 1.0)),                           # 0 counts as 1
])
def test_phi_plan_table(given, expect):
    """SPEC 2.8 table: phi step auto-selection (all 8 rows, plus phisteps 0 -> 1)."""
    steps, osc, step = _phi(**given)
    assert steps == expect[0]
    assert osc == pytest.approx(expect[1], abs=1e-12)
    assert step == pytest.approx(expect[2], abs=1e-12)


def test_phi_angles_are_left_edges():
    """SPEC 2.8: φ_i = φ0 + iΔφ (step starts, not midpoints): -phi 10 -osc 2 -phisteps 4."""
    cfg = SimConfig()
    cfg.crystal.phi_deg, cfg.crystal.osc_deg, cfg.crystal.phisteps = 10.0, 2.0, 4
    phis = npv(crystal.phi_angles(crystal.phi_plan(cfg), F64, "cpu")) * RTD
    np.testing.assert_allclose(phis, [10.0, 10.5, 11.0, 11.5], atol=1e-12)


@pytest.mark.parametrize("spread,domains,expect_n,warn", [
    (None, None, 1, False),     # nothing
    (0.0, None, 1, False),      # spread 0
    (0.5, None, 10, True),      # spread, no count -> 10 domains with a warning
    (None, 5, 1, True),         # count without spread -> 1 (warning)
    (0.0, 5, 1, True),          # zero spread -> 1 (warning)
    (0.5, 5, 5, False),
    (0.5, 1, 1, False),
])
def test_mosaic_plan_rules(spread, domains, expect_n, warn):
    """SPEC 2.7 domain-count rules."""
    cfg = SimConfig()
    cfg.crystal.mosaic_spread_deg, cfg.crystal.mosaic_domains = spread, domains
    n, spread_out, notes = crystal.mosaic_plan(cfg)
    assert n == expect_n
    assert bool(notes) is warn
    if expect_n == 10:
        assert "upping to 10 mosaic domains" in notes[0]
        assert float(spread_out) == 0.5


def test_mosaic_umats_are_rotations_within_spread():
    """SPEC 2.7: domain 0 is the identity, every U is a proper rotation (U U^T = 1, det 1)
    by an angle <= spread; the angles differ between domains."""
    spread_deg = 2.0
    U = npv(crystal.mosaic_umats(6, spread_deg, 777, F64, "cpu"))
    assert U.shape == (6, 3, 3)
    np.testing.assert_array_equal(U[0], np.eye(3))
    angles = []
    for m in range(1, 6):
        np.testing.assert_allclose(U[m] @ U[m].T, np.eye(3), atol=1e-14)
        assert np.linalg.det(U[m]) == pytest.approx(1.0, abs=1e-14)
        angles.append(math.acos(min(1.0, (np.trace(U[m]) - 1) / 2)))
    assert max(angles) <= spread_deg / RTD * (1 + 1e-6)
    assert min(angles) > 0
    assert len(set(np.round(angles, 12))) == 5


def test_umat_from_axis_angle_matches_rodrigues():
    """SPEC 2.7: U is the right-handed axis-angle matrix."""
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    U = npv(crystal.umat_from_axis_angle(torch.tensor(axis), torch.tensor(0.7, dtype=F64)))
    np.testing.assert_allclose(U, axis_angle(axis, 0.7), atol=1e-15)


# --------------------------------------------------------------------------
# C-PARITY-001 (SPEC 8.2)

@pytest.mark.parametrize("phis,first,expect", [
    ([0.0, 1.0, 2.0, 3.0], False, [3, 1, 2, 3]),     # step 0 reuses the last step
    ([0.0, 1.0, 2.0, 3.0], True, [-1, 1, 2, 3]),     # the run's first loop: unrotated
    ([0.1, 0.2], False, [0, 1]),                      # phi0 != 0: no effect
    ([-1.0, 0.0, 1.0], False, [0, 0, 2]),             # a later zero reuses step i-1
    ([-1.0, 0.0, 1.0], True, [0, 0, 2]),
    ([0.0], False, [-1]),                              # one step at 0: unrotated
    ([0.0, 0.0, 1.0], False, [2, 2, 2]),
    ([0.0, 0.0, 1.0], True, [-1, -1, 2]),
])
def test_carried_phi_steps(phis, first, expect):
    """C-PARITY-001 / SPEC 8.2: for φ_i == 0 the C reuses the last rotation computed
    (cyclically from the previous loop, except in the run's first loop)."""
    assert crystal.carried_phi_steps(phis, first_loop=first) == expect


# --------------------------------------------------------------------------
# rotated cells (SPEC 2.8, 2.7)

def _triclinic():
    return lattice_of("-cell", 70, 80, 90, 75, 85, 95, "-misset", 10, 20, 30)


def test_rotated_cells_spec_step0_is_unrotated_and_rotation_about_spindle():
    """SPEC 2.8 + SPEC 0 item 1: spec mode: φ=0 gives the unrotated cell; step i is the
    right-handed rotation about the spindle u by φ_i; lengths and angles are preserved."""
    lat = _triclinic()
    u = np.array([0.0, 0.0, 1.0])
    phis = torch.tensor([0.0, 10 / RTD, 90 / RTD], dtype=F64)
    eye = torch.eye(3, dtype=F64)[None]
    cells = npv(crystal.rotated_cells(lat, torch.tensor(u), phis, eye))
    assert cells.shape == (3, 1, 3, 3)
    A0 = np.stack([npv(lat.a), npv(lat.b), npv(lat.c)])
    np.testing.assert_array_equal(cells[0, 0], A0)
    for i, phi in enumerate(npv(phis)):
        np.testing.assert_allclose(cells[i, 0], A0 @ axis_angle(u, phi).T, atol=1e-24)
        np.testing.assert_allclose(np.linalg.norm(cells[i, 0], axis=1), np.linalg.norm(A0, axis=1), rtol=1e-14)
        G0, G = A0 @ A0.T, cells[i, 0] @ cells[i, 0].T
        np.testing.assert_allclose(G, G0, rtol=1e-12, atol=1e-32)


def test_rotated_cells_general_spindle_and_mosaic():
    """SPEC 2.7/2.8: (a,b,c) = U_m . R_u(φ) . (a0,b0,c0) for an arbitrary spindle."""
    lat = _triclinic()
    u = np.array([0.2, 0.9, -0.4])
    u /= np.linalg.norm(u)
    phis = torch.tensor([5 / RTD, 35 / RTD], dtype=F64)
    U = crystal.mosaic_umats(3, 1.0, 42, F64, "cpu")
    cells = npv(crystal.rotated_cells(lat, torch.tensor(u), phis, U))
    assert cells.shape == (2, 3, 3, 3)
    A0 = np.stack([npv(lat.a), npv(lat.b), npv(lat.c)])
    Un = npv(U)
    for i, phi in enumerate(npv(phis)):
        for m in range(3):
            expect = (Un[m] @ axis_angle(u, phi) @ A0.T).T
            np.testing.assert_allclose(cells[i, m], expect, atol=1e-23)


def test_rotated_cells_c_parity_substitution():
    """SPEC 8.2: with carried_phi_steps the φ=0 step uses the last step's rotation."""
    lat = _triclinic()
    u = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    phis = torch.tensor([0.0, 1 / RTD, 2 / RTD], dtype=F64)
    eye = torch.eye(3, dtype=F64)[None]
    used = crystal.carried_phi_steps([float(p) for p in phis], first_loop=False)
    cells = npv(crystal.rotated_cells(lat, u, phis, eye, used))
    fresh = npv(crystal.rotated_cells(lat, u, phis, eye))
    np.testing.assert_array_equal(cells[0], fresh[2])
    np.testing.assert_array_equal(cells[1:], fresh[1:])
    first = crystal.carried_phi_steps([float(p) for p in phis], first_loop=True)
    cells_first = npv(crystal.rotated_cells(lat, u, phis, eye, first))
    np.testing.assert_array_equal(cells_first[0, 0], np.stack([npv(lat.a), npv(lat.b), npv(lat.c)]))
