"""Noise images (SPEC 6.3): the C's exact ran1/poidev stream, and a fast seeded Poisson draw.

``c_noise_image`` reproduces the C program's noise loop pixel for pixel.  It gives
the same result as calling ``rng.CNoise.poidev`` pixel by pixel (the readable
reference) but runs much faster:

* the uniforms come in bulk from ``Ran1.uniforms`` (vectorised Lehmer jump-ahead,
  one tight loop for the shuffle table);
* everything that depends only on the pixel value (exp(-xm), sqrt(2xm), log(xm),
  gammln(xm+1)) or only on the stream position (tan(pi*u), 2u-1) is precomputed
  with numpy, with the float32 roundings of the C;
* pixels are handled in runs of the same poidev branch: the Gaussian branch
  (xm > 1e6) is fully vectorised, since its consumption does not depend on xm;
  the direct (xm < 12) and rejection branches are sequential loops over Python
  floats whose only per-draw work is the data-dependent part.
"""
from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch

from . import rng as R
from .rng import _F, fmaf, fmaf_np, fma64_np, gammln, gammln_np, _f32_of, Ran1, c_seed

__all__ = ["c_noise_image", "spec_noise_image", "c_poidev_array", "finish_noise_image"]

_CHUNK = 1 << 16            # pixels per chunk (bounds the uniform buffer)
_D, _R, _G = 0, 1, 2        # poidev branches: direct (xm < 12), rejection, Gaussian (xm > 1e6)


# ----------------------------------------------------------------------------------------
# uniform stream with per-position precomputations

class _Stream:
    """A window on the ran1 stream: U (uniforms), Y = float32(tan(pi*u)) and
    A = 0.9*(1 + float32(y*y)) for the rejection branch, V = float32(2u - 1)
    for gaussdev.  Python lists for the scalar loops, numpy for V.
    Index q of the loops is relative to the window start ``base``."""

    def __init__(self, rng: Ran1, want_ya: bool, want_v: bool):
        self.rng = rng
        self.want_ya = want_ya
        self.want_v = want_v
        self.U: list = []
        self.Y: list = []
        self.A: list = []
        self.V = np.empty(0, dtype=np.float32)

    def ensure(self, n: int) -> None:
        """Make the window at least n long."""
        if len(self.U) >= n:
            return
        k = max(n - len(self.U), 4096)
        u = self.rng.uniforms(k)
        self.U.extend(u.tolist())
        if self.want_ya:
            y = _tan_pi_f32(u)
            self.Y.extend(y.tolist())
            self.A.extend(((1.0 + (y * y).astype(np.float64)) * 0.9).tolist())
        if self.want_v:
            v = (2.0 * u.astype(np.float64) - 1.0).astype(np.float32)
            self.V = np.concatenate([self.V, v])

    def drop(self, q: int) -> int:
        """Forget the first q entries (consumed); returns the new index (0)."""
        del self.U[:q]
        if self.want_ya:
            del self.Y[:q]
            del self.A[:q]
        if self.want_v:
            self.V = self.V[q:]
        return 0


def _tan_pi_f32(u: np.ndarray) -> np.ndarray:
    """float32(tan(M_PI * (double)u)) as the C (tan from the C library)."""
    arg = np.pi * u.astype(np.float64)
    return _f32_of(np.tan(arg), lambda i: math.tan(float(arg[i])))


# ----------------------------------------------------------------------------------------
# per-pixel constants

def _direct_g(x: np.ndarray) -> np.ndarray:
    """g = (float)exp(-xm) for the direct branch, float64 array of float32 values."""
    neg = -x
    with np.errstate(all="ignore"):
        e = np.exp(neg)
    return _f32_of(e, lambda i: R._exp(float(neg[i]))).astype(np.float64)


def _rejection_consts(x: np.ndarray):
    """(sq, alxm, g) of the rejection branch for float64 xm values (float32-valued)."""
    with np.errstate(all="ignore"):
        sq = np.sqrt(2.0 * x).astype(np.float32)
        alxm = _f32_of(np.log(x), lambda i: R._log(float(x[i])))
        gl = gammln_np((x + 1.0).astype(np.float32))
        g = fmaf_np(x.astype(np.float32), alxm, -gl)                 # FMA xm*alxm - gammln
    return sq.astype(np.float64), alxm.astype(np.float64), g.astype(np.float64)


# ----------------------------------------------------------------------------------------
# the three branches

