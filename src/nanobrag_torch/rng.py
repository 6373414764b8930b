"""The C generator's random-number machinery, bit for bit (SPEC 2.3, 2.7, 6.3).

Everything here reproduces the reference binary, which was built by gcc 12 with
FMA contraction (``-march`` with FMA/AVX-512): besides the float32 rules of SPEC
6.3 the compiler fused several ``a*b + c`` expressions into single-rounding
fused multiply-adds.  Each fused operation is marked ``# FMA`` below with the
C expression it comes from; they were read off the binary's disassembly and
checked against the binary's own functions.

Precision helpers (all exact, see their docstrings):

* ``f32(x)``            round a Python float to float32 (round-to-nearest-even).
* ``fma64(a, b, c)``    double fused multiply-add, one rounding.
* ``fmaf(a, b, c)``     float32 fused multiply-add of float32 operands.
* ``fma64_np`` / ``fmaf_np``   the same on numpy arrays.
* ``powf(x, y)``        the C library's float32 ``powf`` (glibc through ctypes
  where available, else a float64 emulation; SPEC 2.7).

Transcendentals (sin, cos, tan, exp, log) go through Python's ``math`` module,
i.e. the platform C library, as in the C program.  numpy's own vectorised
exp/log/tan differ from glibc in the last bit for ~1-5 % of arguments, so the
vectorised helpers only use them where a float32 rounding follows, and redo the
rare arguments whose float32 result is not certain (``_f32_of``).
"""
from __future__ import annotations

import array
import ctypes
import ctypes.util
import math
import os
from typing import Callable, Optional

import numpy as np

__all__ = [
    "Ran1", "c_seed", "mosaic_draw", "umat_from_axis_angle", "mosaic_rotation_umat",
    "mosaic_domains", "umat2misset", "random_misset_rad", "gammln", "gammln_np",
    "CNoise", "poidev", "gaussdev", "powf", "f32", "fma64", "fmaf", "fma64_np", "fmaf_np",
    "Ran1Pointer",
]

# ----------------------------------------------------------------------------------------
# ran1 constants (Numerical Recipes "minimal standard" with Bays-Durham shuffle)
IA = 16807
IM = 2147483647
AM = 1.0 / IM
IQ = 127773
IR = 2836
NTAB = 32
NDIV = 1 + (IM - 1) // NTAB          # 2**26, so iy // NDIV == iy >> 26
EPS = 1.2e-7
RNMX = 1.0 - EPS                     # compared in double
RNMX_F32 = float(np.float32(RNMX))   # returned as float: 0.9999998807907104

assert NDIV == 1 << 26

# ----------------------------------------------------------------------------------------
# float32 and fused-multiply-add helpers

_F = array.array("f", [0.0])          # storing into a float array is the C (float) cast


def f32(x: float) -> float:
    """Round a Python float to the nearest float32 (ties to even), returned as a Python float."""
    _F[0] = x
    return _F[0]


def fma64(a: float, b: float, c: float) -> float:
    """Exact double fma: a*b + c with a single rounding (exact integer arithmetic)."""
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)):
        return a * b + c
    na, da = a.as_integer_ratio()
    nb, db = b.as_integer_ratio()
    nc, dc = c.as_integer_ratio()
    num = na * nb * dc + nc * da * db
    if num == 0:
        return a * b + c              # exact zero: IEEE sign rules of the plain expression
    return num / (da * db * dc)       # int / int is correctly rounded in CPython


def fmaf(a: float, b: float, c: float) -> float:
    """C ``fmaf`` for float32-valued operands: float32(a*b + c) with one rounding.

    a*b is exact in double (24+24 bits); s = a*b + c is then one double
    rounding away from the exact value, and float32(s) is the correct float32
    result unless s lies exactly halfway between two float32 numbers; in that
    case the sign of the TwoSum error of s decides.
    """
    p = a * b
    s = p + c
    _F[0] = s
    r = _F[0]
    d = s - r
    if d != 0.0:
        o = r + 2.0 * d                # the other float32 neighbour if s is a midpoint
        _F[0] = o
        if _F[0] == o:
            bb = s - p
            e = (p - (s - bb)) + (c - bb)     # p + c == s + e exactly (TwoSum)
            if e != 0.0 and (e > 0.0) == (d > 0.0):
                return o
    return r


