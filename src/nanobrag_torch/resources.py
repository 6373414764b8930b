"""What a run will cost, known before anything is computed: evaluations, memory, time.

    estimate(cfg, mode) -> Estimate      # counts from the config alone (cheap: no arrays)
    check(estimate, cfg)                 # ResourceError when it cannot fit or would take absurdly long

The evaluation count is rendered pixels x subpixels^2 x sensor layers x sources x
(phi steps x mosaic domains). Time is judged at a stated, generous rate for the
machine (EVALS_PER_S_PER_CORE x cores on a CPU; a GPU 50x that), against
cfg.max_hours (-max_hours, default 24). Memory counts what is held for the whole
run (the image and its outputs, the pixel list, sources, rotated cells, the
structure-factor grid) plus one chunk of evaluations, against what the machine
has available now.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .beam import step_plan
from .errors import ConfigError

EVALS_PER_S_PER_CORE = 1.0e8        # about this machine's compiled float64 rate per core
GPU_SPEEDUP = 50.0
BYTES_PER_PIXEL = 64                # image (float64) + float32 copy + int/noise images + indices
BYTES_PER_EVALUATION = 400          # intermediates of one evaluation in a chunk
BYTES_PER_SOURCE = 200
BYTES_PER_CELL = 400


class ResourceError(ConfigError):
    """The run cannot fit in memory or would take too long; the message gives the numbers."""


@dataclass(frozen=True)
class Estimate:
    pixels: int
    oversample: int
    layers: int
    sources: int
    phi_steps: int
    domains: int
    memory_bytes: float
    seconds: float

    @property
    def evaluations(self) -> float:
        return float(self.pixels) * self.oversample ** 2 * self.layers * self.sources * \
            self.phi_steps * self.domains

    def describe(self) -> str:
        return (f"{self.evaluations:.3g} evaluations ({self.pixels} pixels x {self.oversample}^2 "
                f"subpixels x {self.layers} layers x {self.sources} sources x {self.phi_steps} phi "
                f"steps x {self.domains} mosaic domains)")


def _mrad(x):
    return x / 1000.0 if x is not None else -1.0


def source_count(cfg) -> int:
    """Sources before the elliptical trim (an upper bound), from the step rules alone."""
    bm = cfg.beam
    if bm.sources is not None:
        return len(bm.sources.wavelength_m)
    hn = step_plan(bm.hdivsteps or -1, _mrad(bm.hdivrange_mrad), _mrad(bm.hdivstep_mrad), 1.0)[0]
    vn = step_plan(bm.vdivsteps or -1, _mrad(bm.vdivrange_mrad), _mrad(bm.vdivstep_mrad), 1.0)[0]
    disp = bm.dispersion_pct / 100.0 if bm.dispersion_pct is not None else 0.0
    dn = step_plan(bm.dispsteps or -1, disp, -1.0, 1.0)[0]
    return int(hn) * int(vn) * int(dn)


def estimate(cfg, mode, device_type: str = "cpu") -> Estimate:
    """The run's counts, memory and time, computed on the config (a tiny geometry and
    lattice for the automatic oversampling; no per-pixel or per-source arrays)."""
    import torch

    from .beam import wavelength_m
    from .crystal import crystal_lattice, mosaic_plan, oversampling, phi_plan
    from .detector import detector_geometry, sensor_layers
    from .validate import _pixels
    det = cfg.detector
    if det.panels is not None:
        fp = max(p.fpixels for p in det.panels)
        sp = max(p.spixels for p in det.panels) * len(det.panels)
    else:
        fp, sp = _pixels(det)
    if det.roi is not None:
        xmin, xmax, ymin, ymax = det.roi
        pixels = (min(xmax, fp - 1) - xmin + 1) * (min(ymax, sp - 1) - ymin + 1)
    else:
        pixels = fp * sp
    if cfg.oversample is not None and cfg.oversample > 0:
        over = int(cfg.oversample)
    else:
        with torch.no_grad():
            single = cfg if det.panels is None else _first_panel(cfg)
            geom = detector_geometry(single, mode, torch.float64, "cpu")
            lam = wavelength_m(cfg, torch.float64, "cpu")
            lattice = crystal_lattice(_one_orientation(cfg), mode, lam, torch.float64, "cpu")
            over = oversampling(cfg, lattice, geom, lam)[0]
    layers = sensor_layers(cfg)[0]
    sources = source_count(cfg)
    phi = phi_plan(cfg).phisteps
    domains = mosaic_plan(cfg)[0]
    cells = phi * domains
    grid = 0
    hkl = cfg.crystal.hkl
    if hkl is not None and hkl.hkls:
        grid = 8 * (hkl.h_max - hkl.h_min + 3) * (hkl.k_max - hkl.k_min + 3) * (hkl.l_max - hkl.l_min + 3)
    per_pixel = float(over) ** 2 * layers * sources * cells
    # a chunk holds ~2^20 evaluations, but never less than one pixel's subpixels x layers
    # (sources and rotated cells are sliced when a pixel has more; subpixels are not)
    chunk_evals = max(float(1 << 20), float(over) ** 2 * layers)
    memory = (float(fp) * sp * BYTES_PER_PIXEL + sources * BYTES_PER_SOURCE + cells * BYTES_PER_CELL
              + grid + chunk_evals * BYTES_PER_EVALUATION)
    rate = EVALS_PER_S_PER_CORE * max(1, torch.get_num_threads())
    if device_type == "cuda":
        rate *= GPU_SPEEDUP
    evaluations = float(pixels) * per_pixel
    return Estimate(pixels, over, layers, sources, phi, domains, memory, evaluations / rate)


def _first_panel(cfg):
    from .experiment import panel_config
    return panel_config(cfg, 0)


def _one_orientation(cfg):
    from .config import orientation_batch
    batch = orientation_batch(cfg)
    return cfg if batch is None else batch[0]


def available_memory() -> float:
    """Bytes the system can give now (MemAvailable), or inf where it cannot tell."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def check(est: Estimate, max_hours: float) -> None:
    """Refuse a run that cannot fit in memory or would take more than max_hours."""
    free = available_memory()
    if est.memory_bytes > free:
        raise ResourceError(f"this run needs about {est.memory_bytes / 2 ** 30:.3g} GiB of memory "
                            f"({est.describe()}) but {free / 2 ** 30:.3g} GiB are available")
    if max_hours is not None and est.seconds > max_hours * 3600:
        raise ResourceError(f"this run needs {est.describe()}: about {_duration(est.seconds)} at "
                            f"{est.evaluations / max(est.seconds, 1e-300):.3g} evaluations/s, more than "
                            f"-max_hours {max_hours:g} (raise it to run anyway)")
