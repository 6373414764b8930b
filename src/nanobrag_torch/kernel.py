"""The per-pixel physics (SPEC 4) as pure tensor functions.

One call renders a chunk of n pixels. The C's loop nest (SPEC 4.1) becomes
tensor axes, in the C's order (which fixes its "held value" and
running-product semantics):

    n pixel, T detector layer, O slow subpixel, O fast subpixel,   } the "groups", Gp per pixel
    S source,                                                      }
    R rotated cell (phi step major, mosaic domain minor)

so every evaluation is an element of an (n, Gp, R) array and a pixel's value
is a sum over the last two axes. When Gp is larger than R the evaluations are
laid out (n, R, Gp) instead: the sum is the same, and the long axis innermost
lets the compiled kernel vectorise. 3-vectors inside the kernel are kept as
separate x, y, z tensors (contiguous arrays vectorise; (..., 3) ones do not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .background import water_terms
from .beam import polarization_factor
from .detector import DetectorGeometry, pixel_position_components
from .structure import FGrid, nearest_F, tricubic_F, tricubic_out_of_range

Vec3 = tuple  # (x, y, z) tensors of one shape


@dataclass
class KernelPlan:
    """Everything the kernel needs; geometry tensors are float64, see `dtype`."""
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
    c_form: bool = False              # c-parity: the C's own closed forms (float64)
    first_incident: torch.Tensor | None = None   # (3,) source of the held polarisation when
                                                 # `incident` is a slice of the sources
    dtype: torch.dtype = torch.float64   # dtype of the lattice/structure-factor arithmetic
    water_molecules: torch.Tensor | None = None   # spec mode's physical -water (modes.md row 16):
                                                 # molecules; None: the C's I_bg seed
    water_table: object = None                    # its F(stol) (amorphous.StolTable) or None: 2.57
    subpixel_factors: bool = False    # spec: -oversample_* factors multiply their own
                                      # subpixel's terms (modes.md row 17), not the running sum
    dmin_cut: bool | None = None      # the dmin cut is on (None: dmin > 0; a compiled kernel,
                                      # which takes dmin as a runtime value, fixes it)

    def __post_init__(self):
        # components of every cell as contiguous (R,) arrays: [i, j] is component j of axis i
        self.cell_columns = self.cells.permute(1, 2, 0).contiguous()
        self.inv_wavelength = 1.0 / self.wavelength                       # (S,)
        # h = a.(d - i)/lambda = (a.d)/lambda - (a.i)/lambda: the second term per (source, cell)
        inc = self.incident.t()                                          # (3, S)
        self.source_terms = torch.stack([
            (inc[0, :, None] * self.cell_columns[i, 0] + inc[1, :, None] * self.cell_columns[i, 1]
             + inc[2, :, None] * self.cell_columns[i, 2]) * self.inv_wavelength[:, None]
            for i in range(3)])                                          # (3, S, R)
        # the same table stored with the sources contiguous, for the layout that runs along
        # them: inductor orders a compiled loop by its inputs' strides (with (3, S, R) it runs
        # along R, the shortest axis there, and ran 5x slower)
        self.source_terms_rs = torch.stack([
            (self.cell_columns[i, 0][:, None] * inc[0] + self.cell_columns[i, 1][:, None] * inc[1]
             + self.cell_columns[i, 2][:, None] * inc[2]) * self.inv_wavelength
            for i in range(3)])                                          # (3, R, S)

    @property
    def running_product(self) -> bool:
        """Per-subpixel factors (-oversample_*): the C's running product or, in spec mode,
        each group's own factor; both need every subpixel's omega/capture/polar."""
        return self.oversample_thick or self.oversample_polar or self.oversample_omega

    @property
    def culling(self) -> bool:
        if self.dmin_cut is not None:
            return self.dmin_cut
        d = self.dmin
        return bool((d > 0).any()) if isinstance(d, torch.Tensor) else d > 0

    def layout(self, c_order: bool) -> tuple:
        """Axes of the evaluations after the pixel's: the C's (groups g = layer x subpixel,
        sources s, rotated cells r), or the longest innermost (the compiled loop vectorises
        along it; the later axis on a tie) and the other two in the C's order. Three layouts,
        so a compiled kernel (built for one) serves every size that keeps its axis longest."""
        if c_order:
            return ("g", "s", "r")
        sizes = {"g": self.oversample ** 2 * self.odet_offsets.shape[-1],
                 "s": self.incident.shape[0], "r": self.cells.shape[0]}
        inner = max(reversed("gsr"), key=lambda a: sizes[a])
        return tuple(a for a in "gsr" if a != inner) + (inner,)

    def needs_c_order(self, state: "RunState") -> bool:
        """Paths that depend on the C's evaluation order (they run eagerly)."""
        return (self.running_product or (self.interpolate and state.interpolating)
                or (self.cells_first is not None and not state.first_loop_done))


