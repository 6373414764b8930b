"""noisify-torch: noisify.c, photons to detector pixels (noise, PSF, gain, ADC; SUITE 2).

    python -m nanobrag_torch.noisify -floatfile floatimage.bin -readout 3 -psf gauss ...
    noisify-torch ...                        # the same

Reads a float image (photons/pixel, as nanobrag-torch or nonbragg-torch write
it) and writes the noiseless SMV image, a PGM and the SMV noise image, with
the C's flags, files and console lines.  The stages are detector_response.py's
functions; files go through io/, the C's random stream through rng.py.
`-mode spec` (default) and `-mode c-parity` differ as listed in docs/modes.md
(section noisify).  From Python:

    cfg = noisify.config_from_args(["-floatfile", "floatimage.bin", "-seed", "1"])
    res = noisify.simulate(cfg)          # res.int_image, res.noise_image (numpy), res.photons
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from . import detector_response as dr
from .cli import FILE, INT, NONNEG, NUM, POS, _choice
from .errors import UsageError
from .flags import FileError, FlagError, Parser, run_main, table
from .flags import main_cli as flags_main_cli
from .io.outputs import OutputSet
from .io import format_header, header_value, read_float_values, read_smv, write_pgm, write_smv_bytes
from .io._common import read_bytes, read_prefix
from .io.cnum import fmt_g
from .rng import f32
from .units import DEFAULT_FLUENCE, R_E_SQR

PROG = "noisify-torch"
BANNER = "noisify - add noise to pixels - James Holton 3-19-16"
FLOAT_NAME = "floatimage.bin"          # any word containing it is the input (the C)


@dataclass
class NoisifyConfig:
    """noisify's settings in the C's units (metres; psf_fwhm metres as float32)."""
    mode: str = "spec"
    device: str = "cpu"
    floatfile: Optional[str] = None
    header_file: Optional[str] = None
    xpixels: int = 0
    ypixels: int = 0
    pixel: float = 0.1e-3
    distance: float = 100.0e-3
    detsize_x: float = 102.4e-3
    detsize_y: float = 102.4e-3
    Xbeam: Optional[float] = None
    Ybeam: Optional[float] = None
    lambda_: float = 1.0                   # header only, as typed
    phi0: float = 0.0
    osc: float = 1.0
    psf: Optional[str] = None              # "gauss" | "fiber" | None (unknown or not given)
    psf_fwhm: float = f32(46e-6)
    psf_radius: float = 0.0
    fluence: float = DEFAULT_FLUENCE
    photon_scale: float = 1.0
    quantum_gain: float = 1.0
    adc_offset: float = 40.0
    calibration_noise: float = 0.03
    flicker_noise: float = 0.0
    readout_noise: float = 0.0
    seed: Optional[int] = None             # -seed N as typed
    calib_seed: Optional[int] = None       # -calib_seed N as typed (None: the C's +123456789)
    intfile: str = "intimage.img"
    noisefile: str = "noiseimage.img"
    pgmfile: str = "image.pgm"
    calculate_noise: bool = True
    write_pgm: bool = True
    bits: int = 16
    notes: List[str] = field(default_factory=list)      # printed before the banner (the C's parse)

    @property
    def spec(self) -> bool:
        return self.mode == "spec"


def _set(attr, cast=None):
    def act(cfg, st, vals):
        setattr(cfg, attr, cast(vals[0]) if cast else vals[0])
    return act


def _m(attr):
    def act(cfg, st, vals):
        setattr(cfg, attr, vals[0] / 1000.0)
    return act


def _const(attr, value):
    def act(cfg, st, vals):
        setattr(cfg, attr, value)
    return act


def _floatfile(cfg, st, vals):
    cfg.floatfile = vals[0]
    st.float_at = st.index


def _detpixels(which):
    def act(cfg, st, vals):
        if which in ("x", "both"):
            cfg.xpixels = vals[0]
        if which in ("y", "both"):
            cfg.ypixels = vals[0]
    return act


def _psf(cfg, st, vals):
    word = vals[0]
    cfg.psf = None
    if "gauss" in word:
        cfg.psf = "gauss"
    if "fiber" in word:
        cfg.psf = "fiber"
    if cfg.psf is None:
        cfg.notes.append(f"WARNING: unknown psf type: {word}")


def _psf_fwhm(cfg, st, vals):
    cfg.psf_fwhm = f32(vals[0] / 1e6)


def _nothing(cfg, st, vals):
    pass


FLAGS = (
    table("Input and header", [
        ("-floatfile -floatimage -bin", "FILE", (FILE,), _floatfile,
         "float image, photons/pixel (or any argument containing floatimage.bin)"),
        ("-header", "FILE", (FILE,), _set("header_file"), "copy this SMV image's header (size, pixel, beam)"),
        ("-detpixels", "N", (INT,), _detpixels("both"), "pixels on both axes (default: from the file)"),
        ("-detpixels_x", "N", (INT,), _detpixels("x"), "pixels along fast"),
        ("-detpixels_y", "N", (INT,), _detpixels("y"), "pixels along slow"),
        ("-pixel", "MM", (POS,), _m("pixel"), "pixel size (mm, default 0.1)"),
        ("-distance", "MM", (NUM,), _m("distance"), "header DISTANCE (mm)"),
        ("-detsize", "MM", (NUM,), _nothing, "accepted, no effect (pixel x pixels)"),
        ("-detsize_x", "MM", (NUM,), _nothing, "accepted, no effect"),
        ("-detsize_y", "MM", (NUM,), _nothing, "accepted, no effect"),
        ("-lambda", "A", (NUM,), _set("lambda_"), "header WAVELENGTH (as given)"),
        ("-Xbeam", "MM", (NUM,), _m("Xbeam"), "header beam centre along fast (mm)"),
        ("-Ybeam", "MM", (NUM,), _m("Ybeam"), "header beam centre along slow (mm)"),
        ("-phi", "DEG", (NUM,), _set("phi0"), "header PHI and OSC_START"),
        ("-osc", "DEG", (NUM,), _set("osc"), "header OSC_RANGE (default 1)"),
    ])
    + table("Scale, noise and detector", [
        ("-scale", "X", (NUM,), _set("photon_scale"), "multiplies the float image (default 1)"),
        ("-fluence", "PH/M2", (NUM,), _set("fluence"), "photons/m^2 (default: r_e^2 fluence = 1)"),
        ("-gain", "ADU/PH", (NUM,), _set("quantum_gain"), "ADU per photon (default 1)"),
        ("-adc", "ADU", (NUM,), _set("adc_offset"), "offset added to every pixel (default 40)"),
        ("-calibration", "FRAC", (NONNEG,), _set("calibration_noise"),
         "static per-pixel gain error, rms fraction (default 0.03)"),
        ("-flicker", "FRAC", (NONNEG,), _set("flicker_noise"), "beam flicker per pixel, rms fraction"),
        ("-readout -readout_noise -readnoise", "ADU", (NONNEG,), _set("readout_noise"), "read-out noise, rms ADU"),
        ("-seed", "N", (INT,), _set("seed"), "noise seed (default: time)"),
        ("-calib_seed", "N", (INT,), _set("calib_seed"), "calibration-error seed"),
        ("-badpix_seed", "N", (INT,), _nothing, "accepted, no effect (as the C)"),
        ("-hotpix_seed", "N", (INT,), _nothing, "accepted, no effect (as the C)"),
        ("-psf", "gauss|fiber", (FILE,), _psf, "point-spread function (anything else: none)"),
        ("-psf_fwhm -psf_sigma -psf_width", "UM", (NUM,), _psf_fwhm, "PSF full width (um, default 46)"),
        ("-psf_radius -psf_rad", "PX", (NUM,), _set("psf_radius"), "PSF rendering radius (0: automatic)"),
    ])
    + table("Output", [
        ("-intfile -intimage", "FILE", (FILE,), _set("intfile"), "noiseless SMV image (default intimage.img)"),
        ("-noisefile -noiseimage", "FILE", (FILE,), _set("noisefile"), "SMV image with noise"),
        ("-pgmfile -pgmimage", "FILE", (FILE,), _set("pgmfile"), "PGM of the noiseless image"),
        ("-nonoise", "", (), _const("calculate_noise", False), "no noise image (PSF on the noiseless one)"),
        ("-nopgm", "", (), _const("write_pgm", False), "no PGM"),
        ("-bits", "16|32", (INT,), _set("bits"), "bits per SMV pixel (default 16)"),
    ])
    + table("Port", [
        ("-mode", "spec|c-parity", (_choice("spec", "c-parity"),), _set("mode"),
         "spec (default) or the C bit for bit (docs/modes.md)"),
        ("-device", "cpu|cuda|auto", (_choice("cpu", "cuda", "auto", pattern=r"cuda:\d+"),), _set("device"),
         "where tensors live"),
    ])
)


PARSER = Parser(PROG, FLAGS)


class _State:
    def __init__(self, argv):
        self.argv, self.flag, self.index = argv, "", -1
        self.float_at = -1
        self.positional = []            # (index, word) of words naming the input by "floatimage.bin"


def config_from_args(argv) -> NoisifyConfig:
    """noisify's flags -> NoisifyConfig (nothing read or written yet)."""
    argv = [str(a) for a in argv]
    cfg = NoisifyConfig()
    st = _State(argv)

    def positional(word, i):
        # the C's first test of every word: one containing "floatimage.bin" names the input
        if FLOAT_NAME in word:
            st.positional.append((i, word))
            return True
        return False
    uses = Parser(PROG, FLAGS, positional).tokenize(argv)
    for use in uses:
        st.flag, st.index = use.name, use.index
        use.flag.apply(cfg, st, use.values)
    if st.positional and st.positional[-1][0] > st.float_at:
        cfg.floatfile = st.positional[-1][1]
    if cfg.floatfile is None:
        raise UsageError("")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise FlagError("-device cuda: no CUDA device available")
    if cfg.spec:
        if cfg.bits not in (16, 32):
            raise FlagError(f"-bits: 16 or 32, got {cfg.bits} (the C writes a header fragment and no pixels)")
        if cfg.header_file is not None and cfg.bits == 32:
            raise FlagError("-bits 32 with -header: the copied header would keep its TYPE (the C's "
                            "file is unreadable); drop one of them")
        if cfg.psf_radius < 0 or cfg.psf_radius != int(cfg.psf_radius):
            raise FlagError(f"-psf_radius: expected an integer >= 0 (pixels), got {fmt_g(cfg.psf_radius)}")
    return cfg


