"""Validation of a SimConfig, however it was built: one validator per parameter.

Each validator takes a field's raw value and raises, naming the field and quoting
the value: ConfigTypeError (a TypeError) for the wrong kind of value,
ConfigValueError (a ValueError) for a bad one, ConfigConflictError (a
RuntimeError) when fields that are fine alone disagree. Legal but suspicious
values give warnings (strings returned by `validate`). The command line reports
the same messages under the flag's name (cli.py maps fields to flags).

Continuous fields may hold tensors (also with requires_grad): they are checked on
their detached values, never changed.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .config import HKLData, SimConfig, SourceList
from .errors import ConfigConflictError, ConfigTypeError, ConfigValueError
from .modes import MODES

CONVENTIONS = ("MOSFLM", "DENZO", "ADXV", "XDS", "DIALS", "CUSTOM")
SHAPES = ("square", "round", "gauss", "tophat")
MAX_PIXELS_PER_AXIS = 1 << 20


# ------------------------------------------------------------------ value kinds
def _show(x) -> str:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return repr(float(x)) if x.numel() == 1 else f"tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return repr(float(x)) if x.size == 1 else f"array of shape {x.shape}"
    return repr(x)


def _array(field: str, x, what: str) -> np.ndarray:
    """The value as a float64 numpy array (tensors detached); TypeError if not numeric."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ConfigTypeError(field, f"expected {what}, got a complex tensor")
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, (bool, np.bool_)) or x is None or isinstance(x, (str, bytes)):
        raise ConfigTypeError(field, f"expected {what}, got {_show(x)}")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigTypeError(field, f"expected {what}, got {_show(x)}") from None
    return arr


def number(field: str, x, *, gt=None, ge=None, lt=None, le=None, unit: str = "") -> None:
    """A finite real scalar (Python number, numpy scalar or 0-d / 1-element tensor) in range."""
    arr = _array(field, x, "a number")
    if arr.size != 1 or arr.ndim > 1:
        raise ConfigTypeError(field, f"expected a number, got {_show(x)}")
    v = float(arr.reshape(-1)[0])
    u = f" {unit}" if unit else ""
    if not math.isfinite(v):
        raise ConfigValueError(field, f"must be a finite number, got {_show(x)}")
    for bound, ok, word in ((gt, lambda: v > gt, ">"), (ge, lambda: v >= ge, ">="),
                            (lt, lambda: v < lt, "<"), (le, lambda: v <= le, "<=")):
        if bound is not None and not ok():
            raise ConfigValueError(field, f"must be {word} {bound:g}{u}, got {_show(x)}")


