"""Per-pixel physics (SPEC 2.6, 4, 5): lattice transforms, structure-factor lookups,
and simulator-level analytic checks on tiny detectors.

References: SPEC.md values, high-precision Decimal arithmetic (no mpmath), closed
forms, finite differences, and pixels recomputed by hand in numpy from the SPEC's
geometry (MOSFLM, no rotations: pix0 = (d, Sbeam, -Fbeam), f = +Z, s = -Y).
"""
from __future__ import annotations

import math
import types
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

import numpy as np
import pytest
import torch

from nanobrag_torch import kernel
from nanobrag_torch.cli import config_from_args
from nanobrag_torch.config import HKLData
from nanobrag_torch.simulator import Simulator
from nanobrag_torch.kernel import RunState, structure_factor
from nanobrag_torch.structure import FGrid, nearest_F, tricubic_F, tricubic_out_of_range

F64 = torch.float64
R_E_SQR = 7.94079248018965e-30              # SPEC 1.1
FLUENCE = 125932015286227086360700780544.0  # SPEC 1.1
AVOGADRO = 6.02214179e23


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # no stray Fdump.bin


def npv(t):
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


def vec3(rows):
    """Rows (..., 3) as the kernel's (x, y, z) tuple of float64 tensors."""
    return torch.as_tensor(np.asarray(rows, dtype=float) if not isinstance(rows, torch.Tensor) else rows,
                           dtype=F64).unbind(-1)


# --------------------------------------------------------------------------
# high-precision reference for sin(N pi h)/sin(pi h)

_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899")


def _dsin(x: Decimal) -> Decimal:
    k = (x / _PI).to_integral_value(rounding=ROUND_HALF_EVEN)
    r = x - k * _PI
    term, total, n, r2 = r, r, 1, r * r
    eps = Decimal(10) ** -75
    while abs(term) > eps:
        term = -term * r2 / ((2 * n) * (2 * n + 1))
        total += term
        n += 1
    return -total if int(k) % 2 else total


def sincg_ref(h: float, N: int) -> float:
    """sin(N π h)/sin(π h) for the exact double h, with 80 significant digits."""
    with localcontext() as ctx:
        ctx.prec = 80
        x = _PI * Decimal(h)
        return float(_dsin(N * x) / _dsin(x))


def square_plan(N, c_form=False):
    return types.SimpleNamespace(n_cells=torch.tensor(N, dtype=F64), shape="square", fudge=1.0,
                                 reciprocal=torch.eye(3, dtype=F64), c_form=c_form)


def latt(hkl, plan):
    """lattice_factor of rows (h, k, l) (the kernel takes x, y, z tuples)."""
    hkl = torch.as_tensor(np.asarray(hkl, dtype=float), dtype=F64)
    h = hkl.unbind(-1)
    return kernel.lattice_factor(h, tuple(x - torch.ceil(x - 0.5) for x in h), plan)


def c_sign(N, h0):
    """(-1)^((N-1) h0): sin(N pi h)/sin(pi h) = c_sign * sin(N pi (h - h0))/sin(pi (h - h0))."""
    return -1.0 if ((N - 1) * h0) % 2 else 1.0


def c_form_rel(N, h):
    """Relative rounding of the C form sin(N pi h)/sin(pi h) for a double h: N h is rounded
    (half an ulp), which moves the value by pi ulp |cot(N pi h)| relative (the spec form,
    on the exact h - h0, has no such term)."""
    r = h - round(h)
    cot = abs(math.cos(math.pi * N * r) / math.sin(math.pi * N * r)) if r else 0.0
    return math.pi * math.ulp(N * abs(h)) * cot


# --------------------------------------------------------------------------
# sinpi, sincg (SPEC 2.6)

def _dcos(x: Decimal) -> Decimal:
    return _dsin(x + _PI / 2)


def sinpi_ref(y: float):
    """(sin(pi y), pi cos(pi y)) for the exact double y, 80 digits."""
    with localcontext() as ctx:
        ctx.prec = 80
        # y = k + r exactly (80 digits cannot hold pi*y for |y| up to 1e300)
        k = Decimal(y).to_integral_value(rounding=ROUND_HALF_EVEN)
        x = _PI * (Decimal(y) - k)
        sign = -1 if int(k) % 2 else 1
        return sign * float(_dsin(x)), sign * float(_PI * _dcos(x))


SINPI_Y = [0.0, 1e-300, -1e-12, 0.1, 0.25, 1.0 / 3.0, 0.5, -0.5, 0.75, 1.0, -1.0, 1.5, 2.5, -2.5, 3.5, 2.0,
           -3.0, 7.3, -12.625, 123.456, 1e5 + 0.3, -(2.0 ** 20) - 0.5, 8388607.5, 2.0 ** 40 + 0.25,
           -(1e15 + 0.125), 2.0 ** 52 + 1, 2.0 ** 53, 1e300, -1e300]
SINPI_Y32 = [0.0, 1e-30, 0.1, 0.25, 0.5, -0.5, 0.75, 1.0, -1.5, 2.5, 3.5, -7.3, 123.456, 4096.25,
             1048576.5, -8388607.5, 16777216.0, 1e30]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("branch", ["library", "polynomial"])
def test_sinpi_values_and_derivative(dtype, branch, monkeypatch):
    """sin(pi y) with exact argument reduction: the value and d/dy = pi cos(pi y) match an
    80-digit reference of the exact y for any |y| (where pi*y in floating point would have lost
    every digit), exactly 0 at integers and +-1 at half-integers. Both the eager (library sin
    on the reduced argument) and the compiled (polynomial, float64) branches."""
    if branch == "polynomial":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    ys = SINPI_Y if dtype == torch.float64 else SINPI_Y32
    y = torch.tensor(ys, dtype=dtype, requires_grad=True)
    v = kernel.sinpi(y)
    v.sum().backward()
    assert v.dtype == dtype
    # float64: a few ulp of 1; float32: pi and the reduced argument are rounded to float32
    atol = 4e-16 if dtype == torch.float64 else 4e-7
    for yi, got, grad in zip(y.detach().tolist(), v.detach().tolist(), y.grad.tolist()):
        ref, dref = sinpi_ref(yi)
        assert got == pytest.approx(ref, abs=atol), yi
        assert grad == pytest.approx(dref, abs=math.pi * atol), yi
        if yi == round(yi):
            assert got == 0.0, yi
        elif 2 * yi == round(2 * yi):
            assert abs(got) == 1.0 and got == ref, yi
        if abs(yi) < 10:
            # against the library on an unreduced argument where pi*y loses nothing of note
            assert got == pytest.approx(math.sin(math.pi * yi), abs=16 * atol)
            assert grad == pytest.approx(math.pi * math.cos(math.pi * yi), abs=16 * math.pi * atol)