def _run_direct(gs: list, st: _Stream, q: int, out: list) -> int:
    """Direct branch for a run of pixels with precomputed g: multiply uniforms
    (float32 products) until the product is <= g; the deviate is the count - 1."""
    U = st.U
    F = _F
    i = 0
    n = len(gs)
    while i < n:
        try:
            while i < n:
                g = gs[i]
                q0 = q
                t = U[q]                       # 1.0f * u is exact
                q += 1
                em = 0.0
                while t > g:
                    F[0] = t * U[q]            # float32 product
                    t = F[0]
                    q += 1
                    em += 1.0
                out.append(em)
                i += 1
        except IndexError:
            q = q0
            st.ensure(len(U) + 4096)
    return q


def _run_rejection(xs: list, sqs: list, alxms: list, gs: list, st: _Stream, q: int,
                   out: list, gtab: list) -> int:
    """Rejection branch (NR poidev for xm >= 12) for a run of pixels."""
    U, Y, A = st.U, st.Y, st.A
    F = _F
    ntab = len(gtab)
    floor = math.floor
    exp = math.exp
    i = 0
    n = len(xs)
    while i < n:
        try:
            while i < n:
                xm = xs[i]
                q0 = q
                if xm != xm:                   # NaN: one y draw, one test draw, returns NaN
                    U[q + 1]
                    q += 2
                    out.append(xm)
                    i += 1
                    continue
                sq = sqs[i]
                alxm = alxms[i]
                g = gs[i]
                while True:
                    y = Y[q]
                    a = A[q]
                    q += 1
                    s = sq * y + xm            # sq*y exact; sign of s == sign of fmaf(sq, y, xm)
                    if s < 0.0:
                        continue
                    # em = floor(fmaf(sq, y, xm)): floor(s) unless s is within 2 float32 ulp
                    # of an integer (or too large to have a fraction); then exactly
                    if s < 8388608.0:
                        frac = s % 1.0
                        tol = s * 2.5e-7
                        if frac > tol and 1.0 - frac > tol:
                            em = s - frac
                        else:
                            em = float(floor(fmaf(sq, y, xm)))
                    else:
                        em = R._floor(fmaf(sq, y, xm))
                    k = int(em) if em < ntab else -1
                    gl = gtab[k] if k >= 0 else gammln(em + 1.0)
                    p = em * alxm                  # exact (em integer < 2**24 or float32)
                    s = p - gl
                    # Fast decision: t_C = f32(a*exp(f32(f32(p - gl) - g))) differs from
                    # td = a*exp(p - gl - g) by a factor within exp(+-eb): half a float32
                    # ulp of z and of w (<= |.|*2**-24 each, |z| <= p + gl, |w| <= |z| + g,
                    # all terms >= 0 here) plus the final rounding.  Decide from td when u
                    # is clear of [td*(1 - eb), td*(1 + 1.5*eb)] (eb <= 0.5); else exactly.
                    wd = s - g
                    if wd < 700.0:
                        eb = (2.0 * (p + gl) + g + 1.0) * 6.0e-8
                        if eb <= 0.5:
                            td = a * exp(wd)
                            u = U[q]
                            if u > td * (1.0 + 1.5 * eb):
                                q += 1
                                continue               # rejected
                            if u < td * (1.0 - eb):
                                q += 1
                                break                  # accepted
                    # exact: z = fmaf(em, alxm, -gl), w = (float)(z - g), t = (float)(a*exp(w))
                    F[0] = s
                    z = F[0]
                    d = s - z
                    if d != 0.0:
                        o = z + 2.0 * d
                        F[0] = o
                        if F[0] == o:          # halfway case: the exact error decides
                            z = fmaf(em, alxm, -gl)
                    F[0] = z - g
                    w = F[0]
                    F[0] = a * (exp(w) if w < 709.0 else R._exp(w))
                    t = F[0]
                    u = U[q]
                    q += 1
                    if not u > t:
                        break
                out.append(em)
                i += 1
        except IndexError:
            q = q0
            st.ensure(len(U) + 4096)
    return q


class _GaussState:
    __slots__ = ("iset", "gset")

    def __init__(self):
        self.iset = 0
        self.gset = 0.0


