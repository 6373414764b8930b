"""Background scattering added to every evaluation (SPEC 5).

nanoBragg.c's -water (c-parity mode): a constant-F (2.57) sphere of water of the
given size, I_bg = F_bg^2 r_e^2 fluence (molecules in the beam), added to the
running sum of every pixel before the r_e^2 fluence / steps scale (AT-BKG-001),
so r_e^2 fluence appears twice and the background falls as 1/steps.

Spec mode (docs/modes.md row 16) gives it the physics of nonBragg.c
(amorphous.py): every evaluation (layer, sub-pixel, source, rotated cell) adds
molecules * sign(F) F(stol)^2 * w to the pixel's sum, F from the -stol/-4stol/-Q
table when one is given (else the constant 2.57), w the source weight, so that
after the kernel's r_e^2 fluence / steps and its solid-angle, polarisation and
capture factors a pixel holds r_e^2 fluence N <F^2> omega polar (capture): the
same expression nonbragg-torch renders, independent of the step count.

-amorphous layers (`amorphous_photons`): each layer (water, air, ...) is
nonBragg's sample rendered by amorphous.render_amorphous on the run's own
detector, sources, polarisation and oversampling, and added to the image: the
numbers nonbragg-torch gives for the same geometry and layer (modes.md row 18:
c-parity sums as nonBragg.c and keeps its signed solid angle).
"""
from __future__ import annotations

import torch

from .amorphous import amorphous_terms, interpolate_F, molecules_in_sample, render_amorphous, stol_table
from .units import AVOGADRO, R_E_SQR, WATER_F, WATER_MW
from .vec import as_tensor, value


def water_intensity(water_um, fluence, dtype, device) -> torch.Tensor:
    """The C's I_bg (per pixel, before the kernel's scale) for water_um of water."""
    fluence = as_tensor(fluence, dtype, device)
    water_m = as_tensor(water_um, dtype, device) / 1e6
    return WATER_F * WATER_F * R_E_SQR * fluence * water_m * water_m * water_m * 1e6 * AVOGADRO / WATER_MW


def water_molecules(water_um, dtype, device) -> torch.Tensor:
    """Molecules in a water cube of side water_um (density 1 g/cm^3, MW 18), as nonBragg counts them."""
    w = as_tensor(water_um, dtype, device) / 1e6
    return molecules_in_sample(w, w, w, 1.0, WATER_MW)[0]


def water_terms(q, table, molecules, weight, n_groups_shape) -> torch.Tensor:
    """Spec mode's water term per (pixel, group = layer x sub-pixel x source), (n, Gp) float64:
    molecules * sign(F) F^2 * w, F = F(|q|/2) from table (a StolTable) or the constant 2.57.

    q: (qx, qy, qz) scattering vectors (1/m), (n, Gp) each, or None without a table;
    weight: (Gp,) per group or None; n_groups_shape: (n, Gp).
    """
    if table is None:
        F = torch.full(n_groups_shape, WATER_F, dtype=torch.float64, device=molecules.device)
    else:
        stol = 0.5 * torch.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        F = interpolate_F(table, stol.to(torch.float64))
    return amorphous_terms(F, molecules.to(torch.float64), None,
                           None if weight is None else weight.to(torch.float64))


def layer_molecules(layer, beamsize_mm, dtype=torch.float64, device="cpu"):
    """Molecules of an -amorphous layer (config.AmorphousLayer) in the beam, as nonBragg counts
    them: thickness x width x height (m; width and height clipped by a beam size >= 0) x density
    x N_A / MW. Differentiable in the layer's values."""
    t = lambda v: as_tensor(v, dtype, device)  # noqa: E731
    beam_m = float(value(beamsize_mm)) / 1000.0
    return molecules_in_sample(t(layer.thickness_mm) / 1000.0, t(layer.width_mm) / 1000.0,
                               t(layer.height_mm) / 1000.0, t(layer.density_g_cm3), t(layer.molecular_weight),
                               None, beam_m if beam_m >= 0 else None)[0]


def amorphous_photons(cfg, setup, mode):
    """The photons (S, F) float64 of cfg.background.amorphous's layers on setup's detector and
    sources (None without layers): the sum over layers of nonBragg's image of that layer."""
    layers = cfg.background.amorphous
    if not layers:
        return None
    geom = setup.geom
    dev = geom.pix0.device
    g64 = torch.float64
    fluence = as_tensor(setup.fluence, g64, dev)
    total = None
    for layer in layers:             # a handful of layers, each one vectorised over pixels
        table = stol_table(layer.stol_table, layer.stol_mult, device=dev)
        molecules = layer_molecules(layer, cfg.beam.beamsize_mm, g64, dev)
        px = render_amorphous(geom, setup.sources, table, molecules=molecules, fluence=fluence,
                              kahn=as_tensor(cfg.beam.polarization, g64, dev), polar_axis=geom.vectors.polar,
                              nopolar=cfg.beam.nopolar, oversample=setup.oversample,
                              sequential=not mode.suite_spec_stages, abs_close=mode.suite_spec_stages)
        total = px.photons if total is None else total + px.photons
    return total
