"""Structure factors F(hkl): nearest-neighbour and tricubic lookups (SPEC 4.3).

The C's grid is F[h - h_min, k - k_min, l - l_min] with one zero padding slab
per axis; lookups outside [min, max] (or with no entries at all) give
default_F. Both lookups read the config's grid itself (no framed copy), so a
run holds one grid however large the index ranges are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .vec import as_tensor, value

Vec3 = tuple


@dataclass
class FGrid:
    """Structure factors on the device.

    F: (H+1, K+1, L+1) the C's grid (None when there are no entries), the config's own
    array where dtype and device allow (float64 on the CPU: no copy, so a run holds one
    grid); mins/maxs: index ranges; default_F: () tensor.
    """
    F: torch.Tensor | None
    mins: tuple
    maxs: tuple
    hkls: int
    default_F: torch.Tensor

    @classmethod
    def from_config(cls, hkl, default_F, dtype, device) -> "FGrid":
        dF = as_tensor(default_F, dtype, device)
        if hkl is None or hkl.hkls == 0:
            return cls(None, (0, 0, 0), (-1, -1, -1), 0, dF)
        F = as_tensor(hkl.F, dtype, device)
        mins = (hkl.h_min, hkl.k_min, hkl.l_min)
        maxs = (hkl.h_max, hkl.k_max, hkl.l_max)
        return cls(F, mins, maxs, hkl.hkls, dF)


def nearest_F(grid: FGrid, hkl0: Vec3) -> torch.Tensor:
    """F at the nearest lattice point; hkl0 = (h0, k0, l0) integer-valued float tensors.

    The C's rule: the grid value if min <= h0 <= max on every axis, else default_F
    (indices are clamped into the grid for the gather, then masked).
    """
    if grid.F is None:
        return grid.default_F.expand(hkl0[0].shape)
    shape = grid.F.shape
    flat = inside = None
    for axis in range(3):
        d = hkl0[axis] - grid.mins[axis]
        ok = (d >= 0) & (d <= grid.maxs[axis] - grid.mins[axis])
        i = torch.clamp(d, 0, shape[axis] - 1).to(torch.int64)
        flat = i if flat is None else flat * shape[axis] + i
        inside = ok if inside is None else inside & ok
    return torch.where(inside, grid.F.reshape(-1)[flat], grid.default_F)


def tricubic_out_of_range(grid: FGrid, hkl: Vec3) -> torch.Tensor:
    """The C's test for a complete 4x4x4 neighbourhood, on the fractional h, k, l."""
    out = torch.zeros(hkl[0].shape, dtype=torch.bool, device=hkl[0].device)
    for axis in range(3):
        x = hkl[axis]
        rng = grid.maxs[axis] - grid.mins[axis] + 1
        out |= ((x - grid.mins[axis] + 3) > rng) | ((x - 2) < grid.mins[axis])
    return out


def _polint(xa: torch.Tensor, ya: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """4-point Lagrange polynomial at x, in the C's polint operation order.

    xa (..., 4) nodes, ya (..., 4) values, x (...).
    """
    x0, x1, x2, x3 = (xa[..., i] for i in range(4))
    y0, y1, y2, y3 = (ya[..., i] for i in range(4))
    t0 = (x - x1) * (x - x2) * (x - x3) * y0 / ((x0 - x1) * (x0 - x2) * (x0 - x3))
    t1 = (x - x0) * (x - x2) * (x - x3) * y1 / ((x1 - x0) * (x1 - x2) * (x1 - x3))
    t2 = (x - x0) * (x - x1) * (x - x3) * y2 / ((x2 - x0) * (x2 - x1) * (x2 - x3))
    t3 = (x - x0) * (x - x1) * (x - x2) * y3 / ((x3 - x0) * (x3 - x1) * (x3 - x2))
    return t0 + t1 + t2 + t3


def tricubic_F(grid: FGrid, hkl: Vec3) -> torch.Tensor:
    """Tricubic (tensor-product Lagrange) interpolation of F at fractional h, k, l.

    Only valid where tricubic_out_of_range is False; other entries are
    computed on clamped indices and must be replaced by the caller.
    Order as the C's polin3: along l for each (h, k) node, then k, then h.
    """
    hkl = torch.stack(hkl, -1)
    base = torch.floor(hkl)                        # (..., 3)
    offs = torch.arange(-1, 3, dtype=hkl.dtype, device=hkl.device)
    nodes = base[..., :, None] + offs               # (..., 3, 4) node indices per axis
    idx = nodes.to(torch.long)
    shape = grid.F.shape
    ih = (idx[..., 0, :] - grid.mins[0]).clamp(0, shape[0] - 1)
    ik = (idx[..., 1, :] - grid.mins[1]).clamp(0, shape[1] - 1)
    il = (idx[..., 2, :] - grid.mins[2]).clamp(0, shape[2] - 1)
    flat = (ih[..., :, None, None] * shape[1] + ik[..., None, :, None]) * shape[2] + il[..., None, None, :]
    cube = grid.F.reshape(-1)[flat]                 # (..., 4, 4, 4)
    h, k, l = hkl[..., 0], hkl[..., 1], hkl[..., 2]
    along_l = _polint(nodes[..., None, None, 2, :], cube, l[..., None, None])   # (..., 4, 4)
    along_k = _polint(nodes[..., None, 1, :], along_l, k[..., None])            # (..., 4)
    return _polint(nodes[..., 0, :], along_k, h)


def interpolation_on(cfg) -> bool:
    """SPEC 4.3: tricubic interpolation of F (-interpolate, or auto when any N <= 2)."""
    interp = cfg.crystal.interpolate
    if interp is None:
        # the C decides on the N values as parsed, before -xtalsize and the clamp to 1
        interp = any(value(n) <= 2 for n in cfg.crystal.n_cells)
    hkl = cfg.crystal.hkl
    return bool(interp) and hkl is not None and hkl.hkls != 0
