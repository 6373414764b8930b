"""The highest resolution a detector records: where F from an atomic model must reach.

d_min = 1 / max |s| over the detector, s = (unit(P) - i) / lambda for pixel points P
and every incident direction i and wavelength lambda of the beam (divergence,
dispersion, -sourcefile). A spot centred just beyond the edge still lights the
edge pixels, so `plus_spot_width` extends |s| by one spot width 1/(N a) of the
broadest lattice direction (at most doubling it).
"""
from __future__ import annotations

import math

import torch

from .config import SimConfig

_EDGE_POINTS = 65      # points along each detector edge (and across it, for tilted geometries)


def detector_dmin_A(cfg: SimConfig, mode: str = "spec") -> float:
    """The smallest d spacing (Angstrom) scattered onto the detector by any source."""
    from . import beam as beam_mod
    from .detector import curve, detector_geometry
    with torch.no_grad():
        geom = detector_geometry(cfg, mode, torch.float64, "cpu")
        vec = geom.vectors
        sources = beam_mod.make_sources(cfg, vec.beam, vec.polar, vec.vert, mode,
                                        torch.float64, "cpu")
        px = geom.pixel_size_m
        f = torch.linspace(0.0, geom.fpixels * px, _EDGE_POINTS, dtype=torch.float64)
        s = torch.linspace(0.0, geom.spixels * px, _EDGE_POINTS, dtype=torch.float64)
        F, S = torch.meshgrid(f, s, indexing="ij")
        P = geom.pix0 + F[..., None] * geom.fdet + S[..., None] * geom.sdet      # (n, n, 3) m
        if geom.curved:
            P = curve(P, geom)
        u = (P / P.norm(dim=-1, keepdim=True)).reshape(-1, 1, 3)
        inc = sources.incident.reshape(1, -1, 3)
        lam = sources.wavelength.reshape(1, -1)
        s_max = float(((u - inc).norm(dim=-1) / lam).max()) * 1e-10     # 1/A
    return math.inf if s_max <= 0 else 1.0 / s_max


def plus_spot_width(dmin_A: float, cell, n_cells) -> float:
    """dmin_A extended by one spot width 1/(N a) of the broadest lattice direction (at most
    doubling |s|): cell a b c (A) ..., n_cells (3,) as parsed (values below 1 count as 1)."""
    s_edge = 1.0 / dmin_A
    width = 1.0 / min(float(a) * max(1.0, float(n)) for a, n in zip(cell[:3], n_cells))
    return 1.0 / (s_edge + min(width, s_edge))