@dataclass(frozen=True)
class RunState:
    """The C's state that carries from pixel to pixel through one image, in its loop order.

    interpolating: tricubic interpolation is still on (it goes off for good at the run's
        first out-of-range lookup, SPEC 4.3); warning: the C's message at that switch.
    first_loop_done: c-parity's first phi loop, which starts from the unrotated cell
        (C-PARITY-001), has happened.
    The kernel takes a state and returns the next one; it changes nothing it is given.
    """
    interpolating: bool = True
    first_loop_done: bool = False
    warning: str | None = None


# ----------------------------------------------------------------- lattice transform
_SINPI = [(-1) ** k * math.pi ** (2 * k + 1) / math.factorial(2 * k + 1) for k in range(11)]


def _sinpi_poly(r: torch.Tensor) -> torch.Tensor:
    """sin(pi r) for |r| <= 1/2 by its Taylor polynomial (degree 21 in float64, 13 in float32:
    truncation below rounding on that interval)."""
    coeffs = _SINPI if r.dtype == torch.float64 else _SINPI[:7]
    r2 = r * r
    acc = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        acc = acc * r2 + c
    return acc * r


def _parity_sign(k: torch.Tensor) -> torch.Tensor:
    """(-1)^k for integer-valued k."""
    return 1.0 - 2.0 * (k - 2.0 * torch.floor(0.5 * k))


def sinpi(y: torch.Tensor) -> torch.Tensor:
    """sin(pi y) for any real y, with exact argument reduction (pi*y is never rounded).

    y = k + r, k = round(y), |r| <= 1/2: sin(pi y) = (-1)^k sin(pi r). Compiled
    code evaluates sin(pi r) as a polynomial (it vectorises; a library call
    may not); eager code calls the library sin, one op instead of a dozen.
    """
    k = torch.round(y)
    r = y - k
    if torch.compiler.is_compiling():
        return _sinpi_poly(r) * _parity_sign(k)
    return torch.sin(math.pi * r) * _parity_sign(k)


