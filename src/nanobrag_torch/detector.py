"""Detector geometry: conventions, pivots, rotations, pix0 and pixel positions (SPEC 1).

All lengths in metres, lab frame. `detector_geometry` turns the user's
settings into the basis (fdet, sdet, odet), the first pixel's outer corner
pix0 and the beam-centre quantities the image header reports, following the
C's order of evaluation step by step (SPEC 1.4-1.8).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .beam import step_plan
from .config import SimConfig
from .modes import Mode, get_mode
from .errors import ConfigError
from .units import deg_to_rad
from .vec import as_tensor, cross, dot, rotate_axis, rotate_xyz, unitize

# Initial vectors per convention: beam, fdet, sdet, odet, twotheta axis, polar, spindle (SPEC 1.4)
CONVENTIONS = {
    "MOSFLM": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "DENZO": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "ADXV": ((0, 0, 1), (1, 0, 0), (0, -1, 0), (0, 0, 1), (-1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "XDS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "DIALS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0)),
    # the C's initial values, kept in CUSTOM where the user gave no vector
    "CUSTOM": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 1)),
}
CONVENTION_PIVOT = {"MOSFLM": "BEAM", "DENZO": "BEAM", "ADXV": "BEAM", "XDS": "SAMPLE", "DIALS": "SAMPLE"}


@dataclass
class LabVectors:
    """Unit vectors after the convention step (before detector rotations)."""
    beam: torch.Tensor        # (3,) propagation direction b
    fdet: torch.Tensor
    sdet: torch.Tensor
    odet: torch.Tensor
    twotheta_axis: torch.Tensor   # not normalised (C quirk, SPEC 1.3)
    polar: torch.Tensor       # E-vector axis p
    spindle: torch.Tensor     # phi axis u
    vert: torch.Tensor        # unit(b x p)
    odet_regenerated: bool    # the C's "auto-generating odet_vector" warning


@dataclass
class DetectorGeometry:
    """The detector after §1.6; tensors are (3,) or scalars, metres."""
    convention: str
    pivot: str
    fpixels: int
    spixels: int
    pixel_size_m: float
    detsize_f_m: float
    detsize_s_m: float
    pix0: torch.Tensor
    fdet: torch.Tensor
    sdet: torch.Tensor
    odet: torch.Tensor
    beam: torch.Tensor
    distance: torch.Tensor        # close_distance / ratio (header DISTANCE, curved detector radius)
    close_distance: torch.Tensor  # pix0 . odet (solid angle)
    Fbeam: torch.Tensor
    Sbeam: torch.Tensor
    Fclose: torch.Tensor
    Sclose: torch.Tensor
    Xbeam: torch.Tensor           # header BEAM_CENTER_X/Y (m)
    Ybeam: torch.Tensor
    Xclose: torch.Tensor
    Yclose: torch.Tensor
    orgx: torch.Tensor
    orgy: torch.Tensor
    dials_origin_mm: torch.Tensor
    twotheta_rad: torch.Tensor
    twotheta_axis: torch.Tensor
    curved: bool
    point_pixel: bool
    vectors: LabVectors
    panels: "PanelStack | None" = None   # a detector of several panels (see detector_panels)


@dataclass
class PanelStack:
    """P panels as rows of one tall detector: the stacked pixel row s_idx = p * spixels + s.

    fdet, sdet, odet, pix0: (P, 3) lab frame (m); pixel_size_m, close_distance (pix0 . odet),
    thickstep (sensor layer, m) and mu (1/m): (P,); spixels, fpixels: rows and columns of
    every panel's block (the largest panel's; smaller panels leave pixels unrendered).
    """
    fdet: torch.Tensor
    sdet: torch.Tensor
    odet: torch.Tensor
    pix0: torch.Tensor
    pixel_size_m: torch.Tensor
    close_distance: torch.Tensor
    thickstep: torch.Tensor
    mu: torch.Tensor
    spixels: int
    fpixels: int

    @property
    def count(self) -> int:
        return self.fdet.shape[0]

    def panel_of(self, s_idx: torch.Tensor) -> torch.Tensor:
        return torch.div(s_idx, self.spixels, rounding_mode="floor")


def _vector(user, default, dtype, device):
    return as_tensor(user if user is not None else default, dtype, device)


def lab_vectors(cfg: SimConfig, dtype, device) -> LabVectors:
    """Convention step (SPEC 1.4, 1.8): a named convention overwrites all seven vectors."""
    conv = cfg.detector.convention
    table = CONVENTIONS[conv]
    if conv == "CUSTOM":
        user = (cfg.beam.beam_vector, cfg.detector.fdet_vector, cfg.detector.sdet_vector,
                cfg.detector.odet_vector, cfg.detector.twotheta_axis, cfg.beam.polar_vector,
                cfg.crystal.spindle_axis)
    else:
        user = (None,) * 7
    beam, fdet, sdet, odet, axis, polar, spindle = (
        _vector(u, d, dtype, device) for u, d in zip(user, table))
    beam = unitize(beam)[0]
    fdet = unitize(fdet)[0]
    sdet = unitize(sdet)[0]
    odet_unit = unitize(odet)[0]
    # the C regenerates odet when the given vector is not exactly unit length
    o = [float(x) for x in (user[3] if user[3] is not None else table[3])]
    regenerate = math.sqrt(o[0] * o[0] + o[1] * o[1] + o[2] * o[2]) != 1.0
    if regenerate:
        odet_unit = unitize(cross(fdet, sdet))[0]
    polar = unitize(polar)[0]
    spindle = unitize(spindle)[0]
    vert = unitize(cross(beam, polar))[0]
    return LabVectors(beam, fdet, sdet, odet_unit, axis, polar, spindle, vert, regenerate)


def choose_pivot(cfg: SimConfig, mode: Mode | str) -> str:
    """SPEC 1.7: a named convention forces its pivot; spec mode honours an explicit -pivot."""
    mode = get_mode(mode)
    det = cfg.detector
    if mode.explicit_pivot and det.pivot is not None:
        return det.pivot.upper()
    if det.convention in CONVENTION_PIVOT:
        return CONVENTION_PIVOT[det.convention]
    running = det.pivot_from_flags
    if not mode.argv_as_given and cfg.c_quirks.pivot_from_flags is not None:
        running = cfg.c_quirks.pivot_from_flags
    return running.upper()


def twotheta_deg(cfg: SimConfig, mode: Mode):
    mode = get_mode(mode)
    if not mode.argv_as_given and cfg.c_quirks.twotheta_deg is not None:
        return cfg.c_quirks.twotheta_deg
    return cfg.detector.twotheta_deg


def _mm(x, dtype, device):
    return as_tensor(x, dtype, device) / 1000.0


def detector_geometry(cfg: SimConfig, mode: Mode, dtype, device) -> DetectorGeometry:
    """SPEC 1.4-1.6 in the C's order: beam centres, convention, pivot, rotations, pix0."""
    mode = get_mode(mode)
    det = cfg.detector
    px = det.pixel_size_mm / 1000.0
    fpixels, spixels = det.fpixels, det.spixels
    if fpixels <= 0 or spixels <= 0:
        raise ConfigError(f"detector has {fpixels}x{spixels} pixels: need at least one in each direction")
    detsize_f = det.detsize_f_mm / 1000.0
    detsize_s = det.detsize_s_mm / 1000.0
    t = lambda x: as_tensor(x, dtype, device)  # noqa: E731

    # 1-2: near point and its header defaults
    orgx, orgy = det.org_px
    Fclose = (t(orgx) - 0.5) * px if orgx is not None else t(detsize_f / 2.0)
    Sclose = (t(orgy) - 0.5) * px if orgy is not None else t(detsize_s / 2.0)
    Xclose = _mm(det.close_center_mm[0], dtype, device) if det.close_center_mm[0] is not None else Fclose
    Yclose = _mm(det.close_center_mm[1], dtype, device) if det.close_center_mm[1] is not None else Sclose

    # 3: header beam centre and the direct-beam position per convention
    conv = det.convention
    bc = det.beam_center_mm
    if isinstance(bc, torch.Tensor):
        Xbeam, Ybeam = _mm(bc[0], dtype, device), _mm(bc[1], dtype, device)
    else:
        Xbeam = _mm(bc[0], dtype, device) if bc[0] is not None else None
        Ybeam = _mm(bc[1], dtype, device) if bc[1] is not None else None
    if conv in ("MOSFLM", "DENZO"):
        Xbeam = Xbeam if Xbeam is not None else t((detsize_s + px) / 2.0)
        Ybeam = Ybeam if Ybeam is not None else t((detsize_f + px) / 2.0)
        shift = 0.5 * px if conv == "MOSFLM" else 0.0
        Fbeam, Sbeam = Ybeam + shift, Xbeam + shift
    elif conv == "ADXV":
        Xbeam = Xbeam if Xbeam is not None else t((detsize_f + px) / 2.0)
        Ybeam = Ybeam if Ybeam is not None else t((detsize_s - px) / 2.0)
        Fbeam, Sbeam = Xbeam, detsize_s - Ybeam
    else:   # XDS, DIALS, CUSTOM
        Xbeam = Xbeam if Xbeam is not None else Xclose
        Ybeam = Ybeam if Ybeam is not None else Yclose
        Fbeam, Sbeam = Xbeam, Ybeam
        if conv == "CUSTOM":
            Fclose, Sclose = Xbeam, Ybeam

    vec = lab_vectors(cfg, dtype, device)
    pivot = choose_pivot(cfg, mode)
    rot = as_tensor(det.rotation_deg, dtype, device)
    rotx, roty, rotz = deg_to_rad(rot[0]), deg_to_rad(rot[1]), deg_to_rad(rot[2])
    twotheta = deg_to_rad(t(twotheta_deg(cfg, mode)))
    axis = vec.twotheta_axis
    beam = vec.beam

    distance = _mm(det.distance_mm if det.distance_mm is not None else 100.0, dtype, device)
    close = _mm(det.close_distance_mm, dtype, device) if det.close_distance_mm is not None else None
    pix0, fdet, sdet, odet, ratio = place_detector(
        (vec.fdet, vec.sdet, vec.odet), beam, (rotx, roty, rotz), axis, twotheta, pivot,
        (Fclose, Sclose), (Fbeam, Sbeam), distance, close)
    if mode.pix0_vector and det.pix0_vector_m is not None:
        # spec mode places the first pixel where the user said (the C ignores the value)
        pix0 = as_tensor(det.pix0_vector_m, dtype, device)

    # 6-9: derived quantities reported in headers
    Fclose = -dot(pix0, fdet)
    Sclose = -dot(pix0, sdet)
    close_distance = dot(pix0, odet)
    R = (close_distance / ratio) * beam - pix0
    Fbeam = dot(fdet, R)
    Sbeam = dot(sdet, R)
    distance = close_distance / ratio
    if mode.pix0_vector and det.pix0_vector_m is not None:
        Xbeam, Ybeam = _header_centre_from_beam(conv, Fbeam, Sbeam, px, detsize_s)
    orgx_out = Fclose / px + 0.5
    orgy_out = Sclose / px + 0.5
    dials = 1000.0 * torch.stack((pix0[2], pix0[1], -pix0[0]))

    return DetectorGeometry(
        convention=conv, pivot=pivot, fpixels=fpixels, spixels=spixels, pixel_size_m=px,
        detsize_f_m=detsize_f, detsize_s_m=detsize_s, pix0=pix0, fdet=fdet, sdet=sdet, odet=odet,
        beam=beam, distance=distance, close_distance=close_distance, Fbeam=Fbeam, Sbeam=Sbeam,
        Fclose=Fclose, Sclose=Sclose, Xbeam=Xbeam, Ybeam=Ybeam, Xclose=Xclose, Yclose=Yclose,
        orgx=orgx_out, orgy=orgy_out, dials_origin_mm=dials, twotheta_rad=twotheta,
        twotheta_axis=axis, curved=det.curved, point_pixel=det.point_pixel, vectors=vec)