def integer(field: str, x, *, ge=None, le=None) -> None:
    """A Python or numpy integer (not a bool, not a float) in range."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Integral, np.integer)):
        raise ConfigTypeError(field, f"expected an integer, got {_show(x)}")
    if ge is not None and x < ge:
        raise ConfigValueError(field, f"must be >= {ge}, got {x!r}")
    if le is not None and x > le:
        raise ConfigValueError(field, f"must be <= {le}, got {x!r}")


def vector(field: str, x, n: int = 3, *, nonzero=False, batch=False) -> np.ndarray:
    """n finite numbers ((B, n) too if batch); nonzero: not all zero."""
    arr = _array(field, x, f"{n} numbers")
    ok = arr.shape == (n,) or (batch and arr.ndim == 2 and arr.shape[1] == n)
    if not ok:
        shape = f"(n,) or (B, {n})" if batch else f"({n},)"
        raise ConfigTypeError(field, f"expected shape {shape}, got {_show(x) if arr.ndim else repr(x)}")
    if not np.all(np.isfinite(arr)):
        raise ConfigValueError(field, f"must be finite, got {arr.tolist()}")
    if nonzero and np.any(np.all(arr.reshape(-1, n) == 0, axis=1)):
        raise ConfigValueError(field, "must not be the zero vector")
    return arr


def choice(field: str, x, options) -> None:
    if not isinstance(x, str) or x not in options:
        raise ConfigValueError(field, f"must be one of {', '.join(options)}, got {x!r}")


def boolean(field: str, x) -> None:
    if not isinstance(x, (bool, np.bool_)):
        raise ConfigTypeError(field, f"expected True or False, got {_show(x)}")


def optional(check):
    def run(field, x):
        if x is not None:
            check(field, x)
    return run


def _num(**bounds):
    return lambda field, x: number(field, x, **bounds)


def _int(**bounds):
    return lambda field, x: integer(field, x, **bounds)


def _vec(n=3, **kw):
    return lambda field, x: vector(field, x, n, **kw)


def _pair_of(check):
    """A list of two entries, each None or passing check."""
    def run(field, x):
        if isinstance(x, torch.Tensor):
            vector(field, x, 2)
            return
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise ConfigTypeError(field, f"expected two values, got {_show(x)}")
        for i, v in enumerate(x):
            if v is not None:
                check(f"{field}[{i}]", v)
    return run


# ------------------------------------------------------------- field validators
def cell(field, x):
    arr = vector(field, x, 6)
    a, b, c, al, be, ga = arr
    for label, v in (("a", a), ("b", b), ("c", c)):
        if not v >= 0.5:
            raise ConfigValueError(field, f"cell length {label} must be >= 0.5 Angstrom "
                                          f"(no crystal is smaller), got {v:g}")
        if not v <= 1e5:
            raise ConfigValueError(field, f"cell length {label} must be <= 1e5 Angstrom, got {v:g}")
    for label, v in (("alpha", al), ("beta", be), ("gamma", ga)):
        if not 0 < v < 180:
            raise ConfigValueError(field, f"{label} must be between 0 and 180 deg, got {v:g}")
    ca, cb, cg = (math.cos(math.radians(v)) for v in (al, be, ga))
    if 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg <= 1e-12:
        raise ConfigValueError(field, f"the angles {al:g} {be:g} {ga:g} do not form a unit cell")


def mat(field, x):
    arr = _array(field, x, "a 3x3 matrix")
    if arr.shape != (3, 3):
        raise ConfigTypeError(field, f"expected a 3x3 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigValueError(field, "the matrix must be finite")
    norms = np.linalg.norm(arr, axis=0)
    if not np.all(norms > 0) or abs(np.linalg.det(arr)) <= 1e-9 * np.prod(norms):
        raise ConfigValueError(field, "the matrix is singular: its columns a*, b*, c* must be "
                                      "independent")


def orientation(field, x):
    arr = _array(field, x, "a 3x3 rotation matrix")
    if arr.shape[-2:] != (3, 3) or arr.ndim not in (2, 3):
        raise ConfigTypeError(field, f"expected shape (3, 3) or (B, 3, 3), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigValueError(field, "the rotation must be finite")
    u = arr.reshape(-1, 3, 3)
    err = np.abs(np.einsum("bij,bkj->bik", u, u) - np.eye(3)).max()
    if err > 1e-4 or np.any(np.linalg.det(u) < 0):
        raise ConfigValueError(field, f"must be a proper rotation (U U^T = 1 within 1e-4, det +1), "
                                      f"off by {err:.2g}")


def hkl(field, x):
    if not isinstance(x, HKLData):
        raise ConfigTypeError(field, f"expected an HKLData, got {type(x).__name__}")
    F = _array(field + ".F", x.F, "an array of structure factors")
    if F.ndim != 3:
        raise ConfigTypeError(field + ".F", f"expected a 3-d grid, got shape {F.shape}")
    expect = (x.h_max - x.h_min + 2, x.k_max - x.k_min + 2, x.l_max - x.l_min + 2)
    if x.hkls and F.shape != expect:
        raise ConfigConflictError(field + ".F", f"grid shape {F.shape} does not match the index "
                                                f"ranges (expected {expect})")
    bad = ~np.isfinite(F)
    if bad.any():
        i = np.argwhere(bad)[0]
        h, k, l = i[0] + x.h_min, i[1] + x.k_min, i[2] + x.l_min
        raise ConfigValueError(field + ".F", f"{int(bad.sum())} structure factors are not finite "
                                             f"(first at h k l = {h} {k} {l})")


def sources(field, x):
    if not isinstance(x, SourceList):
        raise ConfigTypeError(field, f"expected a SourceList, got {type(x).__name__}")
    pos = np.asarray(x.position_m, dtype=np.float64)
    n = pos.shape[0] if pos.ndim == 2 else -1
    if pos.ndim != 2 or pos.shape[1] != 3 or n == 0:
        raise ConfigTypeError(field + ".position_m", f"expected shape (n, 3) with n >= 1, got {pos.shape}")
    w = np.asarray(x.weight, dtype=np.float64)
    lam = np.asarray(x.wavelength_m, dtype=np.float64)
    if w.shape != (n,) or lam.shape != (n,):
        raise ConfigTypeError(field, f"positions, weights and wavelengths must all have {n} rows")
    # NaN stands for a column the file did not have (the defaults are used)
    for name, arr in (("position_m", pos), ("weight", w), ("wavelength_m", lam)):
        if np.any(np.isinf(arr)):
            raise ConfigValueError(f"{field}.{name}", f"must be finite (source {int(np.argwhere(np.isinf(arr))[0][0]) + 1})")
    bad = ~np.isnan(lam) & ~(lam > 0)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise ConfigValueError(f"{field}.wavelength_m", f"source {i + 1} has wavelength {lam[i]:g} m: "
                                                        "must be > 0")
    if np.any(np.all(np.nan_to_num(pos, nan=1.0) == 0, axis=1)):
        i = int(np.argwhere(np.all(np.nan_to_num(pos, nan=1.0) == 0, axis=1))[0][0])
        raise ConfigValueError(f"{field}.position_m", f"source {i + 1} is at the origin: its direction "
                                                      "is undefined")


def mask(field, x):
    arr = np.asarray(x)
    if arr.ndim not in (2, 3):
        raise ConfigTypeError(field, f"expected a 2-d array (3-d for panels), got shape {arr.shape}")


def roi(field, x):
    if not isinstance(x, (tuple, list)) or len(x) != 4:
        raise ConfigTypeError(field, f"expected (xmin, xmax, ymin, ymax), got {_show(x)}")
    for i, v in enumerate(x):
        integer(f"{field}[{i}]", v, ge=0)
    if x[0] > x[1] or x[2] > x[3]:
        raise ConfigValueError(field, f"need xmin <= xmax and ymin <= ymax, got {tuple(x)}")


def pixel_pair(field, x):
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise ConfigTypeError(field, f"expected two pixel indices, got {_show(x)}")
    for i, v in enumerate(x):
        integer(f"{field}[{i}]", v, ge=0)


def stol_table(field, x):
    arr = _array(field, x, "an (n, 2) table")
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ConfigTypeError(field, f"expected an (n, 2) table, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigValueError(field, "the table must be finite")


def device(field, x):
    if isinstance(x, torch.device):
        return
    if not isinstance(x, str):
        raise ConfigTypeError(field, f"expected a device name, got {_show(x)}")
    if x != "auto":
        try:
            torch.device(x)
        except (RuntimeError, ValueError):
            raise ConfigValueError(field, f"must be cpu, cuda, cuda:N or auto, got {x!r}") from None


def dtype(field, x):
    if x not in ("float32", "float64", torch.float32, torch.float64):
        raise ConfigValueError(field, f"must be float32 or float64, got {x!r}")


def _count_or_none(field, x):
    if x is not None:
        integer(field, x, ge=1)


def _seed(field, x):
    integer(field, x, ge=0, le=2 ** 31 - 1)


FIELDS = {
    # crystal
    "crystal.cell": optional(cell),
    "crystal.mat": optional(mat),
    "crystal.misset_deg": optional(lambda f, x: vector(f, x, 3, batch=True)),
    "crystal.orientation": optional(orientation),
    "crystal.misset_random": boolean,
    "crystal.misset_seed": optional(_seed),
    "crystal.n_cells": lambda f, x: _n_cells(f, x),
    "crystal.sample_size_mm": lambda f, x: _nonneg_vector(f, x),
    "crystal.shape": lambda f, x: choice(f, x, SHAPES),
    "crystal.fudge": _num(gt=0),
    "crystal.mosaic_spread_deg": optional(_num(ge=0, le=90, unit="deg")),
    "crystal.mosaic_domains": _count_or_none,
    "crystal.mosaic_seed": _seed,
    "crystal.phi_deg": _num(),
    "crystal.osc_deg": optional(_num(ge=0, unit="deg")),
    "crystal.phistep_deg": optional(_num(ge=0, unit="deg")),
    "crystal.phisteps": optional(_int(ge=0)),          # 0 counts as 1, as the C
    "crystal.spindle_axis": optional(_vec(nonzero=True)),
    "crystal.default_F": _num(),
    "crystal.hkl": optional(hkl),
    "crystal.interpolate": optional(boolean),
    # detector
    "detector.convention": lambda f, x: choice(f, x, CONVENTIONS),
    "detector.pivot": optional(lambda f, x: choice(f, x, ("BEAM", "SAMPLE"))),
    "detector.pivot_from_flags": lambda f, x: choice(f, x, ("BEAM", "SAMPLE")),
    "detector.distance_mm": optional(_num(gt=0, unit="mm")),
    "detector.close_distance_mm": optional(_num(gt=0, unit="mm")),
    "detector.pixel_size_mm": _num(gt=0, unit="mm"),
    "detector.detsize_mm": _pair_of(_num(gt=0, unit="mm")),
    "detector.detpixels": _pair_of(_int(ge=1, le=MAX_PIXELS_PER_AXIS)),
    "detector.beam_center_mm": _pair_of(_num(unit="mm")),
    "detector.close_center_mm": _pair_of(_num(unit="mm")),
    "detector.org_px": _pair_of(_num()),
    "detector.rotation_deg": _vec(),
    "detector.twotheta_deg": _num(),
    "detector.fdet_vector": optional(_vec(nonzero=True)),
    "detector.sdet_vector": optional(_vec(nonzero=True)),
    "detector.odet_vector": optional(_vec()),
    "detector.twotheta_axis": optional(_vec(nonzero=True)),
    "detector.pix0_vector_m": optional(_vec()),
    "detector.curved": boolean,
    "detector.point_pixel": boolean,
    "detector.thickness_um": _num(ge=0, unit="um"),
    "detector.thicksteps": _count_or_none,
    "detector.mu_per_m": optional(_num(ge=0, unit="1/m")),
    "detector.roi": optional(roi),
    "detector.mask": optional(mask),
    "detector.panels": lambda f, x: None,            # checked with the others (_panels)
    # beam
    "beam.wavelength_A": _num(gt=0, unit="Angstrom"),
    "beam.dispersion_pct": _num(ge=0, lt=200, unit="%"),
    "beam.dispsteps": _count_or_none,
    "beam.hdivrange_mrad": optional(_num(ge=0, unit="mrad")),
    "beam.vdivrange_mrad": optional(_num(ge=0, unit="mrad")),
    "beam.hdivstep_mrad": optional(_num(ge=0, unit="mrad")),
    "beam.vdivstep_mrad": optional(_num(ge=0, unit="mrad")),
    "beam.hdivsteps": _count_or_none,
    "beam.vdivsteps": _count_or_none,
    "beam.round_div": boolean,
    "beam.beam_vector": optional(_vec(nonzero=True)),
    "beam.polar_vector": optional(_vec(nonzero=True)),
    "beam.polarization": _num(ge=-1, le=1),
    "beam.nopolar": boolean,
    "beam.fluence": _num(ge=0, unit="photons/m^2"),
    "beam.flux": _num(ge=0, unit="photons/s"),
    "beam.exposure_s": _num(ge=0, unit="s"),
    "beam.beamsize_mm": lambda f, x: _beamsize(f, x),
    "beam.sources": optional(sources),
    # background
    "background.water_um": _num(ge=0, unit="um"),
    "background.stol_table": optional(stol_table),
    "background.stol_mult": _num(gt=0),
    "background.amorphous": lambda f, x: _amorphous(f, x),
    # detector response (noisify's stages)
    "response.enabled": boolean,
    "response.psf": optional(lambda f, x: choice(f, x, ("gauss", "fiber"))),
    "response.psf_fwhm_um": _num(ge=0, unit="um"),
    "response.psf_radius": _int(ge=0),
    "response.readout_noise": _num(ge=0, unit="ADU"),
    "response.flicker": _num(ge=0),
    "response.calibration": _num(ge=0),
    "response.gain": _num(unit="ADU/photon"),
    "response.calib_seed": optional(_seed),
    # output
    "output.scale": _num(),
    "output.pgmscale": _num(),
    "output.adc": _num(),
    "output.seed": optional(_seed),
    "output.printout_pixel": optional(pixel_pair),
    "output.trace_pixel": optional(pixel_pair),
    # run
    "oversample": _count_or_none,
    "oversample_thick": boolean,
    "oversample_polar": boolean,
    "oversample_omega": boolean,
    "dmin_A": _num(ge=0, unit="Angstrom"),
    "mode": lambda f, x: choice(f, x, MODES),
    "dtype": dtype,
    "device": device,
    "pixel_batch_size": _count_or_none,
    "max_hours": optional(_num(gt=0, unit="hours")),
}


def _n_cells(field, x):
    arr = vector(field, x, 3)
    if np.any(arr < 0):
        raise ConfigValueError(field, f"unit-cell counts must be >= 0, got {arr.tolist()}")


def _nonneg_vector(field, x):
    arr = vector(field, x, 3)
    if np.any(arr < 0):
        raise ConfigValueError(field, f"must be >= 0, got {arr.tolist()}")


def _amorphous(field, layers):
    """background.amorphous: a list of config.AmorphousLayer, each with a table."""
    from .config import AmorphousLayer
    if not isinstance(layers, (list, tuple)):
        raise ConfigTypeError(field, f"expected a list of AmorphousLayer, got {type(layers).__name__}")
    for i, layer in enumerate(layers):
        name = f"{field}[{i}]"
        if not isinstance(layer, AmorphousLayer):
            raise ConfigTypeError(name, f"expected an AmorphousLayer, got {type(layer).__name__}")
        if layer.stol_table is None:
            raise ConfigValueError(f"{name}.stol_table", "no F(stol) table (give -amorphous FILE)")
        stol_table(f"{name}.stol_table", layer.stol_table)
        _num(gt=0)(f"{name}.stol_mult", layer.stol_mult)
        for attr, check in (("thickness_mm", _num(ge=0, unit="mm")), ("density_g_cm3", _num(ge=0, unit="g/cm^3")),
                            ("molecular_weight", _num(gt=0, unit="g/mol")), ("width_mm", _num(ge=0, unit="mm")),
                            ("height_mm", _num(ge=0, unit="mm"))):
            check(f"{name}.{attr}", getattr(layer, attr))


def _beamsize(field, x):
    number(field, x, unit="mm")
    if float(_array(field, x, "a number")) == 0:
        raise ConfigValueError(field, "must not be 0 (a negative value means no beam-size limit)")


# ---------------------------------------------------------------- the whole config
def get_field(cfg: SimConfig, path: str):
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg) -> list[str]:
    """Check every field of cfg and their agreement; return warnings (legal but suspicious).

    Raises ConfigTypeError / ConfigValueError / ConfigConflictError naming the field.
    """
    if not isinstance(cfg, SimConfig):
        raise ConfigTypeError("config", f"expected a SimConfig, got {type(cfg).__name__}")
    for path, check in FIELDS.items():
        check(path, get_field(cfg, path))
    return _agreement(cfg)


def _unit(v) -> np.ndarray:
    v = np.asarray(_array("", v, "3 numbers"), dtype=np.float64)
    return v / np.linalg.norm(v)


def _agreement(cfg: SimConfig) -> list[str]:
    warnings = []
    cr, det, bm = cfg.crystal, cfg.detector, cfg.beam
    if cr.cell is None and cr.mat is None:
        raise ConfigValueError("crystal.cell", "no crystal: give a unit cell (-cell) or an "
                                               "orientation matrix (-mat)")
    n = _array("crystal.n_cells", cr.n_cells, "3 numbers")
    if np.any(n < 1) and not any(cr.sample_size_mm):
        warnings.append(f"crystal.n_cells: {n.tolist()} has counts below 1: they are rendered "
                        "as 1 unit cell, as nanoBragg.c does")
    fp, sp = _pixels(det)
    if det.panels is not None:
        _panels(cfg)
        fp, sp = max(p.fpixels for p in det.panels), max(p.spixels for p in det.panels)
    if det.roi is not None:
        xmin, xmax, ymin, ymax = det.roi
        if xmax >= fp or ymax >= sp:
            raise ConfigConflictError("detector.roi", f"{tuple(det.roi)} is outside the detector "
                                                      f"(fast 0..{fp - 1}, slow 0..{sp - 1})")
    for name, px, (f, s) in (("output.printout_pixel", cfg.output.printout_pixel, (0, 1)),
                             ("output.trace_pixel", cfg.output.trace_pixel, (1, 0))):
        if px is not None and (px[f] >= fp or px[s] >= sp):
            raise ConfigConflictError(name, f"{tuple(px)} is outside the detector "
                                            f"(fast 0..{fp - 1}, slow 0..{sp - 1})")
    if det.mask is not None:
        shape = np.asarray(det.mask).shape
        P = 1 if det.panels is None else len(det.panels)
        if shape not in ((sp, fp), (P * sp, fp), (P, sp, fp)) or (P > 1 and shape == (sp, fp)):
            raise ConfigConflictError("detector.mask", f"the mask is {shape[-1]}x{shape[-2]} pixels "
                                      f"but the detector is {fp}x{sp}" + (f" in {P} panels" if P > 1 else ""))
    if det.convention == "CUSTOM":
        f = det.fdet_vector if det.fdet_vector is not None else (0, 0, 1)
        s = det.sdet_vector if det.sdet_vector is not None else (0, -1, 0)
        if np.linalg.norm(np.cross(_unit(f), _unit(s))) < 1e-9:
            raise ConfigConflictError("detector.fdet_vector", "the fast and slow detector axes are "
                                                              "parallel")
        b = bm.beam_vector if bm.beam_vector is not None else (1, 0, 0)
        p = bm.polar_vector if bm.polar_vector is not None else (0, 0, 1)
        if np.linalg.norm(np.cross(_unit(b), _unit(p))) < 1e-9:
            warnings.append("beam.polar_vector: the polarisation axis is parallel to the beam: "
                            "the E-vector is undefined and the Kahn term drops out")
    return warnings


def _panels(cfg) -> None:
    """Several panels: an instrument.Detector, with (P, 3) offsets and rotations if any."""
    from .instrument import Detector
    det = cfg.detector
    if not isinstance(det.panels, Detector):
        raise ConfigTypeError("detector.panels", f"expected an instrument.Detector, got "
                                                 f"{type(det.panels).__name__}")
    P = len(det.panels)
    for name in ("panel_offset_m", "panel_rotation_deg"):
        x = getattr(det, name)
        if x is not None:
            arr = vector(f"detector.{name}", x, 3, batch=True)
            if arr.shape != (P, 3):
                raise ConfigConflictError(f"detector.{name}", f"expected shape ({P}, 3) for {P} "
                                                              f"panels, got {arr.shape}")
    if det.curved:
        raise ConfigConflictError("detector.curved", "a detector of several panels cannot be curved")
    if cfg.background.amorphous:
        raise ConfigConflictError("background.amorphous", "amorphous layers are rendered on one "
                                                          "panel; a detector of several panels has none")
    if cfg.response.enabled:
        raise ConfigConflictError("response.enabled", "the detector-response stage works on one "
                                                      "panel's image; a detector of several panels has none")
    for name in ("trace_pixel", "printout_pixel"):
        if getattr(cfg.output, name) is not None or (name == "printout_pixel" and cfg.output.printout):
            raise ConfigConflictError(f"output.{name}", "the per-pixel printouts are for one panel; "
                                                        "a detector of several panels has none")


def _pixels(det) -> tuple[int, int]:
    """Pixel counts (fast, slow), refusing sizes that do not make a detector."""
    counts = []
    for i, axis in enumerate(("fast", "slow")):
        px = float(det.pixel_size_mm)
        count = det.detpixels[i]
        size = px * count if count else float(det.detsize_mm[i])
        n = size / px - 0.5
        if not n < MAX_PIXELS_PER_AXIS:
            raise ConfigValueError("detector.detsize_mm", f"{size:g} mm is more than "
                                   f"{MAX_PIXELS_PER_AXIS} pixels of {px:g} mm along {axis}")
        n = int(math.ceil(n))
        if n <= 0:
            raise ConfigValueError("detector.detsize_mm", f"the detector has {n} pixels along {axis} "
                                   f"({size:g} mm of {px:g} mm pixels)")
        counts.append(n)
    return counts[0], counts[1]