def sincg(u: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    """sin(N pi u) / sin(pi u), the lattice transform along one axis (N at u = 0).

    u is h (the C's form) or h - h0: the value is periodic up to the sign
    (-1)^(k (N-1)), k = round(u), which is applied here. Near a node a
    second-order expansion keeps value and gradient finite (|N r| < 1e-7 in
    float64, 1e-4 in float32, where the dropped terms are below rounding).
    """
    k = torch.round(u)
    # the sign is a step function of N: rounded, it stays +-1 (no gradient) for non-integer N
    return _sincg_reduced(u - k, N) * _parity_sign(torch.round(k * (N - 1.0)))


def _sincg_reduced(r: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    """sincg for |r| <= 1/2 (no reduction or sign needed).

    Eager runs with gradients use _SincgReduced (the same values, an analytic
    derivative); everything else (no gradients, compiled kernels) the plain ops.
    """
    if (torch.is_grad_enabled() and (r.requires_grad or N.requires_grad)
            and not torch.compiler.is_compiling()):
        return _SincgReduced.apply(r, N)
    return _sincg_value(r, N)


def _sincg_value(r: torch.Tensor, N: torch.Tensor) -> torch.Tensor:
    tiny = 1e-7 if r.dtype == torch.float64 else 1e-4
    small = (N * r).abs() < tiny
    r_safe = torch.where(small, torch.full_like(r, 0.5), r)
    if torch.compiler.is_compiling():
        exact = sinpi(N * r_safe) / _sinpi_poly(r_safe)
    else:
        exact = sinpi(N * r_safe) / torch.sin(math.pi * r_safe)
    taylor = N * (1.0 - (N * N - 1.0) * (math.pi * math.pi / 6.0) * (r * r))
    return torch.where(small, taylor, exact)


class _SincgReduced(torch.autograd.Function):
    """sin(N pi r)/sin(pi r) with its derivatives in closed form.

    Autograd through the ~20 operations of the value (exact argument reduction, the
    series near the node, the branch select) stores and differentiates each of them;
    the closed forms take a few operations and are more accurate (in float32 100x,
    near the node the chained form cancels). With x = pi r:
        dF/dr = pi (N cos(N x) - F cos(x)) / sin(x),   dF/dN = x cos(N x) / sin(x),
    and near the node (|N r| below 1e-3, float32 5e-2, where the first form cancels)
    their series from F = N [1 - (N^2-1) x^2/6 + (N^2-1)(3N^2-7) x^4/360 - ...].
    """

    @staticmethod
    def forward(ctx, r, N):
        F = _sincg_value(r, N)
        ctx.save_for_backward(r, N, F)
        return F

    @staticmethod
    def backward(ctx, grad):
        r, N, F = ctx.saved_tensors
        near = (N * r).abs() < (1e-3 if r.dtype == torch.float64 else 5e-2)
        x = math.pi * torch.where(near, torch.full_like(r, 0.5), r)
        sin_x, cos_x, cos_Nx = torch.sin(x), torch.cos(x), torch.cos(N * x)
        x0 = math.pi * r
        x2 = x0 * x0
        N2 = N * N
        grad_r = grad_N = None
        if ctx.needs_input_grad[0]:
            series = math.pi * N * (N2 - 1.0) * x0 * ((3.0 * N2 - 7.0) * x2 / 90.0 - 1.0 / 3.0)
            d = torch.where(near, series, math.pi * (N * cos_Nx - F * cos_x) / sin_x)
            grad_r = (grad * d).sum_to_size(r.shape)
        if ctx.needs_input_grad[1]:
            series = 1.0 - (3.0 * N2 - 1.0) * x2 / 6.0 + (15.0 * N2 * N2 - 30.0 * N2 + 7.0) * x2 * x2 / 360.0
            d = torch.where(near, series, x * cos_Nx / sin_x)
            grad_N = (grad * d).sum_to_size(N.shape)
        return grad_r, grad_N


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


def lattice_factor(hkl: Vec3, frac: Vec3, plan: KernelPlan) -> torch.Tensor:
    """F_latt (SPEC 2.6) from fractional Miller indices hkl and frac = hkl - hkl0 (in plan.dtype)."""
    N = plan.n_cells.to(frac[0].dtype)
    if plan.shape == "square":
        F = _sincg_reduced(frac[0], N[0]) * _sincg_reduced(frac[1], N[1]) * _sincg_reduced(frac[2], N[2])
        if plan.c_form:
            # the C's sin(N pi h)/sin(pi h): the same magnitude, sign (-1)^(h0 (N-1)) per axis
            # (the C's N are integers; for a non-integer N, as the API allows, the rounded
            # exponent keeps the sign +-1 and piecewise constant, as in spec mode)
            h0 = [x - f for x, f in zip(hkl, frac)]
            F = F * _parity_sign(torch.round(h0[0] * (N[0] - 1.0) + h0[1] * (N[1] - 1.0)
                                             + h0[2] * (N[2] - 1.0)))
        return F
    NaNbNc = N[0] * N[1] * N[2]
    if plan.shape == "round":
        hrad_sqr = (frac[0] * frac[0] * N[0] * N[0] + frac[1] * frac[1] * N[1] * N[1]
                    + frac[2] * frac[2] * N[2] * N[2])
        # the C takes pi * sqrt(hrad^2 * fudge); x^2 is passed so the series needs no sqrt
        return NaNbNc * 0.723601254558268 * sinc3(math.pi * math.pi * (hrad_sqr * plan.fudge), plan.c_form)
    rs = plan.reciprocal.to(frac[0].dtype)
    d = [frac[0] * rs[0, i] + frac[1] * rs[1, i] + frac[2] * rs[2, i] for i in range(3)]
    rad_star_sqr = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]) * N[0] * N[0] * N[1] * N[1] * N[2] * N[2]
    if plan.shape == "gauss":
        return NaNbNc * torch.exp(-(rad_star_sqr / 0.63 * plan.fudge))
    return NaNbNc * (rad_star_sqr * plan.fudge < 0.3969).to(frac[0].dtype)     # tophat