# --------------------------------------------------------------------------
# the run

@dataclass
class NoisifyResult:
    """simulate()'s result: the photons/pixel image (S, F) float32 (before noise),
    the noiseless and noise integer images (uint16 or uint32, None if not made),
    console lines, photon sums and overloads."""
    photons: np.ndarray
    int_image: np.ndarray
    noise_image: Optional[np.ndarray]
    header: bytes
    lines: List[str]
    photons_before_psf: Optional[float]
    photons_total: Optional[float]
    overloads: int
    pgm: Optional[np.ndarray] = None


def _c_int(x: float) -> int:
    """(int) of a double as the C (truncation)."""
    return int(x) if math.isfinite(x) and abs(x) < 2 ** 31 else -2 ** 31


def simulate(cfg: NoisifyConfig, floats: Optional[np.ndarray] = None) -> NoisifyResult:
    """Everything noisify computes, in the C's order; writes nothing.

    floats: the float image itself (float32, xpixels x ypixels values, the bytes a float
    file would hold) instead of reading cfg.floatfile (nanobrag-torch's response stage)."""
    lines: List[str] = list(cfg.notes) + [BANNER]
    say = lines.append
    spec = cfg.spec
    xpixels, ypixels = cfg.xpixels, cfg.ypixels
    pixel, distance = cfg.pixel, cfg.distance
    detsize_x, detsize_y = cfg.detsize_x, cfg.detsize_y
    Xbeam, Ybeam = cfg.Xbeam, cfg.Ybeam
    if floats is not None:
        floats = np.ascontiguousarray(floats, dtype=np.float32).reshape(-1)
    raw_float_size = _file_size(cfg.floatfile) if floats is None else 4 * floats.size
    pixels = raw_float_size // 4
    header_raw = None
    if cfg.header_file is not None:
        say(f"taking header from {cfg.header_file}")
        smv = read_smv(cfg.header_file, data=False)
        say(f"reading {cfg.header_file}")
        header_raw, _ = read_prefix(cfg.header_file, smv.header_bytes)
        v = lambda key: header_value(smv.header, key)  # noqa: E731
        xpixels, ypixels = smv.width, smv.height
        pixels = xpixels * ypixels
        if v("PIXEL_SIZE") is not None:
            pixel = v("PIXEL_SIZE") / 1000.0
        detsize_x, detsize_y = pixel * xpixels, pixel * ypixels
        if v("DISTANCE") is not None:
            distance = v("DISTANCE") / 1000.0
        if v("BEAM_CENTER_X") is not None:
            Xbeam = v("BEAM_CENTER_X") / 1000.0
        if v("BEAM_CENTER_Y") is not None:
            Ybeam = detsize_y - v("BEAM_CENTER_Y") / 1000.0
    if not xpixels and not ypixels:
        say("WARNING: guessing xy pixel dimensions.")
        if pixels <= 0:
            raise FileError(f"{cfg.floatfile}: empty float image (no pixels to guess a size from)")
        xpixels = int(math.sqrt(pixels))
        ypixels = pixels // xpixels
        while pixels != xpixels * ypixels and xpixels > 0:
            xpixels -= 1
            ypixels = pixels // xpixels
    if xpixels and not ypixels:
        ypixels = pixels // xpixels
    if not xpixels and ypixels:
        xpixels = pixels // ypixels
    if xpixels <= 0 or ypixels <= 0:
        raise FlagError(f"the image has {xpixels}x{ypixels} pixels (check -detpixels)")
    detsize_x, detsize_y = pixel * xpixels, pixel * ypixels
    pixels = xpixels * ypixels
    if spec and raw_float_size != 4 * pixels:
        raise FileError(f"{cfg.floatfile}: {raw_float_size} bytes, expected {4 * pixels} for "
                        f"{xpixels} x {ypixels} float32 pixels")
    if raw_float_size < pixels:
        # the C's fread(buf, pixels, 4, f) reads no whole item
        raise FileError(f"{cfg.floatfile}: reading input file: only {raw_float_size} bytes")
    say(f"importing {pixels} pixel intensites: {cfg.floatfile}")
    if floats is None:
        floats, _ = read_float_values(cfg.floatfile, pixels)
    Xbeam = detsize_x / 2.0 if Xbeam is None or Xbeam <= -1e99 else Xbeam
    Ybeam = detsize_y / 2.0 if Ybeam is None or Ybeam <= -1e99 else Ybeam
    calib, flicker, readout = cfg.calibration_noise, cfg.flicker_noise, cfg.readout_noise
    if not cfg.calculate_noise:
        calib = flicker = readout = 0.0
    seed_c = -_wrap32(cfg.seed) if cfg.seed is not None else -int(time.time())
    calib_c = -_wrap32(cfg.calib_seed) if cfg.calib_seed is not None else 123456789
    psf_r = _c_int(cfg.psf_radius) if not spec else int(cfg.psf_radius)
    fw = float(cfg.psf_fwhm)
    say(f"  distance={fmt_g(distance)} detsize={fmt_g(detsize_x)}x{fmt_g(detsize_y)}  pixel={fmt_g(pixel)} "
        f"meters ({xpixels}x{ypixels} pixels)")
    say(f"  Xbeam={fmt_g(Xbeam)} Ybeam={fmt_g(Ybeam)}")
    psf_line = ""
    if cfg.psf == "gauss":
        psf_line = f"  Gaussian PSF fwhm = {fmt_g(fw * 1e6)} um "
    if cfg.psf == "fiber":
        psf_line = f"  fiber PSF fwhm = {fmt_g(fw * 1e6)} um "
    if cfg.psf is not None and psf_r == 0:
        lines.append(psf_line + "  with automatic rendering radius")
        psf_line = ""
        if not spec:
            lines.append("  with rendering radius: 0")            # SUITE N10
    elif cfg.psf is not None and psf_r >= 0:
        lines.append(psf_line + f"  with rendering radius: {psf_r}")
        psf_line = ""
    say(f"{psf_line}  seed: {seed_c}")
    say(f"  calibration noise seed: {calib_c}")
    say(f"  calibration_noise = {fmt_g(calib * 100)} %")
    say(f"  input file scale = {fmt_g(cfg.photon_scale)}")
    say(f"  readout_noise = {fmt_g(readout)} ADU")
    say(f"  flicker_noise = {fmt_g(flicker * 100)} %")
    say(f"  quantum_gain = {fmt_g(cfg.quantum_gain)} ADU/photon")
    say(f"  adc_offset = {fmt_g(cfg.adc_offset)} ADU")
    say("")

    # photon scale (float32, as the C's photonimage)
    I = floats.astype(np.float64)
    for val in I[I < 0.0].tolist():
        say(f"WARNING: negative intensity in {cfg.floatfile}: {fmt_g(val)}")
    finite = I[~np.isnan(I)]
    max_I = max(0.0, float(finite.max())) if finite.size else 0.0
    photons = dr.photon_scale(I, cfg.fluence, cfg.photon_scale).astype(np.float32)
    say(f"maximum value in input file: {fmt_g(max_I)} ( {fmt_g(max_I * cfg.photon_scale * cfg.fluence * R_E_SQR)} "
        f"on photon scale)")
    shape = (ypixels, xpixels)
    dtype = torch.float64               # the stages' precision (the C's float32 where it rounds)
    device = _device(cfg)
    fw_px = fw / pixel
    psf_on = cfg.psf is not None and fw > 0.0
    noiseless = photons
    if not cfg.calculate_noise and psf_on:
        say(f"  applying PSF to noiseless image width = {fmt_g(fw_px)} pixels")
        noiseless = _psf(cfg, noiseless.reshape(shape), fw_px, psf_r, say, dtype, device).reshape(-1)
    gain, adc = cfg.quantum_gain, cfg.adc_offset
    from .rng import fma64_np
    p64 = noiseless.astype(np.float64)
    adu = fma64_np(p64, np.full_like(p64, gain), np.full_like(p64, adc))     # FMA photons*gain + adc
    int_img, _ = dr.quantize(adu, cfg.bits, after_noise=False, clamp_negative=spec)
    own = _own_header(cfg, xpixels, ypixels, pixel, distance, Xbeam, Ybeam, detsize_y)
    header = header_raw if header_raw is not None else own
    if cfg.bits == 16:
        say(f"writing {cfg.intfile} as {pixels} 2-byte integers")
    if cfg.bits == 32:
        say(f"writing {cfg.intfile} as {pixels} 4-byte integers")
    res = NoisifyResult(photons.reshape(shape), int_img.reshape(shape), None, header, lines, None, None, 0)
    if cfg.write_pgm:
        int16, _ = dr.quantize(adu, 16, after_noise=False, clamp_negative=spec)
        res.pgm = np.minimum(int16, 255).astype(np.uint8).reshape(shape)
        say(f"writing {cfg.pgmfile} as 1-byte integers")
    if not cfg.calculate_noise:
        return res

    # noise: flicker, calibration, Poisson, PSF, gain/offset and read-out noise
    if spec:
        gen = dr.generator(cfg.seed, device)
        cgen = dr.generator(cfg.calib_seed if cfg.calib_seed is not None else 123456789, device)
        p = torch.as_tensor(photons.reshape(shape), device=device).to(torch.float64)
        if flicker > 0.0:
            p = p * dr.gaussian_factor(shape, flicker, gen, device=device)
        if calib > 0.0:
            p = p * dr.gaussian_factor(shape, calib, cgen, device=device)
        counts = dr.shot_noise(p, gen)
        total = float(counts.sum())
        if psf_on:
            res.photons_before_psf = total
            say(f"{total:.0f} photons on noise image before PSF")
            say(f"  applying PSF width = {fmt_g(fw * 1e6)} um")
            counts = _psf(cfg, counts, fw_px, psf_r, say, torch.float64, device, tensor=True)
        total = float(counts.sum())
        adu_t = dr.gain_offset(counts, gain, adc)
        if readout > 0.0:
            adu_t = adu_t + readout * torch.randn(shape, generator=gen, dtype=torch.float64, device=device)
        adu = adu_t.detach().cpu().numpy().reshape(-1)
        noise_img, overloads = dr.quantize(adu, cfg.bits, after_noise=True, clamp_negative=True)
    else:
        stream = dr.NoisifyStream(seed_c, calib_c)
        counts = stream.photon_counts(photons, flicker, calib, more_draws_follow=readout > 0.0)
        total = _seq(counts)
        if psf_on:
            res.photons_before_psf = total
            say(f"{total:.0f} photons on noise image before PSF")
            say(f"  applying PSF width = {fmt_g(fw * 1e6)} um")
            counts = _psf(cfg, counts.reshape(shape), fw_px, psf_r, say, dtype, device).reshape(-1)
        total = _seq(counts)
        adu = stream.readout_adu(counts, gain, adc, readout)
        noise_img, overloads = dr.quantize(adu, cfg.bits, after_noise=True, clamp_negative=False)
    say(f"{total:.0f} photons on noise image ({overloads} overloads)")
    if cfg.bits in (16, 32):
        say(f"writing {cfg.noisefile} as {cfg.bits // 8}-byte integers")
    res.noise_image = noise_img.reshape(shape)
    res.photons_total = total
    res.overloads = overloads
    return res


