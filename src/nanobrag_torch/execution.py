"""Running the kernel over an image: chunks, compiled or eager, recomputation, pixel subsets.

The physics is kernel.render_pixels on a chunk of pixels. This module decides how
an image's rendered pixels reach it:

* chunks of about EVALS_PER_CHUNK evaluations (memory stays bounded); pixels with
  more evaluations than a chunk holds are summed over slices of the rotated cells
  and sources (split_plan);
* compiled (an ahead-of-time kernel without gradients on the CPU, torch.compile
  with gradients or on GPUs) or eager; the C's evaluation order (sticky
  interpolation switch, c-parity's first phi loop, running products) runs eagerly;
* with gradients, each eager chunk is an autograd Function that recomputes its
  graph in the backward pass (memory of one chunk's intermediates, not the image's);
* run(pixels=): the full image's values at some pixels, with the run state and
  the summation layout each had in the full image.

The run-wide state (kernel.RunState) is passed from chunk to chunk and returned:
nothing here or in the kernel changes the plan.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD

from . import compiled
from .errors import ConfigError
from .kernel import ChunkResult, KernelPlan, RunState, render_pixels

EVALS_PER_CHUNK = 1 << 20
# a run builds a kernel its cache lacks from this many evaluations on: a build takes 25-40 s
# on 2 cores, and eager (1-3e7 evaluations/s there) loses that much to the compiled kernel
# (0.4-2.5e8, 2026-12-04) from about 5e8 evaluations (smaller runs use a kernel already built)
COMPILE_MIN_EVALS = 500_000_000


def compile_enabled() -> bool:
    """torch.compile may be used unless NANOBRAGG_COMPILE=0 (it needs a C++ compiler on CPU)."""
    return os.environ.get("NANOBRAGG_COMPILE", "1") not in ("0", "false", "no")


def evaluations_per_pixel(plan: KernelPlan) -> int:
    """Subpixels x layers x sources x rotated cells."""
    return plan.oversample ** 2 * plan.odet_offsets.shape[-1] * plan.incident.shape[0] * plan.cells.shape[0]


def chunk_pixels(plan: KernelPlan, total: int, requested: int | None = None) -> int:
    """Pixels per kernel call: about EVALS_PER_CHUNK evaluations (or the requested count)."""
    per_pixel = evaluations_per_pixel(plan)
    return max(1, min(total, requested or max(1, EVALS_PER_CHUNK // per_pixel)))


@dataclass(frozen=True)
class Rendered:
    """Values of some rendered pixels, the solid angles the C sums, and the run's state.

    values: (n,) in the order asked for; omega_sum: () float64; state: after the last
    pixel (for a full image: the state the C ends the image with).
    """
    values: torch.Tensor
    omega_sum: torch.Tensor
    state: RunState


@dataclass(frozen=True)
class StateScan:
    """Where the full image's run-wide state changes, as ranks of rendered pixels (raster
    order): interpolation goes off within pixel interp_off_rank (None: never), c-parity's
    first phi loop happens within pixel first_loop_rank (None: never)."""
    interp_off_rank: int | None
    first_loop_rank: int | None
    warning: str | None

    def state_at(self, rank: int) -> RunState:
        """The state on reaching the rank-th rendered pixel."""
        interpolating = self.interp_off_rank is None or rank <= self.interp_off_rank
        first_done = self.first_loop_rank is not None and rank > self.first_loop_rank
        return RunState(interpolating, first_done, None if interpolating else self.warning)


class Renderer:
    """Renders pixels of one kernel plan: chunked, compiled or eager.

    pixels_s, pixels_f: (N,) the rendered pixels in raster order (the C's order);
    batch: pixels per chunk; compile: use compiled kernels where the C's order is not needed.
    """

    def __init__(self, plan: KernelPlan, pixels_s: torch.Tensor, pixels_f: torch.Tensor, *,
                 batch: int, compile: bool):
        self.plan = plan
        self.pixels_s, self.pixels_f = pixels_s, pixels_f
        self.batch = batch
        self.compile = compile
        self._parts = split_plan(plan, EVALS_PER_CHUNK)
        self._kernels: dict = {}            # id(plan or part): (AOT kernel, its plan inputs)
        self._dual = forward_dual(plan)     # the parts slice the plan's tensors: duals alike

    def kernels_cached(self) -> bool:
        """Whether every compiled kernel this image would use is built already (a run
        without gradients on the CPU: the ahead-of-time kernels of the cache folder)."""
        if torch.is_grad_enabled() or self.pixels_s.device.type != "cpu" or self._dual:
            return False
        plan = self.plan
        # the state the compiled chunks run in: interpolation off, c-parity's first loop done
        state = RunState(interpolating=not plan.interpolate, first_loop_done=plan.cells_first is not None)
        return all(compiled.is_cached(p, state) for p in (self._parts or [plan]))

    @property
    def total(self) -> int:
        return self.pixels_s.numel()

    def image(self, progress=None) -> Rendered:
        """Every rendered pixel, in order, with the state carried through the image."""
        state = RunState()
        values, omega_sum = [], torch.zeros((), dtype=torch.float64, device=self.pixels_s.device)
        for start in range(0, self.total, self.batch):
            stop = start + self.batch
            res = self.chunk(self.pixels_s[start:stop], self.pixels_f[start:stop], state)
            values.append(res.value)
            omega_sum = omega_sum + res.omega_sum.sum()
            state = res.state
            if progress is not None:
                progress(min(self.total, stop), self.total)
        empty = torch.zeros(0, dtype=self.plan.dtype, device=self.pixels_s.device)
        return Rendered(torch.cat(values) if values else empty, omega_sum, state)

    def chunk(self, s_idx, f_idx, state: RunState, c_order=None) -> ChunkResult:
        """One kernel call on pixels (s_idx, f_idx) reached with `state`.

        c_order None: the layout the state needs, as in a full run; True/False: the
        layout a full run used for these pixels (run(pixels=)).
        """
        needs_c_order = self.plan.needs_c_order(state) if c_order is None else c_order
        if needs_c_order or self._parts is None:
            return self._call(self.plan, s_idx, f_idx, state, c_order, needs_c_order)
        # more evaluations per pixel than a chunk holds: sum over slices of them
        value = omega = None
        for part in self._parts:
            res = self._call(part, s_idx, f_idx, state, c_order, False)
            value, omega = (res.value, res.omega_sum) if value is None else (value + res.value, omega)
        return ChunkResult(value, omega, state)

    def _call(self, plan, s_idx, f_idx, state, c_order, needs_c_order) -> ChunkResult:
        if not (self.compile and not needs_c_order) or self._dual:
            return _eager_chunk(s_idx, f_idx, plan, state, c_order)
        if torch.is_grad_enabled() or s_idx.device.type != "cpu":
            # torch.compile (static shapes): pad the last chunk to the common size
            kept = s_idx.numel()
            s_idx, f_idx = _pad(s_idx, self.batch), _pad(f_idx, self.batch)
            res = compiled.compiled_render_pixels()(s_idx, f_idx, plan, state)
            return ChunkResult(res.value[:kept], res.omega_sum[:kept], state)
        key = id(plan)
        if key not in self._kernels:
            self._kernels[key] = (compiled.aot_kernel(plan, state), compiled.plan_inputs(plan, state))
        aot, inputs = self._kernels[key]
        return aot(s_idx, f_idx, inputs, state)

    # ------------------------------------------------------------ pixel subsets
    def scan(self, stop_rank: int | None = None) -> StateScan:
        """Render in the C's order, without gradients, until the run-wide state is known
        (at worst the whole image; up to stop_rank when given)."""
        plan = self.plan
        need_interp = plan.interpolate
        need_first = plan.cells_first is not None
        if not need_interp and not (need_first and plan.culling):
            return StateScan(None, 0 if need_first and self.total else None, None)
        r_interp = r_first = None
        state = RunState()
        end = self.total if stop_rank is None else min(self.total, stop_rank)
        with torch.no_grad():
            for start in range(0, end, self.batch):
                stop = min(end, start + self.batch)
                res = render_pixels(self.pixels_s[start:stop], self.pixels_f[start:stop], plan, state)
                if r_interp is None and res.interp_off_pixel is not None:
                    r_interp = start + res.interp_off_pixel
                if r_first is None and res.first_loop_pixel is not None:
                    r_first = start + res.first_loop_pixel
                state = res.state
                if (r_interp is not None or not need_interp) and (r_first is not None or not need_first):
                    break
        return StateScan(r_interp, r_first, state.warning)

    def ranks(self, ranks: torch.Tensor, scan: StateScan) -> Rendered:
        """The rendered pixels of the given ranks (ascending), each with the state and the
        layout (its chunk's: the summation order) it had in the full image."""
        plan = self.plan
        batch, total = self.batch, self.total
        chunk_start = torch.div(ranks, batch, rounding_mode="floor") * batch
        c_order = torch.full_like(ranks, bool(plan.running_product), dtype=torch.bool)
        active = torch.zeros_like(c_order)
        done = torch.ones_like(c_order)
        if plan.interpolate:
            ri = total if scan.interp_off_rank is None else scan.interp_off_rank
            c_order |= chunk_start <= ri
            active = ranks <= ri
        if plan.cells_first is not None:
            rf = total if scan.first_loop_rank is None else scan.first_loop_rank
            c_order |= chunk_start <= rf
            done = ranks > rf
        key = c_order.to(torch.int64) * 4 + active.to(torch.int64) * 2 + done.to(torch.int64)
        # the keys change at most a few times along the ranks (each flag is monotone)
        cuts = (torch.nonzero(key[1:] != key[:-1])[:, 0] + 1).tolist()
        bounds = [0] + cuts + [ranks.numel()]
        values = []
        omega_sum = torch.zeros((), dtype=torch.float64, device=ranks.device)
        for a, b in zip(bounds[:-1], bounds[1:]):
            layout = bool(c_order[a])
            state = RunState(bool(active[a]), bool(done[a]))
            for start in range(a, b, batch):
                r = ranks[start:min(b, start + batch)]
                res = self.chunk(self.pixels_s[r], self.pixels_f[r], state, c_order=layout)
                values.append(res.value)
                omega_sum = omega_sum + res.omega_sum.sum()
        return Rendered(torch.cat(values), omega_sum, RunState(warning=scan.warning))

    def needs_scan(self) -> bool:
        """Whether pixel subsets depend on pixels before them (the C's sticky state)."""
        plan = self.plan
        return plan.interpolate or (plan.cells_first is not None and plan.culling)


def subset_ranks(pixels, pixels_s, pixels_f, spixels: int, fpixels: int, device):
    """Validate run(pixels=) indices: (flat indices (n,), unique sorted flat indices,
    inverse map, ranks of the rendered ones among the rendered pixels, mask of rendered)."""
    idx = torch.as_tensor(pixels, device=device)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ConfigError(f"pixels must be integer indices, got {idx.dtype}")
    fp, sp = fpixels, spixels
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
    rendered = pixels_s * fp + pixels_f          # ascending (raster order)
    total = rendered.numel()
    pos = torch.searchsorted(rendered, uniq)
    inside = pos < total
    if total:
        inside &= rendered[pos.clamp(max=total - 1)] == uniq
    return flat, uniq, inverse, pos[inside], inside


# ----------------------------------------------------------------- eager chunks
def forward_dual(plan: KernelPlan) -> bool:
    """Whether a plan tensor carries a forward-mode tangent (torch.autograd.forward_ad, under
    no_grad too): only the eager kernel propagates it (compiled kernels take plain values)."""
    return any(fwAD.unpack_dual(t).tangent is not None for _, t in compiled._tensor_leaves(plan))


def _eager_chunk(s_idx, f_idx, plan: KernelPlan, state: RunState, c_order=None) -> ChunkResult:
    """render_pixels; with gradients, as a recomputing autograd Function (_Recomputed)."""
    leaves = compiled._tensor_leaves(plan)
    if not (torch.is_grad_enabled() and any(t.requires_grad for _, t in leaves)):
        return render_pixels(s_idx, f_idx, plan, state, c_order=c_order)
    paths = [p for p, _ in leaves]
    forward = {}

    def render(tensors, s, f):
        # the recomputation starts from the same state, so it renders the same values
        res = render_pixels(s, f, compiled._rebuild(plan, dict(zip(paths, tensors))), state,
                            c_order=c_order)
        forward.setdefault("result", res)
        return res.value, res.omega_sum

    value, omega_sum = _Recomputed.apply(render, s_idx, f_idx, *[t for _, t in leaves])
    return dataclasses.replace(forward["result"], value=value, omega_sum=omega_sum)


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
        return render(tensors, s_idx, f_idx)

    @staticmethod
    def backward(ctx, grad_value, grad_omega_sum):
        s_idx, f_idx, *tensors = ctx.saved_tensors
        wanted = ctx.needs_input_grad[3:]
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(w) for t, w in zip(tensors, wanted)]
            outputs = ctx.render(inputs, s_idx, f_idx)
            pairs = [(o, g) for o, g in zip(outputs, (grad_value, grad_omega_sum))
                     if g is not None and o.requires_grad]
            sources = [x for x, w in zip(inputs, wanted) if w]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], sources, [g for _, g in pairs],
                                             allow_unused=True) if pairs else [None] * len(sources))
        return (None, None, None) + tuple(next(grads) if w else None for w in wanted)


# ----------------------------------------------------------------- plan slices
def split_plan(plan: KernelPlan, max_evals: int) -> list[KernelPlan] | None:
    """Slices of the rotated cells (then of the sources) so that one pixel's evaluations
    in each slice fit in max_evals; None when they already do.

    The pixel value is linear in the sum over evaluations, so the slices' values add
    up to it: the background enters through the first slice only, and every slice
    holds the polarisation of the run's first source, as the C does. Not for the
    runs that need the C's evaluation order (they are never split) or a dmin cut
    (which decides the held polarisation per source).
    """
    Gs = plan.oversample ** 2 * plan.odet_offsets.shape[-1]
    S, R = plan.incident.shape[0], plan.cells.shape[0]
    if Gs * S * R <= max(max_evals, 1) or plan.culling:
        return None
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
    return parts


def _pad(idx: torch.Tensor, size: int) -> torch.Tensor:
    if idx.numel() == size:
        return idx
    return torch.cat((idx, idx[-1:].expand(size - idx.numel())))


_MALLOC_TUNED = []


def keep_freed_memory() -> None:
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
