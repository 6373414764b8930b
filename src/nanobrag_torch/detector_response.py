"""Detector response: what an area detector makes of photons (noisify.c, SUITE 2).

Stages, each a function of (S, F) tensors that the noisify command and, later,
nanoBragg's own pipeline chain:

    photons  = photon_scale(I, fluence, scale)                 float image -> photons/pixel
    photons *= 1 + flicker * N(0,1)                             beam flicker (per pixel, as the C)
    photons *= 1 + calibration * N(0,1)                         static gain error per pixel
    counts   = Poisson(photons)                                 shot noise
    counts   = apply_psf(counts, kind, fwhm_px, radius)         point-spread function
    adu      = counts * gain + adc (+ readout * N(0,1))         gain, offset, read-out noise
    pixels   = quantize(adu, bits)                              the C's clamps and integer casts

The continuous parameters of the deterministic stages (fluence, scale, PSF
width, gain, adc) may be tensors with requires_grad: `expected_adu` is the
differentiable noiseless chain.  The stochastic stages draw from torch
generators (spec mode); `NoisifyStream` reproduces the C's random stream bit
for bit (c-parity), with rng.py's ran1/gaussdev/poidev and the statics the C
shares between its seeds.  `apply_psf` has a vectorised, differentiable form
(FFT convolution; spec mode) and the C's own accumulation order in float32
(c-parity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .units import R_E_SQR

PSF_KINDS = ("gauss", "fiber")
FIBER_G = 0.652383013252053          # fwhm = sqrt(2^(2/3) - 1) * g ... the C's factor g/fwhm
LOG16 = math.log(16.0)
LOG4 = math.log(4.0)
PHOTONLOSS_FACTOR = 10.0             # a photon count's error sqrt(v)/10 is "lost"


# ----------------------------------------------------------------------------------------
# photon scale, gain, ADC

def photon_scale(image, fluence, scale=1.0):
    """photons = (fluence * r_e^2) * scale * I (the C's order); tensors in, tensors out."""
    return (fluence * R_E_SQR) * scale * image


def gain_offset(photons, gain=1.0, adc=40.0):
    """ADU = photons * gain + adc (differentiable in photons, gain and adc)."""
    return photons * gain + adc


def expected_adu(photons, gain=1.0, adc=40.0, psf: Optional[str] = None, fwhm_px=None, radius: int = 0):
    """The noiseless detector: PSF (if any), then gain and offset.  Differentiable in
    photons, fwhm_px, gain and adc (the PSF radius is chosen on detached values)."""
    if psf is not None:
        photons = apply_psf(photons, psf, fwhm_px, radius).image
    return gain_offset(photons, gain, adc)


def quantize(adu, bits: int = 16, *, after_noise: bool = True, clamp_negative: bool = True):
    """(pixels, overloads): noisify's integer image of ADU values (numpy float64 in).

    Both of the C's loops clamp at 2147483647 and at 65535 and cast to uint32 and
    uint16, keeping the low bits of the truncated value, so negative ADUs wrap
    (SUITE N4; clamp_negative=True sets them to 0 instead).  The noiseless loop
    (after_noise=False) clamps at 65535 before its 32-bit cast too (SUITE N5) and
    casts NaN to 2147483648; the noise loop casts NaN to 0.  overloads counts the
    clamps of the chosen bit depth (the noise loop's count).
    """
    a = np.asarray(adu, dtype=np.float64)
    over32 = a > 2147483647.0
    a = np.where(over32, 2147483647.0, a)
    if clamp_negative:
        a = np.where(np.isnan(a) | (a < 0), 0.0, a)
    if not after_noise:
        a = np.minimum(a, 65535.0)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(a) & (a > -9.2e18)
        t = np.trunc(np.where(ok, a, 0.0)).astype(np.int64)
        int32 = np.where(ok, t & 0xFFFFFFFF, 0 if after_noise else 2147483648).astype(np.uint32)
        over16 = a > 65535.0
        a16 = np.where(over16, 65535.0, a)
        ok16 = np.isfinite(a16) & (a16 > -2147483649.0)
        t16 = np.trunc(np.where(ok16, a16, 0.0)).astype(np.int64)
    int16 = np.where(ok16, t16 & 0xFFFF, 0).astype(np.uint16)
    overloads = int(np.count_nonzero(over32 if bits == 32 else over16))
    return (int32 if bits == 32 else int16), overloads


# ----------------------------------------------------------------------------------------
# point-spread function

def psf_g(fwhm_px):
    """The fiber PSF's g (pixels) for a FWHM in pixels."""
    return fwhm_px * FIBER_G


def psf_kernel(kind: str, fwhm_px, radius: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """(2R+1, 2R+1) kernel, [R + dy, R + dx]: the PSF integrated over each pixel (the C's
    analytic integrals), 0 outside dx^2 + dy^2 <= R^2.  Differentiable in fwhm_px.

    gauss: unit-volume 2D Gaussian of that FWHM, 0.25 * Delta erf * Delta erf;
    fiber: g/(2 pi (g^2 + r^2)^(3/2)) integrated, atan(xy / (g sqrt(g^2+x^2+y^2))) / 2 pi.
    """
    R = int(radius)
    fw = torch.as_tensor(fwhm_px, dtype=dtype, device=device)
    d = torch.arange(-R, R + 1, dtype=dtype, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    one = torch.ones((), dtype=dtype, device=device)
    if kind == "gauss":
        x, y, pix = dx / fw, dy / fw, one / fw
        c1, c2 = math.sqrt(math.log(2.0)), math.sqrt(LOG16)

        def integ(a, b):
            return 0.125 * (torch.special.erf(2 * a * c1) * torch.special.erf(b * c2) * 2.0)
    elif kind == "fiber":
        g = psf_g(fw)
        x, y, pix = dx, dy, one

        def integ(a, b):
            return torch.atan((a * b) / (g * torch.sqrt(g * g + a * a + b * b))) / 2.0 / math.pi
    else:
        raise ValueError(f"unknown PSF kind {kind!r} (use one of {PSF_KINDS})")
    h = pix / 2.0
    k = integ(x + h, y + h) - integ(x + h, y - h) - integ(x - h, y + h) + integ(x - h, y - h)
    inside = dx * dx + dy * dy <= R * R
    return torch.where(inside, k, torch.zeros_like(k))


def _log(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(v)


def psf_radius_for(kind: str, value, fwhm_px: float, table_max: bool = False):
    """The C's automatic radius: 1 + ceil(the distance beyond which a tenth of the value's
    photon noise, sqrt(v)/10, falls), before the 0 -> 1 and image-size limits.

    table_max: the kernel table's formula for the image maximum (gauss: ...log(4)/2,
    the same value written differently).  value: numpy array (or float)."""
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        lost = np.sqrt(v) / PHOTONLOSS_FACTOR
        if kind == "gauss":
            arg = (-_log(lost / v) / LOG4 / 2) if table_max else (-_log(lost / v) / LOG16)
            r = np.sqrt(arg) * fwhm_px
            # numpy's log may differ from the C library's in the last bit: redo the values
            # that sit that close to an integer (ceil would flip) with math.log
            near = np.flatnonzero(np.isfinite(r) & (np.abs(r - np.round(r)) <= 1e-12 * np.maximum(np.abs(r), 1)))
            for i in near.tolist():
                lo = math.sqrt(float(v[i])) / PHOTONLOSS_FACTOR
                a = -math.log(lo / float(v[i]))
                a = a / LOG4 / 2 if table_max else a / LOG16
                r[i] = math.sqrt(a) * fwhm_px if a >= 0 else math.nan
        else:
            r = psf_g(fwhm_px) * (v / lost)
        rad = 1.0 + np.ceil(r)
    # the C's (int) of a double: out-of-range (inf, nan) -> INT_MIN
    ok = np.isfinite(rad) & (np.abs(rad) < 2 ** 31)
    out = np.where(ok, rad, -2 ** 31).astype(np.int64)
    return out if np.ndim(value) else out[0]


def lost_photons(kind: str, value, radius, fwhm_px):
    """Photons of a pixel value beyond the rendering radius (added back evenly by the C):
    gauss v exp(-ln16 (r/fwhm)^2), fiber v g / sqrt(g^2 + r^2).  Tensors or arrays."""
    if isinstance(value, torch.Tensor):
        r = radius.to(value.dtype) if isinstance(radius, torch.Tensor) else torch.as_tensor(radius, dtype=value.dtype)
        if kind == "gauss":
            rsq = (r / fwhm_px) ** 2
            return value * torch.exp(-LOG16 * rsq)
        g = psf_g(fwhm_px)
        return value * g / torch.sqrt(g * g + r * r)
    v = np.asarray(value, dtype=np.float64)
    r = np.asarray(radius, dtype=np.float64)
    if kind == "gauss":
        rsq = r / fwhm_px
        rsq = rsq * rsq
        # exp depends on the radius only: the C library's value for each distinct radius
        radii, inv = np.unique(rsq, return_inverse=True)
        e = np.array([math.exp(-LOG16 * x) for x in radii.tolist()])
        return v * e[inv].reshape(v.shape)
    g = psf_g(fwhm_px)
    from .rng import fma64_np
    return v * g / np.sqrt(fma64_np(np.full_like(r, g), np.full_like(r, g), r * r))   # FMA g*g + r*r


@dataclass
class PSFResult:
    """apply_psf's result: image (S, F); the kernel-table radius R, whether it was chosen
    automatically, its unclipped value and the image maximum it came from (for the C's
    console lines); the total photons added back evenly; skipped: no photons (the C
    returns an empty image)."""
    image: torch.Tensor
    radius: int
    auto: bool
    radius_printed: int
    max_value: float
    lost: torch.Tensor
    skipped: bool = False


def apply_psf(image: torch.Tensor, kind: str, fwhm_px, radius: int = 0, *, c_order: bool = False,
              wrap: bool = False) -> PSFResult:
    """noisify's apply_psf (SUITE 2.4): spread each positive pixel over the kernel, out to its
    own radius, then add the photons beyond those radii back evenly to every pixel.

    image: (S, F) photons.  fwhm_px: FWHM in pixels (tensor or float; differentiable).
    radius: the user's rendering radius in pixels (0: automatic, per pixel from its value).
    c_order: the C's accumulation, pixel after pixel in float32 (c-parity, numpy; not
    differentiable); otherwise a float64 FFT convolution per radius.  wrap: photons
    reaching column x = F land in column 0 of the next row, as the C's bounds test lets
    them (SUITE N6); otherwise they leave the detector like those past the other edges.
    """
    S, F = image.shape
    dtype, device = image.dtype, image.device
    fw = float(fwhm_px.detach()) if isinstance(fwhm_px, torch.Tensor) else float(fwhm_px)
    vals = image.detach().to("cpu", torch.float64).numpy().reshape(-1)
    maxwidth = max(S, F)
    user = int(radius)
    auto = user <= 0
    R, printed, vmax = user, user, 0.0
    if auto:
        vmax = float(np.max(vals)) if vals.size else 0.0
        if not vmax > 0.0:
            z = torch.zeros_like(image)
            return PSFResult(z, 0, True, 0, vmax, torch.zeros((), dtype=dtype), skipped=True)
        R = printed = int(psf_radius_for(kind, vmax, fw, table_max=True))
        R = 1 if R == 0 else R
    R = min(R, maxwidth)
    pos = vals > 0.0
    if user != 0:
        r = np.full(vals.shape, user, dtype=np.int64)
    else:
        r = psf_radius_for(kind, np.where(pos, vals, 1.0), fw)
    r = np.where(r == 0, 1, r)
    r = np.minimum(r, maxwidth)
    if not c_order:
        # the C's automatic radius fails below 0.01 photons (log of a ratio > 1: NaN, a
        # negative radius, the pixel's photons vanish); render such pixels at radius 1
        r = np.where(r < 1, 1, r)
        R = max(R, 1)
    if c_order:
        out, lost = _psf_c_order(vals.astype(np.float32), pos, r, S, F, kind, fw, R, wrap)
        return PSFResult(torch.as_tensor(out.reshape(S, F), device=device).to(dtype), R, auto, printed, vmax,
                         torch.as_tensor(lost, dtype=torch.float64))
    kernel = psf_kernel(kind, fwhm_px, R, torch.float64, device)
    img64 = image.to(torch.float64)
    r_t = torch.as_tensor(r.reshape(S, F), device=device)
    pos_t = torch.as_tensor(pos.reshape(S, F), device=device)
    lost_each = lost_photons(kind, img64, r_t, _as_t(fwhm_px, device))
    lost = torch.where(pos_t, lost_each, torch.zeros_like(lost_each)).sum()
    out = _psf_fft(torch.where(pos_t, img64, torch.zeros_like(img64)), r_t, kernel, R, wrap)
    out = out + lost / (S * F)
    return PSFResult(out.to(dtype), R, auto, printed, vmax, lost)


def _as_t(x, device):
    return x.to(device=device, dtype=torch.float64) if isinstance(x, torch.Tensor) else torch.tensor(
        float(x), dtype=torch.float64, device=device)


def _psf_fft(img: torch.Tensor, r: torch.Tensor, kernel: torch.Tensor, R: int, wrap: bool) -> torch.Tensor:
    """sum over the distinct radii r0 of conv(img where r == r0, kernel cut at r0): a linear
    convolution with zero boundary (FFT, float64); wrap folds column F onto the next row."""
    S, F = img.shape
    size = (S + 2 * R + 1, F + 2 * R + 1)
    d = torch.arange(-R, R + 1, device=img.device)
    rho2 = d[:, None] ** 2 + d[None, :] ** 2
    spec = None
    for r0 in torch.unique(r[img != 0]).tolist():
        part = torch.where(r == r0, img, torch.zeros_like(img))
        k = torch.where(rho2 <= r0 * r0, kernel, torch.zeros_like(kernel))
        term = torch.fft.rfft2(part, s=size) * torch.fft.rfft2(k, s=size)
        spec = term if spec is None else spec + term
    if spec is None:
        return torch.zeros_like(img)
    full = torch.fft.irfft2(spec, s=size)[R:R + S + 1, R:R + F + 1]     # targets x in 0..F, y in 0..S
    out = full[:S, :F]
    if wrap:
        # the C lets x == F through: flat index y*F + F is (y + 1, 0); row S and beyond are lost
        out = out + torch.nn.functional.pad(full[:S - 1, F:F + 1], (0, F - 1, 1, 0))
    return out


def _psf_c_order(v: np.ndarray, pos: np.ndarray, r: np.ndarray, S: int, F: int, kind: str, fw: float,
                 R: int, wrap: bool):
    """The C's loops: pixels in raster order, each spread over dx (outer), dy (inner) with
    out[j] = (float)(out[j] + v*K) (fused), then every pixel += total lost / pixels.

    Vectorised over pixels: for any target pixel the C's additions come from source
    pixels in raster order, so sweeping the kernel offsets in decreasing flat offset
    (then increasing dx) and adding all sources at once in each sweep step gives every
    target its additions in the C's order."""
    from .rng import _f32_of, f32, fma64
    n = S * F
    kernel = psf_kernel(kind, fw, R).numpy()
    idx = np.flatnonzero(pos)
    order = np.argsort(-r[idx], kind="stable")
    idx = idx[order]
    rr = r[idx]
    # a negative radius (the C's failed automatic radius) renders nothing (the C's loops
    # with such a radius are undefined behaviour; not emulated)
    r2 = np.where(rr < 0, -1, rr.astype(np.int64) ** 2)
    x0, y0 = idx % F, idx // F
    vv = v[idx].astype(np.float64)
    # lost photons: double sum in raster order
    lost_each = lost_photons(kind, v[pos].astype(np.float64), r[pos], fw)
    total_lost = float(np.cumsum(lost_each)[-1]) if lost_each.size else 0.0
    out = np.zeros(n + 1, dtype=np.float64)               # float32 values; [n] is the C's padding slot
    dd = np.arange(-R, R + 1)
    DY, DX = np.meshgrid(dd, dd, indexing="ij")
    rho2 = DX * DX + DY * DY
    keep = (rho2 <= R * R) & (kernel != 0.0)
    DX, DY, K, RHO2 = DX[keep], DY[keep], kernel[keep], rho2[keep]
    off = DY * F + DX
    sweep = np.lexsort((DX, -off))                        # decreasing offset, then increasing dx
    neg_r2 = -r2                                          # ascending for searchsorted
    xmax, ymax = (F, S) if wrap else (F - 1, S - 1)
    for t in sweep.tolist():
        dx, dy, k, rho = int(DX[t]), int(DY[t]), float(K[t]), int(RHO2[t])
        m = int(np.searchsorted(neg_r2, -rho, side="right"))       # sources with r^2 >= rho
        if m == 0:
            continue
        x = x0[:m] + dx
        y = y0[:m] + dy
        ok = (x >= 0) & (x <= xmax) & (y >= 0) & (y <= ymax)
        j = y * F + x
        ok &= (j >= 0) & (j <= n)
        if not ok.any():
            continue
        jj = j[ok]
        a = vv[:m][ok]
        c = out[jj]
        s64 = a * k + c
        out[jj] = _f32_of(s64, lambda i: f32(fma64(float(a[i]), k, float(c[i]))), rel=2.0 ** -50)
    res = out[:n]
    add = total_lost / n
    res = (res + add).astype(np.float32)                  # (float)(out + lost/pixels)
    return res, total_lost


# ----------------------------------------------------------------------------------------
# noise: spec (torch generators) and the C's stream (c-parity)

def generator(seed: Optional[int], device="cpu") -> torch.Generator:
    """A torch generator seeded with seed (None: the clock)."""
    import time
    gen = torch.Generator(device=device)
    gen.manual_seed((time.time_ns() if seed is None else int(seed)) % (2 ** 63))
    return gen


def gaussian_factor(shape, sigma, generator: torch.Generator, dtype=torch.float64, device="cpu"):
    """1 + sigma * N(0, 1) per pixel (flicker, calibration)."""
    return 1.0 + sigma * torch.randn(shape, generator=generator, dtype=dtype, device=device)


def shot_noise(mean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Poisson counts of mean photons per pixel (float64); above 1e6 the Gaussian
    approximation m + sqrt(m) N(0,1), as the C; negative or NaN means give 0."""
    lam = mean.detach().to(torch.float64)
    lam = torch.where(torch.isfinite(lam) & (lam > 0), lam, torch.where(lam == math.inf, lam, 0.0))
    big = lam > 1.0e6
    counts = torch.poisson(torch.where(big, torch.zeros_like(lam), lam), generator=generator)
    if bool(big.any()):
        z = torch.randn(lam.shape, generator=generator, dtype=torch.float64, device=lam.device)
        counts = torch.where(big, lam + torch.sqrt(lam) * z, counts)
    return counts


class NoisifyStream:
    """noisify's random numbers as the C draws them (c-parity), bit for bit.

    One ran1 table for both seeds (-seed and -calib_seed are two pointers on it), one
    gaussdev spare and one poidev cache (rng.CNoise): flicker, calibration, Poisson
    and read-out draws interleave exactly as in the C's loops (SUITE 2.3, N1-N3).
    seed, calib_seed: the C's stored values (-N for -seed N; the default calib
    seed +123456789, which ran1 turns into 1).
    """

    def __init__(self, seed: int, calib_seed: int):
        from .rng import CNoise, Ran1, Ran1Pointer
        self.rng = Ran1(seed)
        self.calib = Ran1Pointer(self.rng, calib_seed)
        self.noise = CNoise(self.rng)
        self.fresh = True

    def photon_counts(self, photons32: np.ndarray, flicker: float, calibration: float,
                      more_draws_follow: bool) -> np.ndarray:
        """The C's first noise loop: per pixel flicker (seed), calibration (calib_seed), poidev
        (seed).  photons32: float32 means in raster order; returns float32 counts."""
        from .noise import c_poidev_array
        from .rng import fma64
        vals = np.ascontiguousarray(photons32, dtype=np.float32).reshape(-1)
        if flicker <= 0 and calibration <= 0 and not more_draws_follow and self.fresh:
            # a pure Poisson stream: noise.py's fast equivalent of the poidev loop
            self.fresh = False
            with np.errstate(over="ignore", invalid="ignore"):
                return c_poidev_array(vals, self.rng)
        self.fresh = False
        noise, calib = self.noise, self.calib
        out = np.empty(vals.size, dtype=np.float32)
        pv = vals.astype(np.float64).tolist()
        for i, p in enumerate(pv):
            if flicker > 0.0:
                p = p * fma64(noise.gaussdev(), flicker, 1.0)          # FMA 1.0 + flicker*g
            if calibration > 0.0:
                p = p * fma64(noise.gaussdev(calib), calibration, 1.0)
            out[i] = noise.poidev(p)                                    # poidev((float)p)
        return out

    def readout_adu(self, photons32: np.ndarray, gain: float, adc: float, readout: float) -> np.ndarray:
        """The C's second loop: adu = photons*gain + adc (+ readout*gaussdev(seed)), fused."""
        from .rng import fma64, fma64_np
        p = np.asarray(photons32, dtype=np.float32).astype(np.float64).reshape(-1)
        adu = fma64_np(p, np.full_like(p, gain), np.full_like(p, adc))
        if readout > 0.0:
            g = self.noise.gaussdev
            adu = np.array([fma64(g(), readout, a) for a in adu.tolist()], dtype=np.float64)
        return adu
