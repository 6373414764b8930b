"""The C generator's random numbers, bit for bit (SPEC 2.3, 2.7, 6.3).

Reference values were taken from the reference binary's own functions (ran1,
poidev, gaussdev, gammln, mosaic_rotation_umat, umat2misset called inside
/work/cref/nanoBragg through a preloaded harness).
"""
import math
import struct
from fractions import Fraction

import numpy as np
import pytest

from nanobrag_torch import rng as R

RTD = 180.0 * (1.0 / math.pi)


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def from_bits(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b))[0]


# ---------------------------------------------------------------------------------- ran1

RAN1_12345_FIRST = [1064063393, 1051365937, 1045078851, 1064504653,
                    1061725988, 1065082845, 1063912557, 1058361870]


def test_c_seed():
    assert R.c_seed(12345) == -12345
    assert R.c_seed(-5) == 5
    assert R.c_seed(0) == 0
    assert R.c_seed(2 ** 31) == 2 ** 31            # atoi keeps int: -2**31, negated in long
    assert R.c_seed(3_000_000_000) == -(3_000_000_000 - 2 ** 32)


def test_ran1_first_values_match_c():
    g = R.Ran1(R.c_seed(12345))
    assert [bits(g.next()) for _ in range(8)] == RAN1_12345_FIRST
    for _ in range(992):
        g.next()
    assert g.idum == 1076069044                     # C's idum after 1000 calls


def test_ran1_zero_seed_is_one():
    # -seed 0: stored 0, the C's ran1 replaces it by 1
    g = R.Ran1(0)
    assert [bits(g.next()) for _ in range(3)] == [1054146014, 1035753495, 1061266462]
    assert g.idum == 1551901393
    assert [bits(v) for v in R.Ran1(-1).uniforms(3)] == [1054146014, 1035753495, 1061266462]


@pytest.mark.parametrize("idum", [-1, -7, -12345678, 0, 5, -2147483647, -2147483648])
def test_ran1_bulk_equals_scalar(idum):
    a, b = R.Ran1(idum), R.Ran1(idum)
    scalar = np.array([a.next() for _ in range(3000)], dtype=np.float32)
    bulk = np.concatenate([b.uniforms(1), b.uniforms(1000), b.uniforms(1999)])
    assert np.array_equal(scalar.view(np.uint32), bulk.view(np.uint32))
    assert a.idum == b.idum and a.iy == b.iy and a.iv == b.iv
    assert bulk[1:].min() > 0.0 and bulk.max() <= np.float32(1.0 - 1.2e-7)
    # stored -2147483647 (-seed 2147483647) degenerates to idum 0: the C returns 0.0 once
    assert (bulk[0] == 0.0) == (idum == -2147483647)


def test_ran1_continuing_shares_the_table():
    # C: a positive stored seed (user typed a negative -seed) keeps the previous
    # stream's shuffle table (the statics); values from the binary
    a = R.Ran1(-12345678)
    a.uniforms(30)
    b = R.Ran1.continuing(a, 5)
    assert [bits(v) for v in b.uniforms(6)] == [
        0x3d83da20, 0x3e973c04, 0x3edfc681, 0x3e8fe0ad, 0x3f11f7d7, 0x3f37621e]
    assert b.idum == 203572713


# ---------------------------------------------------------------------------------- helpers

def _rn32(x: Fraction) -> float:
    """Correctly rounded float32 of an exact rational (ties to even)."""
    r = np.float32(float(x))
    cands = {float(r), float(np.nextafter(r, np.float32(np.inf))),
             float(np.nextafter(r, np.float32(-np.inf)))}
    best = min(cands, key=lambda c: (abs(Fraction(c) - x), bits(c) & 1))
    return best