def config_for_image(sim_cfg, shape, pixel_m, seed: int) -> NoisifyConfig:
    """The NoisifyConfig of nanobrag-torch's detector-response stage: sim_cfg.response's
    values (noisify's flags), -adc, the noise seed, the image's size and pixel; noisify's
    default -scale and -fluence (r_e^2 fluence = 1.000: the float image is already photons,
    and a -fluence of the run has been applied to it); the mode by modes.md row 18."""
    from .modes import get_mode
    from .vec import value
    r, S, F = sim_cfg.response, shape[-2], shape[-1]
    mode = "spec" if get_mode(sim_cfg.mode).suite_spec_stages else "c-parity"
    return NoisifyConfig(
        mode=mode, device=str(sim_cfg.device), floatfile="(image)", xpixels=F, ypixels=S, pixel=pixel_m,
        psf=r.psf, psf_fwhm=f32(value(r.psf_fwhm_um) / 1e6), psf_radius=r.psf_radius,
        fluence=DEFAULT_FLUENCE, photon_scale=1.0, quantum_gain=value(r.gain),
        adc_offset=float(sim_cfg.output.adc), calibration_noise=float(r.calibration),
        flicker_noise=float(r.flicker), readout_noise=float(r.readout_noise), seed=seed,
        calib_seed=r.calib_seed)