def place_detector(axes, beam, rotation, twotheta_axis, twotheta, pivot, near, direct, distance,
                   close_distance=None, abs_close=True):
    """SPEC 1.6 steps 1-5: rotate the detector axes and place its first pixel (pix0).

    axes: (fdet, sdet, odet) before rotation; rotation: (rx, ry, rz) rad about lab x, y, z,
    then twotheta about twotheta_axis; pivot SAMPLE places pix0 from the near point
    (Fclose, Sclose) at close_distance before rotating it, BEAM from the direct-beam spot
    (Fbeam, Sbeam) at `distance` along the beam after. close_distance None: |ratio *
    distance| (abs_close False: ratio * distance, as nonBragg.c). Returns (pix0, fdet,
    sdet, odet, ratio), ratio = beam . (odet rotated without two-theta) (a C quirk).
    """
    fdet, sdet, odet = axes
    rx, ry, rz = rotation
    ratio = dot(beam, rotate_xyz(odet, rx, ry, rz))
    ratio = torch.where(ratio == 0, torch.full_like(ratio, 2.2250738585072014e-308), ratio)
    if close_distance is None:
        close_distance = torch.abs(ratio * distance) if abs_close else ratio * distance
    distance = close_distance / ratio
    turn = lambda v: rotate_axis(rotate_xyz(v, rx, ry, rz), twotheta_axis, twotheta)  # noqa: E731
    if pivot == "SAMPLE":
        pix0 = turn(-near[0] * fdet - near[1] * sdet + close_distance * odet)
    fdet, sdet, odet = turn(fdet), turn(sdet), turn(odet)
    if pivot == "BEAM":
        pix0 = -direct[0] * fdet - direct[1] * sdet + distance * beam
    return pix0, fdet, sdet, odet, ratio


