"""Amorphous scattering (water, air, ice): nonBragg.c's physics as tensor functions (SUITE 1.3).

A pixel of an amorphous sample's image holds

    photons = r_e^2 * fluence * N_molecules * < sign(F) F(stol)^2 * polar * omega * w >

the mean over sub-pixels and sources (w: source weights, not normalised, as
the C), with F(stol) interpolated from a sin(theta)/lambda table.  Everything
here is a pure, vectorised function of tensors: the sample size, density,
molecular weight and fluence, the table's F values and the geometry may carry
gradients.  The nonBragg command (nonbragg.py) and, later, nanoBragg's own
pipeline call these functions:

* `StolTable` / `stol_table`: the C's table with its guard nodes;
* `interpolate_F`: 4-point Lagrange interpolation (the C's polint);
* `stol_of`: sin(theta)/lambda of a (diffracted, incident, lambda) triple;
* `molecules_in_sample`: N = volume * density * N_A / MW, beam-clipped;
* `amorphous_terms` and `amorphous_intensity`: per-evaluation terms and the
  photons per pixel;
* `render_amorphous`: a whole detector (a `detector.DetectorGeometry` and a
  `beam.Sources`), chunked over pixels;
* `structure_factor_from_image` and `stol_bins`: the C's -img inversion.

Lengths in metres, stol in 1/m (the C's units), density in g/cm^3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .beam import Sources, polarization_factor
from .detector import DetectorGeometry, pixel_position_components
from .units import AVOGADRO, R_E_SQR

# abscissa multipliers of -stol, -4stol and -Q tables (the file's unit -> stol in 1/m)
STOL_MULT = {"-stol": 1.0e10, "-4stol": 1.0e10 / 4, "-Q": 1.0e10 / math.pi / 4}
EVALS_PER_CHUNK = 1 << 18        # evaluations (pixel x sub-pixel x source) per chunk


@dataclass
class StolTable:
    """F(stol) nodes with the C's guards: x (n+4,) stol in 1/m, rising, x[0:2] = -1e99, -1e98,
    x[-2:] = 1e98, 1e99; F (n+4,) electrons, the guards repeating the first and last F.
    F may be a tensor with requires_grad (then F[2:-2] are the table's values)."""
    x: torch.Tensor
    F: torch.Tensor
    mult: float = 1.0e10

    @property
    def nodes(self) -> int:
        return int(self.x.shape[0])


def stol_table(rows, mult: float = 1.0e10, device="cpu") -> StolTable:
    """The C's table from file rows (n, 2) (column 0 in the file's unit, column 1 F; NaN = missing).

    Rows go to nodes 2..n+1 with x = value * mult; a missing F reads 0; the low
    guards take the first row's F, the high guards the last row's (as the C,
    rows with a missing F are skipped when choosing them).  x stays float64
    whatever dtype: the guards (1e99) do not fit in float32.
    """
    if not isinstance(rows, torch.Tensor):
        rows = torch.as_tensor(np.asarray(rows, dtype=np.float64))
    x_rows = rows[:, 0].to(torch.float64) * mult
    F_rows = rows[:, 1]
    finite = ~torch.isnan(F_rows)
    F_rows = torch.where(finite, F_rows, torch.zeros_like(F_rows))
    idx = torch.nonzero(finite).flatten()
    F_low = F_rows[idx[0]] if len(idx) else torch.zeros((), dtype=F_rows.dtype)
    F_high = F_rows[idx[-1]] if len(idx) else torch.zeros((), dtype=F_rows.dtype)
    x = torch.cat([torch.tensor([-1e99, -1e98], dtype=torch.float64), x_rows,
                   torch.tensor([1e98, 1e99], dtype=torch.float64)])
    F = torch.cat([F_low.reshape(1), F_low.reshape(1), F_rows, F_high.reshape(1), F_high.reshape(1)])
    return StolTable(x.to(device), F.to(device), mult)


def table_index(table: StolTable, stol: torch.Tensor) -> torch.Tensor:
    """k = max{j >= 1 : x[j] <= stol}, clamped to 1..n+1 (the C's 'nearest'; its walk from the
    previous pixel gives the same node for a non-decreasing table).  int64, stol's shape."""
    x = table.x.to(stol.device)
    k = torch.searchsorted(x, stol.detach().to(torch.float64).contiguous(), right=True) - 1
    return k.clamp(1, table.nodes - 3)


def lagrange4(xa, ya, x):
    """The C's polint: the cubic through 4 nodes, the four Lagrange products written out
    in the C's order.  xa, ya: tuples of 4 tensors broadcasting against x."""
    x0_, x1_, x2_, x3_ = xa
    y0, y1, y2, y3 = ya
    t0 = (x - x1_) * (x - x2_) * (x - x3_) * y0 / ((x0_ - x1_) * (x0_ - x2_) * (x0_ - x3_))
    t1 = (x - x0_) * (x - x2_) * (x - x3_) * y1 / ((x1_ - x0_) * (x1_ - x2_) * (x1_ - x3_))
    t2 = (x - x0_) * (x - x1_) * (x - x3_) * y2 / ((x2_ - x0_) * (x2_ - x1_) * (x2_ - x3_))
    t3 = (x - x0_) * (x - x1_) * (x - x2_) * y3 / ((x3_ - x0_) * (x3_ - x1_) * (x3_ - x2_))
    return t0 + t1 + t2 + t3


def interpolate_F(table: StolTable, stol: torch.Tensor, k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F at stol (1/m, any shape) through nodes k-1..k+2 (float64; differentiable in stol and F)."""
    if k is None:
        k = table_index(table, stol)
    x = table.x.to(stol.device)
    F = table.F.to(device=stol.device, dtype=torch.float64)
    xa = tuple(x[k + o] for o in (-1, 0, 1, 2))
    ya = tuple(F[k + o] for o in (-1, 0, 1, 2))
    return lagrange4(xa, ya, stol.to(torch.float64))


def stol_of(diffracted: torch.Tensor, incident: torch.Tensor, wavelength_m) -> torch.Tensor:
    """sin(theta)/lambda = |(d - i)/lambda| / 2 (1/m) for unit vectors (..., 3), as the C."""
    s = [(diffracted[..., c] - incident[..., c]) / wavelength_m for c in range(3)]
    return 0.5 * torch.sqrt(s[0] * s[0] + s[1] * s[1] + s[2] * s[2])


def molecules_in_sample(thickness_m, width_m, height_m, density_g_cm3=1.0, molecular_weight=18.0,
                        molecules=None, beamsize_m=None):
    """Molecules in the illuminated sample, as nonBragg.c (SUITE 1.2 steps 3-4).

    The beam (a square of side beamsize_m, when >= 0) clips the sample's width
    (y) and height (z); thickness (x) is along the beam.  molecules given
    (not 0) overrides the density (the C's -molecules).  Returns
    (molecules, density_g_cm3, (x, y, z) m); tensors in, tensors out.
    """
    x, y, z = thickness_m, width_m, height_m
    if beamsize_m is not None and float(beamsize_m) >= 0:
        y, z = (_clip(v, beamsize_m) for v in (y, z))
    volume = x * y * z
    density = density_g_cm3 * 1e6                   # g/m^3
    if molecules is not None and float(molecules) != 0:
        density = molecules / volume / AVOGADRO * molecular_weight
    n = volume * density * AVOGADRO / molecular_weight
    return n, density / 1e6, (x, y, z)


def _clip(v, limit):
    if isinstance(v, torch.Tensor):
        return torch.where(v > limit, torch.as_tensor(limit, dtype=v.dtype, device=v.device), v)
    return limit if limit < v else v


def amorphous_terms(F: torch.Tensor, omega: torch.Tensor, polar=None, weight=None) -> torch.Tensor:
    """sign(F) F^2 * polar * omega * w per evaluation, multiplied in the C's order."""
    sign = torch.where(F < 0, -torch.ones_like(F), torch.ones_like(F))
    t = sign * F * F
    if polar is not None:
        t = t * polar
    t = t * omega
    if weight is not None:
        t = t * weight
    return t


def sequential_sum(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum along dim left to right, one rounding per addition (the C's running sum).

    torch.cumsum runs sequentially on the CPU; elsewhere (or for a single
    element) this is exact up to summation order, which only float64
    parity (c-parity mode on the CPU) cares about.
    """
    if x.shape[dim] == 1:
        return x.squeeze(dim)
    return torch.cumsum(x, dim).select(dim, -1)


def amorphous_intensity(terms: torch.Tensor, molecules, fluence, steps: Optional[int] = None,
                        sequential: bool = False) -> torch.Tensor:
    """Photons per pixel from terms (n, E) (E = sub-pixels x sources in the C's loop order):
    sum(terms) * r_e^2 * fluence * molecules / steps (steps defaults to E), in the C's order."""
    steps = terms.shape[-1] if steps is None else steps
    total = sequential_sum(terms, -1) if sequential else terms.sum(-1)
    return total * R_E_SQR * fluence * molecules / steps


@dataclass
class AmorphousPixels:
    """What render_amorphous returns, (S, F) tensors: photons (float64 / dtype), the last
    evaluation's F, stol (1/m), table index and polar (for -Fmap and -img), the whole-pixel
    solid angle omega (sr; the last sub-pixel's), omega_sum (the sum over the pixel's sub-pixels
    of their whole-pixel omega, as the C's solid-angle print adds them), and the position (m) of
    each pixel's last sub-pixel along f and s."""
    photons: torch.Tensor
    F_last: torch.Tensor
    stol_last: torch.Tensor
    k_last: torch.Tensor
    polar_last: torch.Tensor
    omega: torch.Tensor
    omega_sum: torch.Tensor
    Fdet_last: torch.Tensor
    Sdet_last: torch.Tensor


def render_amorphous(geom: DetectorGeometry, sources: Sources, table: StolTable, *, molecules, fluence,
                     kahn=0.0, polar_axis=None, nopolar: bool = False, oversample: int = 1,
                     roi=None, sequential: bool = False, abs_close: bool = False,
                     chunk: int = EVALS_PER_CHUNK) -> AmorphousPixels:
    """The amorphous image of a detector (SUITE 1.3), pixels outside roi = 0.

    geom: detector (pix0, fdet, sdet, odet, curved, point_pixel, pixel size,
    close_distance, distance).  sources: incident (n, 3), wavelength (n,) m,
    weight (n,) or None (all 1).  table: F(stol).  molecules, fluence: numbers
    or tensors.  kahn, polar_axis: Kahn factor and E-vector axis (nopolar: 1).
    oversample: sub-pixels per side (each uses the whole pixel's solid angle,
    as the C).  roi: (xmin, xmax, ymin, ymax) inclusive, fast then slow.
    sequential: sum each pixel's terms left to right (c-parity bit parity).
    abs_close: use |close_distance| in the solid angle (spec mode; the C can
    give negative solid angles, SUITE Q6).
    """
    S, Fp = geom.spixels, geom.fpixels
    dtype, device = geom.pix0.dtype, geom.pix0.device
    os_ = max(int(oversample), 1)
    xmin, xmax, ymin, ymax = roi if roi is not None else (0, Fp - 1, 0, S - 1)
    f0, f1, s0, s1 = max(xmin, 0), min(xmax, Fp - 1), max(ymin, 0), min(ymax, S - 1)
    names = ("photons", "F", "stol", "k", "polar", "omega", "omega_sum", "Fdet", "Sdet")
    if f0 > f1 or s0 > s1:
        z = torch.zeros((S, Fp), dtype=dtype, device=device)
        return AmorphousPixels(z, z.double(), z.double(), z.long(), z, z, z, z, z)
    ss, ff = torch.meshgrid(torch.arange(s0, s1 + 1, device=device), torch.arange(f0, f1 + 1, device=device),
                            indexing="ij")
    ss, ff = ss.reshape(-1), ff.reshape(-1)
    n_src = sources.incident.shape[0]
    per_pixel = os_ * os_ * n_src
    step = max(1, chunk // per_pixel)
    incident = sources.incident.to(dtype)
    lam = sources.wavelength.to(dtype)
    weight = sources.weight.to(dtype) if sources.weight is not None else None
    axis = polar_axis if polar_axis is not None else torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device)
    px = geom.pixel_size_m
    close = torch.abs(geom.close_distance) if abs_close else geom.close_distance
    zero = torch.zeros(1, dtype=dtype, device=device)
    pieces = {k: [] for k in names}
    for c0 in range(0, ss.numel(), step):
        s_idx, f_idx = ss[c0:c0 + step], ff[c0:c0 + step]
        P = pixel_position_components(geom, s_idx, f_idx, os_, zero)      # 3 x (n, 1, O, O)
        P = [p[:, 0] for p in P]                                           # (n, O, O)
        R = torch.sqrt(P[0] * P[0] + P[1] * P[1] + P[2] * P[2])
        safe = torch.where(R == 0, torch.ones_like(R), R)
        d = torch.stack([torch.where(R == 0, p, p / safe) for p in P], -1)  # (n, O, O, 3)
        if geom.point_pixel:
            omega = 1.0 / R / R
        else:
            omega = px * px / R / R * close / R
        dd = d[:, :, :, None, :]                                           # (n, O, O, 1, 3)
        st = stol_of(dd, incident, lam)                                    # (n, O, O, S)
        k = table_index(table, st)
        Fv = interpolate_F(table, st, k)
        if nopolar:
            polar = None
        else:
            polar = polarization_factor(kahn, incident, dd.expand(*st.shape, 3), axis)
        terms = amorphous_terms(Fv.to(dtype), omega[..., None], polar, weight)
        n = terms.shape[0]
        I = amorphous_intensity(terms.reshape(n, -1), molecules, fluence, per_pixel, sequential)
        pieces["photons"].append(I)
        pieces["F"].append(Fv.reshape(n, -1)[:, -1])
        pieces["stol"].append(st.reshape(n, -1)[:, -1])
        pieces["k"].append(k.reshape(n, -1)[:, -1])
        pieces["polar"].append(polar.reshape(n, -1)[:, -1] if polar is not None
                               else torch.ones(n, dtype=dtype, device=device))
        pieces["omega"].append(omega[:, -1, -1])
        om = omega.reshape(n, -1)
        pieces["omega_sum"].append(sequential_sum(om, -1) if sequential else om.sum(-1))
        sub = px / os_
        pieces["Fdet"].append(sub * (f_idx.to(dtype) * os_ + (os_ - 1)) + sub / 2.0)
        pieces["Sdet"].append(sub * (s_idx.to(dtype) * os_ + (os_ - 1)) + sub / 2.0)
    out = {}
    for name in names:
        vals = torch.cat(pieces[name]).reshape(s1 - s0 + 1, f1 - f0 + 1)
        # zeros outside the ROI; padding keeps the autograd graph
        out[name] = torch.nn.functional.pad(vals, (f0, Fp - 1 - f1, s0, S - 1 - s1))
    return AmorphousPixels(out["photons"], out["F"], out["stol"], out["k"], out["polar"], out["omega"],
                           out["omega_sum"], out["Fdet"], out["Sdet"])


# ----------------------------------------------------------------------------------------
# the C's -img inversion: an image back to F(stol)

def structure_factor_from_image(counts, adc, gain, polar, omega, fluence, molecules, steps) -> torch.Tensor:
    """F a pixel's counts imply: sign(dev) sqrt(|dev| / polar / omega / fluence / r_e^2 /
    molecules * steps), dev = (counts - adc) / gain rounded to float32 (the C's float)."""
    dev = ((counts.to(torch.float64) - adc) / gain).to(torch.float32)
    sign = torch.where(dev < 0, -1.0, 1.0).to(torch.float64)
    mag = torch.abs(dev).to(torch.float64)
    F = sign * torch.sqrt(mag / polar / omega / fluence / R_E_SQR / molecules * steps)
    return F.to(torch.float32)


def stol_bins(table: StolTable, stol: torch.Tensor, k: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The C's bin of each pixel: k, or k + 1 past the midpoint to the next node; 0 where invalid."""
    x = table.x.to(stol.device)
    up = stol > (x[k] + x[(k + 1).clamp(max=table.nodes - 1)]) / 2.0
    return torch.where(valid, k + up.to(k.dtype), torch.zeros_like(k))
