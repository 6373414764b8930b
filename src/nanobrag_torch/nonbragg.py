"""nonbragg-torch: nonBragg.c, the amorphous-scattering simulator (water, air, ice; SUITE 1).

    python -m nanobrag_torch.nonbragg -stol water.stol -distance 100 -detpixels 1024 ...
    nonbragg-torch ...                       # the same

The C's flags, files and console lines; the physics is amorphous.py's, the
detector geometry and sources are built with detector.py's, beam.py's and
vec.py's functions, the files with io/, the noise with rng.py/noise.py.
From Python:

    cfg = nonbragg.config_from_args(["-stol", "water.stol", "-detpixels", "256"])
    image = nonbragg.simulate(cfg).photons          # (spixels, fpixels) tensor, photons/pixel

`-mode spec` (default) and `-mode c-parity` differ as listed in docs/modes.md
(section nonBragg).  Settings are kept in the C's internal units (metres,
radians, g/m^3) under the C's names, so the set-up reads like the C.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from . import amorphous as am
from .beam import Sources, grid_sources, step_plan
from .cli import FILE, INT, KAHN, NONNEG, NONNEG_INT, NUM, POS, POS_INT, _choice
from .detector import place_detector, DetectorGeometry, LabVectors
from .errors import UsageError
from .flags import FlagError, Parser, run_main, table
from .flags import main_cli as flags_main_cli
from .io.outputs import OutputSet
from .io import read_smv, read_sourcefile, read_stol, write_float_image, write_pgm, write_smv
from .io.cnum import fmt_g
from .io.stol import write_stol_rows
from .units import DEFAULT_FLUENCE, R_E_SQR
from .vec import cross, dot, unitize

PROG = "nonbragg-torch"
BANNER = "nonBragg amorphous material diffraction simulator - James Holton and Ken Frankel 3-19-16"
RTD = 180.0 * (1.0 / math.pi)          # the C's RTD = 180.0*M_1_PI
DBL_MIN = 2.2250738585072014e-308


@dataclass
class NonBraggConfig:
    """nonBragg's settings in the C's internal units and names (metres, radians, g/m^3).

    None means "not given" where the C uses NaN or -1."""
    mode: str = "spec"
    dtype: str = "float64"
    device: str = "cpu"
    # material
    stol_flag: Optional[str] = None
    stol_file: Optional[str] = None
    stol_rows: Optional[np.ndarray] = None        # (n, 2) as read
    stol_mult: float = 1.0e10
    sample_x: float = 1e-4                        # thickness along the beam (m)
    sample_y: float = 1e-4                        # width (m)
    sample_z: float = 1e-4                        # height (m)
    density_g_cm3: float = 1.0                    # as typed (the C keeps it x 1e6, g/m^3)
    molecular_weight: float = 18.0                # g/mol
    molecules: float = 0.0                        # 0: from the density
    # beam
    lambda0: float = 1.0e-10
    dispersion: float = 0.0
    dispsteps: int = -1
    hdivrange: float = -1.0
    vdivrange: float = -1.0
    hdivstep: float = -1.0
    vdivstep: float = -1.0
    hdivsteps: int = -1
    vdivsteps: int = -1
    round_div: bool = True
    source_distance: float = 10.0
    sourcefile: Optional[str] = None
    sources: Optional[np.ndarray] = None          # (n, 5) as read
    beam_vector: tuple = (1.0, 0.0, 0.0)
    polar_vector: tuple = (0.0, 0.0, 1.0)
    polarization: float = 0.0
    nopolar: bool = False
    fluence: float = DEFAULT_FLUENCE
    flux: float = 0.0
    exposure: float = 1.0
    beamsize: float = 1e-4
    # detector
    pixel_size: float = 0.1e-3
    fpixels: int = 0
    spixels: int = 0
    detpixels_given: bool = False
    detsize_x: float = 102.4e-3
    detsize_y: float = 102.4e-3
    distance: float = 100.0e-3
    close_distance: Optional[float] = None
    Xbeam: Optional[float] = None
    Ybeam: Optional[float] = None
    Xclose: Optional[float] = None
    Yclose: Optional[float] = None
    ORGX: Optional[float] = None
    ORGY: Optional[float] = None
    pivot: str = "BEAM"                           # the C's running pivot (spec reading)
    pivot_explicit: Optional[str] = None          # the last -pivot
    detector_rot: list = field(default_factory=lambda: [0.0, 0.0, 0.0])    # radians
    twotheta: float = 0.0
    twotheta_axis: tuple = (0.0, 1.0, 0.0)
    fdet_vector: tuple = (0.0, 0.0, 1.0)
    sdet_vector: tuple = (0.0, -1.0, 0.0)
    odet_vector: Optional[tuple] = None
    pix0_vector: Optional[tuple] = None
    curved: bool = False
    point_pixel: bool = False
    oversample: int = -1
    roi: Optional[tuple] = None                   # xmin xmax ymin ymax
    # header-only
    phi0: float = 0.0
    osc: float = -1.0
    phistep: float = -1.0
    phisteps: int = -1
    # outputs
    adc_offset: float = 40.0
    quantum_gain: float = 1.0
    intfile_scale: float = 0.0
    pgm_scale: float = 0.0
    floatfile: str = "floatimage.bin"
    intfile: str = "intimage.img"
    pgmfile: str = "image.pgm"
    noisefile: str = "noiseimage.img"
    calculate_noise: bool = True
    output_pgm: bool = True
    seed: Optional[int] = None                    # -seed N as typed (the C stores -N)
    Fmap: bool = False
    printout: bool = False
    printout_pixel: Optional[tuple] = None        # (fast, slow)
    progress: bool = True
    # -img: F(stol) from a measured image
    img_file: Optional[str] = None
    img: object = None                            # io.SMVFile
    ignore_values: list = field(default_factory=list)
    stolout_file: str = "output.stol"
    # the C's reading where its substring matching changes the meaning (c-parity)
    c_twotheta: Optional[float] = None
    c_pivot: str = "BEAM"
    c_curved: Optional[bool] = None
    argv: list = field(default_factory=list)

    @property
    def spec(self) -> bool:
        return self.mode == "spec"


# --------------------------------------------------------------------------
# flags

def _m(attr):
    """A length in mm stored in metres (atof/1000, as the C)."""
    def act(cfg, st, vals):
        setattr(cfg, attr, vals[0] / 1000.0)
    return act


def _set(attr, cast=None, pivot=None):
    def act(cfg, st, vals):
        setattr(cfg, attr, cast(vals[0]) if cast else vals[0])
        if pivot:
            _pivot_to(cfg, pivot)
    return act


def _pivot_to(cfg, name):
    cfg.pivot = cfg.c_pivot = name


def _mm_pivot(attr, pivot):
    def act(cfg, st, vals):
        setattr(cfg, attr, vals[0] / 1000.0)
        _pivot_to(cfg, pivot)
    return act


def _const(attr, value):
    def act(cfg, st, vals):
        setattr(cfg, attr, value)
    return act


def _vec(attr):
    def act(cfg, st, vals):
        setattr(cfg, attr, tuple(float(v) for v in vals))
    return act


def _nonzero_vec(attr):
    def act(cfg, st, vals):
        if all(v == 0 for v in vals):
            raise FlagError(f"{st.flag}: the vector must not be (0, 0, 0)")
        setattr(cfg, attr, tuple(float(v) for v in vals))
    return act


def _samplesize(cfg, st, vals):
    cfg.sample_x = cfg.sample_y = cfg.sample_z = vals[0] / 1000


def _sample(attr):
    def act(cfg, st, vals):
        setattr(cfg, attr, vals[0] / 1000)
    return act


def _density(cfg, st, vals):
    cfg.density_g_cm3 = vals[0]


def _twotheta(cfg, st, vals):
    cfg.twotheta = vals[0] / RTD
    cfg.c_twotheta = cfg.twotheta
    _pivot_to(cfg, "SAMPLE")


def _twotheta_axis(cfg, st, vals):
    if all(v == 0 for v in vals):
        raise FlagError(f"{st.flag}: the vector must not be (0, 0, 0)")
    cfg.twotheta_axis = tuple(float(v) for v in vals)
    # SUITE Q7: strstr(argv[i], "-twotheta") also fires: 2theta = X deg, SAMPLE pivot
    cfg.c_twotheta = vals[0] / RTD
    cfg.c_pivot = "SAMPLE"


def _explicit_pivot(cfg, st, vals):
    cfg.pivot_explicit = vals[0].upper()
    _pivot_to(cfg, vals[0].upper())


def _detpixels(which):
    def act(cfg, st, vals):
        if which in ("f", "both"):
            cfg.fpixels = vals[0]
        if which in ("s", "both"):
            cfg.spixels = vals[0]
        cfg.detpixels_given = True
    return act


def _detsize(which):
    def act(cfg, st, vals):
        if which in ("x", "both"):
            cfg.detsize_x = vals[0] / 1000.0
        if which in ("y", "both"):
            cfg.detsize_y = vals[0] / 1000.0
    return act


def _curved(cfg, st, vals):
    cfg.curved = True
    # SUITE Q12: the C needs a word after -curved_det (argc > i+1)
    if st.index == len(st.argv) - 1:
        cfg.c_curved = False


def _polar(cfg, st, vals):
    cfg.polarization = vals[0]
    cfg.nopolar = False


def _roi(cfg, st, vals):
    xmin, xmax, ymin, ymax = vals
    if xmin > xmax or ymin > ymax:
        raise FlagError(f"{st.flag}: need xmin <= xmax and ymin <= ymax, got {xmin} {xmax} {ymin} {ymax}")
    cfg.roi = (xmin, xmax, ymin, ymax)


def _lambda(cfg, st, vals):
    cfg.lambda0 = vals[0] / 1.0e10


def _energy(cfg, st, vals):
    cfg.lambda0 = (12398.42 / vals[0]) / 1.0e10


def _mrad(attr, *also):
    def act(cfg, st, vals):
        for a in (attr,) + also:
            setattr(cfg, a, vals[0] / 1000.0)
    return act


def _divsteps(cfg, st, vals):
    cfg.hdivsteps = cfg.vdivsteps = vals[0]


def _deg(attr):
    def act(cfg, st, vals):
        setattr(cfg, attr, vals[0] / RTD)
    return act


def _rot(i):
    def act(cfg, st, vals):
        cfg.detector_rot[i] = vals[0] / RTD
    return act


def _stol(flag):
    def act(cfg, st, vals):
        cfg.stol_flag, cfg.stol_file, cfg.stol_mult = flag, vals[0], am.STOL_MULT[flag]
    return act


def _noisefile(cfg, st, vals):
    cfg.noisefile = vals[0]
    cfg.calculate_noise = True


def _ignore(cfg, st, vals):
    cfg.ignore_values.append(vals[0])


def _printout_pixel(cfg, st, vals):
    cfg.printout_pixel = (vals[0], vals[1])
    cfg.printout = True                  # the "-printout" pattern matches it too


def _nothing(cfg, st, vals):
    pass


def _flux(cfg, st, vals):
    cfg.flux = vals[0]


FLAGS = (
    table("Material and sample", [
        ("-stol", "FILE", (FILE,), _stol("-stol"), "sin(theta)/lambda (1/A) and F table of the material"),
        ("-4stol", "FILE", (FILE,), _stol("-4stol"), "the same with 4 sin(theta)/lambda in column 1"),
        ("-Q", "FILE", (FILE,), _stol("-Q"), "the same with Q = 4 pi sin(theta)/lambda in column 1"),
        ("-samplesize -sample_size", "MM", (NONNEG,), _samplesize, "cube-shaped sample edge (mm)"),
        ("-thickness -thick -sample_thick -sample_x", "MM", (NONNEG,), _sample("sample_x"),
         "sample thickness along the beam (mm, default 0.1)"),
        ("-width -sample_width -sample_y", "MM", (NONNEG,), _sample("sample_y"), "sample width (mm)"),
        ("-height -heigh -sample_height -sample_heigh -sample_z", "MM", (NONNEG,), _sample("sample_z"),
         "sample height (mm)"),
        ("-density -sample_density -sample_den", "G/CM3", (NONNEG,), _density, "density (g/cm^3, default 1)"),
        ("-MW -molecular -molecular_weight", "G/MOL", (POS,), _set("molecular_weight"),
         "molecular weight (g/mol, default 18)"),
        ("-molecules -sample_molecules", "N", (NONNEG,), _set("molecules"),
         "number of molecules (overrides -density)"),
    ])
    + table("Beam", [
        ("-lambda -wave -wavelength", "A", (POS,), _lambda, "wavelength (Angstrom, default 1)"),
        ("-energy", "EV", (POS,), _energy, "photon energy (eV)"),
        ("-dispersion", "PCT", (NONNEG,), _set("dispersion", cast=lambda v: v / 100.0),
         "spectral dispersion delta-lambda/lambda (percent)"),
        ("-dispsteps", "N", (INT,), _set("dispsteps"), "number of wavelengths"),
        ("-divergence", "MRAD", (NONNEG,), _mrad("hdivrange", "vdivrange"), "h and v divergence range"),
        ("-hdivrange", "MRAD", (NONNEG,), _mrad("hdivrange"), "horizontal divergence range"),
        ("-vdivrange", "MRAD", (NONNEG,), _mrad("vdivrange"), "vertical divergence range"),
        ("-hdivstep", "MRAD", (NONNEG,), _mrad("hdivstep"), "horizontal divergence step"),
        ("-vdivstep", "MRAD", (NONNEG,), _mrad("vdivstep"), "vertical divergence step"),
        ("-hdivsteps", "N", (INT,), _set("hdivsteps"), "horizontal divergence steps"),
        ("-vdivsteps", "N", (INT,), _set("vdivsteps"), "vertical divergence steps"),
        ("-divsteps", "N", (INT,), _divsteps, "h and v divergence steps"),
        ("-round_div", "", (), _const("round_div", True), "elliptical divergence (default)"),
        ("-square_div", "", (), _const("round_div", False), "rectangular divergence grid"),
        ("-source_distance", "MM", (POS,), _m("source_distance"), "distance of generated sources (mm)"),
        ("-sourcefile", "FILE", (FILE,), _set("sourcefile"), "X Y Z weight lambda per source (m)"),
        ("-beam_vector", "X Y Z", (NUM,) * 3, _nonzero_vec("beam_vector"), "beam direction"),
        ("-polar_vector", "X Y Z", (NUM,) * 3, _nonzero_vec("polar_vector"), "polarisation E-vector axis"),
        ("-polar", "K", (KAHN,), _polar, "Kahn polarisation factor (default 0)"),
        ("-nopolar", "", (), _const("nopolar", True), "no polarisation factor"),
        ("-fluence", "PH/M2", (NONNEG,), _set("fluence"), "photons per m^2 (default: r_e^2 fluence = 1)"),
        ("-flux", "PH/S", (NONNEG,), _flux, "photons per second (with -exposure, -beamsize)"),
        ("-exposure", "S", (NONNEG,), _set("exposure"), "exposure time (s, default 1)"),
        ("-beamsize", "MM", (NUM,), _m("beamsize"), "square beam edge (mm, default 0.1; clips the sample)"),
    ])
    + table("Detector", [
        ("-distance", "MM", (POS,), _mm_pivot("distance", "BEAM"), "sample to beam spot distance (mm)"),
        ("-close_distance", "MM", (POS,), _mm_pivot("close_distance", "SAMPLE"),
         "sample to detector plane distance (mm)"),
        ("-Xbeam", "MM", (NUM,), _mm_pivot("Xbeam", "BEAM"), "beam spot along fast (mm)"),
        ("-Ybeam", "MM", (NUM,), _mm_pivot("Ybeam", "BEAM"), "beam spot along slow (mm)"),
        ("-Xclose", "MM", (NUM,), _mm_pivot("Xclose", "SAMPLE"), "nearest point along fast (mm)"),
        ("-Yclose", "MM", (NUM,), _mm_pivot("Yclose", "SAMPLE"), "nearest point along slow (mm)"),
        ("-ORGX", "PX", (NUM,), _set("ORGX", pivot="SAMPLE"), "nearest point along fast (pixels)"),
        ("-ORGY", "PX", (NUM,), _set("ORGY", pivot="SAMPLE"), "nearest point along slow (pixels)"),
        ("-pivot", "beam|sample", (_choice("beam", "sample"),), _explicit_pivot, "detector rotation pivot"),
        ("-detector_rotx", "DEG", (NUM,), _rot(0), "detector rotation about x"),
        ("-detector_roty", "DEG", (NUM,), _rot(1), "detector rotation about y"),
        ("-detector_rotz", "DEG", (NUM,), _rot(2), "detector rotation about z"),
        ("-twotheta", "DEG", (NUM,), _twotheta, "detector swing about the two-theta axis"),
        ("-twotheta_axis", "X Y Z", (NUM,) * 3, _twotheta_axis, "two-theta axis (default 0 1 0)"),
        ("-fdet_vector", "X Y Z", (NUM,) * 3, _nonzero_vec("fdet_vector"), "fast detector axis"),
        ("-sdet_vector", "X Y Z", (NUM,) * 3, _nonzero_vec("sdet_vector"), "slow detector axis"),
        ("-odet_vector", "X Y Z", (NUM,) * 3, _nonzero_vec("odet_vector"),
         "detector normal (must be fast x slow: nonBragg derives it)"),
        ("-pix0_vector", "X Y Z", (NUM,) * 3, _vec("pix0_vector"),
         "first pixel's outer corner (m); the C ignores it"),
        ("-pixel", "MM", (POS,), _m("pixel_size"), "pixel size (mm, default 0.1)"),
        ("-detpixels", "N", (POS_INT,), _detpixels("both"), "pixels on both axes"),
        ("-detpixels_f -detpixels_x", "N", (POS_INT,), _detpixels("f"), "pixels along fast"),
        ("-detpixels_s -detpixels_y", "N", (POS_INT,), _detpixels("s"), "pixels along slow"),
        ("-detsize", "MM", (POS,), _detsize("both"), "detector size (mm, default 102.4)"),
        ("-detsize_x", "MM", (POS,), _detsize("x"), "detector size along fast (mm)"),
        ("-detsize_y", "MM", (POS,), _detsize("y"), "detector size along slow (mm)"),
        ("-curved_det", "", (), _curved, "spherical detector"),
        ("-point_pixel", "", (), _const("point_pixel", True), "solid angle 1/R^2"),
        ("-oversample", "N", (INT,), _set("oversample"), "sub-pixels per pixel side"),
        ("-roi", "XMIN XMAX YMIN YMAX", (NONNEG_INT,) * 4, _roi, "render only these pixels (inclusive)"),
        ("-phi", "DEG", (NUM,), _deg("phi0"), "spindle angle (header only)"),
        ("-osc", "DEG", (NONNEG,), _deg("osc"), "oscillation range (header only)"),
        ("-phistep", "DEG", (NONNEG,), _deg("phistep"), "phi step (header only)"),
        ("-phisteps", "N", (INT,), _set("phisteps"), "phi steps (header only)"),
        ("-spindle_axis", "X Y Z", (NUM,) * 3, _nothing, "accepted, no effect (no crystal)"),
    ])
    + table("Output", [
        ("-floatfile -floatimage", "FILE", (FILE,), _set("floatfile"), "float image (default floatimage.bin)"),
        ("-intfile -intimage", "FILE", (FILE,), _set("intfile"), "SMV image (default intimage.img)"),
        ("-pgmfile -pgmimage", "FILE", (FILE,), _set("pgmfile"), "PGM image (default image.pgm)"),
        ("-noisefile -noiseimage", "FILE", (FILE,), _noisefile, "SMV image with Poisson noise"),
        ("-nonoise", "", (), _const("calculate_noise", False), "no noise image"),
        ("-nopgm", "", (), _const("output_pgm", False), "no PGM image (the C writes it anyway)"),
        ("-scale", "X", (NUM,), _set("intfile_scale"), "int image scale (default 55000/max)"),
        ("-pgmscale", "X", (NUM,), _set("pgm_scale"), "PGM scale (default 250/(5 rmsd))"),
        ("-adc", "ADU", (NUM,), _set("adc_offset"), "offset of the SMV images (default 40)"),
        ("-gain", "ADU/PH", (POS,), _set("quantum_gain"), "ADU per photon (-img only)"),
        ("-seed", "N", (INT,), _set("seed"), "noise seed (default: time)"),
        ("-Fmap", "", (), _const("Fmap", True), "float image = interpolated F"),
        ("-img", "FILE", (FILE,), _set("img_file"), "SMV image: geometry, then F(stol) to -stolout"),
        ("-ignore", "VALUE", (NUM,), _ignore, "-img pixel value to skip (repeatable)"),
        ("-stolout", "FILE", (FILE,), _set("stolout_file"), "F(stol) from -img (default output.stol)"),
        ("-printout", "", (), _const("printout", True), "print pixel values"),
        ("-printout_pixel", "F S", (NONNEG_INT, NONNEG_INT), _printout_pixel, "print one pixel"),
        ("-noprogress", "", (), _const("progress", False), "no progress meter"),
        ("-progress", "", (), _const("progress", True), "progress meter"),
        ("-coherent", "", (), _nothing, "accepted, no effect"),
        ("-noreject", "", (), _nothing, "accepted, no effect"),
    ])
    + table("Port", [
        ("-mode", "spec|c-parity", (_choice("spec", "c-parity"),), _set("mode"),
         "spec (default) or the C bit for bit (docs/modes.md)"),
        ("-dtype", "float64|float32", (_choice("float64", "float32"),), _set("dtype"), "precision"),
        ("-device", "cpu|cuda|auto", (_choice("cpu", "cuda", "auto", pattern=r"cuda:\d+"),), _set("device"),
         "where tensors live"),
    ])
)
# spelled in nonBragg.c's own example command and the README, never read by its parser
REFUSED = {"-hdiv": "-hdivrange MRAD, -hdivstep MRAD or -hdivsteps N",
           "-vdiv": "-vdivrange MRAD, -vdivstep MRAD or -vdivsteps N",
           "-dispstep": "-dispsteps N (count) or -dispersion PCT (range)"}
PARSER = Parser(PROG, FLAGS, refused=REFUSED)


class _State:
    def __init__(self, argv):
        self.argv = argv
        self.flag = ""
        self.index = -1


def config_from_args(argv) -> NonBraggConfig:
    """nonBragg's flags -> NonBraggConfig, input files read (-stol, -img, -sourcefile);
    nothing written.  ConfigError for bad input, UsageError where the C prints its usage."""
    argv = [str(a) for a in argv]
    uses = PARSER.tokenize(argv)
    cfg = NonBraggConfig(argv=argv)
    st = _State(argv)
    # -img is read before every other flag (the C's first pass)
    img = [u for u in uses if u.flag.name == "-img"]
    if img:
        _ingest_img(cfg, img[-1].values[0])
    for use in uses:
        st.flag, st.index = use.name, use.index
        use.flag.apply(cfg, st, use.values)
    if cfg.stol_file is None:
        raise UsageError("")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise FlagError("-device cuda: no CUDA device available")
    cfg.stol_rows = read_stol(cfg.stol_file, strict=cfg.spec)
    if cfg.sourcefile is not None:
        cfg.sources = read_sourcefile(cfg.sourcefile, strict=cfg.spec)
    _check(cfg)
    return cfg


def _ingest_img(cfg, path):
    smv = read_smv(path)
    from .io import header_value
    v = lambda key: header_value(smv.header, key)  # noqa: E731
    cfg.img_file, cfg.img = path, smv
    cfg.fpixels, cfg.spixels = smv.width, smv.height
    if v("PIXEL_SIZE") is not None:
        cfg.pixel_size = v("PIXEL_SIZE") / 1000.0
    cfg.detsize_x = cfg.pixel_size * cfg.fpixels
    cfg.detsize_y = cfg.pixel_size * cfg.spixels
    # "DISTANCE" also matches CLOSE_DISTANCE: the last one in the header wins (the C)
    for key, attr, div in (("DISTANCE", "distance", 1000.0), ("CLOSE_DISTANCE", "close_distance", 1000.0),
                           ("WAVELENGTH", "lambda0", 1e10), ("BEAM_CENTER_X", "Xbeam", 1000.0)):
        if v(key) is not None:
            setattr(cfg, attr, v(key) / div)
    if v("BEAM_CENTER_Y") is not None:
        cfg.Ybeam = cfg.detsize_y - v("BEAM_CENTER_Y") / 1000.0
    for key, attr in (("ORGX", "ORGX"), ("ORGY", "ORGY")):
        if v(key) is not None:
            setattr(cfg, attr, v(key))
    if v("PHI") is not None:
        cfg.phi0 = v("PHI") / RTD
    if v("OSC_RANGE") is not None:
        cfg.osc = v("OSC_RANGE") / RTD


def _check(cfg):
    if cfg.spec:
        if cfg.flux != 0.0 and cfg.exposure > 0.0 and cfg.beamsize == 0:
            raise FlagError("-beamsize 0 with -flux: the fluence would be infinite")
        if cfg.odet_vector is not None:
            f = unitize(torch.tensor(cfg.fdet_vector, dtype=torch.float64))[0]
            s = unitize(torch.tensor(cfg.sdet_vector, dtype=torch.float64))[0]
            o = unitize(torch.tensor(cfg.odet_vector, dtype=torch.float64))[0]
            if float((o - unitize(cross(f, s))[0]).abs().max()) > 1e-9:
                raise FlagError("-odet_vector: nonBragg derives the detector normal as fast x slow; "
                                "give -fdet_vector/-sdet_vector instead")
    if cfg.img is not None and cfg.roi is not None:
        raise FlagError("-roi with -img: not supported (the C's F(stol) binning overruns its "
                        "buffers for pixels outside the ROI)")


# --------------------------------------------------------------------------
# set-up, in the C's order (SUITE 1.2)

def _pixel_count(size, pixel, exact):
    """The C's ceil(size/pixel) (c-parity, SUITE Q1); spec: N for -detpixels N, and a
    quotient within 1e-9 of an integer is that integer (float fuzz must not add a pixel)."""
    q = size / pixel
    if exact:
        n = round(q)
        if abs(q - n) <= 1e-9 * max(1.0, abs(q)):
            return int(n)
    return int(math.ceil(q))


@dataclass
class Setup:
    """What the C has decided before its pixel loop."""
    geom: DetectorGeometry
    sources: Sources
    table: am.StolTable
    molecules: float
    sample: tuple                 # (x, y, z) m after beam clipping
    density: float                # g/cm^3
    fluence: float
    oversample: int
    steps: int
    roi: tuple                    # (xmin, xmax, ymin, ymax) as the C prints it
    hplan: tuple
    vplan: tuple
    dplan: tuple
    divsteps: int
    osc: float
    twotheta: float
    polar_vector: torch.Tensor
    log: List[str]


def setup(cfg: NonBraggConfig, dtype=torch.float64, device="cpu") -> Setup:
    """Everything before the pixel loop: detector size, geometry, sample, table, sources."""
    log: List[str] = []
    spec = cfg.spec
    t = lambda x: torch.as_tensor(x, dtype=dtype, device=device)  # noqa: E731
    px = cfg.pixel_size
    detsize_x, detsize_y = cfg.detsize_x, cfg.detsize_y
    if cfg.fpixels:
        detsize_x = px * cfg.fpixels
    if cfg.spixels:
        detsize_y = px * cfg.spixels
    fpixels = cfg.fpixels if (spec and cfg.fpixels) else _pixel_count(detsize_x, px, spec)
    spixels = cfg.spixels if (spec and cfg.spixels) else _pixel_count(detsize_y, px, spec)
    if fpixels <= 0 or spixels <= 0:
        raise FlagError(f"the detector has {fpixels}x{spixels} pixels (check -detsize and -pixel)")
    Xclose = cfg.ORGX * px if cfg.ORGX is not None else cfg.Xclose
    Yclose = cfg.ORGY * px if cfg.ORGY is not None else cfg.Yclose
    Xclose = (detsize_x - px) / 2.0 if Xclose is None else Xclose
    Yclose = (detsize_y + px) / 2.0 if Yclose is None else Yclose
    Xbeam = Xclose if cfg.Xbeam is None else cfg.Xbeam
    Ybeam = Yclose if cfg.Ybeam is None else cfg.Ybeam
    roi = cfg.roi if cfg.roi is not None else (0, fpixels, 0, spixels)
    if cfg.roi is not None and (roi[1] >= fpixels or roi[3] >= spixels) and spec:
        raise FlagError(f"-roi {' '.join(map(str, roi))} is outside the detector "
                        f"(fast 0..{fpixels - 1}, slow 0..{spixels - 1})")

    # fluence and the sample (beam clipping, molecules)
    fluence, beamsize = cfg.fluence, cfg.beamsize
    if cfg.flux != 0.0 and cfg.exposure > 0.0 and beamsize >= 0:
        fluence = cfg.flux * cfg.exposure / beamsize / beamsize
    sx, sy, sz = cfg.sample_x, cfg.sample_y, cfg.sample_z
    if beamsize >= 0:
        if beamsize < sy:
            log.append(f"WARNING: clipping sample ({fmt_g(sy)} m high) with beam ({fmt_g(beamsize)} m)")
        if beamsize < sz:
            log.append(f"WARNING: clipping sample ({fmt_g(sz)} m wide) with beam ({fmt_g(beamsize)} m)")
    molecules, density, sample = am.molecules_in_sample(
        sx, sy, sz, cfg.density_g_cm3, cfg.molecular_weight, cfg.molecules,
        beamsize if beamsize >= 0 else None)

    # unit vectors
    beam = unitize(t(cfg.beam_vector))[0]
    fdet = unitize(t(cfg.fdet_vector))[0]
    sdet = unitize(t(cfg.sdet_vector))[0]
    odet = unitize(cross(fdet, sdet))[0]
    polar = unitize(t(cfg.polar_vector))[0]
    vert = unitize(cross(beam, polar))[0]

    # header-only phi logic (osc for OSC_RANGE)
    osc = _osc(cfg)
    hplan = step_plan(cfg.hdivsteps, cfg.hdivrange, cfg.hdivstep, 1.0)
    vplan = step_plan(cfg.vdivsteps, cfg.vdivrange, cfg.vdivstep, 1.0)
    dplan = step_plan(cfg.dispsteps, cfg.dispersion, -1.0, 1.0)

    # detector geometry (SUITE 1.2 step 7)
    c_parity = not spec
    twotheta = cfg.c_twotheta if (c_parity and cfg.c_twotheta is not None) else cfg.twotheta
    pivot = cfg.c_pivot if c_parity else (cfg.pivot_explicit or cfg.pivot)
    curved = cfg.curved if not (c_parity and cfg.c_curved is False) else False
    rx, ry, rz = (t(a) for a in cfg.detector_rot)
    tt = t(twotheta)
    axis = t(cfg.twotheta_axis)                                  # never unitised (SUITE Q8)
    log.append("pivoting detector around sample" if pivot == "SAMPLE" else
               "pivoting detector around direct beam spot")
    close = t(cfg.close_distance) if cfg.close_distance is not None else None
    pix0, fdet, sdet, odet, ratio = place_detector(
        (fdet, sdet, odet), beam, (rx, ry, rz), axis, tt, pivot, (Xclose, Yclose), (Xbeam, Ybeam),
        cfg.distance, close, abs_close=False)
    if spec and cfg.pix0_vector is not None:
        pix0 = t(cfg.pix0_vector)
    Xclose = -dot(pix0, fdet)
    Yclose = -dot(pix0, sdet)
    close = dot(pix0, odet)
    newvec = close / ratio * beam - pix0
    Xbeam = dot(fdet, newvec)
    Ybeam = dot(sdet, newvec)
    distance = close / ratio
    vectors = LabVectors(beam, fdet, sdet, odet, axis, polar, t((0.0, 0.0, 1.0)), vert, False)
    geom = DetectorGeometry(
        convention="nonBragg", pivot=pivot, fpixels=fpixels, spixels=spixels, pixel_size_m=px,
        detsize_f_m=detsize_x, detsize_s_m=detsize_y, pix0=pix0, fdet=fdet, sdet=sdet, odet=odet,
        beam=beam, distance=distance, close_distance=close, Fbeam=Xbeam, Sbeam=Ybeam,
        Fclose=Xclose, Sclose=Yclose, Xbeam=Xbeam, Ybeam=Ybeam, Xclose=Xclose, Yclose=Yclose,
        orgx=Xclose / px, orgy=Yclose / px, dials_origin_mm=1000.0 * torch.stack((pix0[2], pix0[1], -pix0[0])),
        twotheta_rad=tt, twotheta_axis=axis, curved=curved, point_pixel=cfg.point_pixel, vectors=vectors)

    # the material table
    log.append(f"reading {cfg.stol_file}")
    table_ = am.stol_table(cfg.stol_rows, cfg.stol_mult, device=device)

    # sources
    lambda0 = cfg.lambda0
    if cfg.sources is not None:
        src = _file_sources(cfg, beam, lambda0, dtype, device)
        divsteps = -1                                            # the C never counts them here
    else:
        src = grid_sources(hplan, vplan, dplan, cfg.round_div, lambda0, beam, polar, vert,
                           cfg.source_distance, dtype, device)
        for hdiv, vdiv in src.deviations:
            log.append(f"divergence deviation: {fmt_g(hdiv)} {fmt_g(vdiv)}")
        for k in range(dplan[0]):
            log.append(f"lambda{k} = {lambda0 * (1.0 + dplan[2] * k - dplan[1] / 2.0):.15g}")
        divsteps = src.divsteps
    n_src = src.incident.shape[0]
    log.append(f"  created a total of {n_src} sources:")
    pos = src.position.detach().cpu().numpy()
    lam = src.wavelength.detach().cpu().numpy()
    w = src.weight.detach().cpu().numpy() if src.weight is not None else np.ones(n_src)
    for i in range(n_src):
        log.append(f"{fmt_g(pos[i, 0])} {fmt_g(pos[i, 1])} {fmt_g(pos[i, 2])}   {fmt_g(w[i])} {fmt_g(lam[i])}")
    oversample = cfg.oversample if cfg.oversample > 0 else 1
    return Setup(geom, src, table_, molecules, sample, density, fluence, oversample,
                 n_src * oversample * oversample, roi, hplan, vplan, dplan, divsteps, osc, twotheta, polar, log)


def _file_sources(cfg, beam, lambda0, dtype, device) -> Sources:
    """-sourcefile: missing X, Y, Z = -source_distance * beam, weight 1, lambda = lambda0;
    weights multiply the image as they are (the C does not normalise them)."""
    rows = np.asarray(cfg.sources, dtype=np.float64)
    b = beam.detach().cpu().numpy()
    pos = rows[:, :3].copy()
    for c in range(3):
        pos[:, c] = np.where(np.isnan(pos[:, c]), -cfg.source_distance * b[c], pos[:, c])
    w = np.where(np.isnan(rows[:, 3]), 1.0, rows[:, 3])
    lam = np.where(np.isnan(rows[:, 4]), lambda0, rows[:, 4])
    pos_t = torch.as_tensor(pos, dtype=dtype, device=device)
    return Sources(-unitize(pos_t)[0], torch.as_tensor(lam, dtype=dtype, device=device),
                   torch.as_tensor(w, dtype=dtype, device=device), pos_t)


def _osc(cfg):
    """OSC_RANGE: the C's phi-step logic (only osc reaches the header)."""
    osc, phistep, phisteps = cfg.osc, cfg.phistep, cfg.phisteps
    if phisteps < 0:
        if osc < 0.0:
            osc = 0.0 if phistep <= 0.0 else phistep
    else:
        if osc < 0.0:
            osc = 1.0 / RTD if phistep <= 0.0 else phistep
    return osc