def miller_indices(q: Vec3, cells: torch.Tensor) -> Vec3:
    """(h, k, l) = (a.q, b.q, c.q); q components broadcast against cells (..., 3, 3) (rows a, b, c)."""
    return tuple(q[0] * cells[..., i, 0] + q[1] * cells[..., i, 1] + q[2] * cells[..., i, 2]
                 for i in range(3))


def structure_factor(hkl: Vec3, hkl0: Vec3, evaluated: torch.Tensor | None, plan: KernelPlan,
                     state: RunState) -> tuple[torch.Tensor, RunState, int | None]:
    """F_cell for every evaluation (arrays in the C's order); tricubic until the run's
    first out-of-range evaluation, nearest-neighbour from it on (SPEC 4.3).

    Returns (F_cell, the state after these evaluations, the chunk-relative pixel where
    interpolation went off or None)."""
    grid = plan.fgrid
    F_nn = nearest_F(grid, hkl0)
    if not (plan.interpolate and state.interpolating):
        return F_nn, state, None
    oor = tricubic_out_of_range(grid, hkl)
    if evaluated is not None:
        oor = oor & evaluated
    F_tri = tricubic_F(grid, hkl).to(F_nn.dtype)
    flat = oor.reshape(-1)
    if not bool(flat.any()):
        return F_tri, state, None
    first = int(torch.nonzero(flat)[0, 0])
    before = (torch.arange(flat.numel(), device=flat.device) < first).reshape(oor.shape)
    h = [float(x.detach().reshape(-1)[first]) for x in hkl]
    h0 = [int(x.reshape(-1)[first]) for x in hkl0]
    warning = ("WARNING: out of range for three point interpolation: h,k,l,h0,k0,l0: "
               f"{h[0]:g},{h[1]:g},{h[2]:g},{h0[0]},{h0[1]},{h0[2]} \n"
               "WARNING: further warnings will not be printed! ")
    pixel = first // (flat.numel() // oor.shape[0])
    return torch.where(before, F_tri, F_nn), replace(state, interpolating=False, warning=warning), pixel


