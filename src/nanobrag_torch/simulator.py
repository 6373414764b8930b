"""Simulator: detector -> beam -> crystal -> kernel -> image (SPEC 4).

    cfg = nanobrag_torch.config_from_args(argv)
    image = Simulator(cfg).run()          # (spixels, fpixels), photons per pixel

`Simulator.__init__` fixes the static plan (step counts, oversampling,
domains); `run()` rebuilds every continuous quantity from the config with
torch operations, so gradients flow to any config value given as a tensor.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.autograd import forward_ad

from . import beam as beam_mod
from . import compiled
from . import crystal as crystal_mod
from .config import SimConfig
from .detector import DetectorGeometry, detector_geometry
from .errors import ConfigError
from .kernel import ChunkResult, KernelPlan, render_pixels
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
    torch.float32 (or their names); device: "cpu", "cuda" or "auto";
    compile: use the compiled kernels (None: for runs of >= 1e8 evaluations).

    Construction fixes the static plan: step counts, oversampling, mosaic
    domains, rendered pixels (ROI, mask), interpolation on/off. `run()` takes
    every continuous value from the config as it is at call time, so config
    values replaced by tensors (see docs/gradients.md) carry gradients, and
    changes made after construction are seen (with or without gradients).
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
        configs = orientation_configs(config)
        self.batch = None if configs is None else len(configs)
        with torch.no_grad():
            # a batch of orientations shares one static plan (nothing static depends on them)
            self.static = self._setup(None, config if configs is None else configs[0])
        self._static_fingerprint = fingerprint(config) if configs is None else None
        self._scan_cache = None
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

    def run(self, progress=None, pixels=None) -> torch.Tensor:
        """The float image (spixels, fpixels) in photons per pixel (what -floatfile holds,
        before its float32 rounding), or the values of some of its pixels.

        Differentiable with respect to every tensor (requires_grad=True) placed in the
        config: cell, misset, N, mosaic spread, distance, beam centre, detector
        rotations, two-theta, wavelength, fluence, polarisation, structure factors
        (docs/gradients.md has the table). Static choices (step counts, oversampling,
        domain count, interpolation on/off, rendered pixels) stay as decided at
        construction.

        pixels: None (the whole image), or an integer tensor of flat pixel indices
            s * fpixels + f, shape (n,), or of (s, f) pairs, shape (n, 2), in any order
            (repeats allowed). Returns their values, shape (n,), equal bit for bit to the
            full image at those pixels: same physics (oversampling, thickness, background,
            polarisation), 0 outside the ROI or the mask, and the same run-wide state as
            the full image. That state (the tricubic interpolation switch, which goes off
            at the first out-of-range evaluation of the image in the C's loop order, and
            c-parity's first phi loop, at the first rendered pixel) depends on pixels
            not requested: with -interpolate, or in c-parity with -dmin culling, the
            image is first rendered in order without gradients until the state is known
            (at worst the whole image; cached while the config is unchanged). Otherwise
            the cost is that of the n pixels (rounded up to one chunk on the compiled path).
            Draw the indices with a seeded torch.Generator for reproducible SGD.
        progress: callback(done, total) after every chunk (full images only).

        A batch of orientations (cfg.crystal.misset_deg of shape (B, 3) and/or
        cfg.crystal.orientation of shape (B, 3, 3)) adds a leading axis: (B, spixels,
        fpixels), or (B, n) with pixels.
        """
        configs = orientation_configs(self.config)
        if configs is None:
            return self._run_one(self.config, progress, pixels)
        result = torch.stack([self._run_one(cfg, progress, pixels) for cfg in configs])
        if pixels is None:
            self.last_image = result
        return result

    def _run_one(self, cfg: SimConfig, progress, pixels) -> torch.Tensor:
        # continuous quantities are rebuilt from the config (so gradients reach it);
        # step counts and other static choices stay as decided at construction
        if (cfg is self.config and not torch.is_grad_enabled()
                and fingerprint(cfg) == self._static_fingerprint):
            setup = self.static
        else:
            setup = self._setup(self.static, cfg)
        # the C's interpolation switch is global and sticky within one run
        setup.plan.interp_state = {"active": True, "warning": None}
        setup.plan.first_evaluation_done = False
        self.last_setup = setup
        _keep_freed_memory()
        if pixels is not None:
            return self._run_pixels(setup, cfg, pixels)
        geom = setup.geom
        image = torch.zeros(geom.spixels * geom.fpixels, dtype=self.dtype, device=self.device)
        plan = setup.plan
        total = setup.pixels_s.numel()
        batch = self._chunk_size(setup)
        omega_sum = torch.zeros((), dtype=self.geometry_dtype, device=self.device)
        values = []
        for start in range(0, total, batch):
            value, omega = self._render_chunk(setup.pixels_s[start:start + batch],
                                              setup.pixels_f[start:start + batch], plan, batch)
            values.append(value)
            omega_sum = omega_sum + omega.sum()
            if progress is not None:
                progress(min(total, start + batch), total)
        if values:
            flat_idx = setup.pixels_s * geom.fpixels + setup.pixels_f
            image = image.index_put((flat_idx,), torch.cat(values))
        self.omega_sum = omega_sum
        self.interpolation_warning = setup.plan.interp_state["warning"]
        self.last_image = image.reshape(geom.spixels, geom.fpixels)
        return self.last_image

    def _chunk_size(self, setup: Setup) -> int:
        """Pixels per kernel call: about EVALS_PER_CHUNK evaluations (or -pixel_batch_size)."""
        plan = setup.plan
        per_pixel = plan.oversample ** 2 * setup.thicksteps * plan.incident.shape[0] * plan.cells.shape[0]
        total = setup.pixels_s.numel()
        return max(1, min(total, self.config.pixel_batch_size or max(1, EVALS_PER_CHUNK // per_pixel)))

    def _render_chunk(self, s_idx, f_idx, plan: KernelPlan, batch: int, c_order=None):
        """One kernel call: compiled (padded to `batch`) unless the C's order is needed.

        c_order None: decided by the plan's state, as in a full run; True/False: the
        layout a full run used for these pixels (run(pixels=)).
        """
        kept = s_idx.numel()
        needs_c_order = plan.needs_c_order() if c_order is None else c_order
        parts = None if needs_c_order else split_plan(plan, EVALS_PER_CHUNK)
        if parts is not None:
            # more evaluations per pixel than a chunk holds: sum over slices of them
            value = omega = None
            for part in parts:
                v, o = self._render_chunk(s_idx, f_idx, part, batch, c_order)
                value, omega = (v, o) if value is None else (value + v, omega)
            return value, omega
        if self.compile and not needs_c_order:
            # one compiled kernel per run: pad the last chunk to the common size
            s_idx, f_idx = _pad(s_idx, batch), _pad(f_idx, batch)
            if torch.is_grad_enabled() or self.device.type != "cpu":
                res = compiled.compiled_render_pixels()(s_idx, f_idx, plan)
            else:
                res = compiled.aot_kernel(plan, batch)(s_idx, f_idx, plan)
        else:
            res = _eager_chunk(s_idx, f_idx, plan, c_order)
        return res.value[:kept], res.omega_sum[:kept]

    # ------------------------------------------------------------ pixel subsets
    def _run_pixels(self, setup: Setup, cfg: SimConfig, pixels) -> torch.Tensor:
        """run(pixels=): the full image's values at the given pixels (see run)."""
        geom = setup.geom
        fp, sp = geom.fpixels, geom.spixels
        idx = torch.as_tensor(pixels, device=self.device)
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ConfigError(f"pixels must be integer indices, got {idx.dtype}")
        if idx.dim() == 2 and idx.shape[1] == 2:
            flat = idx[:, 0].to(torch.int64) * fp + idx[:, 1].to(torch.int64)
            bad = (idx[:, 0] < 0) | (idx[:, 0] >= sp) | (idx[:, 1] < 0) | (idx[:, 1] >= fp)
        elif idx.dim() == 1:
            flat = idx.to(torch.int64)
            bad = (flat < 0) | (flat >= fp * sp)
        else:
            raise ConfigError(f"pixels must have shape (n,) or (n, 2), got {tuple(idx.shape)}")
        if bool(bad.any()):
            raise ConfigError(f"pixel index out of range for a {sp}x{fp} detector")
        uniq, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        rendered = setup.pixels_s * fp + setup.pixels_f          # ascending (raster order)
        total = rendered.numel()
        pos = torch.searchsorted(rendered, uniq)
        inside = pos < total
        if total:
            inside &= rendered[pos.clamp(max=total - 1)] == uniq
        ranks = pos[inside]                                       # ascending
        values = torch.zeros(uniq.numel(), dtype=self.dtype, device=self.device)
        omega_sum = torch.zeros((), dtype=self.geometry_dtype, device=self.device)
        warning = None
        if ranks.numel():
            batch = self._chunk_size(setup)
            r_interp, r_first, warning = self._sticky_state(setup, cfg, batch)
            rendered_values, omega_sum = self._render_ranks(setup, ranks, batch, r_interp, r_first)
            values = values.index_put((torch.nonzero(inside)[:, 0],), rendered_values)
        self.omega_sum = omega_sum
        self.interpolation_warning = warning
        self.last_pixels = values[inverse]
        return self.last_pixels

    def _sticky_state(self, setup: Setup, cfg: SimConfig, batch: int):
        """Where the full image's run-wide state changes: (rank of the pixel holding the
        first out-of-range evaluation or None, rank of the pixel holding c-parity's first
        phi loop or None, the interpolation warning). Ranks count rendered pixels in
        raster order. Found by rendering in the C's order (no gradients) until known."""
        plan = setup.plan
        need_interp = plan.interpolate
        need_first = plan.cells_first is not None
        if not need_interp and not (need_first and plan.culling):
            return None, (0 if need_first else None), None      # no culling: the first pixel
        key = (fingerprint(cfg), batch)
        if self._scan_cache is not None and self._scan_cache[0] == key:
            return self._scan_cache[1]
        r_interp = r_first = None
        total = setup.pixels_s.numel()
        with torch.no_grad():
            plan.interp_state = {"active": True, "warning": None}
            plan.first_evaluation_done = False
            for start in range(0, total, batch):
                render_pixels(setup.pixels_s[start:start + batch], setup.pixels_f[start:start + batch], plan)
                if need_interp and r_interp is None and not plan.interp_state["active"]:
                    r_interp = start + plan.interp_state["pixel"]
                if need_first and r_first is None and plan.first_evaluation_done:
                    r_first = start + plan.first_evaluation_pixel
                if (r_interp is not None or not need_interp) and (r_first is not None or not need_first):
                    break
        result = (r_interp, r_first, plan.interp_state["warning"])
        self._scan_cache = (key, result)
        return result

    def _render_ranks(self, setup: Setup, ranks: torch.Tensor, batch: int, r_interp, r_first):
        """Render the rendered pixels of the given ranks (ascending) with the state and
        layout each had in the full image (its chunk's layout: the summation order)."""
        plan = setup.plan
        total = setup.pixels_s.numel()
        chunk_start = torch.div(ranks, batch, rounding_mode="floor") * batch
        c_order = torch.full_like(ranks, bool(plan.running_product), dtype=torch.bool)
        active = torch.zeros_like(c_order)
        done = torch.ones_like(c_order)
        if plan.interpolate:
            ri = total if r_interp is None else r_interp             # None: on for the whole image
            c_order |= chunk_start <= ri
            active = ranks <= ri
        if plan.cells_first is not None:
            rf = total if r_first is None else r_first               # None: never happens
            c_order |= chunk_start <= rf
            done = ranks > rf
        key = c_order.to(torch.int64) * 4 + active.to(torch.int64) * 2 + done.to(torch.int64)
        # the keys change at most a few times along the ranks (each flag is monotone)
        cuts = (torch.nonzero(key[1:] != key[:-1])[:, 0] + 1).tolist()
        bounds = [0] + cuts + [ranks.numel()]
        values, omega_sum = [], torch.zeros((), dtype=self.geometry_dtype, device=self.device)
        for a, b in zip(bounds[:-1], bounds[1:]):
            layout, on, finished = bool(c_order[a]), bool(active[a]), bool(done[a])
            for start in range(a, b, batch):
                r = ranks[start:min(b, start + batch)]
                plan.interp_state = {"active": on, "warning": None}
                plan.first_evaluation_done = finished
                value, omega = self._render_chunk(setup.pixels_s[r], setup.pixels_f[r], plan, batch,
                                                  c_order=layout)
                values.append(value)
                omega_sum = omega_sum + omega.sum()
        return torch.cat(values), omega_sum

    # ------------------------------------------------------------------ setup
    def _setup(self, fixed: Setup | None, cfg: SimConfig | None = None) -> Setup:
        """The setup from cfg (default self.config); `fixed`: keep its static choices."""
        cfg = self.config if cfg is None else cfg
        mode, dtype, dev = self.mode, self.geometry_dtype, self.device
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


def _eager_chunk(s_idx, f_idx, plan: KernelPlan, c_order=None) -> ChunkResult:
    """render_pixels; with gradients, as a recomputing autograd Function (_Recomputed)."""
    kwargs = {} if c_order is None else {"c_order": c_order}
    leaves = compiled._tensor_leaves(plan)
    if not (torch.is_grad_enabled() and any(t.requires_grad for _, t in leaves)):
        return render_pixels(s_idx, f_idx, plan, **kwargs)
    paths = [p for p, _ in leaves]
    before = (dict(plan.interp_state), plan.first_evaluation_done)

    def render(tensors, s, f, recompute):
        chunk_plan = compiled._rebuild(plan, dict(zip(paths, tensors)))
        # the run-wide state: the recomputation starts from a copy of this chunk's
        # starting state; the forward pass works on (and leaves its result in) the plan's
        chunk_plan.interp_state = dict(before[0]) if recompute else plan.interp_state
        chunk_plan.first_evaluation_done = before[1]
        res = render_pixels(s, f, chunk_plan, **kwargs)
        if not recompute:
            plan.interp_state = chunk_plan.interp_state
            plan.first_evaluation_done = chunk_plan.first_evaluation_done
            if hasattr(chunk_plan, "first_evaluation_pixel"):
                plan.first_evaluation_pixel = chunk_plan.first_evaluation_pixel
        return res.value, res.omega_sum

    value, omega_sum = _Recomputed.apply(render, s_idx, f_idx, *[t for _, t in leaves])
    return ChunkResult(value, omega_sum)


class _Recomputed(torch.autograd.Function):
    """A chunk rendered without recording the graph; the backward pass renders it again
    with gradients and differentiates that (activation checkpointing).

    Recording the forward pass would keep ~1 kB per evaluation (10 GB for a 128x128
    image of 13M evaluations) and interleave the graph's small allocations with the
    chunk buffers (the heap then grows chunk after chunk). This way a gradient run
    holds one chunk's intermediates at a time, and its forward pass costs what a run
    without gradients costs; the backward pass costs a forward pass with gradients
    plus its differentiation. The Function's inputs are the plan's tensors, so
    torch.autograd.grad and backward() both work (first derivatives only).
    """

    @staticmethod
    def forward(ctx, render, s_idx, f_idx, *tensors):
        ctx.render = render
        ctx.save_for_backward(s_idx, f_idx, *tensors)
        value, omega_sum = render(tensors, s_idx, f_idx, recompute=False)
        return value, omega_sum

    @staticmethod
    def backward(ctx, grad_value, grad_omega_sum):
        s_idx, f_idx, *tensors = ctx.saved_tensors
        wanted = ctx.needs_input_grad[3:]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(w) for t, w in zip(tensors, wanted)]
            outputs = ctx.render(inputs, s_idx, f_idx, recompute=True)
            pairs = [(o, g) for o, g in zip(outputs, (grad_value, grad_omega_sum))
                     if g is not None and o.requires_grad]
            sources = [x for x, w in zip(inputs, wanted) if w]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], sources, [g for _, g in pairs],
                                             allow_unused=True) if pairs else [None] * len(sources))
        return (None, None, None) + tuple(next(grads) if w else None for w in wanted)