def _header_centre_from_beam(conv, Fbeam, Sbeam, px, detsize_s):
    """Invert the convention's beam-centre mapping (header values for a -pix0_vector detector)."""
    if conv == "MOSFLM":
        return Sbeam - 0.5 * px, Fbeam - 0.5 * px
    if conv == "DENZO":
        return Sbeam, Fbeam
    if conv == "ADXV":
        return Fbeam, detsize_s - Sbeam
    return Fbeam, Sbeam


def pixel_positions(geom: DetectorGeometry, s_idx: torch.Tensor, f_idx: torch.Tensor,
                    oversample: int, odet_offsets: torch.Tensor) -> torch.Tensor:
    """Subpixel positions P (n, T, O, O, 3) in metres for pixels (s_idx, f_idx) (n,).

    Axes: pixel, detector layer (offset odet_offsets (T,) m along odet), slow
    subpixel, fast subpixel. Flat detectors: P = Fdet f + Sdet s + Odet o + pix0
    (C order, pix0 added last); -curved_det maps each flat point onto the sphere
    of radius `distance` (SPEC 1.9).
    """
    return torch.stack(pixel_position_components(geom, s_idx, f_idx, oversample, odet_offsets), -1)


def pixel_position_components(geom: DetectorGeometry, s_idx: torch.Tensor, f_idx: torch.Tensor,
                              oversample: int, odet_offsets: torch.Tensor) -> tuple:
    """pixel_positions as separate x, y, z tensors (n, T, O, O) (contiguous: vectorises).

    With several panels, s_idx is the stacked row p * spixels + s and every pixel takes its
    panel's vectors and pixel size (the same arithmetic as for one panel, so a panel placed
    where a single-panel detector is gives its pixels bit for bit).
    """
    dtype = geom.pix0.dtype
    k = torch.arange(oversample, dtype=dtype, device=s_idx.device)
    pn = geom.panels
    if pn is None:
        sub = geom.pixel_size_m / oversample
        fdet, sdet, odet, pix0 = geom.fdet, geom.sdet, geom.odet, geom.pix0
    else:
        p = pn.panel_of(s_idx)
        s_idx = s_idx - p * pn.spixels
        sub = (pn.pixel_size_m[p] / oversample)[:, None]                        # (n, 1)
        fdet, sdet, odet, pix0 = (v[p].T[:, :, None, None, None] for v in (pn.fdet, pn.sdet, pn.odet, pn.pix0))
    Fdet = sub * (f_idx.to(dtype)[:, None] * oversample + k) + sub / 2.0      # (n, O)
    Sdet = sub * (s_idx.to(dtype)[:, None] * oversample + k) + sub / 2.0
    Fdet = Fdet[:, None, None, :]
    Sdet = Sdet[:, None, :, None]
    # layer offsets along odet: (T,), or (P, T) for panels of different sensor thickness
    Odet = odet_offsets[None, :, None, None] if odet_offsets.dim() == 1 else odet_offsets[p][:, :, None, None]
    P = tuple(Fdet * fdet[i] + Sdet * sdet[i] + Odet * odet[i] + pix0[i] for i in range(3))
    if geom.curved:
        P = curve(torch.stack(P, -1), geom).unbind(-1)
    return P


