"""The command-line run: simulate, print the C's log, write the image files.

Nothing is written until the image is computed, and each file is written
whole (io writes to a temporary name, then renames), so a failed run leaves
no half-written outputs.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import console
from .config import SimConfig
from .errors import ConfigError
from .simulator import Simulator, progress_printer
from .units import RTD


@dataclass
class Stats:
    """Image statistics as the C computes them (SPEC 6.6), from the float32 pixels."""
    max_I: float
    max_I_x: float
    max_I_y: float
    mean: float
    rms: float
    rmsd: float
    n: int


def image_stats(img32: np.ndarray, rendered: np.ndarray, roi_mask: np.ndarray, oversample: int,
                pixel_size_m: float) -> Stats:
    """max/mean/rms over rendered pixels, rmsd over the ROI (mask ignored), raster order."""
    everything = bool(rendered.all())
    vals32 = img32.ravel() if everything else img32[rendered]
    n = vals32.size
    max_I, max_x, max_y = 0.0, 0.0, 0.0
    if n and vals32.max() > 0.0:
        # first of equal maxima in raster order, as the C's strict '>'
        k = int(np.argmax(img32 if everything else np.where(rendered, img32, -np.inf)))
        s, f = divmod(k, img32.shape[1])
        sub = pixel_size_m / oversample
        # the C reports the position of the pixel's last subpixel
        max_I = float(img32.flat[k])
        max_x = sub * (f * oversample + oversample - 1) + sub / 2.0
        max_y = sub * (s * oversample + oversample - 1) + sub / 2.0
    total = float(np.sum(vals32, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        sumsqr = float(np.sum(vals32 * vals32, dtype=np.float64))    # the C squares in float32
    sumn = n if n > 0 else 1
    mean = total / sumn
    sumn = n if n > 1 else 2
    rms = float(np.sqrt(sumsqr / (sumn - 1)))
    roi_vals = (img32.ravel() if roi_mask.all() else img32[roi_mask]).astype(np.float64)
    m = roi_vals.size if roi_vals.size > 1 else 2
    rmsd = float(np.sqrt(np.sum((roi_vals - mean) ** 2) / (m - 1)))
    return Stats(max_I, max_x, max_y, mean, rms, rmsd, n)


def int_image(img32: np.ndarray, roi_mask: np.ndarray, scale: float, adc: float) -> np.ndarray:
    """SMV counts: floorf(float*scale + adc + 0.5) clamped to [0, 65535] on ROI pixels (SPEC 6.2)."""
    v = img32.astype(np.float64) * scale + adc
    v = np.clip(v, 0.0, 65535.0)
    counts = np.floor((v + 0.5).astype(np.float32))      # floorf: the double is rounded to float first
    return np.where(roi_mask, counts, 0).astype(np.uint16)


def pgm_image(img32: np.ndarray, roi_mask: np.ndarray, scale: float) -> np.ndarray:
    v = np.minimum(img32.astype(np.float64) * scale, 255.0)
    return np.where(roi_mask, np.trunc(v), 0).astype(np.uint8)


def smv_header(sim: Simulator) -> list:
    """The C's SMV header keys and values (SPEC 6.2), in order.

    Spec mode appends ADC_OFFSET (the pedestal -adc added to every pixel; dxtbx assumes
    1 without it) and makes HEADER_BYTES cover the text (the C says 512 even when
    its header runs longer).
    """
    setup = sim.last_setup
    g = setup.geom
    cfg = sim.config
    f = lambda t: float(t)  # noqa: E731
    px = g.pixel_size_m
    phi0 = f(setup.phi.phi0_rad) * RTD
    header = [
        ("HEADER_BYTES", 512), ("DIM", 2), ("BYTE_ORDER", "little_endian"), ("TYPE", "unsigned_short"),
        ("SIZE1", g.fpixels), ("SIZE2", g.spixels), ("PIXEL_SIZE", px * 1000.0),
        ("DISTANCE", f(g.distance) * 1000.0), ("WAVELENGTH", f(cfg.beam.wavelength_A) / 1e10 * 1e10),
        ("BEAM_CENTER_X", f(g.Xbeam) * 1000.0), ("BEAM_CENTER_Y", f(g.Ybeam) * 1000),
        ("ADXV_CENTER_X", f(g.Fbeam) * 1000.0), ("ADXV_CENTER_Y", (g.detsize_s_m - f(g.Sbeam)) * 1000),
        ("MOSFLM_CENTER_X", (f(g.Sbeam) - 0.5 * px) * 1000.0),
        ("MOSFLM_CENTER_Y", (f(g.Fbeam) - 0.5 * px) * 1000),
        ("DENZO_X_BEAM", f(g.Sbeam) * 1000.0), ("DENZO_Y_BEAM", f(g.Fbeam) * 1000),
        ("DIALS_ORIGIN", tuple(float(x) for x in g.dials_origin_mm)),
        ("XDS_ORGX", f(g.orgx)), ("XDS_ORGY", f(g.orgy)),
        ("CLOSE_DISTANCE", f(g.close_distance) * 1000.0),
        ("PHI", phi0), ("OSC_START", phi0), ("OSC_RANGE", f(setup.phi.osc_rad) * RTD),
        ("TWOTHETA", f(g.twotheta_rad) * RTD), ("DETECTOR_SN", "000"), ("BEAMLINE", "fake"),
    ]
    if sim.mode == "spec":
        from .io.smv import fit_header_bytes
        header = fit_header_bytes(header + [("ADC_OFFSET", float(cfg.output.adc))])
    return header


def run(cfg: SimConfig, out=None) -> int:
    """Run the simulation described by cfg as the CLI does; returns the exit status."""
    from . import io
    out = out or sys.stdout
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    for note in cfg.notes:
        print(note, file=out)
    sim = Simulator(cfg, mode=cfg.mode, dtype=dtype, device=cfg.device)
    console.print_setup(sim, out)
    if cfg.crystal.hkl_file is not None:
        try:
            io.write_fdump(cfg.crystal.dump_file, cfg.crystal.hkl)
            console.say(out, f"writing dump file for next time: {cfg.crystal.dump_file}")
        except ConfigError:     # as the C: a cache that cannot be written is not fatal
            console.say(out, f"WARNING: unable to open dump file: {cfg.crystal.dump_file}")

    show_progress = cfg.output.progress and not cfg.output.printout
    with torch.no_grad():
        image = sim.run(progress=progress_printer(out) if show_progress else None)
    if sim.interpolation_warning:
        print(sim.interpolation_warning, file=out)
    if cfg.output.printout:
        from .printout import print_pixels
        print_pixels(sim, out)
    setup = sim.last_setup
    img32 = image.to(torch.float32).cpu().numpy()
    S, F = img32.shape
    rendered = np.zeros((S, F), dtype=bool)
    rendered[setup.pixels_s.cpu().numpy(), setup.pixels_f.cpu().numpy()] = True
    xmin, xmax, ymin, ymax = setup.roi
    ss, ff = np.meshgrid(np.arange(S), np.arange(F), indexing="ij")
    roi_mask = (ff >= xmin) & (ff <= xmax) & (ss >= ymin) & (ss <= ymax)
    stats = image_stats(img32, rendered, roi_mask, setup.oversample, setup.geom.pixel_size_m)
    omega = float(sim.omega_sum) / setup.steps
    print(file=out)
    print(f"solid angle subtended by detector = {omega:g} steradian ( {100 * omega / 4 / np.pi:g}% sphere)",
          file=out)
    o = cfg.output
    if cfg.output.trace_pixel is not None:
        from .trace import trace_pixel
        trace_pixel(sim, *cfg.output.trace_pixel, out=out)

    print(f"writing {o.floatfile} as {S * F} 4-byte floats", file=out)
    io.write_float_image(o.floatfile, img32)
    print(f"max_I = {stats.max_I:g}  at {stats.max_I_x:g} {stats.max_I_y:g}", file=out)
    print(f"mean= {stats.mean:g} rms= {stats.rms:g} rmsd= {stats.rmsd:g}", file=out)
    scale = o.scale
    if scale <= 0.0:
        scale = 55000.0 / stats.max_I if stats.max_I > 0.0 else 1.0
    print(f"intfile_scale = {scale:g}", file=out)
    header = smv_header(sim)
    print(f"writing {o.intfile} as 2-byte integers", file=out)
    io.write_smv(o.intfile, int_image(img32, roi_mask, scale, o.adc), header)
    if o.write_pgm:
        pscale = o.pgmscale
        if pscale <= 0.0:
            pscale = 250.0 / (5.0 * stats.rmsd) if stats.rmsd > 0.0 else scale
        print(f"pgm_scale = {pscale:g}", file=out)
        print(f"writing {o.pgmfile} as 1-byte integers", file=out)
        io.write_pgm(o.pgmfile, pgm_image(img32, roi_mask, pscale), pscale)
    if o.write_noise:
        from . import noise as noise_mod
        seed = o.seed if o.seed is not None else int(time.time())
        if cfg.mode == "c-parity":
            noisy, photons, overloads = noise_mod.c_noise_image(img32, seed, setup.roi, o.adc)
        else:
            noisy, photons, overloads = noise_mod.spec_noise_image(
                torch.from_numpy(img32), seed, setup.roi, o.adc)
        print(f"{photons:.0f} photons on noise image ({overloads} overloads)", file=out)
        print(f"writing {o.noisefile} as 2-byte integers", file=out)
        io.write_smv(o.noisefile, np.asarray(noisy, dtype=np.uint16), header)
    # CBF, NeXus and PNG (port-only): after the C's files, from the same image and noise seed
    if o.cbffile is not None or o.nexusfile is not None or o.pngfile is not None:
        from .formats import write_run_formats
        write_run_formats(sim, img32, seed if o.write_noise else None, out)
    return 0