def _ndim(x) -> int:
    return x.dim() if isinstance(x, torch.Tensor) else int(np.ndim(x))


def orientation_configs(cfg: SimConfig) -> list[SimConfig] | None:
    """One config per orientation of a batch, or None when the config holds one.

    A batch is crystal.misset_deg of shape (B, 3) and/or crystal.orientation of
    shape (B, 3, 3) (the same B); each config shares everything else (shallow copies).
    """
    cr = cfg.crystal
    m, u = cr.misset_deg, cr.orientation
    batched_m = m is not None and _ndim(m) == 2
    batched_u = u is not None and _ndim(u) == 3
    if not (batched_m or batched_u):
        return None
    n = len(m) if batched_m else len(u)
    if batched_m and batched_u and len(u) != n:
        raise ConfigError(f"misset batch of {n} and orientation batch of {len(u)} differ")
    if n == 0:
        raise ConfigError("empty batch of orientations")
    return [dataclasses.replace(cfg, crystal=dataclasses.replace(
        cr, misset_deg=m[i] if batched_m else m, orientation=u[i] if batched_u else u))
        for i in range(n)]


# not inputs to the continuous setup (the mask is static: it fixes the rendered pixels)
_FINGERPRINT_SKIP = ("output", "notes", "argv", "mask")


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


