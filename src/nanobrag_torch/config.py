"""Simulation settings: what the user asked for, in command-line units.

A `SimConfig` holds the values of nanoBragg's flags (mm, degrees, Angstrom,
microns, mrad, percent, as on the command line) with ``None`` meaning "not
given": the C's defaulting rules (conventions, pivots, auto step counts,
oversampling) are applied later by the simulator, so a value changed after
parsing takes part in them as if it had been given on the command line.

Continuous values may be replaced by torch tensors (float64 or float32), also with
``requires_grad=True``: ``Simulator(cfg).run()`` is then differentiable with respect
to them. The differentiable fields, marked "grad" below (docs/gradients.md has the
table with shapes and units): crystal.cell, crystal.misset_deg (also a (B, 3) batch),
crystal.orientation, crystal.n_cells, crystal.mosaic_spread_deg, crystal.hkl.F,
detector.distance_mm, detector.beam_center_mm, detector.rotation_deg,
detector.twotheta_deg, beam.wavelength_A, beam.fluence, beam.polarization.
Everything else is plain Python (counts, flags, names); values that decide step
counts or other static choices are read as numbers when the Simulator is built.

Files are read at parse time (so bad files fail before anything is written);
their contents live here: `HKLData`, the -mat matrix, `SourceList`, the mask.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch.autograd import forward_ad

# A float or a tensor (any shape noted in the field comment).
Value = Any


@dataclass
class HKLData:
    """Structure factors on a dense grid, as the C stores them.

    ``F`` has shape (h_max-h_min+2, k_max-k_min+2, l_max-l_min+2): the C
    allocates one zero padding slab past the maximum index on every axis.
    ``F`` may be a numpy array or a torch tensor (grad: replace it by a tensor with
    requires_grad=True to refine structure factors; same shape, padding included).
    ``hkls`` counts the entries read (0 disables lookups: default_F only).
    """
    F: Any
    h_min: int
    h_max: int
    k_min: int
    k_max: int
    l_min: int
    l_max: int
    hkls: int
    source: str = ""           # file it came from (HKL text or Fdump.bin)
    cell: Optional[tuple] = None   # (6,) a b c (A) alpha beta gamma (deg) when the file has one
    spacegroup: str = ""       # the file's space group (F is expanded to P1 in the grid)


@dataclass
class SourceList:
    """Sources read from a -sourcefile (before normalisation).

    position_m: (n, 3) source positions (m); the incident direction is
    -unit(position). weight: (n,) relative weights. wavelength_m: (n,).
    """
    position_m: np.ndarray
    weight: np.ndarray
    wavelength_m: np.ndarray


@dataclass
class CrystalConfig:
    cell: Value = None                 # grad (6,) a b c (A), alpha beta gamma (deg); None: use -mat
    mat: Optional[np.ndarray] = None   # (3, 3) MOSFLM A matrix as read: rows x,y,z; columns a*,b*,c*
    mat_file: Optional[str] = None
    misset_deg: Value = None           # grad (3,) rotations about x, y, z (deg); None: no misset;
                                       # (B, 3): a batch of B orientations (run() -> (B, ...))
    orientation: Value = None          # grad (3, 3) rotation U applied after the misset (to a*, b*, c*,
                                       # so to a, b, c); (B, 3, 3): a batch; None: identity
    misset_random: bool = False        # -misset random (angles drawn from misset_seed)
    misset_seed: Optional[int] = None  # None: time-based, as the C
    n_cells: Value = (1.0, 1.0, 1.0)   # grad (3,) Na Nb Nc as parsed (-N 0 stays 0 here; clamped later);
                                       # non-integer values allowed
    sample_size_mm: list = field(default_factory=lambda: [0.0, 0.0, 0.0])  # x y z; 0 = unset
    shape: str = "square"              # square | round | gauss | tophat
    fudge: float = 1.0
    mosaic_spread_deg: Value = None    # grad () deg, the domain draws fixed; None: unset
    mosaic_domains: Optional[int] = None
    mosaic_seed: int = 12345678        # positive; the C stores and uses -seed
    phi_deg: Value = 0.0               # start angle phi0
    osc_deg: Value = None
    phistep_deg: Value = None
    phisteps: Optional[int] = None
    spindle_axis: Optional[list] = None   # custom axis; None: from the convention
    default_F: Value = 0.0
    hkl: Optional[HKLData] = None      # from -hkl, or Fdump.bin when -hkl is absent
    hkl_file: Optional[str] = None     # the -hkl file (Fdump.bin is written after reading it)
    mtz_column: Optional[str] = None   # -mtz_column: MTZ label / mmCIF _refln tag; None: default choice
    model_file: Optional[str] = None   # -model: atomic model F were computed from
    dump_file: str = "Fdump.bin"
    interpolate: Optional[bool] = None  # None: auto (on iff any N <= 2)


@dataclass
class DetectorConfig:
    convention: str = "MOSFLM"         # MOSFLM DENZO ADXV XDS DIALS CUSTOM
    pivot: Optional[str] = None        # explicit -pivot (BEAM | SAMPLE), last one given
    pivot_from_flags: str = "BEAM"     # the C's running pivot after all flags (argv order)
    distance_mm: Value = None          # grad () -distance; None: 100 mm
    close_distance_mm: Value = None
    pixel_size_mm: float = 0.1
    detsize_mm: list = field(default_factory=lambda: [102.4, 102.4])   # fast, slow
    detpixels: list = field(default_factory=lambda: [None, None])      # fast, slow (CLI or header)
    beam_center_mm: Value = field(default_factory=lambda: [None, None])   # grad (2,) -Xbeam -Ybeam
    close_center_mm: list = field(default_factory=lambda: [None, None])   # -Xclose -Yclose
    org_px: list = field(default_factory=lambda: [None, None])            # -ORGX -ORGY
    rotation_deg: Value = field(default_factory=lambda: [0.0, 0.0, 0.0])  # grad (3,) -detector_rotx/y/z
    twotheta_deg: Value = 0.0          # grad () -twotheta
    fdet_vector: Optional[list] = None
    sdet_vector: Optional[list] = None
    odet_vector: Optional[list] = None
    twotheta_axis: Optional[list] = None
    pix0_vector_m: Optional[list] = None   # spec mode: first pixel's outer corner (m)
    curved: bool = False
    point_pixel: bool = False
    thickness_um: float = 0.0          # -detector_thick
    thicksteps: Optional[int] = None
    mu_per_m: Optional[float] = None   # from -detector_abs (1/(depth um * 1e-6)); 0 for inf/0
    roi: Optional[tuple] = None        # (xmin, xmax, ymin, ymax), inclusive pixel indices
    mask: Optional[np.ndarray] = None  # (spixels, fpixels) uint16; zero pixels are skipped
    layout_file: Optional[str] = None  # -detector_json FILE (docs/detectors.md), applied at parse time
    panels: Any = None                 # an instrument.Detector of several panels (-expt, -detector_json)
    panel_offset_m: Value = None       # grad (P, 3) shift of every panel's origin (m)
    panel_rotation_deg: Value = None   # grad (P, 3) rotation of every panel about lab x, y, z
                                       # through its centre (deg)

    @property
    def fpixels(self) -> int:
        return _pixel_count(self.detpixels[0], self.detsize_mm[0], self.pixel_size_mm)

    @property
    def spixels(self) -> int:
        return _pixel_count(self.detpixels[1], self.detsize_mm[1], self.pixel_size_mm)

    @property
    def detsize_f_mm(self) -> float:
        return _detsize(self.detpixels[0], self.detsize_mm[0], self.pixel_size_mm)

    @property
    def detsize_s_mm(self) -> float:
        return _detsize(self.detpixels[1], self.detsize_mm[1], self.pixel_size_mm)


def _detsize(count, size_mm, px_mm):
    # a pixel count (CLI or header) wins over -detsize (SPEC 1.5); the C works in metres
    if count:
        return px_mm / 1000.0 * count * 1000.0
    return size_mm


def _pixel_count(count, size_mm, px_mm):
    px = px_mm / 1000.0
    size = px * count if count else size_mm / 1000.0
    n = size / px - 0.5
    # (validate.py refuses sizes past 2^20 pixels; an absurd one must not overflow here)
    return int(np.ceil(n)) if np.isfinite(n) and abs(n) < 2 ** 62 else 0


@dataclass
class BeamConfig:
    wavelength_A: Value = 1.0          # grad () -lambda (A)
    dispersion_pct: Value = 0.0
    dispsteps: Optional[int] = None
    hdivrange_mrad: Value = None
    vdivrange_mrad: Value = None
    hdivstep_mrad: Value = None
    vdivstep_mrad: Value = None
    hdivsteps: Optional[int] = None
    vdivsteps: Optional[int] = None
    round_div: bool = True
    beam_vector: Optional[list] = None   # custom propagation direction
    polar_vector: Optional[list] = None  # custom E-vector axis
    polarization: Value = 0.0            # grad () Kahn factor K (-polar)
    nopolar: bool = False
    fluence: Value = 125932015286227086360700780544.0   # grad () photons/m^2, after flux rules
    flux: float = 0.0
    exposure_s: float = 1.0
    beamsize_mm: float = 0.1
    sources: Optional[SourceList] = None   # from -sourcefile
    source_file: Optional[str] = None      # the -sourcefile file


@dataclass
class AmorphousLayer:
    """One amorphous layer in the beam (-amorphous FILE, then its -layer_thickness_mm,
    -density, -MW): nonBragg's sample, rendered on the run's own detector and sources
    (background.amorphous_photons) and added to the image. Width and height are nonBragg's
    (0.1 mm, clipped by -beamsize)."""
    stol_file: Optional[str] = None
    stol_table: Optional[np.ndarray] = None   # (n, 2) as read: stol (1/A), F
    stol_mult: float = 1e10
    thickness_mm: Value = 0.1          # grad () along the beam (mm)
    density_g_cm3: Value = 1.0         # grad () g/cm^3
    molecular_weight: Value = 18.0     # grad () g/mol
    width_mm: Value = 0.1              # grad () nonBragg's sample width and height (mm)
    height_mm: Value = 0.1


@dataclass
class BackgroundConfig:
    water_um: Value = 0.0
    stol_file: Optional[str] = None
    stol_table: Optional[np.ndarray] = None   # (n, 2) as read (stol or Q column scaled by stol_mult, F)
    stol_mult: float = 1e10
    amorphous: list = field(default_factory=list)   # AmorphousLayer per -amorphous, in argv order


@dataclass
class ResponseConfig:
    """The detector-response stage (noisify's flags on nanobrag-torch): when `enabled`, the
    noise image is noisify's from the float image (detector_response.py; same flags, same
    seed, noisify's defaults). psf_fwhm_um and gain (grad) reach Image.expected_adu()."""
    enabled: bool = False              # any response flag given
    psf: Optional[str] = None          # "gauss" | "fiber" | None
    psf_fwhm_um: Value = 46.0          # grad ()
    psf_radius: int = 0                # pixels, 0: automatic
    readout_noise: float = 0.0         # ADU rms
    flicker: float = 0.0               # fraction rms
    calibration: float = 0.03          # fraction rms (noisify's default)
    gain: Value = 1.0                  # grad () ADU per photon
    calib_seed: Optional[int] = None


@dataclass
class OutputConfig:
    floatfile: str = "floatimage.bin"
    intfile: str = "intimage.img"
    pgmfile: str = "image.pgm"
    noisefile: str = "noiseimage.img"
    write_pgm: bool = True
    write_noise: bool = True
    scale: float = 0.0                 # int image scale; <= 0: 55000/max
    pgmscale: float = 0.0
    adc: float = 40.0
    seed: Optional[int] = None         # noise seed (positive as given); None: time-based
    printout: bool = False
    printout_pixel: Optional[tuple] = None   # (f, s)
    progress: bool = True
    trace_pixel: Optional[tuple] = None      # (s, f), port-only
    exptfile: Optional[str] = None           # -exptfile: the run as a DIALS experiment list
    cbffile: Optional[str] = None      # -cbffile: miniCBF of photon counts (io.cbf)
    nexusfile: Optional[str] = None    # -nexusfile: NeXus/NXmx of photon counts (io.nexus)
    pngfile: Optional[str] = None      # -pngfile: PNG preview (io.png)
    png_scale: str = "linear"          # -png_scale linear | log
    nimages: Optional[int] = None      # -nimages N: a rotation sweep of N images (sweep.py)
    shots: Optional[int] = None        # -shots N: a serial batch of N random stills (shots.py)
    shot: Optional[int] = None         # -shot K: render only shot K of the batch
    manifest: str = "shots.csv"        # -manifest FILE: the batch's manifest (CSV)
    jitter: tuple = ()                 # -jitter_* of a batch: ((name, amount), ...) (shots.JITTER)
    labels: Optional[str] = None       # -labels FILE.h5: spot list and Bragg mask per image (labels.py)
    label_threshold: Optional[float] = None   # -label_threshold PHOTONS: the mask's pixels are above it (None: 1)
    workers: Optional[int | str] = None   # -workers N|auto: the batch on a Dask LocalCluster (cluster.py)
    scheduler: Optional[str] = None    # -scheduler ADDR: on an existing Dask scheduler (cluster.py)


@dataclass
class CQuirks:
    """How nanoBragg.c itself read the same argv, where that differs (used by -mode c-parity).

    twotheta_deg: the 2theta the C ends up with (-twotheta_axis X Y Z also sets it to X);
    None means same as detector.twotheta_deg.
    pivot_from_flags: the C's running pivot, counting -twotheta_axis as a SAMPLE flag.
    misset: the C's final misset decision ('random', a (3,) tuple in deg, or None) after
    the -misset substring also matched -misset_seed N A B.
    """
    twotheta_deg: Optional[float] = None
    pivot_from_flags: Optional[str] = None
    misset: Any = "same"


@dataclass
class SimConfig:
    crystal: CrystalConfig = field(default_factory=CrystalConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    c_quirks: CQuirks = field(default_factory=CQuirks)
    oversample: Optional[int] = None     # None or <= 0: auto
    oversample_thick: bool = False
    oversample_polar: bool = False
    oversample_omega: bool = False
    dmin_A: Value = 0.0
    mode: str = "spec"                   # -mode spec | c-parity
    dtype: str = "float64"               # -dtype
    device: str = "cpu"                  # -device cpu | cuda | auto
    pixel_batch_size: Optional[int] = None
    max_hours: Optional[float] = 24.0    # refuse runs estimated to take longer (None: no limit)
    inputs_read_as: Optional[str] = None  # the mode whose rules read the input files (None: none read)
    expt_file: Optional[str] = None      # -expt FILE (DIALS experiment list), applied at parse time
    expt_image: Optional[int] = None     # -expt_image K: the scan image simulated (None: the first)
    argv: list = field(default_factory=list)
    notes: list = field(default_factory=list)   # warnings found while parsing, printed by the CLI
    input_files: list = field(default_factory=list)   # (flag, file) the argv reads (never overwritten)


# ------------------------------------------------------------------ utilities
_NESTED = {"crystal": CrystalConfig, "detector": DetectorConfig, "beam": BeamConfig,
           "background": BackgroundConfig, "output": OutputConfig,
           "response": ResponseConfig, "c_quirks": CQuirks,
           "hkl": HKLData, "sources": SourceList}
_TUPLES = {"roi", "printout_pixel", "trace_pixel"}


def to_dict(obj) -> Any:
    """A SimConfig (or any part of it) as nested dicts and lists; arrays and tensors are
    kept as they are (not copied). `from_dict` inverts it."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    return obj


def from_dict(data: dict, cls=None) -> Any:
    """Inverse of to_dict: a SimConfig (or the dataclass cls) from nested dicts."""
    cls = cls or SimConfig
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            raise KeyError(f"{cls.__name__} has no field {key!r}")
        if isinstance(value, dict) and key in _NESTED:
            value = from_dict(value, _NESTED[key])
        elif key == "amorphous" and isinstance(value, list):
            value = [from_dict(v, AmorphousLayer) if isinstance(v, dict) else v for v in value]
        elif isinstance(value, list) and key in _TUPLES:
            value = tuple(value)
        elif isinstance(value, list):
            value = [list(v) if isinstance(v, list) else v for v in value]
        kwargs[key] = value
    return cls(**kwargs)


# not inputs to the continuous setup (the mask is static: it fixes the rendered pixels)
_FINGERPRINT_SKIP = ("output", "notes", "argv", "mask", "input_files")


def fingerprint(obj):
    """A comparable summary of a config's values (tensors and arrays by content).

    Equal fingerprints mean the same simulation inputs; Simulator.run compares the
    config's with the one taken at construction to decide whether the static
    setup still describes it.
    """
    if isinstance(obj, torch.Tensor):
        if forward_ad.unpack_dual(obj).tangent is not None:
            return ("dual", object())       # forward-mode AD: never equal (always rebuilt)
        t = obj.detach()
        if t.numel() <= 64:
            return ("t", str(t.dtype), tuple(t.shape), tuple(t.reshape(-1).tolist()))
        data = t.cpu().contiguous().numpy().tobytes()
        return ("t", str(t.dtype), tuple(t.shape), hashlib.blake2b(data, digest_size=16).digest())
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj).tobytes()
        return ("a", str(obj.dtype), obj.shape, hashlib.blake2b(data, digest_size=16).digest())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return tuple((f.name, fingerprint(getattr(obj, f.name))) for f in dataclasses.fields(obj)
                     if f.name not in _FINGERPRINT_SKIP)
    if isinstance(obj, (list, tuple)):
        return ("l", tuple(fingerprint(x) for x in obj))
    return obj


def _ndim(x) -> int:
    return x.dim() if isinstance(x, torch.Tensor) else int(np.ndim(x))


def orientation_batch(cfg: SimConfig) -> list[SimConfig] | None:
    """One config per orientation of a batch, or None when the config holds one.

    A batch is crystal.misset_deg of shape (B, 3) and/or crystal.orientation of
    shape (B, 3, 3) (the same B); each config shares everything else (shallow copies).
    """
    from .errors import ConfigConflictError, ConfigValueError
    cr = cfg.crystal
    m, u = cr.misset_deg, cr.orientation
    batched_m = m is not None and _ndim(m) == 2
    batched_u = u is not None and _ndim(u) == 3
    if not (batched_m or batched_u):
        return None
    n = len(m) if batched_m else len(u)
    if batched_m and batched_u and len(u) != n:
        raise ConfigConflictError("crystal.orientation", f"a batch of {len(u)} orientations but "
                                                         f"{n} missets")
    if n == 0:
        raise ConfigValueError("crystal.misset_deg" if batched_m else "crystal.orientation",
                               "empty batch of orientations")
    return [dataclasses.replace(cfg, crystal=dataclasses.replace(
        cr, misset_deg=m[i] if batched_m else m, orientation=u[i] if batched_u else u))
        for i in range(n)]