def _gauss_devs(L: int, st: _Stream, q: int, gs: _GaussState) -> tuple[np.ndarray, int]:
    """The next L gaussdev values (float32) and the new stream index; vectorised.

    gaussdev's consumption does not depend on the pixel values: pairs
    (v1, v2) = (2u-1, 2u'-1) are drawn until 0 < rsq < 1; each accepted pair gives
    v2*fac now and v1*fac as the spare for the next call.
    """
    devs = np.empty(L, dtype=np.float32)
    k = 0
    if gs.iset and L > 0:
        devs[0] = gs.gset
        gs.iset = 0
        k = 1
    need = L - k
    if need <= 0:
        return devs, q
    npairs = (need + 1) // 2
    window = int(npairs * 1.35) + 64
    while True:
        st.ensure(q + 2 * window)
        v1 = st.V[q:q + 2 * window:2]
        v2 = st.V[q + 1:q + 2 * window:2]
        rsq = fmaf_np(v1, v1, v2 * v2)                     # FMA v1*v1 + v2*v2 (float32)
        idx = np.flatnonzero((rsq < 1.0) & (rsq != 0.0))
        if len(idx) >= npairs:
            break
        window *= 2
    idx = idx[:npairs]
    r = rsq[idx].astype(np.float64)
    with np.errstate(all="ignore"):
        fac = _f32_of(np.sqrt(-2.0 * np.log(r) / r),
                      lambda i: math.sqrt(-2.0 * math.log(float(r[i])) / float(r[i])))
    d2 = v2[idx] * fac                                     # returned first
    d1 = v1[idx] * fac                                     # kept as the spare
    seq = np.stack([d2, d1], axis=1).reshape(-1)
    devs[k:] = seq[:need]
    if need % 2:
        gs.iset = 1
        gs.gset = float(d1[-1])
    return devs, q + 2 * (int(idx[-1]) + 1)


# ----------------------------------------------------------------------------------------
# driver

def c_poidev_array(values: np.ndarray, rng: Ran1) -> np.ndarray:
    """``poidev(values[i])`` for i = 0, 1, ... in order, from one fresh C noise stream.

    values: (N,) float32 pixel means in the C's loop order.  Returns (N,) float32,
    identical to ``[CNoise(rng).poidev(v) for v in values]`` (fresh statics).
    """
    vals = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    n = vals.size
    res = np.empty(n, dtype=np.float32)
    if n == 0:
        return res
    x = vals.astype(np.float64)
    with np.errstate(invalid="ignore"):
        cat = np.where(x > 1.0e6, _G, np.where(x < 12.0, _D, _R)).astype(np.int8)
    isD, isR, isG = cat == _D, cat == _R, cat == _G

    gD = np.zeros(n)
    if isD.any():
        gD[isD] = _direct_g(x[isD])
        # C statics start as oldm = -1, g = 0: leading calls with xm == -1 reuse g = 0
        nonG = np.flatnonzero(~isG)
        lead = nonG[np.cumprod(x[nonG] == -1.0).astype(bool)]
        gD[lead] = 0.0
    sq = np.zeros(n)
    alxm = np.zeros(n)
    gR = np.zeros(n)
    gtab: list = []
    if isR.any():
        sq[isR], alxm[isR], gR[isR] = _rejection_consts(x[isR])
        finite = x[isR][np.isfinite(x[isR])]
        if finite.size:
            top = float(finite.max())
            emax = int(top + 12.0 * math.sqrt(2.0 * top) + 64)
            gtab = gammln_np(np.arange(1, emax + 2, dtype=np.float64)).astype(np.float64).tolist()

    st = _Stream(rng, want_ya=bool(isR.any()), want_v=bool(isG.any()))
    gauss = _GaussState()
    q = 0
    for c0 in range(0, n, _CHUNK):
        c1 = min(n, c0 + _CHUNK)
        q = st.drop(q)
        est = int(np.sum(np.clip(x[c0:c1][isD[c0:c1]], 0.0, 12.0)) + (c1 - c0) * 3) + 4096
        st.ensure(est)
        ccat = cat[c0:c1]
        starts = np.concatenate([[0], np.flatnonzero(ccat[1:] != ccat[:-1]) + 1, [c1 - c0]])
        for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
            kind = int(ccat[a])
            lo, hi = c0 + a, c0 + b
            if kind == _G:
                devs, q = _gauss_devs(hi - lo, st, q, gauss)
                xv = x[lo:hi]
                res[lo:hi] = fma64_np(devs.astype(np.float64), np.sqrt(xv), xv)  # FMA xm + sqrt(xm)*dev
            elif kind == _D:
                out: list = []
                q = _run_direct(gD[lo:hi].tolist(), st, q, out)
                res[lo:hi] = out
            else:
                out = []
                q = _run_rejection(x[lo:hi].tolist(), sq[lo:hi].tolist(), alxm[lo:hi].tolist(),
                                   gR[lo:hi].tolist(), st, q, out, gtab)
                res[lo:hi] = out
    return res