def split_plan(plan: KernelPlan, max_evals: int) -> list[KernelPlan] | None:
    """Slices of the rotated cells (then of the sources) so that one pixel's evaluations
    in each slice fit in max_evals; None when they already do.

    The pixel value is linear in the sum over evaluations, so the slices' values add
    up to it: the background enters through the first slice only, and every slice
    holds the polarisation of the run's first source, as the C does. Not for the
    runs that need the C's evaluation order (they are never split) or a dmin cut
    (which decides the held polarisation per source).
    """
    cached = getattr(plan, "_split", None)
    if cached is not None and cached[0] == max_evals:
        return cached[1]
    Gs = plan.oversample ** 2 * plan.odet_offsets.shape[0]
    S, R = plan.incident.shape[0], plan.cells.shape[0]
    parts = None
    if Gs * S * R > max(max_evals, 1) and not plan.culling:
        r_size = max(1, min(R, max_evals // (Gs * S)))
        s_size = S if r_size > 1 or Gs * S <= max_evals else max(1, max_evals // Gs)
        parts = []
        for s0 in range(0, S, s_size):
            for r0 in range(0, R, r_size):
                parts.append(dataclasses.replace(
                    plan, cells=plan.cells[r0:r0 + r_size], incident=plan.incident[s0:s0 + s_size],
                    wavelength=plan.wavelength[s0:s0 + s_size],
                    source_weight=None if plan.source_weight is None else plan.source_weight[s0:s0 + s_size],
                    first_incident=plan.incident[0],
                    I_bg=plan.I_bg if not parts else torch.zeros_like(plan.I_bg)))
    plan._split = (max_evals, parts)
    return parts


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
