"""Beam: wavelengths, divergence and dispersion sources, source files, polarisation (SPEC 3).

`sources()` returns the incident directions, wavelengths and weights that
the kernel broadcasts over; generated sources are ordered (hdiv, vdiv,
wavelength) as in the C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import SimConfig
from .modes import Mode, get_mode
from .errors import ConfigError
from .units import SOURCE_DISTANCE_M
from .vec import as_tensor, cross, dot, rotate_axis, unitize, value


@dataclass
class Sources:
    """n sources: incident unit vectors (n, 3) (= -unit(source position)), wavelengths (n,) m,
    weights (n,) (None: all equal, i.e. the C's plain sum), and the divergence/dispersion plan."""
    incident: torch.Tensor
    wavelength: torch.Tensor
    weight: torch.Tensor | None
    position: torch.Tensor          # (n, 3) as printed by the C (before unitising)
    divsteps: int = 1
    hdiv: tuple = (1, 0.0, 0.0)     # (steps, range, step) radians
    vdiv: tuple = (1, 0.0, 0.0)
    disp: tuple = (1, 0.0, 0.0)     # (steps, range fraction, step fraction)
    deviations: list | None = None  # generated sources: the kept (hdiv, vdiv) grid points (rad)


def step_plan(n, r, s, default_range, range_only_halves=False, *, phi=False):
    """The C's completion of (count, range, step) from whichever were given (SPEC 3.2, 2.8);
    unset = negative. Decided on values (step counts are static). Returns (n, range, step).

    range_only_halves (detector thickness, phi): a range without count or step makes two
    steps of range/2 (else two points a range apart). phi: the spindle's variant, where a
    count of 0 means 1, a given count and range make `count` steps of range/count (not
    points from end to end), a step of exactly 0 is kept and nothing degenerate is reset.
    """
    f = value
    if phi and n == 0:
        n = 1
    if (n < 0) if phi else (n <= 0):
        if f(r) < 0.0:
            if f(s) <= 0.0:
                n, r, s = 1, 0.0, 0.0
            else:
                r, n = s, 2
        elif f(s) <= 0.0:
            if range_only_halves:
                n = 2
                s = r / n
            else:
                s, n = r, 2
        else:
            n = int(math.ceil(f(r) / f(s)))
    elif f(r) < 0.0:
        if f(s) <= 0.0:
            r = default_range
            s = r / n
        else:
            r, n = s, 2
    elif phi:
        if f(s) < 0.0:
            s = r / n
    elif f(s) <= 0.0:
        if n <= 1:
            n = 2
        s = r / (n - 1)
    if not phi and (f(r) <= 0.0 or f(s) <= 0.0 or n <= 0):
        n, r, s = 1, 0.0, 0.0
    return n, r, s


def _mrad(x):
    return x / 1000.0 if x is not None else -1.0


def fluence(cfg: SimConfig):
    """Photons/m^2: from -flux, -exposure and -beamsize when a flux is given, else -fluence
    (SPEC 3.6, as the C)."""
    bm = cfg.beam
    beamsize_m = bm.beamsize_mm / 1000
    if value(bm.flux) != 0.0 and bm.exposure_s > 0.0 and beamsize_m > 0:
        return bm.flux * bm.exposure_s / beamsize_m / beamsize_m
    return bm.fluence


def wavelength_m(cfg: SimConfig, dtype, device) -> torch.Tensor:
    lam = as_tensor(cfg.beam.wavelength_A, dtype, device)
    return lam / 1.0e10


def make_sources(cfg: SimConfig, beam_dir: torch.Tensor, polar: torch.Tensor, vert: torch.Tensor,
                 mode: Mode, dtype, device) -> Sources:
    """Sources from -sourcefile, or the divergence x dispersion grid (SPEC 3.3-3.4)."""
    mode = get_mode(mode)
    bm = cfg.beam
    lambda0 = wavelength_m(cfg, dtype, device)
    if bm.sources is not None:
        return _file_sources(cfg, beam_dir, lambda0, mode, dtype, device)

    hn, hr, hs = step_plan(bm.hdivsteps or -1, _mrad(bm.hdivrange_mrad), _mrad(bm.hdivstep_mrad), 1.0)
    vn, vr, vs = step_plan(bm.vdivsteps or -1, _mrad(bm.vdivrange_mrad), _mrad(bm.vdivstep_mrad), 1.0)
    disp = bm.dispersion_pct / 100.0 if bm.dispersion_pct is not None else 0.0
    dn, dr, ds = step_plan(bm.dispsteps or -1, disp, -1.0, 1.0)
    return grid_sources((hn, hr, hs), (vn, vr, vs), (dn, dr, ds), bm.round_div, lambda0,
                        beam_dir, polar, vert, SOURCE_DISTANCE_M, dtype, device)



def grid_sources(hplan, vplan, dplan, round_div: bool, lambda0, beam_dir: torch.Tensor,
                 polar: torch.Tensor, vert: torch.Tensor, source_distance_m, dtype, device) -> Sources:
    """Sources of the divergence x dispersion grid (SPEC 3.3; nonBragg.c alike), ordered
    (hdiv, vdiv, wavelength).  Plans are step_plan results (steps, range, step) in radians
    (dispersion: fractions); positions are -source_distance_m * beam rotated about polar by
    vdiv, then about vert by hdiv."""
    (hn, hr, hs), (vn, vr, vs), (dn, dr, ds) = hplan, vplan, dplan
    accepted = divergence_grid(hn, value(hr), value(hs), vn, value(vr), value(vs), round_div)
    if not accepted:
        raise ConfigError("the divergence settings leave no source inside the elliptical trim")
    ih = torch.tensor([a[0] for a in accepted], dtype=dtype, device=device)
    iv = torch.tensor([a[1] for a in accepted], dtype=dtype, device=device)
    hdiv = as_tensor(hs, dtype, device) * ih - as_tensor(hr, dtype, device) / 2.0
    vdiv = as_tensor(vs, dtype, device) * iv - as_tensor(vr, dtype, device) / 2.0
    start = (-source_distance_m * beam_dir).expand(len(accepted), 3)
    pos = rotate_axis(rotate_axis(start, polar, vdiv), vert, hdiv)        # (d, 3)
    tics = torch.arange(dn, dtype=dtype, device=device)
    lam = as_tensor(lambda0, dtype, device) * (1.0 + as_tensor(ds, dtype, device) * tics
                                               - as_tensor(dr, dtype, device) / 2.0)
    pos = pos[:, None, :].expand(-1, dn, 3).reshape(-1, 3)
    lam = lam[None, :].expand(len(accepted), dn).reshape(-1)
    incident = -unitize(pos)[0]
    return Sources(incident, lam, None, pos, len(accepted), (hn, hr, hs), (vn, vr, vs), (dn, dr, ds),
                   [(a[2], a[3]) for a in accepted])


def divergence_grid(hn, hr, hs, vn, vr, vs, round_div) -> list[tuple]:
    """The divergence grid points the C keeps, in its order: (ih, iv, hdiv, vdiv) (radians).

    With round_div the grid is trimmed to an ellipse, decided in double on the plain
    numbers as the C does.
    """
    accepted = []
    for ih in range(hn):
        for iv in range(vn):
            hdiv = hs * ih - hr / 2.0
            vdiv = vs * iv - vr / 2.0
            if round_div and _outside_ellipse(hdiv, vdiv, hn, vn, hr, hs, vr, vs):
                continue
            accepted.append((ih, iv, hdiv, vdiv))
    return accepted


def _outside_ellipse(hdiv, vdiv, hn, vn, hr, hs, vr, vs) -> bool:
    # the C: 0/0 gives NaN when a range is 0, and NaN > 1.1 is false: nothing is trimmed
    with np.errstate(divide="ignore", invalid="ignore"):
        test = np.float64(hdiv * hdiv - hs * hs / 4.0 * (1 - hn % 2)) / np.float64(hr) / np.float64(hr)
        test += np.float64(vdiv * vdiv - vs * vs / 4.0 * (1 - vn % 2)) / np.float64(vr) / np.float64(vr)
    return bool(test * 4.0 > 1.1)


def _file_sources(cfg, beam_dir, lambda0, mode, dtype, device) -> Sources:
    src = cfg.beam.sources
    pos = np.asarray(src.position_m, dtype=np.float64)
    n = pos.shape[0]
    pos_t = as_tensor(pos, dtype, device)
    default_pos = (-SOURCE_DISTANCE_M * beam_dir).expand(n, 3)
    pos_t = torch.where(torch.isnan(pos_t), default_pos, pos_t)
    lam = as_tensor(np.asarray(src.wavelength_m, dtype=np.float64), dtype, device)
    lam = torch.where(torch.isnan(lam), lambda0.expand(n), lam)
    weight = None
    if mode.source_weights:
        w = np.asarray(src.weight, dtype=np.float64)
        w = np.where(np.isnan(w), 1.0, w)
        if np.any(w < 0) or not np.any(w > 0):
            raise ConfigError("source file: weights must be >= 0 with at least one > 0")
        if not np.all(w == w[0]):
            weight = torch.as_tensor(w, dtype=dtype, device=device)
    incident = -unitize(pos_t)[0]
    return Sources(incident, lam, weight, pos_t)


def polarization_factor(kahn, incident: torch.Tensor, diffracted: torch.Tensor,
                        axis: torch.Tensor) -> torch.Tensor:
    """Kahn polarisation factor (SPEC 3.5); incident/diffracted (..., 3) unit vectors.

    P = 1/2 (1 + cos^2 2theta - K cos(2 psi) sin^2 2theta), psi the azimuth of
    the diffracted ray about the beam measured from the E-vector.
    """
    cos2theta = dot(incident, diffracted)
    cos2theta_sqr = cos2theta * cos2theta
    sin2theta_sqr = 1 - cos2theta_sqr
    B_in = unitize(cross(axis, incident))[0]
    E_in = unitize(cross(incident, B_in))[0]
    E_out = dot(diffracted, E_in)
    B_out = dot(diffracted, B_in)
    # atan2(0, 0) has no gradient: only matters on the beam axis, where sin^2 2theta = 0
    psi = -_safe_atan2(B_out, E_out)
    kahn_t = torch.as_tensor(kahn, dtype=cos2theta.dtype, device=cos2theta.device)
    return 0.5 * (1.0 + cos2theta_sqr - kahn_t * torch.cos(2 * psi) * sin2theta_sqr)


def _safe_atan2(y, x):
    both_zero = (y == 0) & (x == 0)
    x_safe = torch.where(both_zero, torch.ones_like(x), x)
    return torch.where(both_zero, torch.zeros_like(y), torch.atan2(y, x_safe))