def curve(P: torch.Tensor, geom: DetectorGeometry) -> torch.Tensor:
    """The C's curved detector: rotate distance*b about s by P_y/distance, then about f by P_z/distance."""
    dist = geom.distance
    start = (dist * geom.beam).expand(P.shape)
    tmp = rotate_axis(start, geom.sdet, P[..., 1] / dist)
    return rotate_axis(tmp, geom.fdet, P[..., 2] / dist)


def sensor_layers(cfg):
    """SPEC 1.10: (layers, thickness m, layer step m, mu 1/m, notes) of the sensor."""
    det = cfg.detector
    notes = []
    n, thick, step = step_plan(det.thicksteps or -1, det.thickness_um * 1e-6, -1.0, 0.5e-6,
                                        range_only_halves=True)
    mu = det.mu_per_m if det.mu_per_m is not None else -1.0
    if thick > 0.0 and mu < 0.0:
        mu = 1.0 / thick
        notes.append(f"WARNING: setting detector attenuation depth to {mu:g} m")
    return n, thick, step, mu, notes


def rendered_pixels(cfg, geom, dev):
    """The pixels the C renders (inside the ROI, not masked), in raster order.

    Several panels: rows of the stacked detector (panel after panel); the ROI applies to
    every panel's own pixel indices, the mask is (P, S, F) or (P*S, F), and a panel smaller
    than the largest leaves the rest of its block unrendered.
    """
    det = cfg.detector
    fp, sp = geom.fpixels, geom.spixels
    xmin, xmax, ymin, ymax = det.roi if det.roi is not None else (0, fp, 0, sp)
    s = torch.arange(sp, device=dev)[:, None]
    f = torch.arange(fp, device=dev)[None, :]
    if geom.panels is not None:
        rows = geom.panels.spixels
        sizes = torch.tensor([p.size_px for p in det.panels], device=dev)     # (P, 2) fast, slow
        p = s // rows
        s = s - p * rows
        keep = (f < sizes[p, 0]) & (s < sizes[p, 1])
    else:
        keep = torch.ones((sp, fp), dtype=torch.bool, device=dev)
    keep = keep & (f >= xmin) & (f <= xmax) & (s >= ymin) & (s <= ymax)
    if det.mask is not None:
        keep = keep & (torch.as_tensor(np.asarray(det.mask), device=dev).reshape(sp, fp) != 0)
    flat = torch.nonzero(keep.reshape(-1))[:, 0]
    return flat // fp, flat % fp, (xmin, xmax, ymin, ymax)


