"""A slow, plainly written nanoBragg.c: the in-tree oracle for the simulator.

``render(cfg, mode)`` transcribes SPEC.md sections 1-4 (and the main loop of
nanoBragg.c, which the SPEC's section 4.1 condenses) as nested Python loops:
pixels, detector layers, subpixels, sources, phi steps, mosaic domains, one
evaluation at a time, in float64 Python floats with the ``math`` module (the
platform C library, as the C). The C's held values (solid angle, capture
fraction, polarisation), its run-wide state (the tricubic switch, the lattice
rotation the phi loop leaves behind) and the ``-oversample_*`` running products
are plain variables, updated exactly where the C updates them. Nothing is
vectorised and nothing is shared with the simulator's own code: from the
package it uses only the parsed ``SimConfig`` (``config_from_args``, which also
reads the files) and the C random generator for the mosaic-domain draws
(``rng.mosaic_domains``); detector, beam, crystal and every step rule are
recomputed here from the SPEC.

The mode differences that change pixels (docs/modes.md):
  row 1   c-parity: phi steps with phi == 0 keep the previous rotation (C-PARITY-001);
  row 2   spec: an explicit -pivot is honoured under a named convention;
  row 7   spec: source-file weights are used (weighted mean over sources);
  row 12  c-parity: F_latt as the C writes it, sin(N pi h)/sin(pi h);
          spec: sin(N pi (h-h0))/sin(pi (h-h0)) (same magnitude);
  row 16  spec: -water adds N F_bg^2 w to every evaluation (no I_bg seed, no dmin cut);
  row 17  spec: -oversample_* factors multiply their own (subpixel, source) group's terms;
  issue 9 item 9: spec computes the mosaic angles in float64; c-parity rounds
          them to float32 as the C (``mosaic_f32`` overrides the choice).
Both modes: sinc3 is the C's closed form in c-parity and, in spec mode, its
series near 0 (where the closed form cancels).

Supported: the MOSFLM, DENZO, ADXV, XDS and DIALS conventions (no CUSTOM
vectors, no -pix0_vector), detector rotations and two-theta, pivots, curved
detector, point pixel, thickness, ROI and mask, divergence, dispersion and
source files, polarisation, -cell or -mat with an explicit misset, sample
sizes, the four crystal shapes, mosaic domains, phi steps, HKL grids with
nearest-neighbour or tricubic structure factors, water background, dmin and
-oversample_thick/_polar/_omega. Anything else raises NotImplementedError.
Speed: about 10 us per evaluation, so tiny detectors (or ``pixels=``, a few
pixels of a large one) only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nanobrag_torch import rng

# SPEC 1.1 constants and the C's degree conversion (value / RTD)
RTD = 180.0 * (1.0 / math.pi)
R_E_SQR = 7.94079248018965e-30
AVOGADRO = 6.02214179e23
WATER_F = 2.57
WATER_MW = 18.0
SOURCE_DISTANCE = 10.0
DBL_MIN = 2.2250738585072014e-308


# --------------------------------------------------------------------------
# scalars and 3-vectors (tuples of floats), in the C's operation order

def num(x) -> float:
    """A config value (float, int or 0-d tensor) as a Python float."""
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def nums(x) -> list:
    if hasattr(x, "detach"):
        return [float(v) for v in x.detach().reshape(-1)]
    return [float(v) for v in x]


def dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def cross(u, v):
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def magnitude(v):
    return math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def unitize(v):
    mag = magnitude(v)
    if mag == 0.0:
        return (0.0, 0.0, 0.0), mag
    return (v[0] / mag, v[1] / mag, v[2] / mag), mag


def scale(v, s):
    return (s * v[0], s * v[1], s * v[2])


def rescale(v, new_mag):
    old = magnitude(v)
    if old <= 0.0:
        old = 1.0
    return (new_mag / old * v[0], new_mag / old * v[1], new_mag / old * v[2])


def rotate(v, rx, ry, rz):
    """SPEC 1.6: Rx, then Ry, then Rz, each skipped when its angle is exactly 0."""
    x, y, z = v
    if rx != 0:
        c, s = math.cos(rx), math.sin(rx)
        x, y, z = x, y * c + z * -s, y * s + z * c
    if ry != 0:
        c, s = math.cos(ry), math.sin(ry)
        x, y, z = x * c + y * 0 + z * s, y, x * -s + y * 0 + z * c
    if rz != 0:
        c, s = math.cos(rz), math.sin(rz)
        x, y, z = x * c + y * -s, x * s + y * c, z
    return (x, y, z)


def rotate_axis(v, axis, phi):
    """SPEC 1.6 Rodrigues: axis (axis.v)(1 - cos) + v cos + (axis x v) sin."""
    sinphi, cosphi = math.sin(phi), math.cos(phi)
    d = (axis[0] * v[0] + axis[1] * v[1] + axis[2] * v[2]) * (1.0 - cosphi)
    return (axis[0] * d + v[0] * cosphi + (-axis[2] * v[1] + axis[1] * v[2]) * sinphi,
            axis[1] * d + v[1] * cosphi + (axis[2] * v[0] - axis[0] * v[2]) * sinphi,
            axis[2] * d + v[2] * cosphi + (-axis[1] * v[0] + axis[0] * v[1]) * sinphi)


def rotate_umat(v, U):
    return tuple(U[i][0] * v[0] + U[i][1] * v[1] + U[i][2] * v[2] for i in range(3))


def f32(x: float) -> float:
    return float(np.float32(x))


# --------------------------------------------------------------------------
# detector (SPEC 1.4-1.9)

# b, f, s, o, two-theta axis, polarisation axis, spindle, pivot the convention forces
CONVENTIONS = {
    "MOSFLM": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1), "BEAM"),
    "DENZO": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1), "BEAM"),
    "ADXV": ((0, 0, 1), (1, 0, 0), (0, -1, 0), (0, 0, 1), (-1, 0, 0), (1, 0, 0), (1, 0, 0), "BEAM"),
    "XDS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 0, 0), (1, 0, 0), "SAMPLE"),
    "DIALS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0), "SAMPLE"),
}


@dataclass
class Detector:
    fpixels: int
    spixels: int
    pixel: float            # m
    pix0: tuple             # m, outer corner of pixel (0, 0)
    fdet: tuple
    sdet: tuple
    odet: tuple
    beam: tuple             # propagation direction b
    polar_axis: tuple
    vert: tuple             # unit(b x p)
    spindle: tuple
    close_distance: float   # m, pix0 . o
    distance: float         # m, close_distance / ratio


def detector(cfg, mode) -> Detector:
    det = cfg.detector
    conv = det.convention.upper()
    if conv not in CONVENTIONS:
        raise NotImplementedError(f"convention {det.convention}")
    if det.pix0_vector_m is not None or det.twotheta_axis is not None:
        raise NotImplementedError("custom detector vectors")
    if cfg.beam.beam_vector is not None or cfg.beam.polar_vector is not None \
            or cfg.crystal.spindle_axis is not None:
        raise NotImplementedError("custom beam vectors")
    b, f, s, o, tt_axis, p, u, forced_pivot = (tuple(float(x) for x in v) if isinstance(v, tuple) else v
                                                for v in CONVENTIONS[conv])
    px = det.pixel_size_mm / 1000.0
    # SPEC 1.5: a pixel count wins over the size
    size = []
    for count, size_mm in zip(det.detpixels, det.detsize_mm):
        size.append(px * count if count else size_mm / 1000.0)
    detsize_f, detsize_s = size
    fpixels = int(math.ceil(detsize_f / px - 0.5))
    spixels = int(math.ceil(detsize_s / px - 0.5))

    # SPEC 1.4 beam centres (metres)
    orgx, orgy = det.org_px
    Fclose = (orgx - 0.5) * px if orgx is not None else detsize_f / 2.0
    Sclose = (orgy - 0.5) * px if orgy is not None else detsize_s / 2.0
    Xclose = det.close_center_mm[0] / 1000.0 if det.close_center_mm[0] is not None else Fclose
    Yclose = det.close_center_mm[1] / 1000.0 if det.close_center_mm[1] is not None else Sclose
    given = [None if x is None else num(x) / 1000.0 for x in nums_or_none(det.beam_center_mm)]
    Xbeam, Ybeam = given
    if conv in ("MOSFLM", "DENZO"):
        Xbeam = (detsize_s + px) / 2.0 if Xbeam is None else Xbeam
        Ybeam = (detsize_f + px) / 2.0 if Ybeam is None else Ybeam
        shift = 0.5 * px if conv == "MOSFLM" else 0.0 * px
        Fbeam, Sbeam = Ybeam + shift, Xbeam + shift
    elif conv == "ADXV":
        Xbeam = (detsize_f + px) / 2.0 if Xbeam is None else Xbeam
        Ybeam = (detsize_s - px) / 2.0 if Ybeam is None else Ybeam
        Fbeam, Sbeam = Xbeam, detsize_s - Ybeam
    else:
        Xbeam = Xclose if Xbeam is None else Xbeam
        Ybeam = Yclose if Ybeam is None else Ybeam
        Fbeam, Sbeam = Xbeam, Ybeam

    # SPEC 1.7 / section 0 item 2: the convention forces its pivot, except that spec
    # mode honours an explicit -pivot
    pivot = forced_pivot
    if mode == "spec" and det.pivot is not None:
        pivot = det.pivot.upper()

    rx, ry, rz = (x / RTD for x in nums(det.rotation_deg))
    twotheta = num(det.twotheta_deg) / RTD
    distance = 0.1 if det.distance_mm is None else num(det.distance_mm) / 1000.0
    ratio = dot(b, rotate(o, rx, ry, rz))          # two-theta not included (SPEC 1.6)
    if ratio == 0.0:
        ratio = DBL_MIN
    if det.close_distance_mm is None:
        close_distance = abs(ratio * distance)
    else:
        close_distance = num(det.close_distance_mm) / 1000.0
    distance = close_distance / ratio
    pix0 = None
    if pivot == "SAMPLE":
        pix0 = tuple(-Fclose * f[i] - Sclose * s[i] + close_distance * o[i] for i in range(3))
        pix0 = rotate_axis(rotate(pix0, rx, ry, rz), tt_axis, twotheta)
    f, s, o = (rotate_axis(rotate(v, rx, ry, rz), tt_axis, twotheta) for v in (f, s, o))
    if pivot == "BEAM":
        pix0 = tuple(-Fbeam * f[i] - Sbeam * s[i] + distance * b[i] for i in range(3))
    close_distance = dot(pix0, o)
    distance = close_distance / ratio
    vert = unitize(cross(b, p))[0]
    return Detector(fpixels, spixels, px, pix0, f, s, o, b, p, vert, u, close_distance, distance)


def nums_or_none(x):
    if hasattr(x, "detach"):
        return nums(x)
    return list(x)


# --------------------------------------------------------------------------
# beam: sources (SPEC 3.2-3.4)

def step_rule(R, S, n, count_only_R):
    """SPEC 3.2 (range R, step S, count n; negative = unset) -> (R, S, n), then the sanity check."""
    if n <= 0:
        if R < 0.0:
            if S <= 0.0:
                n, R, S = 1, 0.0, 0.0
            else:
                R, n = S, 2
        else:
            if S <= 0.0:
                S, n = R, 2
            else:
                n = int(math.ceil(R / S))
    else:
        if R < 0.0:
            if S <= 0.0:
                R = count_only_R
                S = R / n
            else:
                R, n = S, 2
        else:
            if S <= 0.0:
                if n <= 1:
                    n = 2
                S = R / (n - 1)
    if R <= 0.0 or S <= 0.0 or n <= 0:
        n, R, S = 1, 0.0, 0.0
    return R, S, n


def mrad(x):
    return -1.0 if x is None else num(x) / 1000.0


def sources(cfg, mode, geo: Detector):
    """[(incident unit vector, wavelength m, weight factor)] in the C's order."""
    beam = cfg.beam
    lambda0 = num(beam.wavelength_A) / 1e10
    b = geo.beam
    out = []
    if beam.sources is not None:
        src = beam.sources
        weights = []
        for (X, Y, Z), w, lam in zip(np.asarray(src.position_m), np.asarray(src.weight),
                                     np.asarray(src.wavelength_m)):
            pos = tuple(-SOURCE_DISTANCE * b[i] if math.isnan(v) else float(v)
                        for i, v in enumerate((X, Y, Z)))
            w = 1.0 if math.isnan(w) else float(w)
            lam = lambda0 if math.isnan(lam) else float(lam)
            unit_pos = unitize(pos)[0]
            out.append([scale(unit_pos, -1.0), lam])
            weights.append(w)
        # section 0 item 5: spec mode weighs source i by w_i / mean(w); the C ignores weights
        factors = [1.0] * len(out)
        if mode == "spec" and any(w != weights[0] for w in weights):
            total = math.fsum(weights)
            factors = [w * len(weights) / total for w in weights]
        return [(inc, lam, fac) for (inc, lam), fac in zip(out, factors)]

    hR, hS, hn = step_rule(mrad(beam.hdivrange_mrad), mrad(beam.hdivstep_mrad),
                           beam.hdivsteps or -1, 1.0)
    vR, vS, vn = step_rule(mrad(beam.vdivrange_mrad), mrad(beam.vdivstep_mrad),
                           beam.vdivsteps or -1, 1.0)
    dR, dS, dn = step_rule(num(beam.dispersion_pct) / 100.0, -1.0, beam.dispsteps or -1, 1.0)
    for ih in range(hn):
        for iv in range(vn):
            hdiv = hS * ih - hR / 2.0
            vdiv = vS * iv - vR / 2.0
            with np.errstate(all="ignore"):     # a zero range gives 0/0 = NaN: nothing trimmed
                test = np.float64(hdiv * hdiv - hS * hS / 4.0 * (1 - hn % 2)) / hR / hR
                test += np.float64(vdiv * vdiv - vS * vS / 4.0 * (1 - vn % 2)) / vR / vR
            if beam.round_div and test * 4.0 > 1.1:
                continue
            pos = scale(b, -SOURCE_DISTANCE)
            pos = rotate_axis(rotate_axis(pos, geo.polar_axis, vdiv), geo.vert, hdiv)
            for j in range(dn):
                lam = lambda0 * (1.0 + dS * j - dR / 2.0)
                out.append((scale(unitize(pos)[0], -1.0), lam, 1.0))
    return out


