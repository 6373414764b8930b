"""What an image file records about how the image was made: a plain, frozen description.

The CBF, NeXus and PNG writers take images (numpy arrays) and an `Experiment`:
wavelength, detector basis and first-pixel position, beam, goniometer, scan,
sensor and mask, as plain Python values in SI units and in nanoBragg's lab
frame (the frame the kernel works in). The writers convert to their own
frames (imgCIF for miniCBF, McStas for NeXus); see `lab_to_mcstas`.

`from_image(image)` builds one from the vectors the kernel used
(`image.setup`); `from_config(cfg)` from a config before any run (to check
that an output format can describe the geometry before anything is written).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

Vec3 = Tuple[float, float, float]


@dataclass(frozen=True)
class Experiment:
    """One detector (one panel) and the images of a scan, in nanoBragg's lab frame.

    Lengths in metres, angles in degrees, vectors as 3-tuples of floats.

    wavelength_A: the nominal (central) wavelength (Angstrom).
    fpixels, spixels: pixels along the fast and slow axes; images are (spixels, fpixels)
        or stacks (n_images, spixels, fpixels).
    pixel_size_m: square pixels.
    fdet, sdet, odet: unit fast axis, slow axis and detector normal.
    pix0_m: the outer corner of the first pixel (the kernel's pix0): pixel (s, f) has
        its centre at pix0 + (f + 1/2) px fdet + (s + 1/2) px sdet.
    beam_dir: unit propagation direction of the incident beam (sample at the origin).
    polar_vector: unit E-vector axis; polarization_K: Kahn factor (0: unpolarised);
        polarization_applied: False for -nopolar.
    fluence_ph_m2 (photons/m^2 per image), flux_ph_s, exposure_s, beamsize_m.
    sensor_thickness_m: simulated sensor thickness (0: an ideal thin sensor);
        sensor_mu_per_m: its attenuation coefficient; sensor_material: what readers
        should assume (nanoBragg does not model the material, only mu).
    spindle_axis: unit rotation axis (right-handed); phi_start_deg, phi_width_deg: one
        value per image (width 0: a still).
    saturation: the largest count a pixel may hold (counts are clipped to it).
    mask: (spixels, fpixels) bool, True where the pixel holds simulated data (inside the
        ROI and the -mask); None: every pixel.
    curved: a -curved_det detector (no file format here can describe it).
    """
    wavelength_A: float
    fpixels: int
    spixels: int
    pixel_size_m: float
    fdet: Vec3
    sdet: Vec3
    odet: Vec3
    pix0_m: Vec3
    beam_dir: Vec3 = (1.0, 0.0, 0.0)
    polar_vector: Vec3 = (0.0, 0.0, 1.0)
    polarization_K: float = 0.0
    polarization_applied: bool = True
    fluence_ph_m2: float = 0.0
    flux_ph_s: float = 0.0
    exposure_s: float = 1.0
    beamsize_m: float = 0.0
    sensor_thickness_m: float = 0.0
    sensor_mu_per_m: float = 0.0
    sensor_material: str = "Si"
    spindle_axis: Vec3 = (0.0, 0.0, 1.0)
    phi_start_deg: Tuple[float, ...] = (0.0,)
    phi_width_deg: Tuple[float, ...] = (0.0,)
    saturation: int = 65535
    mask: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    curved: bool = False
    convention: str = "MOSFLM"

    def __post_init__(self):
        if len(self.phi_start_deg) != len(self.phi_width_deg):
            raise ValueError(f"phi_start_deg has {len(self.phi_start_deg)} values but "
                             f"phi_width_deg has {len(self.phi_width_deg)}")
        if self.mask is not None and tuple(self.mask.shape) != (self.spixels, self.fpixels):
            raise ValueError(f"mask shape {tuple(self.mask.shape)} does not match the "
                             f"detector ({self.spixels}, {self.fpixels})")

    @property
    def n_images(self) -> int:
        return len(self.phi_start_deg)

    @property
    def is_oscillation(self) -> bool:
        return any(w != 0.0 for w in self.phi_width_deg)

    @property
    def close_distance_m(self) -> float:
        """Distance from the sample to the detector plane along its normal (pix0 . odet)."""
        return _dot(self.pix0_m, self.odet)

    @property
    def distance_m(self) -> Optional[float]:
        """Distance from the sample to the detector plane along the beam (None: the beam
        runs parallel to the plane)."""
        cos = _dot(self.beam_dir, self.odet)
        return None if abs(cos) < 1e-12 else self.close_distance_m / cos

    @property
    def beam_center_m(self) -> Optional[Tuple[float, float]]:
        """Where the beam meets the detector plane, along fast and slow from pix0 (m);
        None when it runs parallel to the plane."""
        t = self.distance_m
        if t is None:
            return None
        r = [t * b - p for b, p in zip(self.beam_dir, self.pix0_m)]
        return _dot(r, self.fdet), _dot(r, self.sdet)

    def counts(self, image) -> np.ndarray:
        """Pixel values as detector counts: int32 (..., S, F), rounded to the nearest
        integer and clipped to 0..saturation; NaN counts as 0."""
        arr = np.asarray(image, dtype=np.float64)
        if arr.shape[-2:] != (self.spixels, self.fpixels):
            raise ValueError(f"image shape {arr.shape} does not match the detector "
                             f"({self.spixels}, {self.fpixels})")
        arr = np.nan_to_num(arr, nan=0.0, posinf=self.saturation, neginf=0.0)
        return np.clip(np.rint(arr), 0, self.saturation).astype(np.int32)


def _dot(a, b) -> float:
    return float(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(v):
    n = math.sqrt(_dot(v, v))
    return None if n == 0.0 else tuple(x / n for x in v)


def lab_to_mcstas(exp: Experiment) -> np.ndarray:
    """The rotation R (3, 3) taking nanoBragg lab vectors to the NeXus McStas frame: v_mc = R @ v.

    McStas z is the beam direction. x is minus the spindle axis (made perpendicular to
    the beam), so that imgCIF (= diag(-1, 1, -1) McStas, the frame of DIALS) has the
    spindle along +x: for the MOSFLM convention imgCIF coordinates are (z, y, -x), the
    C's DIALS_ORIGIN. Without a usable spindle (along the beam) the E-vector axis, then
    any perpendicular, takes its place. A proper rotation: lengths and angles are kept.
    """
    z = _unit(exp.beam_dir)
    if z is None:
        raise ValueError("beam_dir is the zero vector")
    for cand in (exp.spindle_axis, exp.polar_vector, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)):
        perp = tuple(c - _dot(cand, z) * zz for c, zz in zip(cand, z))
        u = _unit(perp)
        if u is not None and math.sqrt(_dot(perp, perp)) > 1e-6:
            break
    x = tuple(-c for c in u)
    y = _cross(z, x)
    return np.array([x, y, z], dtype=np.float64)


# ----------------------------------------------------------------------------- adapters

def from_geometry(geom, cfg, phi, *, thickness_m: float = 0.0, mu_per_m: float = 0.0,
                  mask: Optional[np.ndarray] = None) -> Experiment:
    """An Experiment from a detector.DetectorGeometry, the config and a crystal.PhiPlan."""
    f = lambda t: float(t)  # noqa: E731
    v3 = lambda t: tuple(float(x) for x in t)  # noqa: E731
    bm = cfg.beam
    phi0 = math.degrees(f(phi.phi0_rad))
    osc = math.degrees(f(phi.osc_rad)) if f(phi.osc_rad) > 0 else 0.0
    return Experiment(
        wavelength_A=f(bm.wavelength_A), fpixels=int(geom.fpixels), spixels=int(geom.spixels),
        pixel_size_m=float(geom.pixel_size_m), fdet=v3(geom.fdet), sdet=v3(geom.sdet),
        odet=v3(geom.odet), pix0_m=v3(geom.pix0), beam_dir=v3(geom.beam),
        polar_vector=v3(geom.vectors.polar), polarization_K=f(bm.polarization),
        polarization_applied=not bm.nopolar, fluence_ph_m2=f(bm.fluence), flux_ph_s=f(bm.flux),
        exposure_s=f(bm.exposure_s), beamsize_m=max(f(bm.beamsize_mm), 0.0) / 1000.0,
        sensor_thickness_m=max(f(thickness_m), 0.0), sensor_mu_per_m=max(f(mu_per_m), 0.0),
        spindle_axis=v3(geom.vectors.spindle), phi_start_deg=(phi0,), phi_width_deg=(osc,),
        mask=mask, curved=bool(geom.curved), convention=str(geom.convention))


def from_image(image) -> Experiment:
    """The Experiment of a rendered Image, from the vectors the kernel used."""
    setup = image.setup
    thick = float(setup.thick_m)
    rendered = image.rendered_mask
    return from_geometry(setup.geom, image.config, setup.phi, thickness_m=thick,
                         mu_per_m=float(setup.mu) if thick > 0 else 0.0,
                         mask=None if rendered.all() else rendered)


def from_config(cfg, mode: Optional[str] = None) -> Experiment:
    """The Experiment a run of cfg will have (geometry computed in float64 on the CPU).

    For checks before a run; after one, prefer from_image (the kernel's own values).
    """
    import torch

    from nanobrag_torch.crystal import phi_plan
    from nanobrag_torch.detector import detector_geometry
    with torch.no_grad():
        geom = detector_geometry(cfg, mode or cfg.mode, torch.float64, "cpu")
    det = cfg.detector
    thick = float(det.thickness_um) * 1e-6
    mu = det.mu_per_m if det.mu_per_m is not None else (1.0 / thick if thick > 0 else 0.0)
    rendered = np.ones((geom.spixels, geom.fpixels), dtype=bool)
    if det.mask is not None:
        rendered &= np.asarray(det.mask) != 0
    if det.roi is not None:
        xmin, xmax, ymin, ymax = det.roi
        inside = np.zeros_like(rendered)
        inside[ymin:ymax + 1, xmin:xmax + 1] = True
        rendered &= inside
    return from_geometry(geom, cfg, phi_plan(cfg), thickness_m=thick, mu_per_m=mu,
                         mask=None if rendered.all() else rendered)