# ----------------------------------------------------------------- per subpixel
def solid_angle(airpath: torch.Tensor, geom: DetectorGeometry, p=None) -> torch.Tensor:
    """Pixel solid angle (SPEC 1.9): px^2/R^2 * close_distance/R, or 1/R^2 for -point_pixel.
    p: (n,) panel of each pixel (several panels: each has its pixel size and distance)."""
    if geom.point_pixel:
        return 1.0 / airpath / airpath
    if p is None:
        px = geom.pixel_size_m
        return px * px / airpath / airpath * geom.close_distance / airpath
    px, close = (v[p].reshape((-1,) + (1,) * (airpath.dim() - 1))
                 for v in (geom.panels.pixel_size_m, geom.panels.close_distance))
    # (float / tensor is reciprocal-then-multiply in torch: the same operations as above)
    return torch.reciprocal(airpath) * (px * px) / airpath * close / airpath


def capture_fraction(d: Vec3, geom: DetectorGeometry, plan: KernelPlan, p=None) -> torch.Tensor:
    """Fraction of photons absorbed in each sensor layer (n, T, O, O) (AT-ABS-001)."""
    odet, step, mu = geom.odet, plan.thickstep, plan.mu
    if p is not None:
        pn = geom.panels
        odet = pn.odet[p].T[:, :, None, None, None]
        step, mu = (v[p][:, None, None, None] for v in (pn.thickstep, pn.mu))
    parallax = d[0] * odet[0] + d[1] * odet[1] + d[2] * odet[2]
    t = torch.arange(plan.odet_offsets.shape[-1], dtype=parallax.dtype,
                     device=parallax.device)[None, :, None, None]
    return (torch.exp(-t * step * mu / parallax)
            - torch.exp(-(t + 1) * step * mu / parallax))


def scattering_vectors(d: Vec3, plan: KernelPlan) -> Vec3:
    """q = (d - i)/lambda (1/m) per (group = pixel x layer x subpixel x source): (n, Gp) each."""
    n = d[0].shape[0]
    inc, lam = plan.incident, plan.wavelength
    return tuple(((d[i].reshape(n, -1, 1) - inc[:, i]) / lam).reshape(n, -1) for i in range(3))


def culled_by_dmin(q: Vec3, plan: KernelPlan) -> torch.Tensor:
    """The C's resolution cut: skip a (subpixel, source) when dmin > 1/(2 stol)."""
    stol = 0.5 * torch.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
    return (stol > 0) & (plan.dmin > 0.5 / torch.where(stol > 0, stol, torch.ones_like(stol)))


@dataclass(frozen=True)
class ChunkResult:
    """One kernel call's result.

    value: (n,) pixel values before float32 rounding; omega_sum: (n,) per pixel, the
    solid angles the C adds to its omega_sum; state: the run state after these pixels;
    interp_off_pixel / first_loop_pixel: the chunk-relative pixel where interpolation
    went off / where c-parity's first phi loop happened (None: not in this chunk);
    record: the intermediates in the C's order (render_pixels(record=True)), else None.
    """
    value: torch.Tensor
    omega_sum: torch.Tensor
    state: RunState = RunState()
    interp_off_pixel: int | None = None
    first_loop_pixel: int | None = None
    record: dict | None = None