def polarization_factor(K, incident, diffracted, axis):
    """SPEC 3.5 (Kahn). Also returns the re-unitised diffracted vector: the C
    normalises its argument in place, which later sources of the subpixel see."""
    i = unitize(incident)[0]
    d = unitize(diffracted)[0]
    p = unitize(axis)[0]
    cos2theta = dot(i, d)
    cos2theta_sqr = cos2theta * cos2theta
    sin2theta_sqr = 1 - cos2theta_sqr
    psi = 0.0
    if K != 0.0:
        B_in = unitize(cross(p, i))[0]
        E_in = unitize(cross(i, B_in))[0]
        psi = -math.atan2(dot(d, B_in), dot(d, E_in))
    return 0.5 * (1.0 + cos2theta_sqr - K * math.cos(2 * psi) * sin2theta_sqr), d


# --------------------------------------------------------------------------
# crystal (SPEC 2)

@dataclass
class Crystal:
    a0: tuple               # real-space axes at phi = 0, no mosaic (m)
    b0: tuple
    c0: tuple
    a_star: tuple           # reciprocal axes (1/A)
    b_star: tuple
    c_star: tuple
    N: tuple                # Na, Nb, Nc after the size rules


def crystal(cfg, mode) -> Crystal:
    cr = cfg.crystal
    if cr.orientation is not None or cr.misset_random:
        raise NotImplementedError("orientation matrix / random misset")
    lambda0 = num(cfg.beam.wavelength_A) / 1e10
    user_cell = cr.cell is not None
    if user_cell:
        a, b, c, al, be, ga = nums(cr.cell)
        alpha, beta, gamma = al / RTD, be / RTD, ga / RTD
        aavg = (alpha + beta + gamma) / 2
        skew = abs(math.sin(aavg) * math.sin(aavg - alpha) * math.sin(aavg - beta)
                   * math.sin(aavg - gamma))
        V_cell = 2.0 * a * b * c * math.sqrt(skew)
        if V_cell <= 0.0:
            V_cell = DBL_MIN
        V_star = 1.0 / V_cell
        a_len = abs(b * c * math.sin(alpha) * V_star) or DBL_MIN
        b_len = abs(c * a * math.sin(beta) * V_star) or DBL_MIN
        c_len = abs(a * b * math.sin(gamma) * V_star) or DBL_MIN
        sin_gamma_star = min(1.0, max(-1.0, c * V_star / a_len / b_len))
        ca, cb, cg = math.cos(alpha), math.cos(beta), math.cos(gamma)
        sa, sb, sg = math.sin(alpha), math.sin(beta), math.sin(gamma)
        cos_alpha_star = (cb * cg - ca) / (sb * sg)
        cos_beta_star = (cg * ca - cb) / (sg * sa)
        cos_gamma_star = (ca * cb - cg) / (sa * sb)
        cos_alpha_star, cos_beta_star, cos_gamma_star = (
            1.0 if x * x > 1.0 else x for x in (cos_alpha_star, cos_beta_star, cos_gamma_star))
        a_star = (a_len, 0.0, 0.0)
        b_star = (b_len * cos_gamma_star, b_len * sin_gamma_star, 0.0)
        c_star = (c_len * cos_beta_star,
                  c_len * (cos_alpha_star - cos_beta_star * cos_gamma_star) / sin_gamma_star,
                  c_len * V_cell / (a * b * c * sin_gamma_star))      # the C's c*_z (SPEC 2.1)
    if cr.mat is not None:
        m = np.asarray(cr.mat, dtype=np.float64)
        k = 1e-10 / lambda0
        a_star, b_star, c_star = (scale(tuple(float(x) for x in m[:, j]), k) for j in range(3))
    misset = cr.misset_deg
    if mode == "c-parity" and cfg.c_quirks.misset != "same":
        if isinstance(cfg.c_quirks.misset, str):
            raise NotImplementedError("random misset")
        misset = cfg.c_quirks.misset
    if misset is not None:
        m = nums(misset)
        if len(m) != 3:
            raise NotImplementedError("a batch of missets")
        rx, ry, rz = (x / RTD for x in m)
        a_star, b_star, c_star = (rotate(v, rx, ry, rz) for v in (a_star, b_star, c_star))
    # SPEC 2.4
    a_star_cross_b_star = cross(a_star, b_star)
    b_star_cross_c_star = cross(b_star, c_star)
    c_star_cross_a_star = cross(c_star, a_star)
    V_star = dot(a_star, b_star_cross_c_star)
    if user_cell:
        b_star_cross_c_star = rescale(b_star_cross_c_star, a / V_cell)
        c_star_cross_a_star = rescale(c_star_cross_a_star, b / V_cell)
        a_star_cross_b_star = rescale(a_star_cross_b_star, c / V_cell)
        V_star = 1.0 / V_cell
    V_cell = 1.0 / V_star
    a = scale(b_star_cross_c_star, V_cell)
    b = scale(c_star_cross_a_star, V_cell)
    c = scale(a_star_cross_b_star, V_cell)
    a_star = scale(cross(b, c), V_star)
    b_star = scale(cross(c, a), V_star)
    c_star = scale(cross(a, b), V_star)
    a, b, c = (scale(v, 1e-10) for v in (a, b, c))
    # SPEC 2.5: sample size sets N, then N >= 1
    N = nums(cr.n_cells)
    size_m = [x / 1000.0 for x in cr.sample_size_mm]
    beamsize_m = cfg.beam.beamsize_mm / 1000.0
    if beamsize_m >= 0:                 # the beam clips the sample's height and width
        size_m[1], size_m[2] = min(size_m[1], beamsize_m), min(size_m[2], beamsize_m)
    for i, v in enumerate((a, b, c)):
        if size_m[i] > 0:
            N[i] = float(math.ceil(size_m[i] / magnitude(v)))
        if N[i] <= 1.0:
            N[i] = 1.0
    return Crystal(a, b, c, a_star, b_star, c_star, tuple(N))