@pytest.mark.parametrize("N", [1, 2, 5, 10, 17])
def test_sincg_at_zero_is_N(N):
    """SPEC 2.6: sincg(0, N) = N; at an integer u = k (the C form on the full h) the limit is
    N (-1)^(k(N-1)), exactly."""
    Nt = torch.tensor(float(N), dtype=F64)
    assert float(kernel.sincg(torch.zeros(1, dtype=F64), Nt)) == N
    for dtype in (torch.float64, torch.float32):
        k = torch.tensor([0.0, 1.0, 2.0, 3.0, -1.0, -4.0, 7.0, 101.0, -2.0 ** 20], dtype=dtype)
        got = kernel.sincg(k, torch.tensor(float(N), dtype=dtype))
        expect = [N * c_sign(N, int(x)) for x in k.tolist()]
        assert got.tolist() == expect
    # through lattice_factor: the C form keeps the sign, the spec form (h - h0 = 0) does not
    for h0 in (1, 2, -3):
        assert float(latt([[h0, 0.0, 0.0]], square_plan([N, 1, 1], c_form=True))[0]) == N * c_sign(N, h0)
        assert float(latt([[h0, 0.0, 0.0]], square_plan([N, 1, 1]))[0]) == N


@pytest.mark.parametrize("N", [1, 2, 5, 10, 17])
@pytest.mark.parametrize("eps", [1e-9, 1e-12, -1e-9, 3e-7, 1e-4, 0.37])
@pytest.mark.parametrize("n", [0, 1, 3, -2])
@pytest.mark.parametrize("c_form", [False, True])
def test_lattice_factor_square_near_integers_high_precision(N, eps, n, c_form):
    """SPEC 2.6: F_latt along one axis near h = n against sin(Nπh)/sin(πh) (80-digit Decimal
    reference for the exact double h) to 1e-12: the C form on the full h with the reference's
    sign (to the rounding of N h, see c_form_rel), the spec form on h - h0 with the sign
    (-1)^((N-1) n) removed; both tend to the limit N (-1)^((N-1) n) / N."""
    h = n + eps
    F = float(latt([[h, 0.0, 0.0]], square_plan([N, 1, 1], c_form=c_form))[0])
    ref = sincg_ref(h, N)
    if c_form:
        assert F == pytest.approx(ref, rel=1e-12 + c_form_rel(N, h))
    else:
        assert F == pytest.approx(ref * c_sign(N, n), rel=1e-12)
    if abs(eps) <= 1e-9:
        # limit: N (1 - (N^2-1) π² ε² / 6)
        limit = N * c_sign(N, n) if c_form else N
        assert F == pytest.approx(limit, rel=max(1e-15, (N * N) * 10 * eps * eps))


@pytest.mark.parametrize("N", [2, 5, 17])
@pytest.mark.parametrize("n", [1, 3])
def test_lattice_factor_square_c_form_near_integers(N, n):
    """SPEC 2.6 ([C] form, c-parity float64): sincg(π h) on the full h; near h = n + 1e-9 the
    value has the sign (−1)^((N−1)n) and agrees with the reference to float64 resolution of π h."""
    h = n + 1e-9
    F = float(latt([[h, 0.0, 0.0]], square_plan([N, 1, 1], c_form=True))[0])
    ref = sincg_ref(h, N)
    assert F == pytest.approx(ref, rel=1e-6)
    assert math.copysign(1, F) == (-1) ** ((N - 1) * n)


def test_sincg_N1_is_exactly_one():
    """SPEC 2.6 (factor only applied if N > 1): sincg(u, 1) = 1 exactly everywhere."""
    for dtype in (torch.float64, torch.float32):
        u = torch.tensor([0.0, 1e-12, 1e-8, 0.3, 0.5, 1.0, 3 + 1e-6, -2.7, -7.0, 123.456], dtype=dtype)
        one = torch.tensor(1.0, dtype=dtype)
        assert torch.equal(kernel.sincg(u, one), torch.ones_like(u))


def _dsincg(x, N):
    return (N * math.cos(N * x) * math.sin(x) - math.sin(N * x) * math.cos(x)) / math.sin(x) ** 2


@pytest.mark.parametrize("N", [2, 5, 10])
def test_sincg_gradient(N):
    """SPEC 4.4: d/du sincg(u) (= sin(Nπu)/sin(πu)) is finite at 0 (guarded limit, = 0),
    equals −N(N²−1)π²u/3 near 0 (and (-1)^(k(N-1)) times that in r = u - k near an integer
    k, the C form), and equals the analytic derivative / central finite differences away
    from 0."""
    Nt = torch.tensor(float(N), dtype=F64)
    for k in (0, 1, 2, -3):
        for r in (0.0, 1e-9, -3e-9):
            u = torch.tensor(k + r, dtype=F64, requires_grad=True)
            kernel.sincg(u, Nt).backward()
            assert torch.isfinite(u.grad)
            r_exact = (k + r) - k
            expect = -N * (N * N - 1) * math.pi ** 2 * r_exact / 3 * c_sign(N, k)
            assert float(u.grad) == pytest.approx(expect, rel=1e-9, abs=1e-300)
    for u0 in (1e-3, 0.05, 0.3, 1.1, 2.01):
        u = torch.tensor(u0, dtype=F64, requires_grad=True)
        kernel.sincg(u, Nt).backward()
        assert float(u.grad) == pytest.approx(math.pi * _dsincg(math.pi * u0, N), rel=1e-8, abs=1e-9)
        h = 1e-6
        fd = (kernel.sincg(torch.tensor(u0 + h, dtype=F64), Nt)
              - kernel.sincg(torch.tensor(u0 - h, dtype=F64), Nt)) / (2 * h)
        assert float(u.grad) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)


