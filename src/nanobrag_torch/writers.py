"""Image files from an `Image`: the command line's outputs as public functions.

    image = nanobrag_torch.simulate(cfg)
    write_float("float.bin", image)            # raw float32, as -floatfile
    scale = write_smv("image.img", image)      # SMV counts, as -intfile (returns the scale used)
    write_pgm("image.pgm", image)              # 8-bit preview, as -pgmfile
    noise = write_noise("noise.img", image, seed=1)   # Poisson noise, as -noisefile
    write_cbf("image_00001.cbf", image, noise=noise)   # miniCBF, as -cbffile (DIALS reads it)
    write_nexus("image.nxs", image, noise=noise)       # NeXus/NXmx, as -nexusfile
    write_png("image.png", image)                      # a preview, as -pngfile

Scales, offsets and seeds default to the config's (-scale, -pgmscale, -adc, -seed),
with the C's automatic choices (SPEC 6.2). Every file is written whole or not at all.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import io
from .image import Image
from .io.smv import fit_header_bytes, smv_header_lines
from .modes import get_mode
from .units import RTD


def write_float(path, image: Image) -> None:
    """The float32 image, raw little-endian (-floatfile)."""
    io.write_float_image(path, image.float32)


def int_scale(image: Image, scale: float | None = None) -> float:
    """Counts per photon of the SMV image: the given or configured -scale, or 55000/max_I."""
    scale = image.config.output.scale if scale is None else scale
    if scale <= 0.0:
        max_I = image.stats.max_I
        scale = 55000.0 / max_I if max_I > 0.0 else 1.0
    return scale


def int_counts(image: Image, scale: float, adc: float) -> np.ndarray:
    """SMV counts: floorf(float*scale + adc + 0.5) clamped to [0, 65535] on ROI pixels (SPEC 6.2)."""
    v = image.float32.astype(np.float64) * scale + adc
    v = np.clip(v, 0.0, 65535.0)
    counts = np.floor((v + 0.5).astype(np.float32))      # floorf: the double is rounded to float first
    return np.where(image.roi_mask, counts, 0).astype(np.uint16)


def smv_header(image: Image) -> list:
    """The C's SMV header keys and values (SPEC 6.2), in order.

    Spec mode appends ADC_OFFSET (the pedestal -adc added to every pixel; dxtbx assumes
    1 without it) and keeps the text within HEADER_BYTES (the C says 512 even when its
    text runs longer).
    """
    setup = image.setup
    g = setup.geom
    f = float
    px = g.pixel_size_m
    phi0 = f(setup.phi.phi0_rad) * RTD
    header = smv_header_lines(
        size1=g.fpixels, size2=g.spixels, pixel_size=px * 1000.0, distance=f(g.distance) * 1000.0,
        wavelength=f(image.config.beam.wavelength_A) / 1e10 * 1e10,
        beam_center_x=f(g.Xbeam) * 1000.0, beam_center_y=f(g.Ybeam) * 1000,
        adxv_center_x=f(g.Fbeam) * 1000.0, adxv_center_y=(g.detsize_s_m - f(g.Sbeam)) * 1000,
        mosflm_center_x=(f(g.Sbeam) - 0.5 * px) * 1000.0, mosflm_center_y=(f(g.Fbeam) - 0.5 * px) * 1000,
        denzo_x_beam=f(g.Sbeam) * 1000.0, denzo_y_beam=f(g.Fbeam) * 1000,
        dials_origin=tuple(float(x) for x in g.dials_origin_mm),
        xds_orgx=f(g.orgx), xds_orgy=f(g.orgy), close_distance=f(g.close_distance) * 1000.0,
        phi=phi0, osc_start=phi0, osc_range=f(setup.phi.osc_rad) * RTD,
        twotheta=f(g.twotheta_rad) * RTD)
    if get_mode(image.mode).smv_adc_offset:
        header = fit_header_bytes(header + [("ADC_OFFSET", float(image.config.output.adc))])
    return header


def write_smv(path, image: Image, *, scale: float | None = None, adc: float | None = None) -> float:
    """The noiseless SMV image (-intfile); returns the scale used (counts per photon)."""
    scale = int_scale(image, scale)
    adc = image.config.output.adc if adc is None else adc
    io.write_smv(path, int_counts(image, scale, adc), smv_header(image))
    return scale


def pgm_scale(image: Image, scale: float | None = None) -> float:
    """Grey levels per photon: the given or configured -pgmscale, or 250/(5 rmsd)."""
    scale = image.config.output.pgmscale if scale is None else scale
    if scale <= 0.0:
        rmsd = image.stats.rmsd
        scale = 250.0 / (5.0 * rmsd) if rmsd > 0.0 else int_scale(image)
    return scale


def pgm_levels(image: Image, scale: float) -> np.ndarray:
    v = np.minimum(image.float32.astype(np.float64) * scale, 255.0)
    return np.where(image.roi_mask, np.trunc(v), 0).astype(np.uint8)


def write_pgm(path, image: Image, *, scale: float | None = None) -> float:
    """The 8-bit PGM preview (-pgmfile); returns the scale used."""
    scale = pgm_scale(image, scale)
    io.write_pgm(path, pgm_levels(image, scale), scale)
    return scale


@dataclass(frozen=True)
class Noise:
    """A noise image: counts (S, F) uint16, photons drawn, pixels clipped at 65535."""
    counts: np.ndarray
    photons: float
    overloads: int


def noise_counts(image: Image, *, seed: int | None = None, adc: float | None = None) -> Noise:
    """Poisson noise on the float image plus the ADC offset: the C's ran1/poidev stream in
    c-parity mode (identical pixels for the same seed), torch's generator in spec mode."""
    from . import noise as noise_mod
    out = image.config.output
    seed = (out.seed if out.seed is not None else int(time.time())) if seed is None else seed
    adc = out.adc if adc is None else adc
    img32 = image.float32
    if get_mode(image.mode).torch_noise:
        counts, photons, overloads = noise_mod.spec_noise_image(torch.from_numpy(img32), seed,
                                                                image.setup.roi, adc)
    else:
        counts, photons, overloads = noise_mod.c_noise_image(img32, seed, image.setup.roi, adc)
    return Noise(np.asarray(counts, dtype=np.uint16), photons, overloads)