def _two_sum(a, b):
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a):
    c = 134217729.0 * a               # Veltkamp split, 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a, b):
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def fma64_np(a, b, c) -> np.ndarray:
    """Vectorised exact double fma (Boldo & Melquiond, emulation with rounding to odd).

    a*b = uh + ul and c + uh = th + tl exactly; RN(th + RO(tl + ul)) is the
    correctly rounded a*b + c (no overflow/underflow in the range used here).
    Non-finite inputs fall back to the plain expression.
    """
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (a, b, c))
    with np.errstate(all="ignore"):
        uh, ul = _two_prod(a, b)
        th, tl = _two_sum(c, uh)
        v, ve = _two_sum(tl, ul)
        even = (v.view(np.int64) & 1) == 0
        bump = (ve != 0.0) & even
        v = np.where(bump, np.nextafter(v, np.where(ve > 0.0, np.inf, -np.inf)), v)
        out = th + v
        bad = ~(np.isfinite(a) & np.isfinite(b) & np.isfinite(c) & np.isfinite(out))
        if np.any(bad):
            out = np.where(bad, a * b + c, out)
    return out


def fmaf_np(a, b, c) -> np.ndarray:
    """Vectorised ``fmaf`` of float32 arrays (same midpoint rule as ``fmaf``); returns float32."""
    a, b, c = (np.asarray(x, dtype=np.float32).astype(np.float64) for x in (a, b, c))
    with np.errstate(all="ignore"):
        p = a * b
        s = p + c
        r32 = s.astype(np.float32)
        r = r32.astype(np.float64)
        d = s - r
        o = r + 2.0 * d
        mid = (d != 0.0) & (o.astype(np.float32).astype(np.float64) == o)
        if np.any(mid):
            bb = s - p
            e = (p - (s - bb)) + (c - bb)
            up = mid & (e != 0.0) & ((e > 0.0) == (d > 0.0))
            r32 = np.where(up, o.astype(np.float32), r32)
    return r32


def _f32_of(x64: np.ndarray, exact: Callable[[int], float], rel: float = 2.0 ** -36,
            abs_tol: float = 0.0) -> np.ndarray:
    """float32(x64), redoing with ``exact(i)`` the entries whose float32 rounding is not
    certain given that x64 may be off by ``rel`` (relative) + ``abs_tol`` (absolute).

    Used where numpy's exp/log/tan (last-bit different from the C library's) feed a
    float32 rounding: only arguments within the tolerance of a rounding boundary
    (a ~2**-12 fraction or far fewer) are recomputed through ``math``.
    """
    x64 = np.asarray(x64, dtype=np.float64)
    out = x64.astype(np.float32)
    with np.errstate(all="ignore"):
        tol = np.abs(x64) * rel + abs_tol
        unsure = np.flatnonzero((x64 - tol).astype(np.float32) != (x64 + tol).astype(np.float32))
    for i in unsure.tolist():
        out[i] = exact(i)
    return out


# ----------------------------------------------------------------------------------------
# powf (SPEC 2.7)

_THIRD_F32 = float(np.float32(1.0 / 3.0))    # 0.3333333432674408


def _powf_emulated(x: float, y: float) -> float:
    """float32(pow_double(x, y)): glibc's powf except in ~0.06 % of arguments (1 ulp)."""
    try:
        return f32(math.pow(x, y))
    except (ValueError, OverflowError):
        return float(np.float32(np.power(np.float64(x), np.float64(y))))


def _load_libm_powf() -> Optional[Callable[[float, float], float]]:
    """glibc's powf through ctypes (what the C binary calls), or None if unavailable."""
    try:
        name = ctypes.util.find_library("m") or "libm.so.6"
        lib = ctypes.CDLL(name)
        fn = lib.powf
        fn.restype = ctypes.c_float
        fn.argtypes = (ctypes.c_float, ctypes.c_float)
        if abs(fn(8.0, _THIRD_F32) - 2.0) > 1e-6 or fn(0.0, _THIRD_F32) != 0.0:
            return None
        return lambda x, y: float(fn(x, y))
    except (OSError, AttributeError):
        return None


