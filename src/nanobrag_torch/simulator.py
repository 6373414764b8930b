"""Simulator: detector -> beam -> crystal -> kernel -> background -> scale (SPEC 4).

    import nanobrag_torch as nb
    image = nb.simulate(nb.config_from_args(argv))     # an Image: image.pixels (S, F)

`build_setup` is the physics pipeline: it resolves the config into the detector
geometry, the sources, the rotated crystal and the kernel plan, all tensors built
with torch operations so gradients flow to any config value given as a tensor.
`Simulator` fixes the static choices once (step counts, oversampling, domains,
rendered pixels) and renders on every `run()`; how the kernel is executed
(chunks, compiled or eager, pixel subsets) is execution.py's job.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from . import beam as beam_mod
from . import crystal as crystal_mod
from . import execution, resources
from .amorphous import stol_table
from .background import amorphous_photons, water_intensity
from .background import water_molecules as water_molecules_of
from .config import SimConfig, fingerprint, orientation_batch
from .detector import DetectorGeometry, detector_panels, rendered_pixels
from .errors import ConfigError
from .image import Image
from .kernel import KernelPlan
from .modes import Mode, get_mode
from .structure import FGrid, interpolation_on
from .units import R_E_SQR
from .validate import validate
from .vec import as_tensor, value

DTYPES = {"float64": torch.float64, "float32": torch.float32, torch.float64: torch.float64,
          torch.float32: torch.float32}


class SuspiciousValueWarning(UserWarning):
    """A legal but suspicious config value (the run goes on)."""


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
    fluence: object               # photons/m^2 (from -flux when given)
    interpolate: bool
    steps: int
    plan: KernelPlan
    pixels_s: torch.Tensor        # rendered pixels in raster order
    pixels_f: torch.Tensor
    roi: tuple
    notes: list
    panel_geoms: list | None = None   # several panels: each panel's own geometry (headers)


def build_setup(cfg: SimConfig, mode: Mode, dtype, device, fixed: Setup | None = None) -> Setup:
    """The simulation cfg describes; `fixed`: keep its static choices (step counts,
    oversampling, interpolation, rendered pixels). Geometry is float64 whatever the dtype
    (see kernel.py); dtype is that of the lattice and structure-factor arithmetic."""
    g64, dev = torch.float64, device
    notes = []
    geom, panel_geoms, layers = detector_panels(cfg, mode, g64, dev)               # SPEC 1
    vec = geom.vectors
    if vec.odet_regenerated:
        notes.append("WARNING: auto-generating odet_vector")
    lambda0 = beam_mod.wavelength_m(cfg, g64, dev)
    sources = beam_mod.make_sources(cfg, vec.beam, vec.polar, vec.vert, mode, g64, dev)  # SPEC 3
    lattice = crystal_mod.crystal_lattice(cfg, mode, lambda0, g64, dev)               # SPEC 2
    notes += crystal_mod.sample_size_m(cfg)[1]
    phi = crystal_mod.phi_plan(cfg)
    domains, spread, mos_notes = crystal_mod.mosaic_plan(cfg)
    notes += mos_notes
    cells, cells_first = crystal_mod.rotated_cell_set(lattice, vec.spindle, phi, domains, spread,
                                                      cfg.crystal.mosaic_seed, mode, g64, dev)
    if fixed is None:
        oversample, recommended = crystal_mod.oversampling(cfg, lattice, geom, lambda0)
        interpolate = interpolation_on(cfg)
        pixels_s, pixels_f, roi = rendered_pixels(cfg, geom, dev)
    else:
        oversample, recommended, interpolate = fixed.oversample, fixed.recommended_oversample, \
            fixed.interpolate
        pixels_s, pixels_f, roi = fixed.pixels_s, fixed.pixels_f, fixed.roi
    thicksteps, thick, thickstep, mu, th_notes = layers[0]
    notes += th_notes

    n_src = sources.incident.shape[0]
    steps = n_src * domains * phi.phisteps * oversample * oversample
    weight = None
    if sources.weight is not None:
        weight = sources.weight * (n_src / sources.weight.sum())
    fluence = beam_mod.fluence(cfg)
    water_molecules = water_table = None
    if mode.physical_water:                                                            # modes.md 16
        I_bg = torch.zeros((), dtype=g64, device=dev)
        if value(cfg.background.water_um) != 0.0:
            water_molecules = water_molecules_of(cfg.background.water_um, g64, dev)
            if cfg.background.stol_table is not None:
                water_table = stol_table(cfg.background.stol_table, cfg.background.stol_mult, dev)
    else:
        I_bg = water_intensity(cfg.background.water_um, fluence, g64, dev)             # SPEC 5
    offsets = torch.arange(thicksteps, dtype=g64, device=dev) * as_tensor(thickstep, g64, dev)
    if geom.panels is not None:      # (P, T): each panel's own sensor layers
        offsets = torch.arange(thicksteps, dtype=g64, device=dev)[None, :] * geom.panels.thickstep[:, None]
    dmin = cfg.dmin_A * 1e-10 if not isinstance(cfg.dmin_A, torch.Tensor) else \
        as_tensor(cfg.dmin_A, g64, dev) * 1e-10
    plan = KernelPlan(                                                                 # SPEC 4
        geom=geom, oversample=oversample, odet_offsets=offsets, thickstep=thickstep, mu=mu,
        thick=value(thick) > 0, incident=sources.incident, wavelength=sources.wavelength,
        source_weight=weight, cells=cells, cells_first=cells_first,
        reciprocal=torch.stack((lattice.a_star, lattice.b_star, lattice.c_star)),
        n_cells=lattice.n_cells, shape=cfg.crystal.shape, fudge=cfg.crystal.fudge,
        fgrid=FGrid.from_config(cfg.crystal.hkl, cfg.crystal.default_F, dtype, dev),
        interpolate=interpolate, water=value(cfg.background.water_um) != 0.0, I_bg=I_bg,
        scale=R_E_SQR * as_tensor(fluence, g64, dev), steps=steps, dmin=dmin,
        nopolar=cfg.beam.nopolar, kahn=as_tensor(cfg.beam.polarization, g64, dev),
        polar_axis=vec.polar, oversample_thick=cfg.oversample_thick,
        oversample_polar=cfg.oversample_polar, oversample_omega=cfg.oversample_omega,
        c_form=(not mode.reduced_lattice_form and dtype == torch.float64), dtype=dtype,
        water_molecules=water_molecules, water_table=water_table,
        subpixel_factors=mode.subpixel_factors)
    return Setup(geom, sources, lattice, phi, domains, spread, oversample, recommended,
                 thicksteps, thick, thickstep, mu, fluence, interpolate, steps, plan,
                 pixels_s, pixels_f, roi, notes, panel_geoms if geom.panels is not None else None)


class Simulator:
    """Renders nanoBragg images from a `SimConfig`.

    mode ("spec" | "c-parity"), dtype (torch.float64 | torch.float32 or their names)
    and device ("cpu" | "cuda" | "auto"): None takes the config's (cfg.mode, cfg.dtype,
    cfg.device); compile: use the compiled kernels (None: whenever the cache holds the
    kernel of this feature set, for runs without gradients on the CPU, and building it when
    the images this Simulator is made for, `images` of them, need >= 5e8 evaluations in
    all: a sweep or batch of small images pays one build for all of them).

    Construction validates the config and fixes the static plan: step counts,
    oversampling, mosaic domains, rendered pixels (ROI, mask), interpolation on/off.
    `run()` takes every continuous value from the config as it is at call time, so
    config values replaced by tensors (see docs/gradients.md) carry gradients, and
    changes made after construction are seen (with or without gradients).
    """

    def __init__(self, config: SimConfig, *, mode=None, dtype=None, device=None,
                 compile: bool | None = None, images: int = 1):
        self.warnings = validate(config)
        for w in self.warnings:
            warnings.warn(w, SuspiciousValueWarning, stacklevel=2)
        self.mode = get_mode(mode if mode is not None else config.mode)
        dtype = dtype if dtype is not None else config.dtype
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = DTYPES[dtype]
        self.device = resolve_device(device if device is not None else config.device)
        # what the run costs, before any array is made (too much memory or time: stop now)
        resources.check(resources.estimate(config, self.mode, self.device.type), config.max_hours)
        from .inputs import for_mode
        self.config = for_mode(config, self.mode)
        configs = orientation_batch(self.config)
        self.batch = None if configs is None else len(configs)
        with torch.no_grad():
            # a batch of orientations shares one static plan (nothing static depends on them)
            self.static = build_setup(self.config if configs is None else configs[0], self.mode,
                                      self.dtype, self.device)
        self._static_fingerprint = fingerprint(self.config) if configs is None else None
        self._scan_cache = None
        self._amorphous_cache = None       # (key, layer photons) of the last run
        self.notes = self.static.notes
        # the fused kernel: built only for runs that pay for the build (a run of many images of
        # one static plan is one large run: the kernel is built once for all of them); used
        # by any run, of any size, whose feature set the cache already holds (renderer())
        self._compile = compile
        self.compile = compile if compile is not None else (
            execution.compile_enabled()
            and self.evaluations * max(1, int(images)) >= execution.COMPILE_MIN_EVALS)

    @property
    def evaluations(self) -> int:
        """Evaluations per image: rendered pixels x oversample^2 x layers x sources x rotated cells."""
        return self.static.pixels_s.numel() * execution.evaluations_per_pixel(self.static.plan)

    def run(self, progress=None, pixels=None) -> Image:
        """The image: `Image.pixels` is the float image (spixels, fpixels) in photons per
        pixel (what -floatfile holds, before its float32 rounding), or the values of
        some of its pixels.

        Differentiable with respect to every tensor (requires_grad=True) placed in the
        config: cell, misset, N, mosaic spread, distance, beam centre, detector
        rotations, two-theta, wavelength, fluence, polarisation, structure factors
        (docs/gradients.md has the table). Static choices (step counts, oversampling,
        domain count, interpolation on/off, rendered pixels) stay as decided at
        construction.

        pixels: None (the whole image), or an integer tensor of flat pixel indices
            s * fpixels + f, shape (n,), or of (s, f) pairs, shape (n, 2), in any order
            (repeats allowed). `Image.pixels` then holds their values, shape (n,), equal
            bit for bit to the full image at those pixels: same physics (oversampling,
            thickness, background, polarisation), 0 outside the ROI or the mask, and the
            same run-wide state as the full image. That state (the tricubic
            interpolation switch, which goes off at the first out-of-range evaluation of
            the image in the C's loop order, and c-parity's first phi loop, at the first
            rendered pixel) depends on pixels not requested: with -interpolate, or in
            c-parity with -dmin culling, the image is first rendered in order without
            gradients until the state is known (at worst the whole image; cached while
            the config is unchanged). Otherwise the cost is that of the n pixels
            (rounded up to one chunk on the compiled path). Draw the indices with a
            seeded torch.Generator for reproducible SGD.
        progress: callback(done, total) after every chunk (full images only).

        A batch of orientations (cfg.crystal.misset_deg of shape (B, 3) and/or
        cfg.crystal.orientation of shape (B, 3, 3)) adds a leading axis: (B, spixels,
        fpixels), or (B, n) with pixels; the Image's setup is the first orientation's.
        """
        validate(self.config)
        configs = orientation_batch(self.config)
        if configs is None:
            return self._run_one(self.config, progress, pixels)
        images = [self._run_one(cfg, progress, pixels) for cfg in configs]
        first = images[0]
        return Image(torch.stack([im.pixels for im in images]), first.setup, self.config,
                     self.mode.name, first.omega_sum, first.warnings, first.pixel_indices, first.state)

    def sweep(self, nimages: int, progress=None):
        """A rotation sweep (sweep.py): a generator of the nimages Images, image i (from 0)
        equal bit for bit to a single run at -phi START + i*WIDTH (WIDTH: the config's -osc),
        one at a time. progress: callback(done, total) over the whole sweep. Full images of
        one orientation only (no batch of orientations)."""
        from .sweep import run_sweep
        if self.batch is not None:
            raise ConfigError("-nimages: a sweep takes one orientation, not a batch")
        return run_sweep(self, nimages, progress)

    def _setup_for(self, cfg: SimConfig) -> Setup:
        # continuous quantities are rebuilt from the config (so gradients reach it);
        # step counts and other static choices stay as decided at construction
        if (cfg is self.config and not torch.is_grad_enabled()
                and fingerprint(cfg) == self._static_fingerprint):
            return self.static
        return build_setup(cfg, self.mode, self.dtype, self.device, fixed=self.static)

    def renderer(self, setup: Setup) -> execution.Renderer:
        batch = execution.chunk_pixels(setup.plan, setup.pixels_s.numel(), self.config.pixel_batch_size)
        renderer = execution.Renderer(setup.plan, setup.pixels_s, setup.pixels_f, batch=batch,
                                      compile=self.compile)
        if self._compile is None and not self.compile and execution.compile_enabled():
            renderer.compile = renderer.kernels_cached()
        return renderer

    def _run_one(self, cfg: SimConfig, progress, pixels) -> Image:
        setup = self._setup_for(cfg)
        execution.keep_freed_memory()
        renderer = self.renderer(setup)
        geom = setup.geom
        if pixels is not None:
            return self._run_pixels(cfg, setup, renderer, pixels)
        rendered = renderer.image(progress)
        _check_finite(rendered.values, setup)
        image = torch.zeros(geom.spixels * geom.fpixels, dtype=self.dtype, device=self.device)
        if rendered.values.numel():
            flat_idx = setup.pixels_s * geom.fpixels + setup.pixels_f
            values = rendered.values
            layers = self._amorphous(cfg, setup)
            if layers is not None:        # -amorphous: nonBragg's layers on this detector, added
                values = values + layers.reshape(-1)[flat_idx].to(self.dtype)
            image = image.index_put((flat_idx,), values)
        shape = (geom.spixels, geom.fpixels) if geom.panels is None else \
            (geom.panels.count, geom.panels.spixels, geom.fpixels)
        return Image(image.reshape(shape), setup, cfg, self.mode.name,
                     rendered.omega_sum, _warnings(rendered.state), state=rendered.state)

    def _run_pixels(self, cfg, setup, renderer, pixels) -> Image:
        """run(pixels=): the full image's values at the given pixels (see run)."""
        geom = setup.geom
        flat, uniq, inverse, ranks, inside = execution.subset_ranks(
            pixels, setup.pixels_s, setup.pixels_f, geom.spixels, geom.fpixels, self.device)
        values = torch.zeros(uniq.numel(), dtype=self.dtype, device=self.device)
        omega_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        state_warning = None
        if ranks.numel():
            scan = self._scan(cfg, renderer) if renderer.needs_scan() else renderer.scan()
            rendered = renderer.ranks(ranks, scan)
            got = rendered.values
            layers = self._amorphous(cfg, setup)
            if layers is not None:
                got = got + layers.reshape(-1)[uniq[inside]].to(self.dtype)
            values = values.index_put((torch.nonzero(inside)[:, 0],), got)
            omega_sum, state_warning = rendered.omega_sum, scan.warning
        return Image(values[inverse], setup, cfg, self.mode.name, omega_sum,
                     (state_warning,) if state_warning else (), pixel_indices=flat)

    def _amorphous(self, cfg: SimConfig, setup: Setup):
        """The -amorphous layers' photons (S, F) on this run's detector (None without layers);
        cached while what they depend on (detector, beam, background, mode; the static
        oversampling) is unchanged and no gradient is wanted: a sweep or a batch of
        orientations renders them once."""
        if not cfg.background.amorphous:
            return None
        cacheable = not torch.is_grad_enabled()
        key = fingerprint((cfg.detector, cfg.beam, cfg.background, cfg.mode)) if cacheable else None
        if cacheable and self._amorphous_cache is not None and self._amorphous_cache[0] == key:
            return self._amorphous_cache[1]
        photons = amorphous_photons(cfg, setup, self.mode)
        if cacheable:
            self._amorphous_cache = (key, photons)
        return photons

    def _scan(self, cfg, renderer) -> execution.StateScan:
        """The full image's run-state changes (cached while the config is unchanged)."""
        key = (fingerprint(cfg), renderer.batch)
        if self._scan_cache is None or self._scan_cache[0] != key:
            self._scan_cache = (key, renderer.scan())
        return self._scan_cache[1]


class NonFiniteImageError(ConfigError):
    """The image holds NaN or infinite pixels (inputs whose arithmetic overflows)."""


def _check_finite(values: torch.Tensor, setup: Setup) -> None:
    """Fail, with the count and the first pixel, rather than return non-finite pixels."""
    bad = ~torch.isfinite(values.detach())
    if bool(bad.any()):
        k = int(torch.nonzero(bad)[0, 0])
        raise NonFiniteImageError(non_finite_message(int(bad.sum()), int(setup.pixels_s[k]),
                                                     int(setup.pixels_f[k]), float(values[k])))


def non_finite_message(count: int, s: int, f: int, value: float, where: str = "the image") -> str:
    return (f"{where} has {count} non-finite pixels (first: slow {s}, fast {f}, value {value}): "
            f"the inputs overflow the arithmetic (check -fluence, -flux, -water and the "
            f"structure factors)")


def _warnings(state) -> tuple:
    return (state.warning,) if state.warning else ()


def simulate(config: SimConfig, *, mode=None, dtype=None, device=None, compile=None,
             progress=None, pixels=None) -> Image:
    """Render the image a config describes: `Simulator(config, ...).run(...)` in one call.

    mode, dtype, device: None takes the config's (cfg.mode, cfg.dtype, cfg.device).
    """
    return Simulator(config, mode=mode, dtype=dtype, device=device, compile=compile).run(
        progress=progress, pixels=pixels)
