"""The per-pixel physics (SPEC 4) as pure tensor functions.

Tensor axes of one pixel chunk, in the C's loop order (which fixes the
"held value" and running-product semantics):

    n pixel, T detector layer, O slow subpixel, O fast subpixel,
    S source, R rotated cell (phi step major, mosaic domain minor)

Every (pixel, layer, subpixel, source, cell) evaluation is one element; the
pixel value is a reduction over all axes but the first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .beam import polarization_factor
from .detector import DetectorGeometry, pixel_positions
from .structure import FGrid, nearest_F, tricubic_F, tricubic_out_of_range
from .vec import dot


@dataclass
class KernelPlan:
    """Everything the kernel needs; tensors on the simulation device/dtype."""
    geom: DetectorGeometry
    oversample: int
    odet_offsets: torch.Tensor        # (T,) layer offsets along odet, m
    thickstep: object                 # m
    mu: object                        # 1/m
    thick: bool                       # detector thickness modelled (capture fraction)
    incident: torch.Tensor            # (S, 3)
    wavelength: torch.Tensor          # (S,) m
    source_weight: torch.Tensor | None   # (S,) factors (mean 1) or None
    cells: torch.Tensor               # (R, 3, 3) rows a, b, c (m)
    cells_first: torch.Tensor | None  # c-parity: the cells of the run's very first phi loop
    reciprocal: torch.Tensor          # (3, 3) rows a*, b*, c* (1/A) for gauss/tophat
    n_cells: torch.Tensor             # (3,)
    shape: str
    fudge: float
    fgrid: FGrid
    interpolate: bool
    water: bool                       # background present (no skipping of zero F_latt terms)
    I_bg: torch.Tensor
    scale: torch.Tensor               # r_e^2 * fluence
    steps: int
    dmin: object                      # m (0: off)
    nopolar: bool
    kahn: object
    polar_axis: torch.Tensor
    oversample_thick: bool
    oversample_polar: bool
    oversample_omega: bool
    lattice_on_fraction: bool = True  # sincg on h - h0 (spec) or on h (the C's form)
    dtype: torch.dtype = torch.float64   # dtype of the lattice/structure-factor arithmetic
    interp_state: dict = field(default_factory=lambda: {"active": True, "warning": None})
    first_evaluation_done: bool = False


def sincg(x: torch.Tensor, N: torch.Tensor, tiny: float) -> torch.Tensor:
    """sin(N x)/sin(x), the lattice transform along one axis; N where x -> 0.

    A second-order Taylor expansion near x = 0 keeps value and gradient
    finite; |N x| < tiny there, so the dropped terms are below rounding.
    """
    small = (N * x).abs() < tiny
    x_safe = torch.where(small, torch.ones_like(x), x)
    exact = torch.sin(N * x_safe) / torch.sin(x_safe)
    taylor = N * (1.0 - (N * N - 1.0) * (x * x) / 6.0)
    return torch.where(small, taylor, exact)


def sinc3(x2: torch.Tensor, c_form: bool = False) -> torch.Tensor:
    """3 (sin x / x - cos x) / x^2 of x = sqrt(x2), 1 at x = 0 (sphere transform).

    The closed form cancels catastrophically for small x (its error is about
    1e-16/x^2), so below x^2 = 1e-3 the series 1 - x^2/10 + x^4/280 - x^6/15120
    is used (next term x^8/1330560: below rounding there). c_form keeps the
    C's closed form everywhere but at 0 (c-parity).
    """
    small = x2 <= (0.0 if c_form else 1e-3)
    x = torch.sqrt(torch.where(small, torch.ones_like(x2), x2))
    exact = 3.0 * (torch.sin(x) / x - torch.cos(x)) / (x * x)
    series = 1.0 - x2 * (1.0 / 10.0 - x2 * (1.0 / 280.0 - x2 / 15120.0))
    return torch.where(small, series, exact)


def lattice_factor(hkl: torch.Tensor, frac: torch.Tensor, plan: KernelPlan) -> torch.Tensor:
    """F_latt (SPEC 2.6) from fractional hkl (..., 3) and its offset from the nearest node, frac."""
    N = plan.n_cells.to(frac.dtype)
    f64 = frac.dtype == torch.float64
    if plan.shape == "square":
        tiny = 1e-7 if f64 else 1e-3
        x = math.pi * frac
        if not plan.lattice_on_fraction:
            x = math.pi * hkl
            tiny = 1e-300          # the C's test is x == 0 exactly
        F = sincg(x[..., 0], N[0], tiny) * sincg(x[..., 1], N[1], tiny) * sincg(x[..., 2], N[2], tiny)
        return F
    NaNbNc = N[0] * N[1] * N[2]
    if plan.shape == "round":
        hrad_sqr = (frac[..., 0] * frac[..., 0] * N[0] * N[0] + frac[..., 1] * frac[..., 1] * N[1] * N[1]
                    + frac[..., 2] * frac[..., 2] * N[2] * N[2])
        # the C takes sqrt(hrad^2 * fudge) and multiplies by pi: pass x^2 so that the
        # series near the node needs no square root
        x2 = math.pi * math.pi * (hrad_sqr * plan.fudge)
        return NaNbNc * 0.723601254558268 * sinc3(x2, c_form=not plan.lattice_on_fraction)
    rs = plan.reciprocal.to(frac.dtype)
    d = (frac[..., 0, None] * rs[0] + frac[..., 1, None] * rs[1] + frac[..., 2, None] * rs[2])
    rad_star_sqr = dot(d, d) * N[0] * N[0] * N[1] * N[1] * N[2] * N[2]
    if plan.shape == "gauss":
        return NaNbNc * torch.exp(-(rad_star_sqr / 0.63 * plan.fudge))
    return NaNbNc * (rad_star_sqr * plan.fudge < 0.3969).to(frac.dtype)     # tophat


def structure_factor(hkl, hkl0, evaluated, plan: KernelPlan) -> torch.Tensor:
    """F_cell for every evaluation; tricubic until the run's first out-of-range one (SPEC 4.3)."""
    grid = plan.fgrid
    F_nn = nearest_F(grid, hkl0)
    state = plan.interp_state
    if not (plan.interpolate and state["active"]):
        return F_nn
    oor = tricubic_out_of_range(grid, hkl) & evaluated
    F_tri = tricubic_F(grid, hkl).to(F_nn.dtype)
    flat = oor.reshape(-1)
    if bool(flat.any()):
        first = int(torch.nonzero(flat)[0, 0])
        before = (torch.arange(flat.numel(), device=flat.device) < first).reshape(oor.shape)
        state["active"] = False
        h = hkl.reshape(-1, 3)[first]
        h0 = hkl0.reshape(-1, 3)[first]
        state["warning"] = (
            "WARNING: out of range for three point interpolation: h,k,l,h0,k0,l0: "
            f"{float(h[0]):g},{float(h[1]):g},{float(h[2]):g},{int(h0[0])},{int(h0[1])},{int(h0[2])} \n"
            "WARNING: further warnings will not be printed! ")
        return torch.where(before, F_tri, F_nn)
    return F_tri


