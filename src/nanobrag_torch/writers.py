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
A detector of several panels gives one file per panel (image.panel_path: name_p00.img,
each with its panel's header geometry and the whole detector's scale), except NeXus,
which holds every panel as a module of one file.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import io
from .image import Image, panel_path
from .io.smv import fit_header_bytes, smv_header_lines
from .modes import get_mode
from .units import RTD
from .vec import value


def _per_panel(image: Image) -> list:
    """[(panel index, panel Image)] of a several-panel image, else [] (one file)."""
    return [(i, image.panel(i)) for i in range(image.panel_count)] if image.panel_count > 1 else []


def write_float(path, image: Image) -> None:
    """The float32 image, raw little-endian (-floatfile)."""
    for i, panel in _per_panel(image):
        write_float(panel_path(path, i), panel)
    if not _per_panel(image):
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
    for i, panel in _per_panel(image):
        write_smv(panel_path(path, i), panel, scale=scale, adc=adc)
    if not _per_panel(image):
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
    for i, panel in _per_panel(image):
        write_pgm(panel_path(path, i), panel, scale=scale)
    if not _per_panel(image):
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
    c-parity mode (identical pixels for the same seed), torch's generator in spec mode.
    Several panels: panel i draws from seed + i; counts (P, S, F)."""
    from . import noise as noise_mod
    out = image.config.output
    seed = (out.seed if out.seed is not None else int(time.time())) if seed is None else seed
    adc = out.adc if adc is None else adc
    if _per_panel(image):
        parts = [noise_counts(panel, seed=seed + i, adc=adc) for i, panel in _per_panel(image)]
        counts = np.zeros(image.float32.shape, dtype=np.uint16)
        for i, part in enumerate(parts):
            counts[i, :part.counts.shape[0], :part.counts.shape[1]] = part.counts
        return Noise(counts, sum(p.photons for p in parts), sum(p.overloads for p in parts))
    if image.config.response.enabled:          # the detector-response stage: noisify's noise image
        return response_noise(image, seed)
    img32 = image.float32
    if get_mode(image.mode).torch_noise:
        counts, photons, overloads = noise_mod.spec_noise_image(torch.from_numpy(img32), seed,
                                                                image.setup.roi, adc)
    else:
        counts, photons, overloads = noise_mod.c_noise_image(img32, seed, image.setup.roi, adc)
    return Noise(np.asarray(counts, dtype=np.uint16), photons, overloads)


def response_noise(image: Image, seed: int) -> Noise:
    """The noise image of the detector-response stage (config.ResponseConfig): what
    noisify-torch writes from this image's float file with the same flags and seed (flicker,
    calibration, Poisson, PSF, gain, -adc, read-out noise, 16-bit quantisation)."""
    from . import noisify
    cfg = noisify.config_for_image(image.config, image.float32.shape, image.setup.geom.pixel_size_m, seed)
    res = noisify.simulate(cfg, floats=image.float32)
    return Noise(np.asarray(res.noise_image, dtype=np.uint16), res.photons_total, res.overloads)


def expected_adu(image: Image) -> "torch.Tensor":
    """The noiseless detector response of an image (detector_response.expected_adu): PSF (if
    config.response.psf), then gain and -adc offset, in ADU, on image.pixels (photons).
    Differentiable in the pixels (hence every upstream parameter), response.psf_fwhm_um and
    response.gain; the stochastic stages (flicker, calibration, shot and read-out noise) are
    left out."""
    from . import detector_response as dr
    r = image.config.response
    pixels = image.pixels
    fwhm_px = None
    if r.psf is not None:
        fwhm_px = torch.as_tensor(r.psf_fwhm_um, dtype=torch.float64, device=pixels.device) * 1e-6 \
            / image.setup.geom.pixel_size_m
    psf = r.psf if (r.psf is not None and value(r.psf_fwhm_um) > 0) else None     # a static decision
    return dr.expected_adu(pixels.to(torch.float64), r.gain, image.config.output.adc, psf, fwhm_px, r.psf_radius)


def write_noise(path, image: Image, *, seed: int | None = None, adc: float | None = None,
                noise: Noise | None = None) -> Noise:
    """The SMV noise image (-noisefile); returns it (photons, overloads)."""
    noise = noise if noise is not None else noise_counts(image, seed=seed, adc=adc)
    for i, panel in _per_panel(image):
        g = panel.setup.geom
        io.write_smv(panel_path(path, i), noise.counts[i, :g.spixels, :g.fpixels], smv_header(panel))
    if not _per_panel(image):
        io.write_smv(path, noise.counts, smv_header(image))
    return noise


# ----------------------------------------------------------- crystallographic formats
def experiment(image: Image):
    """The image's io.experiment.Experiment: the geometry the kernel used, for CBF/NeXus
    (a list, one per panel, for several panels)."""
    from .io.experiment import from_image
    if _per_panel(image):
        return [from_image(panel) for _, panel in _per_panel(image)]
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
    counts = detector_counts(image, noise)
    for i, panel in _per_panel(image):
        g = panel.setup.geom
        write(panel_path(path, i), counts[i, :g.spixels, :g.fpixels], experiment(panel))
    if not _per_panel(image):
        write(path, counts, experiment(image))


def write_nexus(path, image: Image, *, noise: Noise | None = None) -> None:
    """NeXus/NXmx HDF5 (h5py, Bitshuffle/LZ4) with the full geometry; -nexusfile."""
    from .io.nexus import write_nexus as write
    write(path, detector_counts(image, noise), experiment(image))


def write_png(path, image: Image, *, scale: str | None = None, noise: Noise | None = None) -> None:
    """An 8-bit inverted grey-scale preview (Pillow); -pngfile, -png_scale linear|log.
    With the detector-response stage on and its noise image given: a preview of what the
    detector records (the noise image's ADUs less -adc), else of the float image."""
    from .io.png import write_png as write
    scale = scale or image.config.output.png_scale
    if noise is not None and image.config.response.enabled and not _per_panel(image):
        data = noise.counts.astype(np.float32) - np.float32(image.config.output.adc)
        write(path, data, scale=scale, mask=experiment(image).mask)
        return
    if _per_panel(image):
        view, seen = assembled_view(image)          # one picture of the whole detector
        write(path, view, scale=scale, mask=seen)
    else:
        write(path, image.float32, scale=scale, mask=experiment(image).mask)


def assembled_view(image: Image, max_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The panels of a detector as the sample sees them: every rendered pixel's centre
    projected along its ray onto a plane perpendicular to the beam (gnomonic view), one
    canvas pixel per detector pixel (at most max_size a side; float32 values, bool
    coverage). A picture, not a measurement."""
    setup = image.setup
    pn, geom = setup.geom.panels, setup.geom
    beam = geom.beam.detach().cpu().double()
    e1 = torch.linalg.cross(beam, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    if float(e1.norm()) < 1e-6:
        e1 = torch.linalg.cross(beam, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(beam, e1)
    s, f = setup.pixels_s.cpu(), setup.pixels_f.cpu()
    p = torch.div(s, pn.spixels, rounding_mode="floor")
    vec = lambda v: v.detach().cpu().double()[p]  # noqa: E731
    px = pn.pixel_size_m.detach().cpu().double()[p][:, None]
    centre = (vec(pn.pix0) + (f[:, None] + 0.5) * px * vec(pn.fdet)
              + ((s - p * pn.spixels)[:, None] + 0.5) * px * vec(pn.sdet))
    along = centre @ beam
    x, y = (centre @ e1) / along, (centre @ e2) / along
    lo, hi = float(torch.minimum(x.min(), y.min())), float(torch.maximum(x.max(), y.max()))
    pitch = float(torch.median(px[:, 0] / along))             # one pixel's angular size
    size = int(min(max_size, max(2, np.ceil((hi - lo) / max(pitch, 1e-12)) + 1)))
    scale = (size - 1) / max(hi - lo, 1e-12)
    col = ((x - lo) * scale).round().long().clamp(0, size - 1)
    row = ((hi - y) * scale).round().long().clamp(0, size - 1)
    view = np.zeros((size, size), dtype=np.float32)
    seen = np.zeros((size, size), dtype=bool)
    flat = image.pixels.detach().reshape(-1, image.pixels.shape[-1]).to(torch.float32).cpu()
    view[row.numpy(), col.numpy()] = flat[s, f].numpy()
    seen[row.numpy(), col.numpy()] = True
    return view, seen
