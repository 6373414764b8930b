"""Beam (SPEC 3): step auto-selection, divergence grid and elliptical trim, source
order, dispersion wavelengths, polarisation factor.

Expected values come from SPEC.md or independent computations here
(numpy Rodrigues rotations, the dipole form of the Kahn factor).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nanobrag_torch import beam, detector
from nanobrag_torch.cli import config_from_args
from nanobrag_torch.simulator import Simulator

F64 = torch.float64


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # no stray Fdump.bin


def npv(t):
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


def sources_of(*args, mode="spec"):
    cfg = config_from_args(["-cell", "100", "-default_F", "1"] + [str(a) for a in args])
    vec = detector.lab_vectors(cfg, F64, "cpu")
    return beam.make_sources(cfg, vec.beam, vec.polar, vec.vert, mode, F64, "cpu"), vec


def axis_angle(axis, phi):
    k = np.asarray(axis, dtype=float)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(phi) * K + (1 - math.cos(phi)) * K @ K


# --------------------------------------------------------------------------
# step_plan (SPEC 3.2)

U = -1.0   # "unset"


@pytest.mark.parametrize("n,r,s,expect", [
    # n <= 0
    (-1, U, U, (1, 0.0, 0.0)),             # nothing
    (-1, U, 0.002, (2, 0.002, 0.002)),     # step only: R = S, n = 2
    (-1, 0.004, U, (2, 0.004, 0.004)),     # range only: S = R, n = 2
    (-1, 0.004, 0.001, (4, 0.004, 0.001)),  # n = ceil(R/S)
    (-1, 0.0045, 0.001, (5, 0.0045, 0.001)),
    # n > 0
    (3, U, U, (3, 1.0, 1.0 / 3)),          # count only: default range 1.0 rad, S = R/n (C)
    (3, U, 0.002, (2, 0.002, 0.002)),      # count + step: R = S, n = 2
    (3, 0.004, U, (3, 0.004, 0.002)),      # count + range: S = R/(n-1)
    (1, 0.004, U, (2, 0.004, 0.004)),      # ... with n forced to >= 2
    (3, 0.004, 0.001, (3, 0.004, 0.001)),  # all given
    # sanity: R <= 0 or S <= 0 -> off
    (-1, 0.0, U, (1, 0.0, 0.0)),
    (3, 0.0, U, (1, 0.0, 0.0)),
])
def test_step_plan_divergence_table(n, r, s, expect):
    """SPEC 3.2 table (C rules) for divergence; count-only default range 1.0 rad."""
    got = beam.step_plan(n, r, s, 1.0)
    assert got[0] == expect[0]
    assert float(got[1]) == pytest.approx(expect[1], abs=1e-15)
    assert float(got[2]) == pytest.approx(expect[2], abs=1e-15)


@pytest.mark.parametrize("n,r,expect", [
    (-1, 300e-6, (2, 300e-6, 150e-6)),     # thickness only: 2 layers, step = thick/2
    (4, 200e-6, (4, 200e-6, 200e-6 / 3)),  # thick + n: step = thick/(n-1)
    (3, U, (3, 0.5e-6, 0.5e-6 / 3)),       # count only (negative thick): 0.5 um in 3 layers
    (3, 0.0, (1, 0.0, 0.0)),               # -thicksteps alone: thickness off
    (-1, 0.0, (1, 0.0, 0.0)),
])
def test_step_plan_thickness(n, r, expect):
    """SPEC 3.2: thickness: range only -> n=2, Δz = thick/2; count only -> 0.5 um default."""
    got = beam.step_plan(n, r, U, 0.5e-6, range_only_halves=True)
    assert got[0] == expect[0]
    assert float(got[1]) == pytest.approx(expect[1], abs=1e-18)
    assert float(got[2]) == pytest.approx(expect[2], abs=1e-18)


@pytest.mark.parametrize("args,n,lams", [
    ([], 1, [1.0]),
    (["-dispersion", "2"], 2, [0.99, 1.01]),                         # λ0 (1 ± d/2)
    (["-dispersion", "2", "-dispsteps", "5"], 5, [0.99, 0.995, 1.0, 1.005, 1.01]),
    (["-dispsteps", "5"], 1, [1.0]),                                  # no range: off
    (["-dispersion", "1", "-dispsteps", "3", "-lambda", "2"], 3, [1.99, 2.0, 2.01]),
])
def test_dispersion_wavelengths(args, n, lams):
    """SPEC 3.2/3.3: λ_j = λ0 (1 + S j - disp/2), S = disp/(n-1); -dispersion alone gives 2."""
    src, _ = sources_of(*args)
    assert src.incident.shape[0] == n
    np.testing.assert_allclose(npv(src.wavelength) * 1e10, lams, rtol=1e-14)


# --------------------------------------------------------------------------
# divergence grid (SPEC 3.3)

def _expected_ellipse(n_h, r_h, s_h, n_v, r_v, s_v):
    """Independent count of the C's elliptical trim."""
    kept = []
    for ih in range(n_h):
        for iv in range(n_v):
            h = s_h * ih - r_h / 2.0
            v = s_v * iv - r_v / 2.0
            test = (h * h - s_h * s_h / 4.0 * (1 - n_h % 2)) / r_h / r_h
            test += (v * v - s_v * s_v / 4.0 * (1 - n_v % 2)) / r_v / r_v
            if not test * 4.0 > 1.1:
                kept.append((h, v))
    return kept