def render_pixels(s_idx: torch.Tensor, f_idx: torch.Tensor, plan: KernelPlan,
                  state: RunState = RunState(), record: bool = False,
                  c_order: bool | None = None, layout: tuple | None = None) -> ChunkResult:
    """Pixel values (n,) for pixels (s_idx, f_idx): SPEC 4.1 vectorised.

    The evaluations form an (n, Gs, S, R) array (Gs = T*O*O subpixels and
    layers, S sources, R rotated cells, in the C's order), laid out with its
    longest axis innermost so that the compiled loop vectorises along it.
    state: the run state on reaching these pixels (RunState); the result holds the next.
    record: keep the intermediates, in the C's order, in the result (for -trace_pixel).
    c_order: force the C's (n, Gs, S, R) layout on or off (None: as the state needs;
    run(pixels=) reproduces the layout a pixel had in the full image, which fixes the
    summation order); layout: the axis order without c_order (None: plan.layout, from
    the sizes; a compiled kernel, whose sizes are symbols, is built for one layout).
    """
    geom = plan.geom
    P = pixel_position_components(geom, s_idx, f_idx, plan.oversample, plan.odet_offsets)  # (n, T, O, O)
    panel = None if geom.panels is None else geom.panels.panel_of(s_idx)
    airpath = torch.sqrt(P[0] * P[0] + P[1] * P[1] + P[2] * P[2])
    inv_path = 1.0 / airpath
    d = tuple(x * inv_path for x in P)                                  # diffracted unit vectors
    n, Gs = s_idx.shape[0], airpath[0].numel()
    every_subpixel = record or plan.running_product
    if every_subpixel:
        omega = solid_angle(airpath, geom, panel)
        capture = capture_fraction(d, geom, plan, panel) if plan.thick else torch.ones_like(omega)
    else:
        # the C holds these at one subpixel: omega at the first, capture at the last
        # layer's first (SPEC 4.1); computing only those keeps divisions off the hot loop
        omega = solid_angle(airpath[:, :1, :1, :1], geom, panel)
        capture = (capture_fraction(tuple(x[:, :, :1, :1] for x in d), geom, plan, panel)[:, -1:]
                   if plan.thick else torch.ones_like(omega))
    S, R = plan.incident.shape[0], plan.cells.shape[0]
    Gp = Gs * S
    water_stol = plan.water_molecules is not None and plan.water_table is not None
    q = scattering_vectors(d, plan) if (plan.culling or record or water_stol) else None   # (n, Gp)
    culled = culled_by_dmin(q, plan) if plan.culling else None
    polar = None
    if plan.oversample_polar or not plan.nopolar:
        polar = _polarization(d, plan, all_groups=plan.oversample_polar or culled is not None)

    if c_order is None or record:
        c_order = record or plan.needs_c_order(state)
    order = ("g", "s", "r") if c_order else (layout or plan.layout(False))
    perm = (0,) + tuple(1 + "gsr".index(a) for a in order)
    lay = lambda x: x.permute(perm)  # noqa: E731  (n, Gs, S, R)-shaped views -> chosen layout
    # Miller indices, in float64 whatever the dtype (a float32 h of ~50 carries 4e-6 of
    # rounding, which the sharp lattice transform magnifies), as
    # h = (a.d)/lambda - (a.i)/lambda: per evaluation one multiply-add per index
    cols = plan.cell_columns.reshape(3, 3, 1, 1, 1, R)                # (3, 3, n, Gs, S, R) views
    dg = [x.reshape(n, Gs, 1, 1) for x in d]
    inv_lambda = lay(plan.inv_wavelength.reshape(1, 1, S, 1))
    source_terms = plan.source_terms_rs.transpose(1, 2) if order[-1] == "s" else plan.source_terms
    hkl = tuple(lay(dg[0] * cols[i, 0] + dg[1] * cols[i, 1] + dg[2] * cols[i, 2]) * inv_lambda
                - lay(source_terms[i].reshape(1, 1, S, R)) for i in range(3))
    if c_order:
        hkl = tuple(x.reshape(n, Gp, R) for x in hkl)
    first_loop_pixel = None
    if c_order and plan.cells_first is not None and not state.first_loop_done:
        q = q if q is not None else scattering_vectors(d, plan)
        hkl, first_loop_pixel = _first_phi_loop(hkl, tuple(x[:, :, None] for x in q), culled, plan)
        if first_loop_pixel is not None:
            state = replace(state, first_loop_done=True)
    hkl0 = tuple(torch.ceil(x - 0.5) for x in hkl)
    F_latt = lattice_factor(hkl, tuple((x - x0).to(plan.dtype) for x, x0 in zip(hkl, hkl0)), plan)

    evaluated = None
    if c_order:
        evaluated = torch.ones_like(F_latt, dtype=torch.bool)
        if culled is not None:
            evaluated = evaluated & ~culled[:, :, None]
        if not plan.water:
            evaluated = evaluated & (F_latt != 0)
    F_cell, state, interp_off_pixel = structure_factor(hkl, hkl0, evaluated, plan, state)
    term = F_cell * F_cell * F_latt * F_latt
    group_weight = _group_weight(plan, culled, n, Gs, S, term.dtype)
    if group_weight is not None:
        term = term * (group_weight.reshape(n, Gp, 1) if c_order else lay(group_weight))

    dt = plan.dtype
    omega, capture = omega.to(dt), capture.to(dt)
    polar = polar.to(dt) if polar is not None else None
    water = None
    if plan.water_molecules is not None:        # spec mode: molecules F(stol)^2 w per evaluation
        weight = None if plan.source_weight is None else \
            plan.source_weight.reshape(1, S).expand(Gs, S).reshape(Gp)
        water = (R * water_terms(q, plan.water_table, plan.water_molecules, weight, (n, Gp))).to(dt)
    if plan.running_product and plan.subpixel_factors:
        m = _group_factors(capture, polar, omega, plan, n, Gp)
        if not c_order:         # back to the (n, Gs, S, R) order
            term = term.permute(tuple(perm.index(i) for i in range(4))).reshape(n, Gp, R)
        inner = term.sum(dim=2)
        if water is not None:
            inner = inner + water
        I = plan.I_bg.to(dt) + (inner * m).sum(dim=1)
    elif plan.running_product:
        I = _running_product_sum(term, evaluated, capture, polar, omega, plan)
    else:
        # innermost axis first: one fused loop per reduction (a joint sum makes the
        # compiler materialise the Miller indices for the structure-factor gather)
        total = term
        while total.dim() > 1:
            total = total.sum(dim=-1)
        I = plan.I_bg.to(dt) + total
        if water is not None:
            I = I + water.sum(dim=1)
    value = plan.scale.to(dt) * I / plan.steps
    if not plan.oversample_thick:
        value = value * capture[:, -1, 0, 0]
    held_polar = _held_polar(polar, culled, plan, n)
    if not plan.oversample_polar:
        value = value * held_polar
    if not plan.oversample_omega:
        value = value * omega[:, 0, 0, 0]
        omega_sum = omega[:, 0, 0, 0] * Gs
    else:
        omega_sum = omega.reshape(n, -1).sum(dim=1)
    recorded = None
    if record:
        recorded = dict(P=torch.stack(P, -1), airpath=airpath, d=torch.stack(d, -1), omega=omega,
                        capture=capture, q=torch.stack(q, -1), culled=culled,
                        hkl=torch.stack(hkl, -1), hkl0=torch.stack(hkl0, -1), F_latt=F_latt,
                        F_cell=F_cell, term=term, evaluated=evaluated, polar=polar,
                        held_polar=held_polar, I=I, value=value)
    return ChunkResult(value, omega_sum, state, interp_off_pixel, first_loop_pixel, recorded)


