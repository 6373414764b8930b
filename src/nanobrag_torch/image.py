"""The result of a simulation: a frozen `Image` with its pixels and what describes them.

    image = nanobrag_torch.simulate(cfg)
    image.pixels            # (spixels, fpixels) photons per pixel (torch, on the run's device)
    image.stats             # max_I, mean, rms, rmsd as the C prints them
    image.solid_angle_sr    # what the C reports as the detector's solid angle
    image.setup.geom        # the resolved detector (headers), image.setup.phi the spindle

Writers (nanobrag_torch.writers) take an Image, so a Python user writes the same
files as the command line.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class Stats:
    """Image statistics as the C computes them (SPEC 6.6), from the float32 pixels.

    max_I: the largest pixel (photons); max_I_x, max_I_y: its position (m, the C's
    last subpixel); mean, rms over rendered pixels; rmsd about the mean over the ROI;
    n: rendered pixels.
    """
    max_I: float
    max_I_x: float
    max_I_y: float
    mean: float
    rms: float
    rmsd: float
    n: int


@dataclass(frozen=True)
class Image:
    """A rendered image.

    pixels: (S, F) float image in photons per pixel (before the float32 rounding of
        -floatfile), (P, S, F) for a detector of P panels (image.panel(i): one of them),
        (B, S, F) for a batch of orientations, or (n,) for run(pixels=);
        a torch tensor on the run's device, differentiable when the config holds tensors
        with requires_grad.
    setup: the resolved simulation (simulator.Setup): geometry (setup.geom), spindle
        (setup.phi), sources, lattice (a batch's first orientation), kernel plan, the
        rendered pixels.
    config: the SimConfig it was rendered from; mode: "spec" | "c-parity".
    omega_sum: () the solid angles the C sums over the rendered pixels (sr, x steps).
    warnings: messages of the run (the C's interpolation warning).
    pixel_indices: for run(pixels=), the flat indices s * F + f of `pixels`; else None.
    state: the C's run-wide state at the end of the image (kernel.RunState), or None.
    """
    pixels: torch.Tensor
    setup: object
    config: object
    mode: str
    omega_sum: torch.Tensor
    warnings: tuple = ()
    pixel_indices: torch.Tensor | None = field(default=None)
    state: object = None

    @property
    def shape(self) -> tuple:
        return tuple(self.pixels.shape)

    def expected_adu(self) -> torch.Tensor:
        """The noiseless detector response in ADU (writers.expected_adu): PSF, gain, -adc
        of config.response applied to the pixels; differentiable (docs/gradients.md)."""
        from .writers import expected_adu
        return expected_adu(self)

    @property
    def solid_angle_sr(self) -> float:
        """The detector's solid angle as the C reports it (omega_sum / steps)."""
        return float(self.omega_sum) / self.setup.steps

    @property
    def panel_count(self) -> int:
        """Panels of the detector (1 for nanoBragg's single panel)."""
        return 1 if self.setup.panel_geoms is None else len(self.setup.panel_geoms)

    @cached_property
    def float32(self) -> np.ndarray:
        """The pixels as float32 on the host: what -floatfile writes (S, F), (P, S, F) for panels."""
        self._need_full("float32")
        return self.pixels.detach().to(torch.float32).cpu().numpy()

    @cached_property
    def rendered_mask(self) -> np.ndarray:
        """Pixels the C rendered (inside the ROI and not masked), shaped like the pixels."""
        S, F = self.setup.geom.spixels, self.setup.geom.fpixels
        mask = np.zeros((S, F), dtype=bool)
        mask[self.setup.pixels_s.cpu().numpy(), self.setup.pixels_f.cpu().numpy()] = True
        return mask.reshape(self._image_shape)

    @cached_property
    def roi_mask(self) -> np.ndarray:
        """Pixels inside the ROI (the mask ignored), as the C's integer images; shaped like
        the pixels (every panel's own pixel indices)."""
        *_, S, F = self._image_shape
        xmin, xmax, ymin, ymax = self.setup.roi
        ss, ff = np.meshgrid(np.arange(S), np.arange(F), indexing="ij")
        inside = (ff >= xmin) & (ff <= xmax) & (ss >= ymin) & (ss <= ymax)
        return np.broadcast_to(inside, self._image_shape).copy()

    @cached_property
    def stats(self) -> Stats:
        """max/mean/rms over rendered pixels, rmsd over the ROI, as the C (SPEC 6.6); for
        several panels over all of them (image.panel(i).stats: one panel's)."""
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (panels stacked as rows)
        return image_stats(flat(self.float32), flat(self.rendered_mask), flat(self.roi_mask),
                           self.setup.oversample, self.setup.geom.pixel_size_m)

    def check_finite(self) -> None:
        """Raise NonFiniteImageError if the float32 pixels (what the files hold) are not all
        finite: e.g. a float64 image beyond float32's range (3.4e38)."""
        bad = ~np.isfinite(self.float32)
        if bad.any():
            from .simulator import NonFiniteImageError, non_finite_message
            flat = self.float32.reshape(-1, self.float32.shape[-1])
            k = int(np.argmax(bad.reshape(-1)))
            s, f = divmod(k, flat.shape[1])
            raise NonFiniteImageError(non_finite_message(int(bad.sum()), s, f, float(flat[s, f]),
                                                         "the float32 image"))

    def panel(self, i: int) -> "Image":
        """Panel i of a several-panel image, as an Image of its own (its geometry, pixels,
        rendered pixels and statistics; omega_sum stays the whole detector's)."""
        setup = self.setup
        if setup.panel_geoms is None:
            if i != 0:
                raise IndexError(f"panel {i} of a one-panel detector")
            return self
        rows = setup.geom.panels.spixels
        g = setup.panel_geoms[i]
        on = torch.div(setup.pixels_s, rows, rounding_mode="floor") == i
        sub = dataclasses.replace(setup, geom=g, pixels_s=setup.pixels_s[on] - i * rows,
                                  pixels_f=setup.pixels_f[on], panel_geoms=None)
        return Image(self.pixels[i, :g.spixels, :g.fpixels], sub, self.config, self.mode,
                     self.omega_sum, self.warnings, None, self.state)

    @property
    def _image_shape(self) -> tuple:
        geom = self.setup.geom
        if geom.panels is None:
            return (geom.spixels, geom.fpixels)
        return (geom.panels.count, geom.panels.spixels, geom.fpixels)

    def _need_full(self, what: str) -> None:
        if tuple(self.pixels.shape) != self._image_shape:
            raise ValueError(f"Image.{what} needs one full image (this one has shape "
                             f"{tuple(self.pixels.shape)}); index a batch with image[i]")

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, i) -> "Image":
        """The i-th image of a batch (pixels (B, S, F) -> (S, F))."""
        if self.pixels.dim() != 3:
            raise TypeError("only a batch of images (B, S, F) can be indexed")
        return Image(self.pixels[i], self.setup, self.config, self.mode, self.omega_sum,
                     self.warnings, None, self.state)


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


def panel_path(path, i: int) -> str:
    """The file of panel i: name_p00.ext, the panel tag before a trailing image number
    (image_00001.cbf -> image_p00_00001.cbf, the template DIALS expects stays at the end)."""
    p = Path(path)
    m = re.fullmatch(r"(.*?)([_.-]?)(\d+)", p.stem)
    stem = f"{m.group(1)}_p{i:02d}{m.group(2) or '_'}{m.group(3)}" if m and m.group(1) else f"{p.stem}_p{i:02d}"
    return str(p.with_name(stem + p.suffix))