def test_divergence_ellipse_trim_spec_example():
    """SPEC 3.3 example: hdivrange = vdivrange = 0.28 mrad, step 0.02 -> 14 x 14 raster trimmed
    to an ellipse (167 of 196 points kept: counted independently)."""
    src, _ = sources_of("-hdivrange", 0.28, "-vdivrange", 0.28, "-hdivstep", 0.02, "-vdivstep", 0.02)
    assert src.hdiv[0] == 14 and src.vdiv[0] == 14
    kept = _expected_ellipse(14, 0.28e-3, 0.02e-3, 14, 0.28e-3, 0.02e-3)
    assert len(kept) == 167
    assert src.incident.shape[0] == len(kept) == src.divsteps
    # the corners are trimmed, the centre row is complete
    assert (-0.14e-3, -0.14e-3) not in [(round(h, 12), round(v, 12)) for h, v in kept]


def test_square_div_keeps_full_raster():
    """SPEC 3.3: -square_div keeps all hn x vn points."""
    src, _ = sources_of("-hdivrange", 0.28, "-vdivrange", 0.28, "-hdivstep", 0.02, "-vdivstep", 0.02,
                        "-square_div")
    assert src.incident.shape[0] == 196


def test_divergence_zero_range_on_one_axis_trims_nothing():
    """SPEC 3.3: a zero range makes the test NaN: nothing is trimmed (h range only -> 2 points)."""
    src, _ = sources_of("-hdivrange", 0.5, "-hdivsteps", 5)
    assert src.incident.shape[0] == 5


def test_source_order_and_directions():
    """SPEC 3.3: sources ordered (hdiv, vdiv, wavelength); direction = -10 m b rotated about p by
    vdiv, then about v = unit(b x p) by hdiv; incident = -unit(position)."""
    src, vec = sources_of("-hdivrange", 0.2, "-hdivsteps", 2, "-vdivrange", 0.1, "-vdivsteps", 3,
                          "-dispersion", 1, "-dispsteps", 2, "-square_div", "-lambda", 1.5)
    b, p = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
    v = np.cross(b, p)
    np.testing.assert_array_equal(npv(vec.vert), v)
    hs = [0.2e-3 * i - 0.1e-3 for i in range(2)]
    vs = [0.05e-3 * i - 0.05e-3 for i in range(3)]
    lams = [1.5 * (1 + 0.01 * j - 0.005) for j in range(2)]
    inc, lam = npv(src.incident), npv(src.wavelength) * 1e10
    assert inc.shape == (12, 3)
    k = 0
    for h in hs:
        for vv in vs:
            pos = axis_angle(v, h) @ axis_angle(p, vv) @ (-10.0 * b)
            for L in lams:
                np.testing.assert_allclose(inc[k], -pos / np.linalg.norm(pos), atol=1e-15)
                assert lam[k] == pytest.approx(L, rel=1e-14)
                # two orthogonal small rotations: angle from the beam = acos(cos h cos v)
                assert math.acos(min(1.0, float(np.dot(inc[k], b)))) == pytest.approx(
                    math.acos(math.cos(h) * math.cos(vv)), abs=1e-9)
                k += 1


def test_source_file_positions_and_defaults(tmp_path):
    """SPEC 3.4: positions unitised, incident = -unit(position); missing λ -> λ0."""
    (tmp_path / "s.txt").write_text("-10 0 0 1.0 2e-10\n0 0 -5 1.0\n")
    src, _ = sources_of("-sourcefile", tmp_path / "s.txt")
    np.testing.assert_allclose(npv(src.incident), [[1, 0, 0], [0, 0, 1]], atol=0)
    np.testing.assert_allclose(npv(src.wavelength), [2e-10, 1e-10], rtol=1e-15)


# --------------------------------------------------------------------------
# polarisation (SPEC 3.5)

def _unit(x):
    x = np.asarray(x, dtype=float)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_dirs(n, seed):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d[:, 0] = np.abs(d[:, 0]) + 0.3          # forward-ish scattering
    return _unit(d)


def _pol(K, i, d, p):
    return npv(beam.polarization_factor(K, torch.tensor(i), torch.tensor(d), torch.tensor(p)))