def test_sincg_continuous_across_guard():
    """SPEC 4.4: the guarded Taylor branch and the exact quotient agree at the guard
    (|N r| = 1e-7), at u = r (spec form) and u = k + r (C form)."""
    N = torch.tensor(7.0, dtype=F64)
    for k in (0, 3, -2):
        for r in (0.99e-7 / 7, 1.01e-7 / 7, -1.01e-7 / 7):
            u = k + r
            v = float(kernel.sincg(torch.tensor(u, dtype=F64), N))
            assert v == pytest.approx(sincg_ref(u, 7), rel=1e-14 + c_form_rel(7, u))


# --------------------------------------------------------------------------
# sinc3 and the other shapes (SPEC 2.6, AT-STR-003)

def _sinc3(x):
    return 3 * (math.sin(x) / x - math.cos(x)) / (x * x)


def test_sinc3_values():
    """SPEC 2.6: sinc3(0) = 1; sinc3(x) = 3(sin x/x − cos x)/x² (the kernel takes x²)."""
    assert float(kernel.sinc3(torch.tensor(0.0, dtype=F64))) == 1.0
    for x in (1e-3, 0.1, 1.0, 2.5, 4.4934, 10.0):
        got = float(kernel.sinc3(torch.tensor(x * x, dtype=F64)))
        ref = 1 - x * x / 10 + x ** 4 / 280 if x < 1e-2 else _sinc3(x)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("x", [1e-7, 3e-7, 1e-6, 1e-5])
def test_sinc3_accurate_near_zero(x):
    """SPEC 2.6 (spec mode physics): near 0 sinc3 = 1 − x²/10 + x⁴/280; the value must not suffer
    the cancellation of sin x/x − cos x (relative error > 1e-9 would be a numerical defect)."""
    got = float(kernel.sinc3(torch.tensor(x * x, dtype=F64)))
    assert got == pytest.approx(1 - x * x / 10, rel=1e-9)


@pytest.mark.parametrize("x2", [0.0, 1e-13, 1e-12, 1e-10, 1e-8, 1e-6, 1e-3])
def test_sinc3_gradient_near_zero(x2):
    """SPEC 4.4 (differentiability): d sinc3/d(x²) = −1/10 + x²/140 near 0: finite and correct."""
    t = torch.tensor(x2, dtype=F64, requires_grad=True)
    kernel.sinc3(t).backward()
    assert torch.isfinite(t.grad)
    assert float(t.grad) == pytest.approx(-0.1 + x2 / 140, rel=1e-6)


def test_sinc3_gradient_away_from_zero():
    """SPEC 4.4: d sinc3/d(x²) from autograd equals central finite differences for x ~ 1."""
    for x2 in (0.04, 1.0, 6.25, 20.0):
        t = torch.tensor(x2, dtype=F64, requires_grad=True)
        kernel.sinc3(t).backward()
        h = 1e-6
        fd = (_sinc3(math.sqrt(x2 + h)) - _sinc3(math.sqrt(x2 - h))) / (2 * h)
        assert float(t.grad) == pytest.approx(fd, rel=1e-6)


def test_lattice_factor_square_is_product_of_sincg():
    """SPEC 2.6 SQUARE: F_latt = Π sin(N_i π h_i)/sin(π h_i) (C form, full h); the spec form on
    h − h0 has the same magnitude."""
    rng = np.random.default_rng(3)
    hkl = rng.uniform(-4, 4, size=(40, 3))
    N = [3, 4, 5]
    expect = np.prod([np.sin(N[j] * np.pi * hkl[:, j]) / np.sin(np.pi * hkl[:, j]) for j in range(3)], axis=0)
    got_c = npv(latt(hkl, square_plan(N, c_form=True)))
    got_s = npv(latt(hkl, square_plan(N)))
    np.testing.assert_allclose(got_c, expect, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.abs(got_s), np.abs(expect), rtol=1e-9, atol=1e-12)
    # the spec form differs from the C's by the sign prod (-1)^((N_i-1) h0_i)
    h0 = np.ceil(hkl - 0.5).astype(int)
    signs = np.prod([[c_sign(N[j], x) for j, x in enumerate(row)] for row in h0], axis=1)
    np.testing.assert_allclose(got_s * signs, expect, rtol=1e-9, atol=1e-12)
    assert float(latt([[2.0, -1.0, 3.0]], square_plan(N))[0]) == 60.0
    # (C form at a node: (-1)^(2*2 + 3*(-1) + 4*3) = -1)
    assert float(latt([[2.0, -1.0, 3.0]], square_plan(N, c_form=True))[0]) == -60.0


def _shape_plan(shape, N, fudge, rs):
    return types.SimpleNamespace(n_cells=torch.tensor(N, dtype=F64), shape=shape, fudge=fudge,
                                 reciprocal=torch.tensor(rs, dtype=F64), c_form=False)


def test_lattice_factor_round():
    """SPEC 2.6 ROUND / AT-STR-003: F = NaNbNc 0.723601254558268 sinc3(π sqrt(hrad² fudge)),
    hrad² = Σ (h−h0)² N²."""
    rng = np.random.default_rng(4)
    hkl = rng.uniform(-3, 3, size=(30, 3))
    hkl[0] = [1.0, -2.0, 0.0]
    N, fudge = [3, 4, 5], 1.3
    frac = hkl - np.ceil(hkl - 0.5)
    hrad2 = (frac ** 2 * np.array(N, float) ** 2).sum(axis=1)
    expect = [60 * 0.723601254558268 * (_sinc3(math.pi * math.sqrt(v * fudge)) if v > 0 else 1.0) for v in hrad2]
    got = npv(latt(hkl, _shape_plan("round", N, fudge, np.eye(3))))
    np.testing.assert_allclose(got, expect, rtol=1e-10, atol=1e-12)
    assert got[0] == pytest.approx(60 * 0.723601254558268, rel=1e-15)