def _psf(cfg, image, fw_px, radius, say, dtype, device, tensor=False):
    """apply_psf with the C's console lines; c-parity: the C's float32 accumulation with
    its edge wrap; spec: the float64 convolution, photons past the edges lost."""
    img = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image, dtype=np.float32))
    res = dr.apply_psf(img.to(device), cfg.psf, fw_px, radius, c_order=not cfg.spec, wrap=not cfg.spec)
    if res.auto:
        say(f"  maximum input photon/pixel: {fmt_g(res.max_value)}")
        if res.skipped:
            say("WARNING: no photons, PSF skipped")
            return res.image if tensor else res.image.cpu().numpy().astype(np.float32)
        say(f"  auto-selected psf_radius = {res.radius_printed} pixels")
    say(f"adding back {fmt_g(float(res.lost))} lost photons")
    if tensor:
        return res.image
    return res.image.detach().cpu().numpy().astype(np.float32)


def _seq(x) -> float:
    a = np.asarray(x, dtype=np.float32).astype(np.float64).reshape(-1)
    return float(np.cumsum(a)[-1]) if a.size else 0.0


def _wrap32(v: int) -> int:
    return ((int(v) + 2 ** 31) % 2 ** 32) - 2 ** 31


def _file_size(path) -> int:
    try:
        return os.path.getsize(path) if os.path.isfile(path) else len(read_bytes(path))
    except OSError as exc:
        raise FileError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def _device(cfg):
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def _own_header(cfg, xpixels, ypixels, pixel, distance, Xbeam, Ybeam, detsize_y) -> bytes:
    kind = {16: "unsigned_short", 32: "long_integer"}.get(cfg.bits)
    lines = [("SIZE1", xpixels), ("SIZE2", ypixels), ("PIXEL_SIZE", pixel * 1000.0),
             ("DISTANCE", distance * 1000.0), ("WAVELENGTH", float(cfg.lambda_)),
             ("BEAM_CENTER_X", Xbeam * 1000.0), ("BEAM_CENTER_Y", (detsize_y - Ybeam) * 1000),
             ("PHI", float(cfg.phi0)), ("OSC_START", float(cfg.phi0)), ("OSC_RANGE", float(cfg.osc)),
             ("DETECTOR_SN", "000"), ("BEAMLINE", "fake")]
    head = [("HEADER_BYTES", 512), ("DIM", 2), ("BYTE_ORDER", "little_endian"), ("TYPE", kind)] if kind else []
    text = format_header(head + lines)
    if not kind:
        # SUITE N8: the first fprintf is skipped; the rest of the header, padded to 512
        text = text[2:].rstrip(b" ")
        text = text + b" " * max(0, 512 - len(text))
    return text