def _polarization(d: Vec3, plan: KernelPlan, all_groups: bool) -> torch.Tensor:
    """Kahn factors (n, Gp) for every (subpixel, source), or (n, 1) for the first one only."""
    n = d[0].shape[0]
    if all_groups:
        dd = torch.stack([x.reshape(n, -1, 1) for x in d], -1)             # (n, T*O*O, 1, 3)
        return polarization_factor(plan.kahn, plan.incident, dd, plan.polar_axis).reshape(n, -1)
    dd = torch.stack([x[:, 0, 0, 0] for x in d], -1)                       # (n, 3)
    first = plan.incident[0] if plan.first_incident is None else plan.first_incident
    return polarization_factor(plan.kahn, first, dd, plan.polar_axis)[:, None]


def _group_weight(plan: KernelPlan, culled, n, Gs, S, dtype):
    """(n, Gs, S, 1) factor per (subpixel, source): source weights (spec mode) and the dmin cut."""
    weight = None
    if plan.source_weight is not None:
        weight = plan.source_weight.to(dtype).reshape(1, 1, S, 1).expand(n, Gs, S, 1)
    if culled is not None:
        keep = (~culled).to(dtype).reshape(n, Gs, S, 1)
        weight = keep if weight is None else weight * keep
    return weight


def _first_phi_loop(hkl: Vec3, qe: Vec3, culled, plan: KernelPlan) -> tuple[Vec3, int | None]:
    """C-PARITY-001: the run's first phi loop (first rendered pixel, layer, subpixel and
    unculled source) starts from the unrotated cell; swap its Miller indices in.
    Returns (hkl, chunk-relative pixel of that loop or None when every group is culled)."""
    n, Gp = qe[0].shape[:2]
    alive = torch.ones((n, Gp), dtype=torch.bool, device=qe[0].device) if culled is None else ~culled
    flat = alive.reshape(-1)
    if not bool(flat.any()):
        return hkl, None
    index = torch.argmax(flat.to(torch.int8))
    first = (torch.arange(flat.numel(), device=flat.device) == index)
    first = first.reshape(n, Gp, 1)
    first_hkl = miller_indices(qe, plan.cells_first)
    return tuple(torch.where(first, a, b) for a, b in zip(first_hkl, hkl)), int(index) // Gp