def write_noise(path, image: Image, *, seed: int | None = None, adc: float | None = None,
                noise: Noise | None = None) -> Noise:
    """The SMV noise image (-noisefile); returns it (photons, overloads)."""
    noise = noise if noise is not None else noise_counts(image, seed=seed, adc=adc)
    io.write_smv(path, noise.counts, smv_header(image))
    return noise


# ----------------------------------------------------------- crystallographic formats
def experiment(image: Image):
    """The image's io.experiment.Experiment: the geometry the kernel used, for CBF/NeXus."""
    from .io.experiment import from_image
    return from_image(image)


def detector_counts(image: Image, noise: Noise | None = None) -> np.ndarray:
    """What CBF and NeXus hold: detector counts as a processing program expects them.

    With a noise image: its Poisson photons without the ADC offset (saturated pixels read
    65535); without: the noiseless photons rounded to whole counts. int32 (S, F), 0
    outside the ROI.
    """
    if noise is None:
        counts = np.clip(np.rint(image.float32.astype(np.float64)), 0, 65535)
        return np.where(image.roi_mask, counts, 0).astype(np.int32)
    adc = np.trunc(float(image.config.output.adc))
    counts = noise.counts.astype(np.int64)
    photons = np.where(counts >= 65535, 65535, np.clip(counts - adc, 0, 65535))
    return np.where(image.roi_mask, photons, 0).astype(np.int32)


def write_cbf(path, image: Image, *, noise: Noise | None = None) -> None:
    """miniCBF (byte offset, GENERIC_MINI header, through fabio); -cbffile."""
    from .io.cbf import write_cbf as write
    write(path, detector_counts(image, noise), experiment(image))


def write_nexus(path, image: Image, *, noise: Noise | None = None) -> None:
    """NeXus/NXmx HDF5 (h5py, Bitshuffle/LZ4) with the full geometry; -nexusfile."""
    from .io.nexus import write_nexus as write
    write(path, detector_counts(image, noise), experiment(image))


def write_png(path, image: Image, *, scale: str | None = None) -> None:
    """An 8-bit inverted grey-scale preview (Pillow); -pngfile, -png_scale linear|log."""
    from .io.png import write_png as write
    exp = experiment(image)
    write(path, image.float32, scale=scale or image.config.output.png_scale, mask=exp.mask)