def test_lattice_factor_gauss():
    """SPEC 2.6 GAUSS / AT-STR-003: Δr*² = |(h−h0)a* + (k−k0)b* + (l−l0)c*|² (NaNbNc)²,
    F = NaNbNc exp(−Δr*²/0.63 fudge)."""
    rs = np.array([[0.0143, 0.001, -0.002], [0.0, 0.0125, 0.003], [0.001, 0.0, 0.0111]])
    rng = np.random.default_rng(5)
    hkl = rng.uniform(-3, 3, size=(30, 3))
    N, fudge = [5, 6, 7], 0.8
    frac = hkl - np.ceil(hkl - 0.5)
    dr = frac @ rs
    r2 = (dr ** 2).sum(axis=1) * (210.0 ** 2)
    expect = 210 * np.exp(-r2 / 0.63 * fudge)
    got = npv(latt(hkl, _shape_plan("gauss", N, fudge, rs)))
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("frac,fudge,inside", [
    (0.0, 1.0, True),
    (0.078, 1.0, True),      # 64 * 0.078² = 0.3894 < 0.3969
    (0.079, 1.0, False),     # 0.3994
    (-0.079, 1.0, False),
    (0.078, 2.0, False),     # fudge scales the test
    (0.055, 2.0, True),      # 2 * 64 * 0.055² = 0.3872
])
def test_lattice_factor_tophat_threshold(frac, fudge, inside):
    """SPEC 2.6 TOPHAT / AT-STR-003: F = NaNbNc if Δr*² fudge < 0.3969 else 0."""
    plan = _shape_plan("tophat", [2, 2, 2], fudge, np.eye(3))
    got = float(latt([[3 + frac, -1.0, 2.0]], plan)[0])
    assert got == (8.0 if inside else 0.0)


# --------------------------------------------------------------------------
# structure factors (SPEC 4.3, AT-STR-001/002)

def _grid(F_of, lo, hi, default_F=0.0):
    """An HKLData grid with one zero padding slab per axis (SPEC 6.8)."""
    n = [hi[i] - lo[i] + 2 for i in range(3)]
    F = np.zeros(n)
    for h in range(lo[0], hi[0] + 1):
        for k in range(lo[1], hi[1] + 1):
            for l in range(lo[2], hi[2] + 1):
                F[h - lo[0], k - lo[1], l - lo[2]] = F_of(h, k, l)
    data = HKLData(F, lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], hkls=int(np.prod([hi[i] - lo[i] + 1 for i in range(3)])))
    return FGrid.from_config(data, default_F, F64, "cpu")


def test_nearest_F_in_and_out_of_range():
    """AT-STR-001 / SPEC 4.3: inside [min, max] on all axes -> grid value; outside (including the
    padding slab at max+1) -> default_F."""
    fval = lambda h, k, l: 100 + 10 * h + 3 * k + l       # noqa: E731
    grid = _grid(fval, (-1, 0, -2), (1, 2, 0), default_F=7.5)
    pts = [(-1, 0, -2), (1, 2, 0), (0, 1, -1), (2, 0, 0), (-2, 1, -1), (0, 3, 0), (0, -1, 0),
           (0, 0, 1), (0, 0, -3)]
    got = npv(nearest_F(grid, vec3(pts)))
    expect = [fval(*p) for p in pts[:3]] + [7.5] * 6
    np.testing.assert_array_equal(got, expect)


@pytest.mark.parametrize("lo,hi", [((-1, 0, -2), (1, 2, 0)), ((3, -4, 0), (3, 5, 0)), ((-60, -60, -60), (-55, 60, -58))])
def test_nearest_F_equals_the_C_rule_far_outside(lo, hi):
    """SPEC 4.3 ([C] rule): F = grid value if min <= h0 <= max on every axis, else default_F. The
    clamped, masked lookup must give exactly that for indices anywhere, far outside the range
    included (up to ±2^50), on any combination of axes; it reads the config's grid (no copy)."""
    fval = lambda h, k, l: 1000 + 100 * h + 10 * k + l + 0.5       # noqa: E731
    grid = _grid(fval, lo, hi, default_F=-3.25)
    H, K, L = (hi[i] - lo[i] + 1 for i in range(3))
    assert grid.F.shape == (H + 1, K + 1, L + 1)
    rng = np.random.default_rng(11)
    far = [0, 1, 2, 3, 7, 100, 1000, 123456, 2 ** 31, 2 ** 50]
    cols = []
    for i in range(3):
        near = np.arange(lo[i] - 3, hi[i] + 4)                      # every index near the range
        offs = np.concatenate([lo[i] - np.array(far[1:]), hi[i] + np.array(far[1:])])
        cols.append(np.concatenate([near, offs]))
    # every combination of near / far values per axis, plus random far mixtures
    mesh = np.array(np.meshgrid(*cols, indexing="ij")).reshape(3, -1).T
    rand = np.stack([rng.choice(cols[i], size=2000) for i in range(3)], axis=1)
    pts = np.concatenate([mesh, rand]).astype(float)
    got = npv(nearest_F(grid, vec3(pts)))

    def c_rule(h, k, l):
        inside = all(lo[i] <= x <= hi[i] for i, x in enumerate((h, k, l)))
        return fval(h, k, l) if inside else -3.25

    expect = [c_rule(*(int(x) for x in p)) for p in pts]
    np.testing.assert_array_equal(got, expect)
    # and the shape of the input is kept
    assert nearest_F(grid, tuple(x.reshape(2, 3) for x in vec3(pts[:6]))).shape == (2, 3)