_libm_powf = None if os.environ.get("NANOBRAGG_POWF") == "emulate" else _load_libm_powf()
POWF_IS_LIBM = _libm_powf is not None


def powf(x: float, y: float) -> float:
    """The C library's ``powf`` on float32 arguments, as a Python float.

    The reference binary calls glibc's powf.  Where the C library is loadable
    (Linux/glibc) it is called directly, which is bit-exact; otherwise the SPEC 2.7
    emulation float32(pow_double(x, y)) is used (numpy's float32 pow is worse).
    """
    x, y = f32(x), f32(y)
    if _libm_powf is not None:
        return _libm_powf(x, y)
    return _powf_emulated(x, y)


# ----------------------------------------------------------------------------------------
# ran1

_POW_BLOCK = 1 << 16
_IA_POWERS: Optional[np.ndarray] = None


def _ia_powers() -> np.ndarray:
    """IA**k mod IM for k = 1.._POW_BLOCK (int64), computed once."""
    global _IA_POWERS
    if _IA_POWERS is None:
        p = np.empty(_POW_BLOCK, dtype=np.int64)
        x = 1
        for k in range(_POW_BLOCK):
            x = (x * IA) % IM
            p[k] = x
        _IA_POWERS = p
    return _IA_POWERS


def _schrage(idum: int) -> int:
    """One step of the C's Schrage recurrence; idum >= 0 here (the C's is positive after init)."""
    k = idum // IQ
    idum = IA * (idum - k * IQ) - IR * k
    if idum < 0:
        idum += IM
    return idum


def c_seed(seed: int) -> int:
    """The value the C stores for ``-seed N`` (also -mosaic_seed, -misset_seed): ``-atoi(N)``.

    atoi keeps the low 32 bits (int), the negation happens in long, so -2**31
    becomes +2**31.
    """
    v = ((int(seed) + 2 ** 31) % 2 ** 32) - 2 ** 31
    return -v


class Ran1:
    """Numerical Recipes ``ran1`` exactly as the C: floats equal to the C's float32 results.

    ``Ran1(idum)`` takes the C's stored seed value (normally negative: the C stores
    -seed).  In the C the shuffle table ``iv`` and ``iy`` are function statics,
    shared by all streams; every stream the program uses (misset, mosaic, noise)
    starts with a negative seed, which reinitialises them, so one table per object
    is equivalent.  A stream whose stored seed is positive (``-seed`` given a
    negative number) instead continues the previous stream's table: build it with
    ``Ran1.continuing(previous, idum)``.
    """

    __slots__ = ("idum", "iy", "iv")

    def __init__(self, idum: int):
        self.idum = int(idum)
        self.iy = 0
        self.iv = [0] * NTAB

    @classmethod
    def continuing(cls, previous: "Ran1", idum: int) -> "Ran1":
        """A stream with seed ``idum`` sharing ``previous``'s shuffle state (the C's statics)."""
        r = cls(idum)
        r.iy = previous.iy
        r.iv = list(previous.iv)
        return r

    def _maybe_init(self) -> None:
        if self.idum <= 0 or not self.iy:
            idum = -self.idum
            self.idum = 1 if idum < 1 else idum
            for j in range(NTAB + 7, -1, -1):
                self.idum = _schrage(self.idum)
                if j < NTAB:
                    self.iv[j] = self.idum
            self.iy = self.iv[0]

    def _step(self) -> int:
        """The part of a call after initialisation: returns the new iy."""
        self.idum = _schrage(self.idum)
        j = self.iy >> 26
        self.iy = self.iv[j]
        self.iv[j] = self.idum
        return self.iy

    def next(self) -> float:
        """One ``ran1`` call: a float32 value in (0, RNMX] as a Python float."""
        self._maybe_init()
        temp = f32(AM * self._step())
        return RNMX_F32 if temp > RNMX else temp

    def raw(self, n: int) -> np.ndarray:
        """The next n shuffled integers ``iy`` (int64), advancing the state as n calls."""
        n = int(n)
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        self._maybe_init()
        if self.idum % IM == 0:
            # degenerate seed (stored -2147483647 gives idum 0): the C re-initialises
            # on the next call, so go call by call
            out[0] = self._step()
            for i in range(1, n):
                self._maybe_init()
                out[i] = self._step()
            return out
        # the Lehmer sequence in bulk: x_{m+k} = IA**k x_m mod IM (products < 2**62)
        self.idum = _schrage(self.idum)          # literal first step (handles any idum)
        xs = np.empty(n, dtype=np.int64)
        xs[0] = self.idum
        pw = _ia_powers()
        pos = 1
        while pos < n:
            k = min(_POW_BLOCK, n - pos)
            xs[pos:pos + k] = (pw[:k] * xs[pos - 1]) % IM
            pos += k
        self.idum = int(xs[-1])
        # Bays-Durham shuffle: inherently sequential, a tight loop over Python ints
        iv = self.iv
        iy = self.iy
        res = [0] * n
        i = 0
        for x in xs.tolist():
            j = iy >> 26
            iy = iv[j]
            iv[j] = x
            res[i] = iy
            i += 1
        self.iy = iy
        out[:] = res
        return out

    def uniforms(self, n: int) -> np.ndarray:
        """The next n ``ran1`` values as float32 (identical to n calls of ``next``)."""
        iy = self.raw(n)
        u = (iy.astype(np.float64) * AM).astype(np.float32)    # double product, then (float)
        u[u.astype(np.float64) > RNMX] = np.float32(RNMX)
        return u


