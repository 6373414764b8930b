"""Simulator: detector -> beam -> crystal -> kernel -> image (SPEC 4).

    cfg = nanobrag_torch.config_from_args(argv)
    image = Simulator(cfg).run()          # (spixels, fpixels), photons per pixel

`Simulator.__init__` fixes the static plan (step counts, oversampling,
domains); `run()` rebuilds every continuous quantity from the config with
torch operations, so gradients flow to any config value given as a tensor.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from . import beam as beam_mod
from . import compiled
from . import crystal as crystal_mod
from .config import SimConfig
from .detector import DetectorGeometry, detector_geometry
from .errors import ConfigError
from .kernel import KernelPlan, render_pixels
from .structure import FGrid
from .units import AVOGADRO, R_E_SQR, WATER_F, WATER_MW
from .vec import as_tensor, value

DTYPES = {"float64": torch.float64, "float32": torch.float32, torch.float64: torch.float64,
          torch.float32: torch.float32}
MODES = ("spec", "c-parity")
EVALS_PER_CHUNK = 1 << 20
COMPILE_MIN_EVALS = 100_000_000    # below this eager beats a cold compile (~15 s)


def resolve_device(device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("-device cuda: no CUDA device is available")
    return dev


@dataclass
class Setup:
    """The resolved simulation: geometry, sources, crystal and the kernel plan."""
    geom: DetectorGeometry
    sources: beam_mod.Sources
    lattice: crystal_mod.Lattice
    phi: crystal_mod.PhiPlan
    mosaic_domains: int
    mosaic_spread_deg: object
    oversample: int
    recommended_oversample: int
    thicksteps: int
    thick_m: object
    thickstep_m: object
    mu: object
    interpolate: bool
    steps: int
    plan: KernelPlan
    pixels_s: torch.Tensor       # rendered pixels in raster order
    pixels_f: torch.Tensor
    roi: tuple
    notes: list


class Simulator:
    """Renders nanoBragg images from a `SimConfig`.

    mode: "spec" (default) or "c-parity" (SPEC 0); dtype: torch.float64 or
    torch.float32 (or their names); device: "cpu", "cuda" or "auto".
    """

    def __init__(self, config: SimConfig, *, mode: str = "spec", dtype=torch.float64, device="cpu",
                 compile: bool | None = None):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
        self.config = config
        self.mode = mode
        self.dtype = DTYPES[dtype]
        # setup and per-pixel geometry run in float64 whatever the dtype (see kernel.py)
        self.geometry_dtype = torch.float64
        self.device = resolve_device(device)
        self._compile_request = compile
        with torch.no_grad():
            self.static = self._setup(None)
        self.notes = self.static.notes
        # the fused kernel (torch.compile) pays for its compilation on large runs only
        self.compile = compile if compile is not None else (
            compile_enabled() and self.evaluations >= COMPILE_MIN_EVALS)

    @property
    def evaluations(self) -> int:
        """Evaluations per image: rendered pixels x oversample^2 x layers x sources x rotated cells."""
        p = self.static.plan
        return (self.static.pixels_s.numel() * p.oversample ** 2 * self.static.thicksteps
                * p.incident.shape[0] * p.cells.shape[0])

    def run(self, progress=None) -> torch.Tensor:
        """The float image (spixels, fpixels) in photons per pixel (what -floatfile holds, before float32)."""
        # continuous quantities are rebuilt from the config (so gradients reach it);
        # step counts and other static choices stay as decided at construction
        setup = self._setup(self.static) if torch.is_grad_enabled() else self.static
        # the C's interpolation switch is global and sticky within one run
        setup.plan.interp_state = {"active": True, "warning": None}
        setup.plan.first_evaluation_done = False
        self.last_setup = setup
        geom = setup.geom
        image = torch.zeros(geom.spixels * geom.fpixels, dtype=self.dtype, device=self.device)
        _keep_freed_memory()
        plan = setup.plan
        per_pixel = plan.oversample ** 2 * setup.thicksteps * plan.incident.shape[0] * plan.cells.shape[0]
        total = setup.pixels_s.numel()
        chunk = EVALS_PER_CHUNK
        batch = min(total, self.config.pixel_batch_size or max(1, chunk // per_pixel))
        omega_sum = torch.zeros((), dtype=self.geometry_dtype, device=self.device)
        values = []
        for start in range(0, total, batch):
            s_idx = setup.pixels_s[start:start + batch]
            f_idx = setup.pixels_f[start:start + batch]
            kept = s_idx.numel()
            if self.compile and not plan.needs_c_order():
                # one compiled kernel per run: pad the last chunk to the common size
                s_idx, f_idx = _pad(s_idx, batch), _pad(f_idx, batch)
                if torch.is_grad_enabled() or self.device.type != "cpu":
                    res = compiled.compiled_render_pixels()(s_idx, f_idx, plan)
                else:
                    res = compiled.aot_kernel(plan, batch)(s_idx, f_idx, plan)
            else:
                res = render_pixels(s_idx, f_idx, plan)
            values.append(res.value[:kept])
            omega_sum = omega_sum + res.omega_sum[:kept].sum()
            if progress is not None:
                progress(min(total, start + batch), total)
        if values:
            flat_idx = setup.pixels_s * geom.fpixels + setup.pixels_f
            image = image.index_put((flat_idx,), torch.cat(values))
        self.omega_sum = omega_sum
        self.interpolation_warning = setup.plan.interp_state["warning"]
        self.last_image = image.reshape(geom.spixels, geom.fpixels)
        return self.last_image

    # ------------------------------------------------------------------ setup
    def _setup(self, fixed: Setup | None) -> Setup:
        cfg, mode, dtype, dev = self.config, self.mode, self.geometry_dtype, self.device
        notes = []
        geom = detector_geometry(cfg, mode, dtype, dev)
        vec = geom.vectors
        if vec.odet_regenerated:
            notes.append("WARNING: auto-generating odet_vector")
        lambda0 = beam_mod.wavelength_m(cfg, dtype, dev)
        sources = beam_mod.make_sources(cfg, vec.beam, vec.polar, vec.vert, mode, dtype, dev)
        lattice = crystal_mod.crystal_lattice(cfg, mode, lambda0, dtype, dev)

        phi = crystal_mod.phi_plan(cfg)
        domains, spread, mos_notes = crystal_mod.mosaic_plan(cfg)
        notes += mos_notes
        umats = crystal_mod.mosaic_umats(domains, spread, cfg.crystal.mosaic_seed, dtype, dev)
        phis = crystal_mod.phi_angles(phi, dtype, dev)
        cells_first = None
        if mode == "c-parity":
            # C-PARITY-001: where phi == 0 the C reuses the last rotation it computed
            values = [value(x) for x in phis]
            carried = crystal_mod.carried_phi_steps(values, first_loop=False)
            first = crystal_mod.carried_phi_steps(values, first_loop=True)
            cells = crystal_mod.rotated_cells(lattice, vec.spindle, phis, umats, carried).reshape(-1, 3, 3)
            if first != carried:
                cells_first = crystal_mod.rotated_cells(lattice, vec.spindle, phis, umats,
                                                        first).reshape(-1, 3, 3)
        else:
            cells = crystal_mod.rotated_cells(lattice, vec.spindle, phis, umats).reshape(-1, 3, 3)

        if fixed is None:
            oversample, recommended = self._oversample(lattice, geom, lambda0)
            interpolate = self._interpolate(cfg)
        else:
            oversample, recommended, interpolate = fixed.oversample, fixed.recommended_oversample, \
                fixed.interpolate
        thicksteps, thick, thickstep, mu, th_notes = self._thickness()
        notes += th_notes

        n_src = sources.incident.shape[0]
        steps = n_src * domains * phi.phisteps * oversample * oversample
        weight = None
        if sources.weight is not None:
            weight = sources.weight * (n_src / sources.weight.sum())
        fluence = as_tensor(cfg.beam.fluence, dtype, dev)
        water_m = as_tensor(cfg.background.water_um, dtype, dev) / 1e6
        I_bg = WATER_F * WATER_F * R_E_SQR * fluence * water_m * water_m * water_m * 1e6 * AVOGADRO / WATER_MW
        offsets = torch.arange(thicksteps, dtype=dtype, device=dev) * as_tensor(thickstep, dtype, dev)
        fgrid = FGrid.from_config(cfg.crystal.hkl, cfg.crystal.default_F, self.dtype, dev)
        dmin = cfg.dmin_A * 1e-10 if not isinstance(cfg.dmin_A, torch.Tensor) else \
            as_tensor(cfg.dmin_A, dtype, dev) * 1e-10
        plan = KernelPlan(
            geom=geom, oversample=oversample, odet_offsets=offsets, thickstep=thickstep, mu=mu,
            thick=value(thick) > 0, incident=sources.incident, wavelength=sources.wavelength,
            source_weight=weight, cells=cells, cells_first=cells_first,
            reciprocal=torch.stack((lattice.a_star, lattice.b_star, lattice.c_star)),
            n_cells=lattice.n_cells, shape=cfg.crystal.shape, fudge=cfg.crystal.fudge, fgrid=fgrid,
            interpolate=interpolate, water=value(cfg.background.water_um) != 0.0, I_bg=I_bg,
            scale=R_E_SQR * fluence, steps=steps, dmin=dmin, nopolar=cfg.beam.nopolar,
            kahn=as_tensor(cfg.beam.polarization, dtype, dev), polar_axis=vec.polar,
            oversample_thick=cfg.oversample_thick, oversample_polar=cfg.oversample_polar,
            oversample_omega=cfg.oversample_omega,
            c_form=(mode == "c-parity" and self.dtype == torch.float64), dtype=self.dtype)
        if fixed is None:
            pixels_s, pixels_f, roi = self._rendered_pixels(geom)
        else:
            pixels_s, pixels_f, roi = fixed.pixels_s, fixed.pixels_f, fixed.roi
        return Setup(geom, sources, lattice, phi, domains, spread, oversample, recommended,
                     thicksteps, thick, thickstep, mu, interpolate, steps, plan, pixels_s, pixels_f,
                     roi, notes)

    def _oversample(self, lattice, geom, lambda0):
        """SPEC 2.9: recommended oversampling from crystal size and reciprocal pixel size."""
        sizes = [value(crystal_mod.magnitude(v) * n) for v, n in
                 zip((lattice.a, lattice.b, lattice.c), lattice.n_cells)]
        reciprocal_pixel = value(lambda0) * value(geom.distance) / geom.pixel_size_m
        recommended = int(math.ceil(3.0 * max(sizes) / reciprocal_pixel))
        if recommended <= 0:
            recommended = 1
        over = self.config.oversample
        if over is None or over <= 0:
            over = recommended
        return over, recommended

    def _thickness(self):
        det = self.config.detector
        notes = []
        n, thick, step = beam_mod.step_plan(det.thicksteps or -1, det.thickness_um * 1e-6, -1.0, 0.5e-6,
                                            range_only_halves=True)
        mu = det.mu_per_m if det.mu_per_m is not None else -1.0
        if thick > 0.0 and mu < 0.0:
            mu = 1.0 / thick
            notes.append(f"WARNING: setting detector attenuation depth to {mu:g} m")
        return n, thick, step, mu, notes

    def _interpolate(self, cfg) -> bool:
        interp = cfg.crystal.interpolate
        if interp is None:
            # the C decides on the N values as parsed, before -xtalsize and the clamp to 1
            interp = any(value(n) <= 2 for n in cfg.crystal.n_cells)
        hkl = cfg.crystal.hkl
        if hkl is None or hkl.hkls == 0:
            interp = False
        return bool(interp)

    def _rendered_pixels(self, geom):
        det = self.config.detector
        fp, sp = geom.fpixels, geom.spixels
        if det.roi is not None:
            xmin, xmax, ymin, ymax = det.roi
        else:
            xmin, xmax, ymin, ymax = 0, fp, 0, sp
        dev = self.device
        s = torch.arange(sp, device=dev)[:, None]
        f = torch.arange(fp, device=dev)[None, :]
        keep = (f >= xmin) & (f <= xmax) & (s >= ymin) & (s <= ymax)
        if det.mask is not None:
            keep = keep & (torch.as_tensor(np.asarray(det.mask), device=dev) != 0)
        flat = torch.nonzero(keep.reshape(-1))[:, 0]       # raster order, as the C renders
        return flat // fp, flat % fp, (xmin, xmax, ymin, ymax)


_MALLOC_TUNED = []


def _keep_freed_memory() -> None:
    """Let glibc keep freed chunk buffers instead of returning them to the OS.

    Every pixel chunk allocates its temporaries afresh; by default glibc hands
    blocks of a few MB straight back (mmap) and the next chunk faults them in
    again, which costs about a third of a large run. Linux/glibc only; a no-op
    elsewhere.
    """
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED.append(True)
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)      # M_MMAP_THRESHOLD: glibc's maximum, 32 MB
        libc.mallopt(-1, 1 << 30)       # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _pad(idx: torch.Tensor, size: int) -> torch.Tensor:
    if idx.numel() == size:
        return idx
    return torch.cat((idx, idx[-1:].expand(size - idx.numel())))


def compile_enabled() -> bool:
    """torch.compile may be used unless NANOBRAGG_COMPILE=0 (it needs a C++ compiler on CPU)."""
    return os.environ.get("NANOBRAGG_COMPILE", "1") not in ("0", "false", "no")


def progress_printer(stream=None):
    """A progress callback printing 'NN% done' lines as the C does (every 5 %)."""
    stream = stream or sys.stdout
    state = {"last": -1}

    def report(done, total):
        pct = done * 100 // max(total, 1)
        step = pct // 5 * 5
        if step > state["last"]:
            state["last"] = step
            print(f"{step}% done", file=stream, flush=True)
    return report
