"""Crystal: unit cell, orientation, size, spindle and mosaic rotations (SPEC 2).

Real-space vectors are in metres, reciprocal ones in 1/Angstrom, as in the C.
`crystal_lattice` builds the phi=0, mosaic=0 cell; `rotated_cells` returns
the cell for every (phi step, mosaic domain) pair, which the kernel
broadcasts against every pixel.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .beam import step_plan
from .config import SimConfig
from .modes import Mode, get_mode
from .errors import ConfigError
from .units import deg_to_rad
from .vec import as_tensor, cross, dot, magnitude, rotate_axis, rotate_umat, rotate_xyz, value

DBL_MIN = 2.2250738585072014e-308


@dataclass
class Lattice:
    """The crystal at phi = 0 without mosaic rotation.

    a, b, c: (3,) real-space axes (m); a_star, b_star, c_star: (3,) reciprocal
    axes (1/A); V_cell (A^3); n_cells (3,) Na Nb Nc after the size rules;
    misset_rad: the misset applied (for the log).
    """
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    a_star: torch.Tensor
    b_star: torch.Tensor
    c_star: torch.Tensor
    V_cell: torch.Tensor
    n_cells: torch.Tensor
    misset_rad: object = None
    random_misset: bool = False
    steps: dict | None = None     # crystal_lattice(record=True): the intermediates, for -trace_pixel


def reciprocal_from_cell(cell: torch.Tensor):
    """SPEC 2.1: a*, b*, c* (1/A) and V (A^3) from a b c (A) alpha beta gamma (deg), C formulas.

    The c*_z component is the C's (not the textbook 1/c), so triclinic angles
    drift slightly after re-derivation, as in the C.
    """
    a, b, c = cell[0], cell[1], cell[2]
    alpha, beta, gamma = deg_to_rad(cell[3]), deg_to_rad(cell[4]), deg_to_rad(cell[5])
    aavg = (alpha + beta + gamma) / 2
    skew = torch.sin(aavg) * torch.sin(aavg - alpha) * torch.sin(aavg - beta) * torch.sin(aavg - gamma)
    V_cell = 2.0 * a * b * c * torch.sqrt(torch.abs(skew))
    V_cell = torch.where(V_cell <= 0, torch.full_like(V_cell, DBL_MIN), V_cell)
    V_star = 1.0 / V_cell
    a_len = torch.abs(b * c * torch.sin(alpha) * V_star)
    b_len = torch.abs(c * a * torch.sin(beta) * V_star)
    c_len = torch.abs(a * b * torch.sin(gamma) * V_star)
    sin_gamma_star = c * V_star / a_len / b_len
    cos_alpha_star = (torch.cos(beta) * torch.cos(gamma) - torch.cos(alpha)) / (torch.sin(beta) * torch.sin(gamma))
    cos_beta_star = (torch.cos(gamma) * torch.cos(alpha) - torch.cos(beta)) / (torch.sin(gamma) * torch.sin(alpha))
    cos_gamma_star = (torch.cos(alpha) * torch.cos(beta) - torch.cos(gamma)) / (torch.sin(alpha) * torch.sin(beta))
    sin_gamma_star = torch.clamp(sin_gamma_star, -1.0, 1.0)
    one = torch.ones_like(cos_alpha_star)
    cos_alpha_star = torch.where(cos_alpha_star * cos_alpha_star > 1.0, one, cos_alpha_star)
    cos_beta_star = torch.where(cos_beta_star * cos_beta_star > 1.0, one, cos_beta_star)
    cos_gamma_star = torch.where(cos_gamma_star * cos_gamma_star > 1.0, one, cos_gamma_star)
    zero = torch.zeros_like(a_len)
    a_star = torch.stack((a_len, zero, zero))
    b_star = torch.stack((b_len * cos_gamma_star, b_len * sin_gamma_star, zero))
    c_star = torch.stack((c_len * cos_beta_star,
                          c_len * (cos_alpha_star - cos_beta_star * cos_gamma_star) / sin_gamma_star,
                          c_len * V_cell / (a * b * c * sin_gamma_star)))
    return a_star, b_star, c_star, V_cell


def _rescale(v, new_mag):
    old = magnitude(v)
    old = torch.where(old <= 0, torch.ones_like(old), old)
    return (new_mag / old) * v


def misset_angles(cfg: SimConfig, mode: Mode):
    """The misset to apply: ('random', None) or (None, (3,) deg) or (None, None)."""
    mode = get_mode(mode)
    cr = cfg.crystal
    if not mode.argv_as_given and cfg.c_quirks.misset != "same":
        quirk = cfg.c_quirks.misset
        if quirk == "random":
            return "random", None
        return None, quirk
    if cr.misset_random:
        return "random", None
    return None, cr.misset_deg


def crystal_lattice(cfg: SimConfig, mode: Mode, wavelength_m: torch.Tensor, dtype, device,
                    record: bool = False) -> Lattice:
    """SPEC 2.1-2.5: cell or -mat, misset, real/reciprocal re-derivation, crystal size.

    record: keep the intermediate vectors in Lattice.steps (the C's crystal TRACE lines).
    """
    mode = get_mode(mode)
    cr = cfg.crystal
    steps = {} if record else None
    t = lambda x: as_tensor(x, dtype, device)  # noqa: E731
    if cr.cell is None and cr.mat is None:
        raise ConfigError("no crystal: give -cell a b c alpha beta gamma or -mat FILE")
    user_cell = cr.cell is not None
    if user_cell:
        cell = t(cr.cell)
        a_star, b_star, c_star, V_cell_user = reciprocal_from_cell(cell)
    if cr.mat is not None:
        # MOSFLM matrices carry the wavelength: columns are a*, b*, c* times lambda
        mat = t(cr.mat)
        scale = 1e-10 / wavelength_m
        a_star, b_star, c_star = mat[:, 0] * scale, mat[:, 1] * scale, mat[:, 2] * scale
        if record:
            steps.update(mat=mat, lambda0=wavelength_m, scale=scale, after_wavelength=(a_star, b_star, c_star))

    kind, angles = misset_angles(cfg, mode)
    misset_rad = None
    if kind == "random":
        from . import rng
        seed = cr.misset_seed if cr.misset_seed is not None else int(time.time())
        misset_rad = t(rng.random_misset_rad(seed))
    elif angles is not None:
        misset_rad = deg_to_rad(t(angles))
    if misset_rad is not None:
        before = (a_star, b_star, c_star)
        a_star = rotate_xyz(a_star, misset_rad[0], misset_rad[1], misset_rad[2])
        b_star = rotate_xyz(b_star, misset_rad[0], misset_rad[1], misset_rad[2])
        c_star = rotate_xyz(c_star, misset_rad[0], misset_rad[1], misset_rad[2])
        if record:
            steps.update(before_misset=before, after_misset=(a_star, b_star, c_star))
    if cr.orientation is not None:
        # API only: a rotation after the misset (the real axes follow through the cross products)
        umat = t(cr.orientation)
        a_star, b_star, c_star = (rotate_umat(v, umat) for v in (a_star, b_star, c_star))

    a_star_x_b_star = cross(a_star, b_star)
    b_star_x_c_star = cross(b_star, c_star)
    c_star_x_a_star = cross(c_star, a_star)
    V_star = dot(a_star, b_star_x_c_star)
    if record:
        steps.update(reciprocal=(a_star, b_star, c_star), V_star_raw=V_star,
                     cross=(a_star_x_b_star, b_star_x_c_star, c_star_x_a_star))
    if user_cell:
        b_star_x_c_star = _rescale(b_star_x_c_star, cell[0] / V_cell_user)
        c_star_x_a_star = _rescale(c_star_x_a_star, cell[1] / V_cell_user)
        a_star_x_b_star = _rescale(a_star_x_b_star, cell[2] / V_cell_user)
        V_star = 1.0 / V_cell_user
    V_cell = 1.0 / V_star
    a = V_cell * b_star_x_c_star
    b = V_cell * c_star_x_a_star
    c = V_cell * a_star_x_b_star
    if record:
        steps.update(V_cell=V_cell, V_star=V_star, real_A=(a, b, c),
                     rescaled=(b_star_x_c_star, c_star_x_a_star, a_star_x_b_star),
                     regen_cross=(cross(b, c), cross(c, a), cross(a, b)))
    a_star = V_star * cross(b, c)
    b_star = V_star * cross(c, a)
    c_star = V_star * cross(a, b)
    a, b, c = 1e-10 * a, 1e-10 * b, 1e-10 * c

    n_cells = crystal_size(cfg, a, b, c, dtype, device)
    return Lattice(a, b, c, a_star, b_star, c_star, V_cell, n_cells, misset_rad, kind == "random", steps)


def sample_size_m(cfg: SimConfig) -> tuple[list, list[str]]:
    """The crystal's x, y, z size (m; 0: unset) with y and z clipped to the beam size,
    and the C's warnings about the clipping (SPEC 2.5)."""
    sizes = [s / 1000.0 for s in cfg.crystal.sample_size_mm]
    beamsize = cfg.beam.beamsize_mm / 1000           # metres, as the C's atof()/1000
    notes = []
    if beamsize >= 0:
        for k, word in ((1, "high"), (2, "wide")):
            if beamsize < sizes[k]:
                notes.append(f"WARNING: clipping sample ({sizes[k]:g} m {word}) with beam ({beamsize:g} m)")
                sizes[k] = cfg.beam.beamsize_mm / 1000.0
    return sizes, notes


def crystal_size(cfg: SimConfig, a, b, c, dtype, device) -> torch.Tensor:
    """SPEC 2.5: Na Nb Nc from -N/-Na.. or from the sample size, clamped to >= 1."""
    cr = cfg.crystal
    n = as_tensor(cr.n_cells, dtype, device)
    sizes = sample_size_m(cfg)[0]
    axes = (a, b, c)
    n = torch.stack([torch.ceil(sizes[i] / magnitude(axes[i])) if sizes[i] > 0 else n[i]
                     for i in range(3)])
    return torch.where(n <= 1.0, torch.ones_like(n), n)


@dataclass
class PhiPlan:
    phi0_rad: object
    phistep_rad: object
    phisteps: int
    osc_rad: object


def phi_plan(cfg: SimConfig) -> PhiPlan:
    """SPEC 2.8: phi step count, step and range from whichever of them were given."""
    cr = cfg.crystal
    osc = deg_to_rad(cr.osc_deg) if cr.osc_deg is not None else -1.0
    phistep = deg_to_rad(cr.phistep_deg) if cr.phistep_deg is not None else -1.0
    steps = cr.phisteps if cr.phisteps is not None else -1
    # an oscillation without steps or step size: 1 degree (the C's 1/RTD)
    steps, osc, phistep = step_plan(steps, osc, phistep, 1.0 / (180.0 * (1.0 / math.pi)),
                                    range_only_halves=True, phi=True)
    return PhiPlan(deg_to_rad(cr.phi_deg), phistep, steps, osc)


def mosaic_plan(cfg: SimConfig) -> tuple[int, object, list[str]]:
    """SPEC 2.7 domain-count rules: (domains, spread_deg or 0.0, warnings)."""
    cr = cfg.crystal
    spread = cr.mosaic_spread_deg
    domains = cr.mosaic_domains if cr.mosaic_domains is not None else -1
    notes = []
    if domains <= 0:
        if spread is None or value(spread) < 0:
            return 1, 0.0, notes
        if value(spread) == 0.0:
            return 1, spread, notes
        notes.append("WARNING: finite mosaicity with only one domain! upping to 10 mosaic domains")
        return 10, spread, notes
    if spread is None or value(spread) < 0:
        notes.append("WARNING: no mosaic spread specified.  setting mosaic_domains = 1")
        return 1, 0.0, notes
    if value(spread) == 0.0:
        notes.append("WARNING: zero mosaic spread specified.  setting mosaic_domains = 1")
        return 1, spread, notes
    return domains, spread, notes


def umat_from_axis_angle(v: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) about unit axes v (..., 3) by rot (...), in the C's operation order."""
    v1, v2, v3 = v[..., 0], v[..., 1], v[..., 2]
    t1 = torch.cos(rot)
    t2 = 1.0 - t1
    t6 = t2 * v1
    t7 = t6 * v2
    t8 = torch.sin(rot)
    t9 = t8 * v3
    t11 = t6 * v3
    t12 = t8 * v2
    t19 = t2 * v2 * v3
    t20 = t8 * v1
    rows = (torch.stack((t1 + t2 * (v1 * v1), t7 - t9, t11 + t12), -1),
            torch.stack((t7 + t9, t1 + t2 * (v2 * v2), t19 - t20), -1),
            torch.stack((t11 - t12, t19 + t20, t1 + t2 * (v3 * v3)), -1))
    return torch.stack(rows, -2)


def mosaic_umats(domains: int, spread_deg, seed: int, dtype, device, smooth: bool = True) -> torch.Tensor:
    """(M, 3, 3) domain rotations from the C generator; domain 0 is the identity.

    smooth (spec mode): the angle is spread * g in dtype, a smooth function of the
    spread. Otherwise float32(float32(spread) * g) as in the C (the product is done
    in float32), with d/d(spread) that of the unrounded spread * g (the rounding
    enters as a constant correction: the value stays the C's).
    """
    eye = torch.eye(3, dtype=dtype, device=device)
    if domains <= 1:
        return eye[None]
    from . import rng
    spread_rad = deg_to_rad(as_tensor(spread_deg, dtype, device))
    axes, g, _ = rng.mosaic_domains(domains, 1.0, seed)     # the draws do not depend on the spread
    axes = torch.as_tensor(axes, dtype=dtype, device=device)
    g = torch.as_tensor(g, dtype=torch.float32, device=device)
    if smooth:
        rot = spread_rad * g.to(dtype)
        return torch.cat((eye[None], umat_from_axis_angle(axes, rot)[1:]), dim=0)
    rot = (spread_rad.to(torch.float32) * g).to(dtype)
    if spread_rad.requires_grad:
        # x + (y - x) == y exactly for y the float32 rounding of x (Sterbenz: y - x is exact)
        smooth = spread_rad * g.to(dtype)
        rot = smooth + (rot - smooth).detach()
    umats = umat_from_axis_angle(axes, rot)
    return torch.cat((eye[None], umats[1:]), dim=0)


def phi_angles(plan: PhiPlan, dtype, device) -> torch.Tensor:
    """(P,) spindle angles phi0 + i*step, radians (left edge of each step)."""
    tics = torch.arange(plan.phisteps, dtype=dtype, device=device)
    return as_tensor(plan.phi0_rad, dtype, device) + as_tensor(plan.phistep_rad, dtype, device) * tics


def carried_phi_steps(phi_values: list[float], first_loop: bool) -> list[int]:
    """C-PARITY-001 (SPEC 8.2): which phi step's rotation the C actually uses at each step.

    The C rotates only where phi != 0 exactly and otherwise keeps the cell it
    computed last: the previous nonzero step of this phi loop, or (except in
    the run's very first loop) of the previous loop, i.e. cyclically; -1 means
    the unrotated cell. Static: decided on the phi values.
    """
    steps = len(phi_values)
    used = []
    for i, phi in enumerate(phi_values):
        if phi != 0.0:
            used.append(i)
            continue
        source = -1
        candidates = range(i - 1, -1, -1) if first_loop else [(i - k) % steps for k in range(1, steps)]
        for j in candidates:
            if phi_values[j] != 0.0:
                source = j
                break
        used.append(source)
    return used


def rotated_cells(lat: Lattice, spindle: torch.Tensor, phis: torch.Tensor, umats: torch.Tensor,
                  phi_steps_used: list[int] | None = None) -> torch.Tensor:
    """(P, M, 3, 3) real-space axes (rows a, b, c; metres) for every phi step and mosaic domain.

    Each step is a fresh rotation of the phi=0 cell about the spindle (spec
    mode). phi_steps_used (from carried_phi_steps) substitutes along the phi
    axis the rotation the C really uses (c-parity).
    """
    abc0 = torch.stack((lat.a, lat.b, lat.c))                       # (3 axes, 3)
    abcp = rotate_axis(abc0[None], spindle, phis[:, None])           # (P, 3, 3)
    if phi_steps_used is not None:
        with_unrotated = torch.cat((abcp, abc0[None]), dim=0)        # index -1: unrotated
        index = torch.tensor([len(phis) if j < 0 else j for j in phi_steps_used], device=abcp.device)
        abcp = with_unrotated.index_select(0, index)
    return rotate_umat(abcp[:, None, :, :], umats[None, :, None, :, :])


def rotated_cell_set(lat: Lattice, spindle: torch.Tensor, phi: PhiPlan, domains: int, spread_deg,
                     seed: int, mode: Mode, dtype, device):
    """(R, 3, 3) cells for every (phi step, mosaic domain), phi major, and c-parity's cells
    of the run's very first phi loop (None where they are the same or in spec mode)."""
    mode = get_mode(mode)
    umats = mosaic_umats(domains, spread_deg, seed, dtype, device, smooth=mode.smooth_mosaic_angles)
    phis = phi_angles(phi, dtype, device)
    if mode.fresh_phi_rotation:
        return rotated_cells(lat, spindle, phis, umats).reshape(-1, 3, 3), None
    # C-PARITY-001: where phi == 0 the C reuses the last rotation it computed
    values = [value(x) for x in phis]
    carried = carried_phi_steps(values, first_loop=False)
    first = carried_phi_steps(values, first_loop=True)
    cells = rotated_cells(lat, spindle, phis, umats, carried).reshape(-1, 3, 3)
    if first == carried:
        return cells, None
    return cells, rotated_cells(lat, spindle, phis, umats, first).reshape(-1, 3, 3)


def oversampling(cfg, lattice, geom, lambda0) -> tuple[int, int]:
    """SPEC 2.9: (oversampling used, recommended) from crystal size and reciprocal pixel size."""
    sizes = [value(magnitude(v) * n) for v, n in
             zip((lattice.a, lattice.b, lattice.c), lattice.n_cells)]
    reciprocal_pixel = value(lambda0) * value(geom.distance) / geom.pixel_size_m
    recommended = max(1, math.ceil(3.0 * max(sizes) / reciprocal_pixel))
    over = cfg.oversample
    return (recommended if over is None or over <= 0 else over), recommended