def test_default_F_only_when_no_entries():
    """AT-STR-001 / SPEC 4.3: hkls == 0 (only -default_F) -> default_F everywhere."""
    grid = FGrid.from_config(None, 42.0, F64, "cpu")
    got = npv(nearest_F(grid, vec3([[0.0, 0, 0], [5, -3, 2]])))
    np.testing.assert_array_equal(got, [42.0, 42.0])


def _cubic_poly(h, k, l):
    return (1.0 + 2 * h - 0.5 * k + 0.3 * l + 0.1 * h * h * k - 0.05 * h * k * l
            + 0.02 * l ** 3 + 0.01 * h ** 3 - 0.004 * (h * k * l) ** 2 + 0.001 * h ** 3 * k ** 3 * l ** 3)


def test_tricubic_reproduces_tensor_cubic_and_nodes():
    """AT-STR-002 / SPEC 4.3: the 4-point Lagrange tensor product reproduces any polynomial of
    degree <= 3 per axis exactly and equals the grid values at the nodes."""
    grid = _grid(_cubic_poly, (-5, -5, -5), (5, 5, 5))
    rng = np.random.default_rng(6)
    pts = rng.uniform(-3, 3, size=(50, 3))
    got = npv(tricubic_F(grid, vec3(pts)))
    expect = [_cubic_poly(*p) for p in pts]
    np.testing.assert_allclose(got, expect, rtol=1e-11, atol=1e-11)
    nodes = np.array([[0, 0, 0], [3, -3, 2], [-3, 1, 3], [2, 2, -1]], dtype=float)
    got = npv(tricubic_F(grid, vec3(nodes)))
    np.testing.assert_allclose(got, [_cubic_poly(*p) for p in nodes], rtol=1e-13, atol=1e-12)
    # a non-polynomial grid: still exact at the nodes
    grid2 = _grid(lambda h, k, l: math.exp(0.1 * h) * math.cos(k + 0.3 * l), (-5, -5, -5), (5, 5, 5))
    got = npv(tricubic_F(grid2, vec3(nodes)))
    np.testing.assert_allclose(got, [math.exp(0.1 * h) * math.cos(k + 0.3 * l) for h, k, l in nodes],
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("h,out", [
    (-3.0, False), (3.0, False), (-3.01, True), (3.01, True), (0.0, False), (-4.0, True), (2.99, False),
])
def test_tricubic_range_test(h, out):
    """SPEC 4.3: in range iff h_min+2 <= h <= h_max−2 (h−h_min+3 > range or h−2 < h_min: out)."""
    grid = _grid(_cubic_poly, (-5, -5, -5), (5, 5, 5))
    got = bool(tricubic_out_of_range(grid, vec3([[h, 0.0, 0.0]]))[0])
    assert got is out
    got = bool(tricubic_out_of_range(grid, vec3([[0.0, 0.0, h]]))[0])
    assert got is out


def _interp_plan(grid):
    return types.SimpleNamespace(fgrid=grid, interpolate=True)


def test_tricubic_out_of_range_switches_off_for_the_rest_of_the_run():
    """AT-STR-002 / SPEC 4.3 ([C]): evaluations before the first out-of-range one interpolate;
    that one and every later one use nearest neighbour; a warning is recorded once."""
    grid = _grid(_cubic_poly, (-5, -5, -5), (5, 5, 5), default_F=9.0)
    plan = _interp_plan(grid)
    hkl = torch.tensor([[0.3, 0.2, -1.4], [1.6, -0.4, 2.2], [3.5, 0.1, 0.2], [0.7, 0.6, 0.4]], dtype=F64)
    hkl0 = torch.ceil(hkl - 0.5)
    start = RunState()
    F, state, pixel = structure_factor(vec3(hkl), vec3(hkl0), torch.ones(4, dtype=torch.bool), plan, start)
    got = npv(F)
    h0 = npv(hkl0)
    expect = [_cubic_poly(*npv(hkl)[0]), _cubic_poly(*npv(hkl)[1]), _cubic_poly(*h0[2]), _cubic_poly(*h0[3])]
    np.testing.assert_allclose(got, expect, rtol=1e-11)
    assert state.interpolating is False and pixel == 2
    assert state.warning.startswith("WARNING: out of range for three point interpolation")
    assert start == RunState()                      # the given state is not changed
    # later calls of the same run: nearest neighbour only
    F, later, pixel = structure_factor(vec3(hkl[:1]), vec3(hkl0[:1]), torch.ones(1, dtype=torch.bool),
                                       plan, state)
    assert npv(F)[0] == _cubic_poly(*h0[0]) and later == state and pixel is None


def test_tricubic_skipped_evaluations_do_not_switch_off():
    """SPEC 4.3/4.1: an out-of-range point that is never evaluated (F_latt = 0 skip) does not
    disable interpolation."""
    grid = _grid(_cubic_poly, (-5, -5, -5), (5, 5, 5))
    plan = _interp_plan(grid)
    hkl = torch.tensor([[0.3, 0.2, -1.4], [4.5, 0.0, 0.0], [0.7, 0.6, 0.4]], dtype=F64)
    F, state, pixel = structure_factor(vec3(hkl), vec3(torch.ceil(hkl - 0.5)),
                                       torch.tensor([True, False, True]), plan, RunState())
    got = npv(F)
    assert state.interpolating is True and pixel is None
    assert got[0] == pytest.approx(_cubic_poly(0.3, 0.2, -1.4), rel=1e-11)
    assert got[2] == pytest.approx(_cubic_poly(0.7, 0.6, 0.4), rel=1e-11)


# --------------------------------------------------------------------------
# simulator-level analytic checks (tiny detectors)

def sim_of(*args, mode="spec"):
    cfg = config_from_args([str(a) for a in args])
    return Simulator(cfg, mode=mode)


def img_of(*args, mode="spec"):
    return npv(sim_of(*args, mode=mode).run().pixels)


def mosflm_pixel_P(s, f, js, jf, O, px, dist, Fbeam, Sbeam):
    """SPEC 1.4/1.6/1.9 by hand: MOSFLM, no rotation, BEAM pivot (metres)."""
    d = px / O
    Fdet = d * (f * O + jf) + d / 2
    Sdet = d * (s * O + js) + d / 2
    return np.array([dist, Sbeam - Sdet, Fdet - Fbeam])


def cubic_term(P, lam, a, N, F):
    """F² F_latt² for a cubic cell (a along x, b along y, c along z), on-axis beam +X."""
    dvec = P / np.linalg.norm(P)
    q = (dvec - np.array([1.0, 0, 0])) / lam
    hkl = a * q
    fl = 1.0
    for x in hkl:
        fl *= N if x == 0 else math.sin(N * math.pi * x) / math.sin(math.pi * x)
    return F * F * fl * fl, dvec


def test_at_sam_001_phisteps_divide_by_steps():
    """AT-SAM-001 / SPEC 4.1: steps includes phisteps: a cubic crystal rotated by 0 and 90 deg
    about the spindle (identical physics) gives exactly the single-step image."""
    base = ["-cell", 100, "-default_F", 100, "-N", 5, "-lambda", 6.2, "-detpixels", 24, "-pixel", 0.4,
            "-distance", 100, "-oversample", 1]
    one = img_of(*base)
    two = img_of(*base, "-phi", 0, "-osc", 180, "-phisteps", 2)
    assert one.max() > 0
    np.testing.assert_allclose(two, one, rtol=1e-10, atol=1e-12 * one.max())
    # control: 0 and 30 deg are not equivalent, so the test can tell
    other = img_of(*base, "-phi", 0, "-osc", 60, "-phisteps", 2)
    assert np.abs(other - one).max() > 1e-3 * one.max()


def test_at_sam_002_held_omega_and_polar_with_oversample():
    """AT-SAM-002 / SPEC 4.1: oversample 2 without -oversample_omega/-polar: the pixel is
    r_e² fluence Σ_sub F²F_latt² / steps × ω(sub 0,0) × P(sub 0,0) (held values, not averages)."""
    px, dist, lam, a, N, F = 0.5e-3, 0.05, 1e-10, 100e-10, 3, 10.0
    args = ["-cell", 100, "-default_F", F, "-N", N, "-lambda", 1, "-detpixels", 8, "-pixel", 0.5,
            "-distance", 50, "-Xbeam", 2.0, "-Ybeam", 2.3, "-oversample", 2]
    img = img_of(*args)
    Fbeam, Sbeam = 2.3e-3 + px / 2, 2.0e-3 + px / 2
    checked = 0
    for s, f in [(0, 0), (2, 5), (7, 3), (4, 4)]:
        terms, first = 0.0, None
        for js in range(2):
            for jf in range(2):
                P = mosflm_pixel_P(s, f, js, jf, 2, px, dist, Fbeam, Sbeam)
                t, dvec = cubic_term(P, lam, a, N, F)
                terms += t
                if first is None:
                    R = np.linalg.norm(P)
                    omega = px * px / R / R * dist / R
                    polar = 0.5 * (1 + dvec[0] ** 2)
                    first = omega * polar
        expect = R_E_SQR * FLUENCE * terms / 4 * first
        assert img[s, f] == pytest.approx(expect, rel=1e-11)
        checked += 1
    assert checked == 4


@pytest.mark.parametrize("mode", ["c-parity", "spec"])
def test_at_sam_002_oversample_omega_running_product(mode):
    """AT-SAM-002 / SPEC 4.1: with -oversample_omega the C re-multiplies the running sum by
    each term's omega: I = (I + T_j) ω_j over subpixels in (subS, subF) order (c-parity);
    spec mode (docs/modes.md row 17) gives each term its own: I = sum T_j ω_j. Polar stays held."""
    px, dist, lam, a, N, F = 0.5e-3, 0.05, 1e-10, 100e-10, 3, 10.0
    args = ["-cell", 100, "-default_F", F, "-N", N, "-lambda", 1, "-detpixels", 8, "-pixel", 0.5,
            "-distance", 50, "-Xbeam", 2.0, "-Ybeam", 2.3, "-oversample", 2, "-oversample_omega"]
    img = img_of(*args, mode=mode)
    Fbeam, Sbeam = 2.3e-3 + px / 2, 2.0e-3 + px / 2
    for s, f in [(0, 0), (2, 5), (7, 3)]:
        I, polar = 0.0, None
        for js in range(2):
            for jf in range(2):
                P = mosflm_pixel_P(s, f, js, jf, 2, px, dist, Fbeam, Sbeam)
                t, dvec = cubic_term(P, lam, a, N, F)
                R = np.linalg.norm(P)
                omega = px * px / R / R * dist / R
                I = (I + t) * omega if mode == "c-parity" else I + t * omega
                if polar is None:
                    polar = 0.5 * (1 + dvec[0] ** 2)
        assert img[s, f] == pytest.approx(R_E_SQR * FLUENCE * I / 4 * polar, rel=1e-11)


def _abs_args(extra=()):
    # 8 x 8, pixel (4, 4) centred on the direct beam: d = i, q = 0, ω = px²/d², P = 1
    return ["-cell", 100, "-default_F", 10, "-N", 2, "-lambda", 1, "-detpixels", 8, "-pixel", 0.1,
            "-distance", 100, "-Xbeam", 0.4, "-Ybeam", 0.4, "-oversample", 1,
            "-detector_thick", 200, "-detector_abs", 300, *extra]


def test_at_abs_001_layer_fractions():
    """AT-ABS-001 / SPEC 3.2, 4.1: -detector_thick 200 um alone -> 2 layers of Δz = 100 um; with
    μ = 1/300 um and ρ = 1 (on-axis pixel) c_t = e^{−tΔzμ} − e^{−(t+1)Δzμ}. Without
    -oversample_thick the pixel is (T0+T1) c_1 (last layer), with it (T c_0 + T) c_1
    (the C's running sum; spec mode, docs/modes.md row 17: T c_0 + T c_1).
    Hence c_0 + c_1 = 1 − exp(−thick μ/ρ)."""
    T = 10.0 ** 2 * (2 ** 3) ** 2
    omega = 1e-8 / 0.1 / 0.1
    unit = R_E_SQR * FLUENCE * T * omega
    mu_dz = 100e-6 / 300e-6
    c0 = 1 - math.exp(-mu_dz)
    c1 = math.exp(-mu_dz) - math.exp(-2 * mu_dz)
    a = img_of(*_abs_args(), mode="c-parity")[4, 4]
    b = img_of(*_abs_args(["-oversample_thick"]), mode="c-parity")[4, 4]
    b_spec = img_of(*_abs_args(["-oversample_thick"]))[4, 4]
    assert b_spec == pytest.approx(unit * (c0 + c1), rel=1e-12)
    assert img_of(*_abs_args())[4, 4] == a
    assert a == pytest.approx(unit * 2 * c1, rel=1e-12)
    assert b == pytest.approx(unit * (c0 + 1) * c1, rel=1e-12)
    got_c1 = a / (2 * unit)
    got_c0 = 2 * b / a - 1
    assert got_c0 + got_c1 == pytest.approx(1 - math.exp(-200e-6 / 300e-6), rel=1e-12)


def test_at_abs_001_thickness_without_absorption_depth_uses_mu_one_over_thick():
    """SPEC 3.2: thick > 0 without -detector_abs: μ = 1/thick."""
    args = [x for x in _abs_args() if x not in ("-detector_abs", 300)]
    val = img_of(*args)[4, 4]
    T = 10.0 ** 2 * (2 ** 3) ** 2
    mu_dz = 0.5               # Δz = thick/2, μ = 1/thick
    c1 = math.exp(-mu_dz) - math.exp(-2 * mu_dz)
    assert val == pytest.approx(R_E_SQR * FLUENCE * T * 1e-6 * 2 * c1, rel=1e-12)


def _water_I_bg(water_um):
    w = water_um / 1e6
    return 2.57 * 2.57 * R_E_SQR * FLUENCE * w * w * w * 1e6 * AVOGADRO / 18


def _water_cfg(*extra):
    cfg = config_from_args(["-cell", 100, "-default_F", 1, "-water", 100, "-point_pixel", "-nopolar",
                            "-distance", 100, "-detpixels", 32, "-Xbeam", 1.6, "-Ybeam", 1.6,
                            "-oversample", 1, *[str(e) for e in extra]])
    cfg.crystal.default_F = 0.0        # -default_F 0 without -hkl is a usage error on the CLI
    return cfg


def test_at_bkg_001_water_background_spec_example():
    """AT-BKG-001 / SPEC 5: -water 100 -point_pixel -nopolar, 100 mm, F = 0: the beam-centre pixel
    is r_e² fluence I_bg / steps × 1/R² = 2.2098e19 ([C] max_I = 2.20976e+19)."""
    img = npv(Simulator(_water_cfg()).run().pixels)
    centre = img[16, 16]
    formula = R_E_SQR * FLUENCE * _water_I_bg(100) * (1 / 0.1 ** 2)
    assert centre == pytest.approx(formula, rel=1e-12)
    assert centre == pytest.approx(2.2098e19, rel=5e-5)
    assert img.max() == pytest.approx(2.20976e19, rel=3e-6)
    assert img.max() == centre
    # other pixels: 1/R² law
    P = np.array([0.1, (1.6 + 0.05 - 0.05 - 0.1 * 3) * 1e-3, (0.05 + 0.1 * 20 - 1.6 - 0.05) * 1e-3])
    R2 = float(P @ P)
    assert img[3, 20] == pytest.approx(R_E_SQR * FLUENCE * _water_I_bg(100) / R2, rel=1e-10)


@pytest.mark.parametrize("mode", ["c-parity", "spec"])
def test_at_bkg_001_background_divided_by_steps(mode):
    """SPEC 5: the C seeds I_bg once per pixel and divides by steps: 2 phi steps halve it;
    spec mode's physical water (docs/modes.md row 16) does not fall with the step count."""
    one = npv(Simulator(_water_cfg(), mode=mode).run().pixels)
    two = npv(Simulator(_water_cfg("-phisteps", 2, "-osc", 1), mode=mode).run().pixels)
    np.testing.assert_allclose(two, one / 2 if mode == "c-parity" else one, rtol=1e-13)


def test_at_str_004_sparse_hkl(tmp_path):
    """AT-STR-004 / SPEC 4.3: sparse HKL {(0,0,0):100, (2,0,0):80, (0,2,0):60} with -default_F 10:
    every pixel is the F=1 image times F(h0,k0,l0)² with present entries used and missing
    ones (inside or outside the grid) -> 10; so I(000)/I(010) = 100 after geometry."""
    (tmp_path / "sparse.hkl").write_text("0 0 0 100\n2 0 0 80\n0 2 0 60\n")
    geo = ["-cell", 100, "-N", 5, "-lambda", 1, "-detpixels", 64, "-pixel", 0.1, "-distance", 100,
           "-oversample", 1]
    sparse = img_of(*geo, "-hkl", tmp_path / "sparse.hkl", "-default_F", 10)
    unit = img_of(*geo, "-default_F", 1)
    px, dist = 1e-4, 0.1
    Fbeam = Sbeam = 3.25e-3 + px / 2            # MOSFLM default for 64 px
    table = {(0, 0, 0): 100.0, (2, 0, 0): 80.0, (0, 2, 0): 60.0}
    seen = set()
    expect = np.zeros_like(unit)
    for s in range(64):
        for f in range(64):
            P = mosflm_pixel_P(s, f, 0, 0, 1, px, dist, Fbeam, Sbeam)
            dvec = P / np.linalg.norm(P)
            hkl = 100e-10 * (dvec - [1.0, 0, 0]) / 1e-10
            h0 = tuple(int(x) for x in np.ceil(hkl - 0.5))
            seen.add(h0)
            expect[s, f] = table.get(h0, 10.0) ** 2
    assert {(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, -2, 0)} <= seen
    ok = unit > 0
    assert ok.mean() > 0.99
    np.testing.assert_allclose(sparse[ok] / unit[ok], expect[ok], rtol=1e-10)


def _source_img(tmp_path, name, text, *extra, mode="spec"):
    path = tmp_path / name
    path.write_text(text)
    base = ["-cell", 70, 80, 90, 75, 85, 95, "-misset", 10, 20, 30, "-default_F", 100, "-N", 3,
            "-lambda", 1, "-detpixels", 16, "-pixel", 0.4, "-distance", 60, "-oversample", 1, "-nopolar"]
    return img_of(*base, "-sourcefile", path, *extra, mode=mode) if text else img_of(*base, *extra, mode=mode)


def test_at_src_001_two_equal_sources_equal_single_source(tmp_path):
    """AT-SRC-001 / SPEC 3.4, 4.1: two identical sources: steps = 2, the image equals the
    single-source image (and the no-file image: the default source is −10 m b)."""
    single = _source_img(tmp_path, "one.txt", "-10 0 0 1.0 1e-10\n")
    double = _source_img(tmp_path, "two.txt", "-10 0 0 1.0 1e-10\n-10 0 0 1.0 1e-10\n")
    plain = _source_img(tmp_path, "none", "")
    assert single.max() > 0
    np.testing.assert_allclose(double, single, rtol=1e-14, atol=0)
    np.testing.assert_allclose(plain, single, rtol=1e-14, atol=0)


@pytest.mark.parametrize("mode,w_eff", [("spec", (1.0, 3.0)), ("c-parity", (1.0, 1.0))])
def test_at_src_001_source_weights(tmp_path, mode, w_eff):
    """SPEC 0 item 5 / 3.4: spec mode: image = Σ w_i I_i / Σ w_i; c-parity ignores the weights
    (plain mean over sources, C behaviour)."""
    l1, l2 = "-10 0 0 1.0 1e-10\n", "-10 0.002 0.001 3.0 1.02e-10\n"
    i1 = _source_img(tmp_path, "a.txt", l1, mode=mode)
    i2 = _source_img(tmp_path, "b.txt", l2, mode=mode)
    both = _source_img(tmp_path, "ab.txt", l1 + l2, mode=mode)
    expect = (w_eff[0] * i1 + w_eff[1] * i2) / (w_eff[0] + w_eff[1])
    assert np.abs(i1 - i2).max() > 1e-3 * i1.max()          # the two sources differ
    np.testing.assert_allclose(both, expect, rtol=1e-12, atol=1e-14 * expect.max())


def test_at_sam_003_dmin_culls_high_angle_pixels():
    """AT-SAM-003 / SPEC 4.1-4.2: paths with dmin > 0.5/stol are skipped; with one source a
    culled pixel keeps polar = 0 and is exactly 0; other pixels are unchanged."""
    base = ["-cell", 100, "-default_F", 10, "-N", 2, "-lambda", 1, "-detpixels", 16, "-pixel", 0.5,
            "-distance", 50, "-oversample", 1]
    full = img_of(*base)
    cut = img_of(*base, "-dmin", 12)
    px, dist = 0.5e-3, 0.05
    Fbeam = Sbeam = 4.0e-3 + 0.25e-3 + px / 2
    culled = np.zeros((16, 16), bool)
    for s in range(16):
        for f in range(16):
            P = mosflm_pixel_P(s, f, 0, 0, 1, px, dist, Fbeam, Sbeam)
            dvec = P / np.linalg.norm(P)
            stol = 0.5 * np.linalg.norm((dvec - [1.0, 0, 0]) / 1e-10)
            culled[s, f] = 12e-10 > 0.5 / stol
    assert 0 < culled.sum() < 256
    assert np.all(cut[culled] == 0)
    np.testing.assert_array_equal(cut[~culled], full[~culled])
    assert np.all(full[culled] > 0)


def test_simulator_gradients_match_finite_differences():
    """SPEC 4.4 / config docs: continuous config values given as tensors carry gradients;
    d(pixels)/d(distance, cell, misset) from autograd equal central finite differences."""
    args = ["-cell", 100, "-default_F", 10, "-N", 3, "-lambda", 1, "-detpixels", 8, "-pixel", 0.5,
            "-distance", 50, "-oversample", 1, "-Xbeam", 2.1, "-Ybeam", 1.7, "-polar", 0.5]

    def loss(dist, cell, misset):
        cfg = config_from_args([str(a) for a in args])
        cfg.detector.distance_mm = dist
        cfg.crystal.cell = cell
        cfg.crystal.misset_deg = misset
        img = Simulator(cfg).run().pixels
        return img[3, 5] + img[6, 1] + 0.5 * img[0, 7]

    d = torch.tensor(50.0, dtype=F64, requires_grad=True)
    cell = torch.tensor([100.0, 100, 100, 90, 90, 90], dtype=F64, requires_grad=True)
    mis = torch.tensor([2.0, -3.0, 1.0], dtype=F64, requires_grad=True)
    L = loss(d, cell, mis)
    L.backward()
    Lv = float(L.detach())
    h = 1e-5
    d0, c0, m0 = d.detach(), cell.detach(), mis.detach()
    fd = (loss(d0 + h, c0, m0) - loss(d0 - h, c0, m0)) / (2 * h)
    assert float(d.grad) == pytest.approx(float(fd), rel=1e-5)
    assert abs(float(d.grad)) > 0
    for j in range(6):
        e = torch.zeros(6, dtype=F64)
        e[j] = h
        fd = (loss(d0, c0 + e, m0) - loss(d0, c0 - e, m0)) / (2 * h)
        assert float(cell.grad[j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-12 * abs(Lv))
    for j in range(3):
        e = torch.zeros(3, dtype=F64)
        e[j] = h
        fd = (loss(d0, c0, m0 + e) - loss(d0, c0, m0 - e)) / (2 * h)
        assert float(mis.grad[j]) == pytest.approx(float(fd), rel=1e-5, abs=1e-12 * abs(Lv))
