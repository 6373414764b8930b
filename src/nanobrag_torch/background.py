"""Background scattering added to every evaluation (SPEC 5).

nanoBragg.c's -water: a constant-F (2.57) sphere of water of the given size,
I_bg = F_bg^2 r_e^2 fluence (molecules in the beam), added to the running sum of
every evaluation before the r_e^2 fluence / steps scale (AT-BKG-001).
"""
from __future__ import annotations

import torch

from .units import AVOGADRO, R_E_SQR, WATER_F, WATER_MW
from .vec import as_tensor


def water_intensity(water_um, fluence, dtype, device) -> torch.Tensor:
    """The C's I_bg (per evaluation, before the kernel's scale) for water_um of water."""
    fluence = as_tensor(fluence, dtype, device)
    water_m = as_tensor(water_um, dtype, device) / 1e6
    return WATER_F * WATER_F * R_E_SQR * fluence * water_m * water_m * water_m * 1e6 * AVOGADRO / WATER_MW