class Ran1Pointer:
    """A second seed variable (``long *idum``) on the statics of a ``Ran1``.

    The C's ran1 keeps its shuffle table ``iv`` and ``iy`` as function statics,
    one set for every seed pointer: noisify draws its calibration deviates with
    ``ran1(&calib_seed)`` between ``ran1(&seed)`` calls, both reading and
    writing the same table (SUITE 3).  ``Ran1Pointer(shared, idum)`` is such a
    pointer: ``next()`` advances its own idum through ``shared``'s table.
    """

    __slots__ = ("shared", "idum")

    def __init__(self, shared: Ran1, idum: int):
        self.shared = shared
        self.idum = int(idum)

    def next(self) -> float:
        s = self.shared
        own = s.idum
        s.idum = self.idum
        try:
            return s.next()
        finally:
            self.idum = s.idum
            s.idum = own


# ----------------------------------------------------------------------------------------
# mosaic_rotation_umat and umat2misset

def mosaic_draw(rng: Ran1) -> tuple[np.ndarray, np.float32]:
    """The random part of one C ``mosaic_rotation_umat`` call (3 ran1 draws).

    Returns the axis v (3,) float64 (unit length up to rounding) and
    g = powf(1 - r3*r3, 1/3) as np.float32, so that the rotation angle is
    float32(float32(spread) * g) (SPEC 2.7).  r1..r3 = 2*ran1 - 1 are exact in
    double, and so are r2*r2 and r3*r3 (<= 50 bits), so the FMA the compiler
    used for 1 - r3*r3 changes nothing there.
    """
    r1 = 2.0 * rng.next() - 1.0
    r2 = 2.0 * rng.next() - 1.0
    r3 = 2.0 * rng.next() - 1.0
    xyrad = math.sqrt(1.0 - r2 * r2)
    g = powf(f32(1.0 - r3 * r3), _THIRD_F32)
    v = np.array([xyrad * math.sin(math.pi * r1), xyrad * math.cos(math.pi * r1), r2])
    return v, np.float32(g)