def test_polarization_unpolarised_is_half_one_plus_cos2():
    """SPEC 3.5 / AT-POL-001: K = 0 -> P = ½(1 + cos²2θ)."""
    i = np.array([1.0, 0, 0])
    d = _random_dirs(50, 1)
    got = _pol(0.0, np.broadcast_to(i, d.shape).copy(), d, np.array([0, 0, 1.0]))
    c = d @ i
    np.testing.assert_allclose(got, 0.5 * (1 + c * c), rtol=1e-14)


@pytest.mark.parametrize("K", [0.5, 0.95, 1.0, -0.3])
def test_polarization_kahn_factor(K):
    """SPEC 3.5 / AT-POL-001: P = ½(1 + cos²2θ − K cos2ψ sin²2θ), checked against the
    equivalent dipole form ½[1 + c² − K(2 (d·E)² − s²)], E = unit(p − (p·i)i) (K=1: 1 − (d·E)²),
    for an incident direction not along an axis and p not perpendicular to it."""
    i = _unit([1.0, 0.05, -0.02])
    p = np.array([0.0, 0.0, 1.0])
    d = _random_dirs(60, 2)
    got = _pol(K, np.broadcast_to(i, d.shape).copy(), d, p)
    E = _unit(p - np.dot(p, i) * i)
    c = d @ i
    s2 = 1 - c * c
    dE = d @ E
    expect = 0.5 * (1 + c * c - K * (2 * dE * dE - s2))
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-15)
    if K == 1.0:
        np.testing.assert_allclose(got, 1 - dE * dE, rtol=1e-12, atol=1e-15)


def test_polarization_in_and_out_of_plane():
    """SPEC 3.5: fully polarised along z (K=1): scattering at 90° along z gives 0, along y gives 1."""
    i = np.array([[1.0, 0, 0]] * 2)
    d = np.array([[0, 0, 1.0], [0, 1.0, 0]])
    np.testing.assert_allclose(_pol(1.0, i, d, np.array([0, 0, 1.0])), [0.0, 1.0], atol=1e-15)


def test_polarization_on_axis_is_one_with_finite_gradients():
    """SPEC 3.5 / 4.4: d = i (2θ = 0) gives P = 1 for any K, with finite gradients w.r.t. d and K."""
    i = torch.tensor([[1.0, 0, 0]], dtype=F64)
    d = torch.tensor([[1.0, 0, 0]], dtype=F64, requires_grad=True)
    K = torch.tensor(0.5, dtype=F64, requires_grad=True)
    P = beam.polarization_factor(K, i, d, torch.tensor([0, 0, 1.0], dtype=F64))
    assert float(P.detach()) == 1.0
    P.sum().backward()
    assert torch.isfinite(d.grad).all()
    assert torch.isfinite(K.grad).all()
    assert float(K.grad) == 0.0          # sin²2θ = 0


def test_polarization_gradient_matches_finite_difference():
    """SPEC 4.4: dP/dK = −½ cos2ψ sin²2θ and dP/dd from autograd agree with central differences."""
    i = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    p = torch.tensor([0, 0, 1.0], dtype=F64)
    d0 = torch.tensor(_unit([[0.9, 0.3, 0.2]]), dtype=F64)
    d = d0.clone().requires_grad_(True)
    K = torch.tensor(0.7, dtype=F64, requires_grad=True)
    P = beam.polarization_factor(K, i, d, p).sum()
    P.backward()
    h = 1e-6
    for j in range(3):
        e = torch.zeros(1, 3, dtype=F64)
        e[0, j] = h
        fd = (beam.polarization_factor(0.7, i, d0 + e, p) - beam.polarization_factor(0.7, i, d0 - e, p)) / (2 * h)
        assert float(d.grad[0, j]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    fdK = (beam.polarization_factor(0.7 + h, i, d0, p) - beam.polarization_factor(0.7 - h, i, d0, p)) / (2 * h)
    assert float(K.grad) == pytest.approx(float(fdK), rel=1e-7)


def test_nopolar_image_vs_polarised_ratio():
    """SPEC 3.5: the image with K=0 equals the -nopolar image times ½(1+cos²2θ) at subpixel (0,0)
    (oversample 1: one value per pixel)."""
    args = ["-cell", "100", "-default_F", "1", "-N", "2", "-lambda", "1", "-detpixels", "8",
            "-distance", "20", "-pixel", "0.5", "-oversample", "1"]
    img_np = Simulator(config_from_args(args + ["-nopolar"])).run().pixels
    sim = Simulator(config_from_args(args))
    img = sim.run().pixels
    g = sim.static.geom
    p0, f, s = npv(g.pix0), npv(g.fdet), npv(g.sdet)
    ratio = npv(img) / npv(img_np)
    for si, fi in [(0, 0), (3, 5), (7, 7)]:
        P = p0 + (fi + 0.5) * 5e-4 * f + (si + 0.5) * 5e-4 * s
        c = P[0] / np.linalg.norm(P)
        assert ratio[si, fi] == pytest.approx(0.5 * (1 + c * c), rel=1e-12)