# --------------------------------------------------------------------------
# the library entry point

@dataclass
class NonBraggImage:
    """simulate()'s result: photons (S, F) tensor (float image before its float32
    rounding; with -Fmap the interpolated F), the per-pixel record of render_amorphous,
    and the set-up."""
    photons: torch.Tensor
    pixels: am.AmorphousPixels
    setup: Setup


def _device(cfg):
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def simulate(cfg: NonBraggConfig, su: Optional[Setup] = None) -> NonBraggImage:
    """The amorphous image of cfg (SUITE 1.3): photons per pixel as a (spixels, fpixels) tensor."""
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    device = _device(cfg)
    su = su or setup(cfg, dtype, device)
    roi = su.roi
    pixels = am.render_amorphous(
        su.geom, su.sources, su.table, molecules=su.molecules, fluence=su.fluence,
        kahn=cfg.polarization, polar_axis=su.polar_vector, nopolar=cfg.nopolar,
        oversample=su.oversample, roi=roi, sequential=not cfg.spec, abs_close=cfg.spec)
    photons = pixels.F_last.to(pixels.photons.dtype) if cfg.Fmap else pixels.photons
    if cfg.Fmap:
        S, F = photons.shape
        mask = _roi_mask(S, F, roi, photons.device)
        photons = torch.where(mask, photons, torch.zeros_like(photons))
    return NonBraggImage(photons, pixels, su)