def umat_from_axis_angle(v, rot: float) -> np.ndarray:
    """(3, 3) rotation by ``rot`` radians about axis v, as the C binary computes it.

    Same temporaries as the C source (t1 = cos rot, t2 = 1 - t1, t6 = t2*v1, ...),
    with the compiler's fused multiply-adds: e.g. umat[0] = t1 + t2*t3 is
    fma(t2, t3, t1) and umat[1] = t7 - t9 = t6*v2 - t9 is fma(t6, v2, -t9).
    """
    v1, v2, v3 = (float(x) for x in v)
    rot = float(rot)
    t1 = math.cos(rot)
    t8 = math.sin(rot)
    t2 = 1.0 - t1
    t3 = v1 * v1
    t6 = t2 * v1
    t9 = t8 * v3
    t12 = t8 * v2
    t15 = v2 * v2
    t2v2 = t2 * v2                   # t19 = t2*v2*v3 = (t2*v2)*v3
    t20 = t8 * v1
    t24 = v3 * v3
    u = [fma64(t2, t3, t1),          # FMA uxx = t1 + t2*t3
         fma64(t6, v2, -t9),         # FMA uxy = t7 - t9,  t7 = t6*v2
         fma64(t6, v3, t12),         # FMA uxz = t11 + t12, t11 = t6*v3
         fma64(t6, v2, t9),          # FMA uyx = t7 + t9
         fma64(t2, t15, t1),         # FMA uyy = t1 + t2*t15
         fma64(t2v2, v3, -t20),      # FMA uyz = t19 - t20
         fma64(t6, v3, -t12),        # FMA uzx = t11 - t12
         fma64(t2v2, v3, t20),       # FMA uzy = t19 + t20
         fma64(t2, t24, t1)]         # FMA uzz = t1 + t2*t24
    return np.array(u, dtype=np.float64).reshape(3, 3)


def mosaic_rotation_umat(spread_rad: float, rng: Ran1) -> np.ndarray:
    """The C's ``mosaic_rotation_umat(mosaicity, umat, seed)``: (3, 3) float64.

    ``spread_rad`` is taken as the C's float argument; rot = float32(spread * g).
    """
    v, g = mosaic_draw(rng)
    rot = f32(f32(spread_rad) * float(g))
    return umat_from_axis_angle(v, rot)