def phi_steps(cfg):
    """SPEC 2.8 step rules: (phi0, phistep, phisteps) in radians."""
    cr = cfg.crystal
    phi0 = num(cr.phi_deg) / RTD
    osc = -1.0 if cr.osc_deg is None else num(cr.osc_deg) / RTD
    phistep = -1.0 if cr.phistep_deg is None else num(cr.phistep_deg) / RTD
    phisteps = -1 if cr.phisteps is None else int(cr.phisteps)
    if phisteps < 0:
        if osc < 0.0:
            if phistep <= 0.0:
                phisteps, osc, phistep = 1, 0.0, 0.0
            else:
                osc, phisteps = phistep, 2
        else:
            if phistep <= 0.0:
                phisteps, phistep = 2, osc / 2.0
            else:
                phisteps = int(math.ceil(osc / phistep))
    else:
        if phisteps == 0:
            phisteps = 1
        if osc < 0.0:
            if phistep <= 0.0:
                osc = 1.0 / RTD
                phistep = osc / phisteps
            else:
                osc, phisteps = phistep, 2
        elif phistep < 0.0:
            phistep = osc / phisteps
    return phi0, phistep, phisteps


def mosaic(cfg, mode, mosaic_f32=None):
    """SPEC 2.7: (spread rad, [U_m]) with domain 0 the identity."""
    cr = cfg.crystal
    spread = -1.0 if cr.mosaic_spread_deg is None else num(cr.mosaic_spread_deg) / RTD
    domains = cr.mosaic_domains if cr.mosaic_domains is not None else -1
    if domains <= 0:
        if spread < 0.0:
            domains, spread = 1, 0.0
        elif spread == 0.0:
            domains = 1
        else:
            domains = 10
    else:
        if spread < 0.0:
            domains, spread = 1, 0.0
        elif spread == 0.0:
            domains = 1
    if mosaic_f32 is None:
        mosaic_f32 = mode == "c-parity"
    axes, g, _ = rng.mosaic_domains(domains, 1.0, cr.mosaic_seed)   # the C's draws
    umats = []
    for m in range(domains):
        if m == 0:
            umats.append(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
            continue
        # the C: float32(float32(spread) * powf(...)); spec mode: spread * g in float64
        rot = f32(f32(spread) * float(g[m])) if mosaic_f32 else spread * float(g[m])
        v1, v2, v3 = (float(x) for x in axes[m])
        c, s = math.cos(rot), math.sin(rot)
        t = 1.0 - c
        umats.append(((c + t * (v1 * v1), t * v1 * v2 - s * v3, t * v1 * v3 + s * v2),
                      (t * v1 * v2 + s * v3, c + t * (v2 * v2), t * v2 * v3 - s * v1),
                      (t * v1 * v3 - s * v2, t * v2 * v3 + s * v1, c + t * (v3 * v3))))
    return spread, umats


# --------------------------------------------------------------------------
# lattice and structure factors (SPEC 2.6, 4.3)

def sincg(x, N):
    """The C's sincg(x, N) = sin(N x)/sin(x), N at x = 0."""
    if x == 0.0:
        return N
    return math.sin(x * N) / math.sin(x)


def sinc3(x, closed_form_only):
    """3 (sin x / x - cos x) / x^2, 1 at 0; the closed form cancels for small x,
    so spec mode takes the series there (its first omitted term is < 1e-19)."""
    if x == 0.0:
        return 1.0
    if not closed_form_only and abs(x) < 0.1:
        x2 = x * x
        return 1.0 - x2 / 10.0 + x2 * x2 / 280.0 - x2 * x2 * x2 / 15120.0 + x2 ** 4 / 1330560.0
    return 3.0 * (math.sin(x) / x - math.cos(x)) / (x * x)


def lattice_factor(shape, fudge, N, hkl, hkl0, xtal: Crystal, c_form):
    Na, Nb, Nc = N
    h, k, l = hkl
    h0, k0, l0 = hkl0
    if shape == "square":
        F = 1.0
        for x, x0, n in ((h, h0, Na), (k, k0, Nb), (l, l0, Nc)):
            if n > 1:
                # row 12: the C's sin(N pi h)/sin(pi h); spec: the same about the nearest node
                F *= sincg(math.pi * x, n) if c_form else sincg(math.pi * (x - x0), n)
        return F
    if shape == "round":
        hrad_sqr = ((h - h0) * (h - h0) * Na * Na + (k - k0) * (k - k0) * Nb * Nb
                    + (l - l0) * (l - l0) * Nc * Nc)
        return Na * Nb * Nc * 0.723601254558268 * sinc3(math.pi * math.sqrt(hrad_sqr * fudge), c_form)
    a_s, b_s, c_s = xtal.a_star, xtal.b_star, xtal.c_star
    dx = (h - h0) * a_s[0] + (k - k0) * b_s[0] + (l - l0) * c_s[0]
    dy = (h - h0) * a_s[1] + (k - k0) * b_s[1] + (l - l0) * c_s[1]
    dz = (h - h0) * a_s[2] + (k - k0) * b_s[2] + (l - l0) * c_s[2]
    rad_star_sqr = (dx * dx + dy * dy + dz * dz) * Na * Na * Nb * Nb * Nc * Nc
    if shape == "gauss":
        return Na * Nb * Nc * math.exp(-(rad_star_sqr / 0.63 * fudge))
    if shape == "tophat":
        return Na * Nb * Nc * (1.0 if rad_star_sqr * fudge < 0.3969 else 0.0)
    raise NotImplementedError(f"crystal shape {shape}")


def polint(xa, ya, x):
    """The C's 4-point Lagrange polynomial."""
    x0 = ((x - xa[1]) * (x - xa[2]) * (x - xa[3]) * ya[0]
          / ((xa[0] - xa[1]) * (xa[0] - xa[2]) * (xa[0] - xa[3])))
    x1 = ((x - xa[0]) * (x - xa[2]) * (x - xa[3]) * ya[1]
          / ((xa[1] - xa[0]) * (xa[1] - xa[2]) * (xa[1] - xa[3])))
    x2 = ((x - xa[0]) * (x - xa[1]) * (x - xa[3]) * ya[2]
          / ((xa[2] - xa[0]) * (xa[2] - xa[1]) * (xa[2] - xa[3])))
    x3 = ((x - xa[0]) * (x - xa[1]) * (x - xa[2]) * ya[3]
          / ((xa[3] - xa[0]) * (xa[3] - xa[1]) * (xa[3] - xa[2])))
    return x0 + x1 + x2 + x3


def polin2(x1a, x2a, ya, x1, x2):
    return polint(x1a, [polint(x2a, ya[j], x2) for j in range(4)], x1)


def polin3(x1a, x2a, x3a, ya, x1, x2, x3):
    return polint(x1a, [polin2(x2a, x3a, ya[j], x2, x3) for j in range(4)], x1)


class StructureFactors:
    """F_cell lookups with the C's run-wide interpolation switch (SPEC 4.3)."""

    def __init__(self, cfg):
        cr = cfg.crystal
        self.default_F = num(cr.default_F)
        hkl = cr.hkl
        self.hkls = 0 if hkl is None else int(hkl.hkls)
        if hkl is not None:
            F = hkl.F.detach().numpy() if hasattr(hkl.F, "detach") else np.asarray(hkl.F)
            self.F = np.asarray(F, dtype=np.float64)
            self.lo = (hkl.h_min, hkl.k_min, hkl.l_min)
            self.hi = (hkl.h_max, hkl.k_max, hkl.l_max)
        # as parsed, before the size rules (SPEC 4.3)
        if cr.interpolate is None:
            self.interpolate = any(n <= 2 for n in nums(cr.n_cells))
        else:
            self.interpolate = bool(cr.interpolate)
        if self.hkls == 0:
            self.interpolate = False
        self.switched_off_at = None     # (s, f) of the evaluation that turned interpolation off

    def __call__(self, hkl, hkl0, where):
        h, k, l = hkl
        F_cell = self.default_F
        if self.interpolate:
            ranges = [hi - lo + 1 for lo, hi in zip(self.lo, self.hi)]
            if any(x - lo + 3 > r or x - 2 < lo for x, lo, r in zip(hkl, self.lo, ranges)):
                F_cell = self.default_F
                self.interpolate = False
                self.switched_off_at = where
        if self.interpolate:
            nodes = [[math.floor(x) + j for j in (-1, 0, 1, 2)] for x in hkl]
            lo = self.lo
            sub = [[[float(self.F[n1 - lo[0], n2 - lo[1], n3 - lo[2]]) for n3 in nodes[2]]
                    for n2 in nodes[1]] for n1 in nodes[0]]
            xs = [[float(n) for n in axis] for axis in nodes]
            F_cell = polin3(xs[0], xs[1], xs[2], sub, h, k, l)
        if not self.interpolate:
            if self.hkls and all(lo <= x0 <= hi for x0, lo, hi in zip(hkl0, self.lo, self.hi)):
                F_cell = float(self.F[int(hkl0[0]) - self.lo[0], int(hkl0[1]) - self.lo[1],
                                      int(hkl0[2]) - self.lo[2]])
            else:
                F_cell = self.default_F
        return F_cell


# --------------------------------------------------------------------------
# the run

@dataclass
class Result:
    image: np.ndarray           # (spixels, fpixels) float64, photons per pixel
    omega_sum: float
    steps: int
    oversample: int
    interpolation_off_at: tuple | None   # pixel (s, f) where the tricubic switch went off
    first_phi_loop_at: tuple | None      # pixel (s, f) of the run's first phi loop


def thickness(cfg):
    """SPEC 3.2 thickness rules: (thick m, layer step m, layers, mu 1/m)."""
    det = cfg.detector
    thick = det.thickness_um * 1e-6
    step, n = -1.0, det.thicksteps if det.thicksteps else -1
    if n <= 0:
        if thick < 0.0:
            if step <= 0.0:
                n, thick, step = 1, 0.0, 0.0
            else:
                thick, n = step, 2
        else:
            if step <= 0.0:
                n = 2
                step = thick / n
            else:
                n = int(math.ceil(thick / step))
    else:
        if thick < 0.0:
            if step <= 0.0:
                thick = 0.5e-6
                step = thick / n
            else:
                thick, n = step, 2
        else:
            if step <= 0.0:
                if n <= 1:
                    n = 2
                step = thick / (n - 1)
    mu = -1.0 if det.mu_per_m is None else float(det.mu_per_m)
    if thick > 0.0 and mu < 0.0:
        mu = 1.0 / thick
    if thick <= 0.0 or step <= 0.0 or n <= 0:
        n, thick, step = 1, 0.0, 0.0
    return thick, step, n, mu


def render(cfg, mode: str = "spec", mosaic_f32=None, pixels=None) -> Result:
    """The image nanoBragg.c computes for cfg (SPEC 4.1), before its float32 storage.

    mosaic_f32: round the mosaic angles to float32 as the C (default: in c-parity only).
    pixels: render only these (s, f) pixels (the rest stay 0), for large detectors.
    Where the run carries state from pixel to pixel (the tricubic switch, the
    c-parity phi carryover), every pixel before the last one requested, in the C's
    raster order, is rendered too, so the values are those of the full image.
    """
    if mode not in ("spec", "c-parity"):
        raise ValueError(mode)
    geo = detector(cfg, mode)
    srcs = sources(cfg, mode, geo)
    xtal = crystal(cfg, mode)
    phi0, phistep, phisteps = phi_steps(cfg)
    spread, umats = mosaic(cfg, mode, mosaic_f32)
    F_cell_of = StructureFactors(cfg)
    thick, dz, thicksteps, mu = thickness(cfg)
    det, beam, cr = cfg.detector, cfg.beam, cfg.crystal
    c_form = mode == "c-parity"

    # SPEC 2.9 oversampling
    lambda0 = num(beam.wavelength_A) / 1e10
    xtalsize_max = max(magnitude(v) * n for v, n in zip((xtal.a0, xtal.b0, xtal.c0), xtal.N))
    reciprocal_pixel = lambda0 * geo.distance / geo.pixel
    recommended = max(1, int(math.ceil(3.0 * xtalsize_max / reciprocal_pixel)))
    oversample = cfg.oversample if cfg.oversample and cfg.oversample > 0 else recommended
    steps = len(srcs) * len(umats) * phisteps * oversample * oversample
    subpixel = geo.pixel / oversample

    fluence = num(beam.fluence)
    beamsize_m = beam.beamsize_mm / 1000.0
    if beam.flux != 0 and beam.exposure_s > 0 and beamsize_m > 0:      # SPEC 3.6
        fluence = beam.flux * beam.exposure_s / beamsize_m / beamsize_m
    water = num(cfg.background.water_um) / 1e6
    I_bg = WATER_F * WATER_F * R_E_SQR * fluence * water * water * water * 1e6 * AVOGADRO / WATER_MW
    spec = mode == "spec"
    if spec:
        # row 16: every evaluation adds N F^2 w (N: the water cube's molecules), not cut by dmin
        if water != 0.0 and cfg.background.stol_table is not None:
            raise NotImplementedError("spec-mode -water with a -stol table")
        water_per_group = len(umats) * phisteps * water ** 3 * 1e6 * AVOGADRO / WATER_MW * WATER_F * WATER_F
        I_bg = 0.0
    dmin = num(cfg.dmin_A) * 1e-10
    K = num(beam.polarization)
    os_thick, os_polar, os_omega = cfg.oversample_thick, cfg.oversample_polar, cfg.oversample_omega
    shape, fudge = cr.shape, float(cr.fudge)
    mask = None if det.mask is None else np.asarray(det.mask)
    roi = det.roi

    stateful = F_cell_of.interpolate or (mode == "c-parity" and any(
        phi0 + phistep * i == 0.0 for i in range(phisteps)))
    image = np.zeros((geo.spixels, geo.fpixels))
    omega_sum = 0.0
    # the lattice the phi loop leaves behind (the C's ap, bp, cp; C-PARITY-001)
    ap, bp, cp = xtal.a0, xtal.b0, xtal.c0
    first_phi_loop = None
    f_, s_, o_, pix0 = geo.fdet, geo.sdet, geo.odet, geo.pix0

    # the C's raster: slow index outer, fast inner
    raster = [(spixel, fpixel) for spixel in range(geo.spixels) for fpixel in range(geo.fpixels)]
    if pixels is not None:
        pixels = sorted({(int(s), int(f)) for s, f in pixels})
        raster = raster[:raster.index(pixels[-1]) + 1] if stateful else pixels
    for spixel, fpixel in raster:
        if roi is not None:
            xmin, xmax, ymin, ymax = roi
            if fpixel < xmin or fpixel > xmax or spixel < ymin or spixel > ymax:
                continue
        if mask is not None and mask[spixel, fpixel] == 0:
            continue
        I = I_bg
        polar = 1.0 if beam.nopolar else 0.0
        omega = 0.0
        for thick_tic in range(thicksteps):
            Odet = thick_tic * dz
            capture = 1.0 if thick == 0.0 else 0.0
            for subS in range(oversample):
                for subF in range(oversample):
                    Fdet = subpixel * (fpixel * oversample + subF) + subpixel / 2.0
                    Sdet = subpixel * (spixel * oversample + subS) + subpixel / 2.0
                    P = tuple(Fdet * f_[i] + Sdet * s_[i] + Odet * o_[i] + pix0[i] for i in range(3))
                    if det.curved:
                        # SPEC 1.9: arcs from the lab y and z components of the flat position
                        v = scale(geo.beam, geo.distance)
                        v = rotate_axis(v, s_, P[1] / geo.distance)
                        P = rotate_axis(v, f_, P[2] / geo.distance)
                    diffracted, airpath = unitize(P)
                    if omega == 0.0 or os_omega:
                        omega = geo.pixel * geo.pixel / airpath / airpath * geo.close_distance / airpath
                        if det.point_pixel:
                            omega = 1.0 / airpath / airpath
                    omega_sum += omega
                    if capture == 0.0 or os_thick:
                        parallax = dot(diffracted, o_)
                        capture = (math.exp(-thick_tic * dz * mu / parallax)
                                   - math.exp(-(thick_tic + 1) * dz * mu / parallax))
                    for incident, lam, weight in srcs:
                        q = tuple((diffracted[i] - incident[i]) / lam for i in range(3))
                        stol = 0.5 * magnitude(q)
                        G = water_per_group * weight if spec and water != 0.0 else 0.0
                        if dmin > 0.0 and stol > 0.0 and dmin > 0.5 / stol:
                            if G:       # spec: the water is not cut; its own factors (row 17)
                                p = polarization_factor(K, incident, diffracted, geo.polar_axis)[0]
                                I += G * (capture if os_thick else 1.0) * (p if os_polar else 1.0) \
                                    * (omega if os_omega else 1.0)
                            continue
                        if polar == 0.0 or os_polar:
                            polar, diffracted = polarization_factor(K, incident, diffracted,
                                                                    geo.polar_axis)
                        if first_phi_loop is None:
                            first_phi_loop = (spixel, fpixel)
                        for phi_tic in range(phisteps):
                            phi = phi0 + phistep * phi_tic
                            # row 1: the C rotates only where phi != 0 and otherwise keeps
                            # the last rotation; spec mode rotates every step (phi = 0: none)
                            if phi != 0.0 or mode == "spec":
                                ap, bp, cp = (rotate_axis(v, geo.spindle, phi)
                                              for v in (xtal.a0, xtal.b0, xtal.c0))
                            for U in umats:
                                if spread > 0.0:
                                    a, b, c = (rotate_umat(v, U) for v in (ap, bp, cp))
                                else:
                                    a, b, c = ap, bp, cp
                                hkl = (dot(a, q), dot(b, q), dot(c, q))
                                hkl0 = tuple(math.ceil(x - 0.5) for x in hkl)
                                F_latt = lattice_factor(shape, fudge, xtal.N, hkl, hkl0, xtal, c_form)
                                if F_latt == 0.0 and water == 0.0:
                                    continue
                                F_cell = F_cell_of(hkl, hkl0, (spixel, fpixel))
                                term = F_cell * F_cell * F_latt * F_latt
                                if weight != 1.0:
                                    term = term * weight
                                if spec:            # row 17: the group's own factors, below
                                    G += term
                                    continue
                                I += term
                                if os_thick:
                                    I *= capture
                                if os_polar:
                                    I *= polar
                                if os_omega:
                                    I *= omega
                        if spec:
                            I += G * (capture if os_thick else 1.0) * (polar if os_polar else 1.0) \
                                * (omega if os_omega else 1.0)
        S = R_E_SQR * fluence * I / steps
        if not os_thick:
            S *= capture
        if not os_polar:
            S *= polar
        if not os_omega:
            S *= omega
        image[spixel, fpixel] += S
    return Result(image, omega_sum, steps, oversample, F_cell_of.switched_off_at, first_phi_loop)