def _roi_slices(shape, roi):
    """Row/column slices of the inclusive ROI (xmin, xmax, ymin, ymax) = (fast, fast, slow, slow)."""
    S, F = shape
    xmin, xmax, ymin, ymax = (int(v) for v in roi)
    f0, f1 = max(xmin, 0), min(xmax, F - 1)
    s0, s1 = max(ymin, 0), min(ymax, S - 1)
    if f0 > f1 or s0 > s1:
        return None
    return slice(s0, s1 + 1), slice(f0, f1 + 1)


def finish_noise_image(shape, roi, counts: np.ndarray, adc: float) -> tuple[np.ndarray, float, int]:
    """The C's bookkeeping after each poidev: photons += n (double, raster order);
    n += adc; n > 65535 -> 65535 and overloads++; else (unsigned short) via the
    int32 truncation the binary does (NaN or out of int range -> 0).

    counts: float32 deviates of the ROI pixels in raster order.  Returns
    (uint16 image (S, F) with zeros outside the ROI, photons, overloads).
    """
    img = np.zeros(shape, dtype=np.uint16)
    sl = _roi_slices(shape, roi)
    if sl is None or counts.size == 0:
        return img, 0.0, 0
    test = counts.astype(np.float64)
    photons = float(np.cumsum(test)[-1])          # sequential double sum, as the C
    test = test + float(adc)
    over = test > 65535.0
    with np.errstate(invalid="ignore"):
        ok = ~over & (test > -2147483649.0) & (test < 2147483648.0)
        as_int = np.where(ok, np.trunc(np.where(ok, test, 0.0)), -2147483648.0).astype(np.int64)
    vals = np.where(over, 65535, as_int & 0xFFFF).astype(np.uint16)
    rows, cols = sl
    img[rows, cols] = vals.reshape(img[rows, cols].shape)
    return img, photons, int(np.count_nonzero(over))


def c_noise_image(image: np.ndarray, seed: int, roi, adc: float, *,
                  rng: Optional[Ran1] = None) -> tuple[np.ndarray, float, int]:
    """The C's noise image (SPEC 6.3), pixel for pixel.

    image: (S, F) float32 float image (slow, fast).  seed: the ``-seed`` value as
    typed (the C uses -seed).  roi: (xmin, xmax, ymin, ymax) inclusive, fast then
    slow; the mask is not consulted (as the C).  adc: offset added to each count.
    rng: optional prepared stream instead of ``Ran1(c_seed(seed))`` (e.g.
    ``Ran1.continuing`` when the stored seed is positive).
    Returns (uint16 image (S, F), photons, overloads).
    """
    img = np.asarray(image, dtype=np.float32)
    sl = _roi_slices(img.shape, roi)
    if sl is None:
        return np.zeros(img.shape, dtype=np.uint16), 0.0, 0
    vals = img[sl].reshape(-1)
    counts = c_poidev_array(vals, rng if rng is not None else Ran1(c_seed(seed)))
    return finish_noise_image(img.shape, roi, counts, adc)


# ----------------------------------------------------------------------------------------
# spec mode

def spec_noise_image(image, seed: Optional[int], roi, adc: float) -> tuple[np.ndarray, float, int]:
    """Spec-mode noise: a fast seeded Poisson draw with the C's ROI/adc/clip rules.

    image: (S, F) tensor or array of means.  seed: int (reproducible; different
    seeds give different images) or None (time-based).  Means above 1e6 use the
    Gaussian approximation xm + sqrt(xm)*N(0,1) like the C; negative or NaN means
    count as 0.  Returns (uint16 numpy image (S, F), photons, overloads).
    """
    t = torch.as_tensor(image).detach().to("cpu", torch.float64)
    shape = tuple(t.shape)
    sl = _roi_slices(shape, roi)
    if sl is None:
        return np.zeros(shape, dtype=np.uint16), 0.0, 0
    if seed is None:
        seed = time.time_ns()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) % (2 ** 63))
    lam = t[sl].reshape(-1)
    lam = torch.where(torch.isfinite(lam) & (lam > 0), lam, torch.where(lam == math.inf, lam, 0.0))
    big = lam > 1.0e6
    small = torch.where(big, torch.zeros_like(lam), lam)
    counts = torch.poisson(small, generator=gen)
    if bool(big.any()):
        z = torch.randn(lam.shape, generator=gen, dtype=torch.float64)
        counts = torch.where(big, lam + torch.sqrt(lam) * z, counts)
    return finish_noise_image(shape, roi, counts.numpy().astype(np.float32), adc)