def mosaic_domains(n: int, spread_rad: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mosaic domains as the C generates them from ``-mosaic_seed seed`` (default 12345678).

    Returns axes (n, 3) float64, g (n,) float32 and umats (n, 3, 3) float64.
    The generator runs for every domain, including domain 0, whose matrix is
    then replaced by the identity (axes/g of domain 0 are as drawn).
    """
    rng = Ran1(c_seed(seed))
    axes = np.zeros((n, 3), dtype=np.float64)
    g = np.zeros(n, dtype=np.float32)
    umats = np.zeros((n, 3, 3), dtype=np.float64)
    sp = f32(spread_rad)
    for i in range(n):
        v, gi = mosaic_draw(rng)
        axes[i], g[i] = v, gi
        umats[i] = np.eye(3) if i == 0 else umat_from_axis_angle(v, f32(sp * float(gi)))
    return axes, g, umats


def _norm3(x: float, y: float, z: float) -> float:
    """sqrt(x*x + y*y + z*z) as compiled: fma(z, z, fma(x, x, y*y))."""
    return math.sqrt(fma64(z, z, fma64(x, x, y * y)))          # FMA


def _unit3(x: float, y: float, z: float) -> tuple[float, float, float]:
    m = _norm3(x, y, z)
    if m > 0:
        return x / m, y / m, z / m
    return x, y, z


def umat2misset(U) -> tuple[float, float, float]:
    """The C's ``umat2misset``: XYZ misset angles (radians) of a rotation matrix.

    Includes the C's re-orthonormalisation (rows normalised, empty rows replaced
    by cross products of the others, twice) with the binary's fused
    multiply-adds: each cross-product component a*b - c*d is fma(a, b, -c*d),
    except the first y x z x-component, fma(-uyz, uzy, uyy*uzz); each norm is
    sqrt(fma(z, z, fma(x, x, y*y))), except the final |z row| (x and y swapped).
    """
    U = np.asarray(U, dtype=np.float64).reshape(9)
    uxx, uxy, uxz, uyx, uyy, uyz, uzx, uzy, uzz = (float(x) for x in U)

    mx = _norm3(uxx, uxy, uxz)
    my = _norm3(uyx, uyy, uyz)
    mz = _norm3(uzx, uzy, uzz)
    if mx > 0:
        uxx, uxy, uxz = uxx / mx, uxy / mx, uxz / mx
    if my > 0:
        uyx, uyy, uyz = uyx / my, uyy / my, uyz / my
    if mz > 0:
        uzx, uzy, uzz = uzx / mz, uzy / mz, uzz / mz
    if mx >= 0 and my <= 0 and mz <= 0:
        uyx, uyy, uyz = 0.0, 1.0, 0.0
        uzx, uzy, uzz = 0.0, 0.0, 1.0
    if mx <= 0 and my >= 0 and mz <= 0:
        uxx, uxy, uxz = 1.0, 0.0, 0.0
        uzx, uzy, uzz = 0.0, 0.0, 1.0
    if mx <= 0 and my <= 0 and mz >= 0:
        uxx, uxy, uxz = 1.0, 0.0, 0.0
        uyx, uyy, uyz = 0.0, 1.0, 0.0

    for first in (True, False):
        xcy = _unit3(fma64(uxy, uyz, -(uxz * uyy)),             # FMA
                     fma64(uxz, uyx, -(uxx * uyz)),
                     fma64(uxx, uyy, -(uxy * uyx)))
        if first:
            ycz_x = fma64(-uyz, uzy, uyy * uzz)                 # FMA (second product fused)
        else:
            ycz_x = fma64(uyy, uzz, -(uyz * uzy))
        ycz = _unit3(ycz_x,
                     fma64(uyz, uzx, -(uyx * uzz)),
                     fma64(uyx, uzy, -(uyy * uzx)))
        zcx = _unit3(fma64(uzy, uxz, -(uzz * uxy)),
                     fma64(uzz, uxx, -(uzx * uxz)),
                     fma64(uzx, uxy, -(uzy * uxx)))
        if mx <= 0:
            uxx, uxy, uxz = ycz
        if my <= 0:
            uyx, uyy, uyz = zcx
        if mz <= 0:
            uzx, uzy, uzz = xcy

    mx = _norm3(uxx, uxy, uxz)
    my = _norm3(uyx, uyy, uyz)
    mz = math.sqrt(fma64(uzz, uzz, fma64(uzy, uzy, uzx * uzx)))  # FMA (operands swapped)
    if mx > 0:
        uxx, uxy, uxz = uxx / mx, uxy / mx, uxz / mx
    if my > 0:
        uyx, uyy, uyz = uyx / my, uyy / my, uyz / my
    if mz > 0:
        uzx, uzy, uzz = uzx / mz, uzy / mz, uzz / mz

    if uzx * uzx < 1.0:
        rotx = math.atan2(uzy, uzz)
        roty = math.atan2(-uzx, math.sqrt(fma64(uzy, uzy, uzz * uzz)))   # FMA
        rotz = math.atan2(uyx, uxx)
    else:
        rotx = math.atan2(1, 1) * 4
        roty = math.atan2(1, 1) * 2
        rotz = math.atan2(uxy, -uyy)
    return rotx, roty, rotz


def random_misset_rad(seed: int) -> tuple[float, float, float]:
    """``-misset random`` with ``-misset_seed seed``: XYZ angles in radians (SPEC 2.3).

    U = mosaic_rotation_umat(90.0, ...) (the 90 is consumed as radians: C bug
    C-IMPL-BUG-002), then umat2misset.  Seed 12345 prints
    105.720755 -34.951318 -97.823571 deg.
    """
    U = mosaic_rotation_umat(90.0, Ran1(c_seed(seed)))
    return umat2misset(U)


# ----------------------------------------------------------------------------------------
# gammln, poidev, gaussdev (SPEC 6.3)

_COF = (76.18009172947146, -86.50532032941677, 24.01409824083091,
        -1.231739572450155, 0.1208650973866179e-2, -0.5395239384953e-5)


def gammln(xx: float) -> float:
    """ln Gamma(xx) as the C: float32 argument and result, double inside.

    tmp -= (x+0.5)*log(tmp) is compiled as fma(-(x+0.5), log(tmp), tmp).
    """
    x = y = f32(xx)
    tmp = x + 5.5
    tmp = fma64(-(x + 0.5), math.log(tmp), tmp)                 # FMA
    ser = 1.000000000190015
    for c in _COF:
        y += 1.0
        ser += c / y
    return f32(math.log(2.5066282746310005 * ser / x) - tmp)


def gammln_np(xx) -> np.ndarray:
    """Vectorised ``gammln`` (float32 in, float32 out), identical to the scalar one."""
    x = np.asarray(xx, dtype=np.float32).astype(np.float64)
    with np.errstate(all="ignore"):
        tmp0 = x + 5.5
        tmp = fma64_np(-(x + 0.5), np.log(tmp0), tmp0)
        ser = np.full_like(x, 1.000000000190015)
        y = x.copy()
        for c in _COF:
            y = y + 1.0
            ser = ser + c / y
        val = np.log(2.5066282746310005 * ser / x) - tmp
    # numpy's log is last-bit different from the C library's: redo unsure roundings
    return _f32_of(val, lambda i: gammln(float(x[i])), rel=2.0 ** -36, abs_tol=2.0 ** -40)


class CNoise:
    """``poidev`` and ``gaussdev`` with the C's static variables, one ran1 stream.

    This is the readable scalar reference; ``noise.c_noise_image`` uses a faster
    equivalent.  Statics: poidev's cache (oldm, g, sq, alxm), recomputed when xm
    differs from the previous call (initially oldm = -1 with g = sq = alxm = 0),
    and gaussdev's spare deviate (iset, gset).
    """

    def __init__(self, rng: Ran1):
        self.rng = rng
        self.oldm = -1.0
        self.g = 0.0
        self.sq = 0.0
        self.alxm = 0.0
        self.iset = 0
        self.gset = 0.0

    def gaussdev(self, rng=None) -> float:
        """Unit-rms Gaussian deviate (polar Box-Muller in float32, spare kept).

        rng: another seed pointer (e.g. a ``Ran1Pointer``) to draw from; the
        spare deviate is shared by every pointer, as the C's statics are.
        """
        if self.iset:
            self.iset = 0
            return self.gset
        ran1 = (rng or self.rng).next
        while True:
            v1 = f32(2.0 * ran1() - 1.0)
            v2 = f32(2.0 * ran1() - 1.0)
            rsq = fmaf(v1, v1, f32(v2 * v2))                    # FMA v1*v1 + v2*v2
            if not (rsq >= 1.0 or rsq == 0.0):
                break
        fac = f32(math.sqrt(-2.0 * math.log(rsq) / rsq))
        self.gset = f32(v1 * fac)
        self.iset = 1
        return f32(v2 * fac)

    def poidev(self, xm: float) -> float:
        """Poisson deviate of mean xm (float32 in and out), as the C's ``poidev``."""
        xm = f32(xm)
        ran1 = self.rng.next
        if xm > 1.0e6:
            dev = self.gaussdev()
            return f32(fma64(dev, math.sqrt(xm), xm))            # FMA xm + sqrt(xm)*dev
        if xm < 12.0:
            if xm != self.oldm:
                self.oldm = xm
                self.g = f32(_exp(-xm))
            g = self.g
            em = -1.0
            t = 1.0
            while True:
                em += 1.0
                t = f32(t * ran1())
                if not t > g:
                    return em
        if xm != self.oldm:
            self.oldm = xm
            self.sq = f32(math.sqrt(2.0 * xm)) if xm >= 0 else math.nan
            self.alxm = f32(_log(xm))
            self.g = fmaf(xm, self.alxm, -gammln(xm + 1.0))      # FMA xm*alxm - gammln
        sq, alxm, g = self.sq, self.alxm, self.g
        while True:
            while True:
                y = f32(_tan(math.pi * ran1()))
                em = fmaf(sq, y, xm)                             # FMA sq*y + xm
                if not em < 0.0:
                    break
            em = _floor(em)
            w = f32(fmaf(em, alxm, -gammln(em + 1.0)) - g)       # FMA em*alxm - gammln
            t = f32((1.0 + f32(y * y)) * 0.9 * _exp(w))
            if not ran1() > t:
                return em


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _log(x: float) -> float:
    if x > 0.0:
        return math.log(x)
    if x == 0.0:
        return -math.inf
    return math.nan


def _tan(x: float) -> float:
    return math.tan(x)


def _floor(x: float) -> float:
    return float(math.floor(x)) if math.isfinite(x) else x


def poidev(xm: float, noise: CNoise) -> float:
    """C ``poidev(xm, &seed)`` using (and updating) the statics held in ``noise``."""
    return noise.poidev(xm)


def gaussdev(noise: CNoise) -> float:
    """C ``gaussdev(&seed)`` using (and updating) the statics held in ``noise``."""
    return noise.gaussdev()