def run(cfg: NoisifyConfig) -> int:
    res = simulate(cfg)
    # files in the C's order: int image, PGM, noise image; then the C's console lines
    _write_image(cfg, cfg.intfile, res.header, res.int_image)
    if cfg.write_pgm:
        write_pgm(cfg.pgmfile, res.pgm, 1.0)
    if res.noise_image is not None:
        _write_image(cfg, cfg.noisefile, res.header, res.noise_image)
    sys.stdout.write("\n".join(res.lines) + "\n")
    return 0


def _write_image(cfg, path, header, data):
    if cfg.bits in (16, 32):
        write_smv_bytes(path, header, data)
    else:
        write_smv_bytes(path, header, np.zeros((0, 0), dtype=np.uint16))


def usage_text() -> str:
    return PARSER.usage(f"usage: {PROG} -floatfile floatimage.bin [options]\n"
                        "noise, PSF and SMV output for a float image (noisify.c)")


def output_set(cfg: NoisifyConfig) -> OutputSet:
    """The files a run writes (checked before it starts, put in place together) and reads."""
    paths = [("-intfile", cfg.intfile), ("-pgmfile", cfg.pgmfile) if cfg.write_pgm else None,
             ("-noisefile", cfg.noisefile) if cfg.calculate_noise else None]
    inputs = [("-floatfile", cfg.floatfile), ("-header", cfg.header_file)]
    return OutputSet(paths, inputs=inputs)


def main(argv) -> int:
    return run_main(PROG, argv, config_from_args, run, usage_text, outputs=output_set)


def main_cli() -> None:
    flags_main_cli(PROG, main)


if __name__ == "__main__":
    main_cli()