def test_fma_helpers_are_exact():
    rs = np.random.default_rng(1)
    a64 = rs.normal(size=2000) * 10.0 ** rs.integers(-5, 5, 2000)
    b64 = rs.normal(size=2000) * 10.0 ** rs.integers(-5, 5, 2000)
    c64 = -a64 * b64 * (1 + rs.normal(size=2000) * 1e-12)    # heavy cancellation
    c64[::3] = rs.normal(size=len(c64[::3]))
    vec = R.fma64_np(a64, b64, c64)
    for a, b, c, v in zip(a64.tolist(), b64.tolist(), c64.tolist(), vec.tolist()):
        exact = float(Fraction(a) * Fraction(b) + Fraction(c))
        assert R.fma64(a, b, c) == exact
        assert v == exact
    # float32 fmaf, including constructed halfway cases
    a32 = rs.uniform(-50, 50, 3000).astype(np.float32)
    b32 = rs.uniform(-50, 50, 3000).astype(np.float32)
    c32 = rs.uniform(-1e4, 1e4, 3000).astype(np.float32)
    half = np.float32(2.0 ** -30)                            # tiny addend: near-midpoint sums
    c32[::4] = half * np.sign(rs.normal(size=len(c32[::4]))).astype(np.float32)
    vec32 = R.fmaf_np(a32, b32, c32)
    for a, b, c, v in zip(a32.tolist(), b32.tolist(), c32.tolist(), vec32.tolist()):
        exact = _rn32(Fraction(a) * Fraction(b) + Fraction(c))
        assert R.fmaf(a, b, c) == exact
        assert v == exact
    # a true halfway case: 1 + 2**-24 (exact), then +/- 2**-60 decides
    assert R.fmaf(1.0, 1.0, 2.0 ** -24) == 1.0
    assert R.fmaf(1.0 + 2.0 ** -23, 1.0, 2.0 ** -24) == 1.0 + 2.0 ** -22
    assert R.fmaf(1.0, 1.0 + 2.0 ** -23, 2.0 ** -24 + 2.0 ** -60) == 1.0 + 2.0 ** -22


# ---------------------------------------------------------------------------------- mosaic

MOSAIC_777 = {  # seed 777, spread 1 deg: C umats for calls 0, 1 and 3
    0: ['0x1.fffd4494a8523p-1', '-0x1.8d8894327ae4dp-8', '0x1.21f123b840388p-9',
        '0x1.8e08d85ff1567p-8', '0x1.fffccb93085d1p-1', '-0x1.c64a4a3cf5d2p-9',
        '-0x1.1f2ddf8ac3646p-9', '0x1.c80aac916cd9ap-9', '0x1.fffee45c36c4cp-1'],
    1: ['0x1.fffc05df42618p-1', '-0x1.dfafb2263b2f8p-8', '-0x1.5d8063bb79f09p-9',
        '0x1.de8ec716e99c2p-8', '0x1.fff9cfa4a1eeep-1', '-0x1.a433471ca182cp-8',
        '0x1.63a2e2e2f40bdp-9', '0x1.a2e957342f908p-8', '0x1.fffcd6fb6124dp-1'],
    3: ['0x1.fff07a6931bbep-1', '-0x1.c50d57d682261p-7', '0x1.bae474127b7c2p-8',
        '0x1.c51e82eed3131p-7', '0x1.fff376aac93ddp-1', '-0x1.0ca80bdc2ea55p-12',
        '-0x1.ba9e2d803544cp-8', '0x1.6e9d482cfd197p-12', '0x1.fffd00aa24093p-1'],
}
MOSAIC_42 = {  # seed 42, spread 0.5 deg: calls 1 and 2
    1: ['0x1.fffb21aeaf58fp-1', '-0x1.19e0efd066a88p-7', '-0x1.187722fd7efe1p-11',
        '0x1.19e6b0efebfb6p-7', '0x1.fffb0a366b097p-1', '0x1.531756cc5ecc5p-10',
        '0x1.129ef12a65fcbp-11', '-0x1.5448f4e302663p-10', '0x1.ffffdf207e81cp-1'],
    2: ['0x1.fffc8ca8b09a7p-1', '-0x1.168b2d893a01ap-8', '-0x1.816a95c2c7d02p-8',
        '0x1.17c19a0d896cp-8', '0x1.fffe2927ca57dp-1', '0x1.9b33bfa63b8cep-9',
        '0x1.80897e7300f04p-8', '-0x1.9e7b577b5ed12p-9', '0x1.fffd169c51a11p-1'],
}
# seed 27, spread 1 deg, call 17: one of the ~0.06 % of draws where glibc's powf and
# float32(pow_double) differ by one ulp
MOSAIC_27_17 = ['0x1.ffff3fad916d7p-1', '-0x1.50b323d3368b7p-11', '-0x1.b3b844b21b24dp-9',
                '0x1.352b3979877bfp-11', '0x1.ffefabd935b03p-1', '-0x1.026d827461fbfp-6',
                '0x1.b4fe43e4ac9ddp-9', '0x1.0264e885c2f15p-6', '0x1.ffeef841f1ecap-1']