def _held_polar(polar, culled, plan: KernelPlan, n: int) -> torch.Tensor:
    """The C computes the polarisation factor once per pixel, at its first unculled source."""
    if plan.nopolar and not plan.oversample_polar:
        return torch.ones((), dtype=plan.dtype, device=plan.I_bg.device)
    if culled is None:
        return polar[:, 0]
    alive = ~culled
    first = torch.argmax(alive.to(torch.int8), dim=1)
    held = polar.gather(1, first[:, None])[:, 0]
    return torch.where(alive.any(dim=1), held, torch.zeros_like(held))


def _group_factors(capture, polar, omega, plan: KernelPlan, n: int, Gp: int) -> torch.Tensor:
    """(n, Gp) product of the -oversample_thick/_polar/_omega factors of every group."""
    S = Gp // capture[0].numel()
    m = torch.ones((n, Gp), dtype=omega.dtype, device=omega.device)
    if plan.oversample_thick:
        m = m * capture.reshape(n, -1, 1).expand(-1, -1, S).reshape(n, Gp)
    if plan.oversample_polar:
        m = m * polar
    if plan.oversample_omega:
        m = m * omega.reshape(n, -1, 1).expand(-1, -1, S).reshape(n, Gp)
    return m


def _running_product_sum(term, evaluated, capture, polar, omega, plan: KernelPlan) -> torch.Tensor:
    """I with -oversample_thick/_polar/_omega: the C multiplies the whole running sum
    (background included) by the factors after every evaluation (SPEC 4.1).

    Arrays in the C's order: term and evaluated (n, Gp, R). Within a group g =
    (layer, subpixel, source) every kept evaluation j does I = (I + T_j) m_g;
    across groups the earlier sum keeps being multiplied.
    """
    n, Gp, _ = term.shape
    m = _group_factors(capture, polar, omega, plan, n, Gp).to(term.dtype)
    kept = evaluated.to(term.dtype)                                     # (n, Gp, R)
    after = torch.flip(torch.cumsum(torch.flip(kept, [2]), 2), [2])     # kept evaluations from j on
    inner = (kept * term * torch.pow(m[..., None], after)).sum(dim=2)   # (n, Gp)
    group = torch.pow(m, after[..., 0])                                 # m_g^{n_g}
    suffix = torch.flip(torch.cumprod(torch.flip(group, [1]), 1), [1])  # prod over g' >= g
    later = torch.cat((suffix[:, 1:], torch.ones_like(suffix[:, :1])), dim=1)
    return plan.I_bg.to(term.dtype) * suffix[:, 0] + (inner * later).sum(dim=1)