def _roi_mask(S, F, roi, device):
    xmin, xmax, ymin, ymax = roi
    f = torch.arange(F, device=device)
    s = torch.arange(S, device=device)
    return ((s >= ymin) & (s <= ymax))[:, None] & ((f >= xmin) & (f <= xmax))[None, :]


# --------------------------------------------------------------------------
# the command: outputs and console, in the C's order

def _progress_lines(rendered: int, roi) -> List[str]:
    xmin, xmax, ymin, ymax = roi
    pp = (xmax - xmin + 1) * (ymax - ymin + 1)
    if pp // 100 <= 0 or rendered <= 0:
        return []
    p = np.arange(rendered, dtype=np.int64)
    hit = (p % (pp // 20) == 0) | (((10 * p < pp) | (10 * p > 9 * pp)) & (p % (pp // 100) == 0))
    return [f"{int(v)}% done" for v in (p[hit] * 100 // pp)]


def _seq(x: np.ndarray) -> float:
    """Left-to-right double sum (the C's running sums)."""
    return float(np.cumsum(x, dtype=np.float64)[-1]) if x.size else 0.0


def run(cfg: NonBraggConfig) -> int:
    """The nonBragg command: prints the C's lines, writes its files."""
    out = []
    say = out.append
    if cfg.img is not None:
        say(f"reading {cfg.img_file}")
        say(f"mmap({cfg.img_file}) = 0x0")
    say(BANNER)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    su = setup(cfg, dtype, _device(cfg))
    g = su.geom
    out.extend(su.log)          # clipping warnings, pivot, table, sources: the C's order
    S, F = g.spixels, g.fpixels
    spec = cfg.spec
    n_src = su.sources.incident.shape[0]
    say(f"  {su.table.nodes} initialized F points (will cubic-spline interpolate between them)")
    say(f"  wave={fmt_g(cfg.lambda0)} meters +/- {fmt_g(su.dplan[1] * 100)}% in {su.dplan[0]} steps")
    say("  polarization effect disabled" if cfg.nopolar else f"  Kahn polarization factor: {cfg.polarization:f}")
    if g.curved:
        say("  curved detector: all pixels same distance from origin")
    if cfg.point_pixel:
        say("  pixel obliquity effect disabled")
    if cfg.Fmap:
        say("  Fmap mode: plotting structure factor at every pixel")
    x, y, z = su.sample
    say(f"  incident fluence: {fmt_g(su.fluence)} photons/m^2")
    say(f"  sample is {fmt_g(x)} m thick x {fmt_g(y)} m high x {fmt_g(z)} m wide, {fmt_g(su.density)} "
        f"g/cm^3 and {fmt_g(cfg.molecular_weight)} g/mol ({fmt_g(su.molecules)} molecules)")
    v3 = lambda v: " ".join(fmt_g(float(c)) for c in v.detach().cpu())  # noqa: E731
    say(f"  distance={fmt_g(float(g.distance))} detsize={fmt_g(g.detsize_f_m)}x{fmt_g(g.detsize_s_m)}  "
        f"pixel={fmt_g(g.pixel_size_m)} meters ({F}x{S} pixels)")
    say(f"  Xbeam={fmt_g(float(g.Xbeam))} Ybeam={fmt_g(float(g.Ybeam))}")
    say(f"  detector origin: {v3(g.pix0)}")
    say(f"  DIRECTION_OF_DETECTOR_X-AXIS= {v3(g.fdet)}")
    say(f"  DIRECTION_OF_DETECTOR_Y-AXIS= {v3(g.sdet)}")
    say(f"  INCIDENT_BEAM_DIRECTION= {v3(g.beam)}")
    say(f"  POLARIZATION_PLANE_NORMAL= {v3(su.polar_vector)}")
    xmin, xmax, ymin, ymax = su.roi
    say(f"  roi: {xmin} < x < {xmax} && {ymin} < y < {ymax}")
    say(f"  hdivrange={fmt_g(su.hplan[1])} hdivstep={fmt_g(su.hplan[2])}  radians")
    say(f"  vdivrange={fmt_g(su.vplan[1])} vdivstep={fmt_g(su.vplan[2])}  radians")
    say(f"  {su.divsteps} divergence steps")
    say(f"  {n_src} sources")
    say(f"  {su.oversample} pixel oversample steps")
    c_seed = -_atoi_wrap(cfg.seed) if cfg.seed is not None else -int(time.time())
    if cfg.calculate_noise:
        say("")
        say("  noise image paramters:")
        say(f"  seed: {c_seed}")
    _flush(out)

    result = simulate(cfg, su)
    px = result.pixels
    with torch.no_grad():
        img = result.photons.detach().to("cpu", torch.float64).numpy()
    img32 = img.astype(np.float32)
    mask = _roi_mask(S, F, su.roi, "cpu").numpy()
    rendered = int(mask.sum())
    if cfg.printout:
        _printout(cfg, result, img32, mask, say)
    elif cfg.progress:
        out.extend(_progress_lines(rendered, su.roi))
    say("")
    omega_sum = _seq(px.omega_sum.detach().cpu().numpy()[mask])
    if spec:
        omega_sum /= su.oversample * su.oversample           # SUITE Q9: the C sums whole-pixel omegas
    say(f"solid angle subtended by detector = {fmt_g(omega_sum)} steradian ( {fmt_g(100 * omega_sum / 4 / math.pi)}% sphere)")
    _flush(out)

    # -img: F(stol) per bin
    n_stats = rendered
    stol_lines = None
    if cfg.img is not None:
        stol_lines, n_last = _stolout(cfg, su, result, mask, say)
        if not spec:
            n_stats = n_last                                   # SUITE Q4: the C's n is the last bin's
    vals = img32[mask].astype(np.float64)
    sq = (img32[mask] * img32[mask]).astype(np.float64)         # float32 squares, as the C
    total = _seq(vals)
    n = n_stats if n_stats > 0 else 1
    avg = total / n
    n = max(n, 2)
    rms = math.sqrt(_seq(sq) / (n - 1))
    flat = np.concatenate([img32.reshape(-1), np.zeros(1, np.float32)])
    idx = np.flatnonzero(mask.reshape(-1))
    shifted = flat[idx + (0 if spec else 1)].astype(np.float64)  # SUITE Q2: the C reads pixel j+1
    dev = shifted - avg
    nr = max(idx.size, 2)
    rmsd = math.sqrt(_seq(dev * dev) / (nr - 1))
    # max_I: the first pixel above all before it, starting from 0 (NaN never wins)
    flat_img = np.where(mask & ~np.isnan(img32), img32, -np.inf).reshape(-1)
    j = int(np.argmax(flat_img))
    max_I = float(flat_img[j]) if flat_img[j] > 0 else 0.0
    if max_I > 0:
        max_x = float(px.Fdet_last.reshape(-1)[j])
        max_y = float(px.Sdet_last.reshape(-1)[j])
    else:
        max_x = max_y = 0.0

    if stol_lines is not None:
        write_stol_rows(cfg.stolout_file, stol_lines)
        say(f"wrote {cfg.stolout_file} as {len(stol_lines)} lines of text")
    say(f"writing {cfg.floatfile} as {S * F} 4-byte floats")
    _flush(out)
    write_float_image(cfg.floatfile, img32)
    say(f"max_I = {fmt_g(max_I)}  at {fmt_g(max_x)} {fmt_g(max_y)}")
    say(f"mean= {fmt_g(avg)} rms= {fmt_g(rms)} rmsd= {fmt_g(rmsd)}")
    scale = cfg.intfile_scale
    if scale <= 0.0:
        scale = 55000.0 / max_I if max_I > 0.0 else 1.0
    say(f"intfile_scale = {fmt_g(scale)}")
    header = _smv_header(cfg, su)
    say(f"writing {cfg.intfile} as 2-byte integers")
    _flush(out)
    write_smv(cfg.intfile, int_image(img32, mask, scale, cfg.adc_offset), header)
    pgm_scale = cfg.pgm_scale
    if pgm_scale <= 0.0:
        pgm_scale = 250.0 / (5.0 * rmsd) if rmsd > 0.0 else scale
    say(f"pgm_scale = {fmt_g(pgm_scale)}")
    if cfg.output_pgm or not spec:                              # the C always writes it
        say(f"writing {cfg.pgmfile} as 1-byte integers")
        _flush(out)
        write_pgm(cfg.pgmfile, pgm_image(img32, mask, pgm_scale, spec), pgm_scale)
    if cfg.calculate_noise:
        noise, photons, overloads = noise_image(img32, su.roi, cfg.adc_offset, c_seed, cfg.seed, spec)
        say(f"{photons:.0f} photons on noise image ({overloads} overloads)")
        say(f"writing {cfg.noisefile} as 2-byte integers")
        _flush(out)
        write_smv(cfg.noisefile, noise, header)
    _flush(out)
    return 0


def _flush(out):
    if out:
        sys.stdout.write("\n".join(out) + "\n")
        out.clear()


def _atoi_wrap(v: int) -> int:
    return ((int(v) + 2 ** 31) % 2 ** 32) - 2 ** 31


def int_image(img32: np.ndarray, mask: np.ndarray, scale: float, adc: float) -> np.ndarray:
    """SMV pixels: float * scale + adc clamped to 0..65535, rounded to the nearest count as
    the C does it (floorf of the float32 test + 0.5, the product fused), 0 outside the ROI."""
    from .rng import fma64_np
    f = img32.astype(np.float64)
    test = fma64_np(f, np.full_like(f, scale), np.full_like(f, adc))
    test = np.clip(test, 0.0, 65535.0)
    with np.errstate(invalid="ignore"):
        v = np.floor((test + 0.5).astype(np.float32))
    v = np.where(np.isnan(v), 0, v)
    return np.where(mask, v, 0).astype(np.uint16)


def pgm_image(img32: np.ndarray, mask: np.ndarray, pgm_scale: float, spec: bool) -> np.ndarray:
    """PGM bytes: min(255, float * pgm_scale) truncated; c-parity keeps the C's wrap of
    negative values ((unsigned char) of an int: -1.95 -> 255); spec clamps them to 0."""
    test = np.minimum(img32.astype(np.float64) * pgm_scale, 255.0)
    with np.errstate(invalid="ignore"):
        if spec:
            v = np.trunc(np.where(np.isnan(test), 0.0, np.maximum(test, 0.0)))
        else:
            ok = np.isfinite(test) & (test > -2147483649.0)
            v = np.where(ok, np.trunc(np.where(ok, test, 0.0)), 0.0).astype(np.int64) & 0xFF
    return np.where(mask, v, 0).astype(np.uint8)


def noise_image(img32, roi, adc, c_seed, seed, spec):
    """(uint16 image, photons, overloads): the C's ran1/poidev stream (c-parity) or a
    seeded torch Poisson draw (spec), with the C's adc/clip rules (noise.py)."""
    from .noise import c_noise_image, spec_noise_image
    from .rng import Ran1
    if spec:
        return spec_noise_image(img32, seed, roi, adc)
    with np.errstate(over="ignore"):          # float32 casts of huge means: inf, as the C
        return c_noise_image(img32, 0, roi, adc, rng=Ran1(c_seed))


def _smv_header(cfg, su):
    g = su.geom
    px = g.pixel_size_m
    return [("HEADER_BYTES", 512), ("DIM", 2), ("BYTE_ORDER", "little_endian"), ("TYPE", "unsigned_short"),
            ("SIZE1", g.fpixels), ("SIZE2", g.spixels), ("PIXEL_SIZE", px * 1000.0),
            ("DISTANCE", float(g.distance) * 1000.0), ("WAVELENGTH", cfg.lambda0 * 1e10),
            ("BEAM_CENTER_X", float(g.Xbeam) * 1000.0),
            ("BEAM_CENTER_Y", (g.detsize_s_m - float(g.Ybeam)) * 1000),
            ("ORGX", float(g.Xclose) / px), ("ORGY", float(g.Yclose) / px),
            ("CLOSE_DISTANCE", float(g.close_distance) * 1000.0),
            ("PHI", cfg.phi0 * RTD), ("OSC_START", cfg.phi0 * RTD), ("OSC_RANGE", su.osc * RTD),
            ("TWOTHETA", float(su.twotheta) * RTD), ("DETECTOR_SN", "000"), ("BEAMLINE", "fake")]


def _printout(cfg, result, img32, mask, say):
    """-printout / -printout_pixel lines (the C's F and I are uninitialised: c-parity prints
    0 and the last source's weight, spec the pixel's last F and its unscaled sum)."""
    su, px = result.setup, result.pixels
    g = su.geom
    want = cfg.printout_pixel
    w = su.sources.weight
    last_w = float(w[-1]) if w is not None else 1.0
    scale = R_E_SQR * su.fluence * su.molecules / su.steps
    rows = np.argwhere(mask)
    for s, f in rows:
        if want is not None and (f, s) != tuple(want):
            continue
        # the last sub-pixel's position, for the C's 2theta print
        sub = g.pixel_size_m / su.oversample
        Fd = sub * (f * su.oversample + su.oversample - 1) + sub / 2.0
        Sd = sub * (s * su.oversample + su.oversample - 1) + sub / 2.0
        P = (Fd * g.fdet + Sd * g.sdet + g.pix0).detach().cpu().numpy()
        tth = math.atan2(math.sqrt(P[1] * P[1] + P[2] * P[2]), P[0])
        test = math.sin(tth / 2.0) / (cfg.lambda0 * 1e10)
        stol = float(px.stol_last[s, f])
        if cfg.spec:
            Fv, I = float(px.F_last[s, f]), float(px.photons[s, f]) / scale
        else:
            Fv, I = 0.0, last_w
        say(f"{f:4d} {s:4d} : stol = {fmt_g(stol)} or {fmt_g(test)}")
        say(f" F={fmt_g(Fv)}    I = {fmt_g(I)}")
        say(f"I/steps {I / su.steps:15.10g}")
        say(f"polar   {float(px.polar_last[s, f]):15.10g}")
        say(f"omega   {float(px.omega[s, f]):15.10g}")
        say(f"pixel   {float(img32[s, f]):15.10g}")


def _stolout(cfg, su, result, mask, say):
    """-img: each pixel's F from the measured image, binned by stol (SUITE 1.5).
    Returns (output.stol lines, the last bin's count)."""
    px = result.pixels
    img = torch.as_tensor(cfg.img.data.astype(np.float32))
    valid = torch.as_tensor(mask)
    for v in cfg.ignore_values:
        # the C keeps -ignore values as unsigned short; spec compares the value as given
        valid = valid & (img != (v if cfg.spec else float(int(v) & 0xFFFF)))
    Fimg = am.structure_factor_from_image(img, cfg.adc_offset, cfg.quantum_gain, px.polar_last.cpu().double(),
                                          px.omega.cpu().double(), su.fluence, su.molecules, su.steps)
    bins = am.stol_bins(su.table, px.stol_last.cpu(), px.k_last.cpu(), valid)
    Fv = Fimg.numpy().reshape(-1)
    b = bins.numpy().reshape(-1)
    keep = mask.reshape(-1)
    lines, n_last = [], 0
    x = su.table.x.cpu().numpy()
    for bin_ in range(2, su.table.nodes - 2):
        sel = Fv[keep & (b == bin_)]
        n = sel.size
        stol = x[bin_] / su.table.mult
        avg, rmsd = _c_mean_rmsd(sel)
        if cfg.spec and n:
            median = float(np.median(sel))
            mad = float(np.median(np.abs(sel - median)))
        else:
            median = mad = 0.0                  # uninitialised in the C (SUITE Q15)
        if n > 100:
            lines.append(f"{fmt_g(stol)} {fmt_g(avg)} {fmt_g(rmsd)}   {fmt_g(median)} {fmt_g(mad)}  {n}")
        else:
            say(f"WARNING: not enough pixels in bin= {bin_} n={n} stol= {fmt_g(stol)} median= "
                f"{fmt_g(median)} avg_arej= {fmt_g(avg)}")
        n_last = n
    return lines, n_last


def _c_mean_rmsd(values: np.ndarray):
    """fmean_with_rejection without rejection: float32 running sums, as the C."""
    n = values.size
    if n == 0:
        return 0.0, 0.0
    s = np.cumsum(values.astype(np.float32), dtype=np.float32)[-1]
    avg = np.float32(s / np.float32(n))
    dev = np.abs(values.astype(np.float32) - avg).astype(np.float32)
    sd = np.cumsum((dev * dev).astype(np.float32), dtype=np.float32)[-1]
    rmsd = np.float32(math.sqrt(np.float32(sd / np.float32(n))))
    return float(avg), float(rmsd)


def usage_text() -> str:
    return PARSER.usage(f"usage: {PROG} -stol water.stol [options]\n"
                        "amorphous-scattering images (nonBragg.c); the table is required")


def output_set(cfg: NonBraggConfig) -> OutputSet:
    """The files a run writes (checked before it starts, put in place together) and reads."""
    paths = [("-stolout", cfg.stolout_file) if cfg.img_file is not None else None,
             ("-floatfile", cfg.floatfile), ("-intfile", cfg.intfile),
             ("-pgmfile", cfg.pgmfile) if cfg.output_pgm or not cfg.spec else None,
             ("-noisefile", cfg.noisefile) if cfg.calculate_noise else None]
    inputs = [(cfg.stol_flag or "-stol", cfg.stol_file), ("-sourcefile", cfg.sourcefile),
              ("-img", cfg.img_file)]
    return OutputSet(paths, inputs=inputs)


def main(argv) -> int:
    return run_main(PROG, argv, config_from_args, run, usage_text, outputs=output_set)


def main_cli() -> None:
    flags_main_cli(PROG, main)


if __name__ == "__main__":
    main_cli()