def _hexmat(h):
    return np.array([float.fromhex(x) for x in h]).reshape(3, 3)


@pytest.mark.parametrize("seed,deg,ref", [(777, 1.0, MOSAIC_777), (42, 0.5, MOSAIC_42)])
def test_mosaic_umats_match_c(seed, deg, ref):
    spread = deg / RTD
    g = R.Ran1(R.c_seed(seed))
    calls = [R.mosaic_rotation_umat(spread, g) for _ in range(max(ref) + 1)]
    for i, h in ref.items():
        assert np.array_equal(calls[i], _hexmat(h)), i
    axes, gs, umats = R.mosaic_domains(max(ref) + 1, spread, seed)
    assert np.array_equal(umats[0], np.eye(3))
    for i in range(1, max(ref) + 1):
        assert np.array_equal(umats[i], calls[i])
    assert gs.dtype == np.float32 and axes.shape == (max(ref) + 1, 3)
    assert np.allclose(np.linalg.norm(axes, axis=1), 1.0, atol=1e-12)
    assert np.all((gs >= 0) & (gs <= 1))
    # the angle is float32(float32(spread) * g): rebuild the matrices from (axes, g)
    for i in range(1, max(ref) + 1):
        rot = float(np.float32(np.float32(spread) * gs[i]))
        assert np.array_equal(R.umat_from_axis_angle(axes[i], rot), calls[i])


@pytest.mark.skipif(not R.POWF_IS_LIBM, reason="C library powf not loadable; float64 emulation in use")
def test_mosaic_uses_c_library_powf():
    _, _, umats = R.mosaic_domains(18, 1.0 / RTD, 27)
    assert np.array_equal(umats[17], _hexmat(MOSAIC_27_17))
    # the emulation is one ulp off in the angle there
    g = R.Ran1(R.c_seed(27))
    for _ in range(17):
        R.mosaic_draw(g)
    r3 = 2.0 * g.uniforms(3)[2] - 1.0
    x = R.f32(1.0 - float(r3) * float(r3))
    assert R.powf(x, 1.0 / 3.0) != R._powf_emulated(x, R._THIRD_F32)


def test_powf_emulation_close():
    for x in np.linspace(0.0, 1.0, 101).astype(np.float32).tolist():
        a, b = R.powf(x, 1.0 / 3.0), R._powf_emulated(x, R._THIRD_F32)
        assert abs(a - b) <= 1.2e-7 * max(a, 1e-30)


def test_random_misset_check_value():
    angles = R.random_misset_rad(12345)
    assert " ".join(f"{a * RTD:f}" for a in angles) == "105.720755 -34.951318 -97.823571"


U2M = [  # matrix, C's (rotx, roty, rotz)
    ([0.36, 0.48, -0.8, -0.8, 0.6, 0.0, 0.48, 0.64, 0.6],
     ['0x1.a2a25f172cfe4p-1', '-0x1.0055d080bb634p-1', '-0x1.25df8d9c88ea9p+0']),
    ([0, 0, 0, 0.1, 0.9, 0.3, 0.2, -0.1, 0.95],          # empty row: rebuilt by cross products
     ['-0x1.ad9370df3717cp-4', '-0x1.a6aeeaa7c8443p-3', '0x1.b5d082430ca95p-4']),
    ([1, 2, 3, 0, 0, 0, 0, 0, 0],
     ['-0x1.c08aae496efa7p-1', '0x1.7789221885c85p-2', '-0x1.20bd1702ed71bp-1']),
    ([0, 0, 1, 0, 1, 0, -1, 0, 0],                        # uzx**2 == 1 branch
     ['0x1.921fb54442d18p+1', '0x1.921fb54442d18p+0', '0x1.921fb54442d18p+1']),
]