def detector_panels(cfg: SimConfig, mode: Mode | str, dtype, device):
    """(the detector's geometry, one geometry per panel, per-panel sensor layers).

    One panel (cfg.detector.panels None): detector_geometry. Several (an
    instrument.Detector in cfg.detector.panels): each panel placed as a single-panel
    detector of its own (its header geometry), stacked for the kernel (PanelStack),
    with cfg.detector.panel_offset_m (P, 3) and panel_rotation_deg (P, 3) (small rotations
    about lab x, y, z through each panel's centre) applied: both may be tensors with
    requires_grad (panel-geometry refinement).
    """
    det = cfg.detector
    if det.panels is None:
        g = detector_geometry(cfg, mode, dtype, device)
        return g, [g], [sensor_layers(cfg)]
    from .experiment import panel_config
    from .instrument import panel_tensors
    configs = [panel_config(cfg, i) for i in range(len(det.panels))]
    # every panel is where the model puts it, in both modes (the C has no such detector)
    placed = replace(get_mode(mode), pix0_vector=True)
    geoms = [detector_geometry(c, placed, dtype, device) for c in configs]
    layers = [sensor_layers(c) for c in configs]
    if len({(n, thick > 0) for n, thick, *_ in layers}) > 1:
        raise ConfigError("detector.panels: every panel needs the same sensor layer count, and a "
                          "thickness on all panels or on none")
    t = lambda x: as_tensor(x, dtype, device)  # noqa: E731
    # the model's own vectors (a panel's header geometry may differ from them in the last bit)
    vectors = panel_tensors(det.panels, dtype, device)
    fdet, sdet, odet, pix0 = (vectors[k] for k in ("fdet", "sdet", "odet", "pix0"))
    px = t([g.pixel_size_m for g in geoms])
    S, F = max(g.spixels for g in geoms), max(g.fpixels for g in geoms)
    if det.panel_rotation_deg is not None:
        rot = deg_to_rad(t(det.panel_rotation_deg))
        sizes = t([[g.fpixels, g.spixels] for g in geoms])
        centre = pix0 + 0.5 * (sizes[:, :1] * px[:, None] * fdet + sizes[:, 1:] * px[:, None] * sdet)
        turn = lambda v: rotate_xyz(v, rot[:, 0], rot[:, 1], rot[:, 2])  # noqa: E731
        fdet, sdet, odet = turn(fdet), turn(sdet), turn(odet)
        pix0 = centre + turn(pix0 - centre)
    if det.panel_offset_m is not None:
        pix0 = pix0 + t(det.panel_offset_m)
    stack = PanelStack(fdet, sdet, odet, pix0, px, dot(pix0, odet), t([lay[2] for lay in layers]),
                       t([lay[3] if lay[1] > 0 else 0.0 for lay in layers]), S, F)
    whole = replace(geoms[0], fpixels=F, spixels=S * len(geoms), panels=stack,
                    distance=torch.stack([g.distance for g in geoms]).min())
    return whole, geoms, layers