def miller_indices(q: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """h, k, l = a.q, b.q, c.q for every cell: q (..., 3), cells (R, 3, 3) -> (..., R, 3)."""
    qe = q[..., None, None, :]
    return qe[..., 0] * cells[..., 0] + qe[..., 1] * cells[..., 1] + qe[..., 2] * cells[..., 2]


def _first_phi_loop(hkl, q, culled, plan: KernelPlan) -> torch.Tensor:
    """C-PARITY-001: the run's first phi loop (first rendered pixel, layer, subpixel and
    unculled source) starts from the unrotated cell; swap its Miller indices in."""
    groups = torch.ones(q.shape[:-1], dtype=torch.bool, device=q.device)
    if culled is not None:
        groups = ~culled
    flat = groups.reshape(-1)
    if not bool(flat.any()):
        return hkl
    plan.first_evaluation_done = True
    first = torch.arange(flat.numel(), device=q.device) == torch.argmax(flat.to(torch.int8))
    first = first.reshape(groups.shape)[..., None, None]
    return torch.where(first, miller_indices(q, plan.cells_first), hkl)


@dataclass
class ChunkResult:
    value: torch.Tensor       # (n,) pixel values before float32 rounding
    omega_sum: torch.Tensor   # scalar: sum of the solid angles the C adds to omega_sum


def render_pixels(s_idx: torch.Tensor, f_idx: torch.Tensor, plan: KernelPlan) -> ChunkResult:
    """Pixel values (n,) for pixels (s_idx, f_idx), SPEC 4.1 vectorised."""
    geom = plan.geom
    O = plan.oversample
    P = pixel_positions(geom, s_idx, f_idx, O, plan.odet_offsets)       # (n, T, O, O, 3)
    airpath = torch.sqrt(dot(P, P))
    d = P / airpath[..., None]                                            # diffracted unit vectors
    px = geom.pixel_size_m
    if geom.point_pixel:
        omega = 1.0 / airpath / airpath
    else:
        omega = px * px / airpath / airpath * geom.close_distance / airpath

    if plan.thick:
        parallax = dot(d, geom.odet)
        t = torch.arange(plan.odet_offsets.shape[0], dtype=P.dtype, device=P.device)[None, :, None, None]
        capture = (torch.exp(-t * plan.thickstep * plan.mu / parallax)
                   - torch.exp(-(t + 1) * plan.thickstep * plan.mu / parallax))
    else:
        capture = torch.ones_like(omega)

    inc = plan.incident                                                   # (S, 3)
    lam = plan.wavelength                                                 # (S,)
    q = (d[..., None, :] - inc) / lam[:, None]                           # (n, T, O, O, S, 3)
    culled = None
    if _positive(plan.dmin):
        stol = 0.5 * torch.sqrt(dot(q, q))
        culled = (stol > 0) & (plan.dmin > 0.5 / torch.where(stol > 0, stol, torch.ones_like(stol)))

    # geometry and Miller indices in float64 whatever the dtype: a float32 h of ~50
    # carries 4e-6 of rounding, which the sharp lattice transform magnifies
    hkl = miller_indices(q, plan.cells)                                 # (n, T, O, O, S, R, 3)
    if plan.cells_first is not None and not plan.first_evaluation_done:
        hkl = _first_phi_loop(hkl, q, culled, plan)
    hkl0 = torch.ceil(hkl - 0.5)
    F_latt = lattice_factor(hkl, (hkl - hkl0).to(plan.dtype), plan)
    evaluated = torch.ones_like(F_latt, dtype=torch.bool)
    if culled is not None:
        evaluated = evaluated & ~culled[..., None]
    if not plan.water:
        evaluated = evaluated & (F_latt != 0)
    F_cell = structure_factor(hkl, hkl0, evaluated, plan)
    term = F_cell * F_cell * F_latt * F_latt                              # (n, T, O, O, S, R)
    if plan.source_weight is not None:
        term = term * plan.source_weight[:, None].to(term.dtype)
    if culled is not None:
        term = torch.where(culled[..., None], torch.zeros_like(term), term)

    polar = None
    if plan.oversample_polar or not plan.nopolar:
        polar = polarization_factor(plan.kahn, inc, d[..., None, :], plan.polar_axis)  # (n,T,O,O,S)

    n = P.shape[0]
    dt = plan.dtype
    omega, capture = omega.to(dt), capture.to(dt)
    polar = polar.to(dt) if polar is not None else None
    if plan.oversample_thick or plan.oversample_polar or plan.oversample_omega:
        I = _running_product_sum(term, evaluated, capture, polar, omega, plan)
    else:
        I = plan.I_bg.to(dt) + term.reshape(n, -1).sum(dim=1)

    value = plan.scale.to(dt) * I / plan.steps
    if not plan.oversample_thick:
        value = value * capture[:, -1, 0, 0]
    if not plan.oversample_polar:
        value = value * _held_polar(polar, culled, plan, n)
    if not plan.oversample_omega:
        value = value * omega[:, 0, 0, 0]
        omega_sum = omega[:, 0, 0, 0].sum() * omega[0].numel()
    else:
        omega_sum = omega.sum()
    return ChunkResult(value, omega_sum)


def _positive(x) -> bool:
    if isinstance(x, torch.Tensor):
        return bool((x > 0).any())
    return x > 0


def _held_polar(polar, culled, plan: KernelPlan, n: int) -> torch.Tensor:
    """The C computes the polarisation factor once per pixel, at its first unculled source."""
    if plan.nopolar:
        return torch.ones((), dtype=plan.dtype, device=plan.I_bg.device)
    flat = polar.reshape(n, -1)
    if culled is None:
        return flat[:, 0]
    alive = ~culled.reshape(n, -1)
    first = torch.argmax(alive.to(torch.int8), dim=1)
    held = flat.gather(1, first[:, None])[:, 0]
    return torch.where(alive.any(dim=1), held, torch.zeros_like(held))


def _running_product_sum(term, evaluated, capture, polar, omega, plan: KernelPlan) -> torch.Tensor:
    """I with -oversample_thick/_polar/_omega: the C multiplies the whole running sum
    (background included) by the factors after every evaluation (SPEC 4.1).

    Within a group g = (layer, subpixel, source) every kept evaluation j does
    I = (I + T_j) m_g; across groups the earlier sum keeps being multiplied.
    """
    n = term.shape[0]
    S = term.shape[4]
    m = torch.ones(term.shape[:5], dtype=term.dtype, device=term.device)
    if plan.oversample_thick:
        m = m * capture[..., None]
    if plan.oversample_polar:
        m = m * polar
    if plan.oversample_omega:
        m = m * omega[..., None]
    m = m.reshape(n, -1)                                              # (n, G)
    kept = evaluated.reshape(n, m.shape[1], -1).to(term.dtype)        # (n, G, R)
    term = term.reshape(n, m.shape[1], -1)
    after = torch.flip(torch.cumsum(torch.flip(kept, [2]), 2), [2])   # kept evaluations from j on
    inner = (kept * term * torch.pow(m[..., None], after)).sum(dim=2)  # (n, G)
    group = torch.pow(m, after[..., 0])                                # m_g^{n_g}
    suffix = torch.flip(torch.cumprod(torch.flip(group, [1]), 1), [1])   # prod over g' >= g
    later = torch.cat((suffix[:, 1:], torch.ones_like(suffix[:, :1])), dim=1)
    del S
    return plan.I_bg.to(term.dtype) * suffix[:, 0] + (inner * later).sum(dim=1)