@pytest.mark.parametrize("mat,ref", U2M)
def test_umat2misset_matches_c(mat, ref):
    assert list(R.umat2misset(np.array(mat, dtype=float))) == [float.fromhex(h) for h in ref]


def test_umat2misset_inverts_xyz_rotation():
    rx, ry, rz = 0.3, -0.2, 1.1
    cx, sx, cy, sy = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry)
    cz, sz = math.cos(rz), math.sin(rz)
    X = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    assert np.allclose(R.umat2misset(Z @ Y @ X), (rx, ry, rz), atol=1e-12)


# ---------------------------------------------------------------------------------- poidev

GAMMLN = [(1.0, 0), (2.0, 2785017856), (0.5, 1058178690), (13.0, 1100998097),
          (101.0, 1135992484), (1000.5, 1169728869), (1000001.0, 1262718110)]


def test_gammln_matches_c():
    for x, b in GAMMLN:
        assert bits(R.gammln(x)) == b, x
    xs = np.array([x for x, _ in GAMMLN], dtype=np.float32)
    assert R.gammln_np(xs).view(np.uint32).tolist() == [b for _, b in GAMMLN]
    assert abs(R.gammln(101.0) - math.lgamma(101.0)) < 1e-3


def test_gammln_np_equals_scalar():
    rs = np.random.default_rng(2)
    xs = np.concatenate([rs.uniform(0.05, 30, 500), rs.uniform(13, 2e6, 500),
                         np.arange(1, 300)]).astype(np.float32)
    assert R.gammln_np(xs).tolist() == [R.gammln(x) for x in xs.tolist()]


POIDEV_VALUES = [0.0, 0.0, 3.5, 3.5, 11.9, 12.0, 150.0, 150.0, 2500.5, 999999.0, 1500000.0,
                 4000000000.0, 4000000000.0, 0.25, 37.0, 20000000.0, 7.0]
POIDEV_REF = [(0.0, 1492592912), (0.0, 1252591377), (6.0, 1298239128), (3.0, 698756315),
              (13.0, 1189580670), (20.0, 321404760), (125.0, 491956703), (158.0, 1234426335),
              (2578.0, 853689183), (999709.0, 1918919825), (1497993.875, 1904328840),
              (4000065792.0, 1904328840), (3999965440.0, 1097023819), (0.0, 1532216438),
              (43.0, 1166094128), (19998188.0, 1166094128), (7.0, 99920864)]


def test_poidev_sequence_matches_c():
    # each branch, the cache of the statics, and gaussdev's spare (idum unchanged)
    noise = R.CNoise(R.Ran1(R.c_seed(12345)))
    for x, (val, idum) in zip(POIDEV_VALUES, POIDEV_REF):
        assert R.poidev(x, noise) == val, x
        assert noise.rng.idum == idum, x


def test_gaussdev_matches_c():
    noise = R.CNoise(R.Ran1(-1))
    assert [bits(R.gaussdev(noise)) for _ in range(6)] == [
        3210099728, 3190843945, 1044356035, 1070515900, 3191145539, 1059533950]


def test_poidev_first_call_minus_one_uses_static_g():
    # C statics start as oldm = -1, g = 0: poidev(-1) then multiplies uniforms until the
    # float32 product underflows to 0, instead of returning 0 after one draw
    noise = R.CNoise(R.Ran1(-3))
    assert noise.poidev(-1.0) > 20
    assert noise.poidev(-1.0) > 20
    assert noise.poidev(2.0) >= 0 and noise.poidev(-1.0) == 0.0
