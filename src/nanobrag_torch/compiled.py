"""Compiled kernels: render_pixels fused into vectorised C++ (or Triton on GPU).

Two routes, same kernel source (kernel.render_pixels):

* Ahead-of-time (AOTInductor), for runs without gradients on the CPU: the
  kernel is exported once per static plan (flags, shapes, constants) and
  compiled to a shared library kept in the cache folder; later processes
  load it in milliseconds, with no tracing or compiling.
* torch.compile, for runs that need gradients (and on GPUs): traced in
  every process, its compiled code reused from PyTorch's own cache.

Cache folder: $NANOBRAGG_CACHE_DIR, default ~/.cache/nanobrag-torch
(aoti/ for the libraries; inductor/ for torch.compile, via
TORCHINDUCTOR_CACHE_DIR unless that is set).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

from . import kernel

CACHE_DIR = Path(os.environ.get("NANOBRAGG_CACHE_DIR",
                                Path.home() / ".cache" / "nanobrag-torch"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE_DIR / "inductor"))
# Cold-start savings: the vector ISA is taken from the CPU flags instead of being
# probed by compiling and loading test libraries (about 10 s on a new cache); no
# precompiled headers (building them costs 6 s a header, more than a few compiles
# save, and they would live in /tmp, outside our cache folder); the AOT wrapper only
# sequences the kernels, so it is compiled without optimisation or line tables
def _vector_width() -> dict:
    """Inductor's vector width: 256 bits (AVX2) where the CPU has AVX2.

    Inductor takes the widest ISA (AVX-512 where present) and lays a double out as two
    512-bit registers; the kernel's long fused loop then spills to the stack on every
    evaluation. At 256 bits it ran 1.15-1.5x faster on every bench workload, both dtypes
    (2026-12-04, an AVX-512 Xeon, one chunk of each bench case; /proc/cpuinfo holds the
    flags: no inductor import, which costs seconds). Elsewhere inductor's own choice."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return {"cpp.simdlen": 256} if " avx2" in line else {}
    except OSError:
        pass
    return {}


INDUCTOR_OPTIONS = {"cpp.vec_isa_ok": True, "cpp_cache_precompile_headers": False,
                    **_vector_width()}
AOT_OPTIONS = dict(INDUCTOR_OPTIONS, **{"aot_inductor.compile_wrapper_opt_level": "O0",
                                         "aot_inductor.enable_line_tables": False,
                                         "aot_inductor.precompile_headers": False})
_SOURCES = ("kernel.py", "detector.py", "structure.py", "beam.py", "vec.py", "compiled.py")


def _tensor_leaves(obj, path=()):
    """(path, tensor) for every tensor in a (nested) dataclass, in field order."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = []
        for f in dataclasses.fields(obj):
            if f.init:
                out += _tensor_leaves(getattr(obj, f.name), path + (f.name,))
        return out
    return []


def _static_leaves(obj, path=()):
    """Everything but the tensors' values: what a compiled kernel is specialised on."""
    if isinstance(obj, torch.Tensor):
        return [(path, "tensor", tuple(obj.shape), str(obj.dtype), str(obj.device))]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = []
        for f in dataclasses.fields(obj):
            if f.init:
                out += _static_leaves(getattr(obj, f.name), path + (f.name,))
        return out
    return [(path, repr(obj))]


def _rebuild(obj, values: dict, path=()):
    if isinstance(obj, torch.Tensor):
        return values[path]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _rebuild(getattr(obj, f.name), values, path + (f.name,))
                   for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


# Plan values the kernel reads as plain numbers: a compiled kernel takes them as runtime
# inputs (0-d tensors), so changing them never needs another build
_NUMBERS = (("geom", "pixel_size_m"), ("thickstep",), ("mu",), ("fudge",), ("steps",), ("dmin",),
            ("fgrid", "mins"), ("fgrid", "maxs"), ("geom", "panels", "spixels"),
            ("geom", "panels", "fpixels"))
# plan values the kernel never reads (the whole detector's size, names, the table's unit)
_UNREAD = (("geom", "convention"), ("geom", "pivot"), ("geom", "fpixels"), ("geom", "spixels"),
           ("geom", "detsize_f_m"), ("geom", "detsize_s_m"), ("fgrid", "hkls"),
           ("water_table", "mult"), ("oversample",))
# sizes that are runtime inputs: {leaf path: {axis: size name}}; every other axis (the 3 of a
# vector, a matrix's 3 x 3) is fixed. Pixels are "n", subpixels per axis "O".
_SIZES = {("odet_offsets",): {-1: "T"}, ("incident",): {0: "S"}, ("wavelength",): {0: "S"},
          ("source_weight",): {0: "S"}, ("cells",): {0: "R"}, ("cells_first",): {0: "R1"},
          ("fgrid", "F"): {0: "H", 1: "K", 2: "L"}, ("water_table", "x"): {0: "W"},
          ("water_table", "F"): {0: "W"}}
_PANEL_SIZES = {0: "P"}          # every tensor of geom.panels: (P, ...)
# example sizes for tracing: distinct and above 1, so that no size is taken for another
# or specialised (a kernel built from them serves every size from 1 up)
_EXAMPLE = {"n": 17, "O": 2, "T": 5, "S": 6, "R": 7, "R1": 8, "H": 9, "K": 10, "L": 11,
            "W": 12, "P": 13}


def _sizes_of(path, tensor) -> dict:
    """{axis (0..ndim-1): size name} of a plan tensor."""
    if path[:2] == ("geom", "panels"):
        axes = dict(_PANEL_SIZES)
        if path[-1] == "odet_offsets":
            axes[1] = "T"
    else:
        axes = dict(_SIZES.get(path, {}))
        if path == ("odet_offsets",) and tensor.dim() == 2:
            axes = {0: "P", 1: "T"}
    return {a % tensor.dim(): name for a, name in axes.items()}


def _number(value, device):
    """A plan number as the 0-d (or, for index ranges, (3,)) tensor a compiled kernel takes."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple):
        return torch.tensor(value, dtype=torch.int64, device=device)
    dtype = torch.int64 if isinstance(value, int) and not isinstance(value, bool) else torch.float64
    return torch.tensor(value, dtype=dtype, device=device)


def _get(obj, path):
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def _put(obj, path, value):
    """A copy of the (nested) dataclass obj with the leaf at path replaced."""
    if not path:
        return value
    inner = getattr(obj, path[0])
    if inner is None:
        return obj
    return dataclasses.replace(obj, **{path[0]: _put(inner, path[1:], value)})


def _runtime_numbers(plan):
    """(path, value) of the plan numbers present in this plan."""
    out = []
    for path in _NUMBERS:
        parent = _get(plan, path[:-1])
        if parent is not None:
            out.append((path, getattr(parent, path[-1])))
    return out


def compiled_view(plan, state):
    """The plan and state as a compiled kernel sees them. Compiled kernels run only where the
    C's order no longer matters (interpolation off, c-parity's first phi loop done, no
    running products), so what only the C's order reads is dropped: one kernel serves
    spec and c-parity runs, with or without background, alike."""
    return (dataclasses.replace(plan, water=False, interpolate=False, cells_first=None,
                                dmin_cut=plan.culling),
            kernel.RunState(interpolating=True, first_loop_done=False))


class _Exported(torch.nn.Module):
    """render_pixels with the plan's tensors, numbers and sizes as positional inputs (what
    torch.export needs); the features (flags, which tensors exist, the layout) and the run
    state are static (compiled kernels run where the state no longer changes)."""

    def __init__(self, plan, state, layout):
        super().__init__()
        self.plan, self.state = plan, state
        self.layout = layout
        self.paths = [p for p, _ in _tensor_leaves(plan)]
        self.numbers = [p for p, _ in _runtime_numbers(plan)]

    def forward(self, s_idx, f_idx, subpixels, *inputs):
        tensors, numbers = inputs[:len(self.paths)], inputs[len(self.paths):]
        plan = _rebuild(self.plan, dict(zip(self.paths, tensors)))
        for path, value in zip(self.numbers, numbers):
            if path[-1] in ("mins", "maxs"):
                value = (value[0], value[1], value[2])
            plan = _put(plan, path, value)
        plan = dataclasses.replace(plan, oversample=subpixels.shape[0])
        res = kernel.render_pixels(s_idx, f_idx, plan, self.state, layout=self.layout)
        return res.value, res.omega_sum


def plan_inputs(plan, state) -> list:
    """The kernel's positional inputs after the pixels, for this plan (the same for every
    chunk of a run: made once per run, not per chunk)."""
    plan = compiled_view(plan, state)[0]
    device = plan.geom.pix0.device
    subpixels = torch.empty(plan.oversample, dtype=torch.float64, device=device)
    return ([subpixels] + [t.contiguous() for _, t in _tensor_leaves(plan)]
            + [_number(v, device) for _, v in _runtime_numbers(plan)])


def _example_inputs(plan):
    """Inputs of the example sizes (values do not matter to the trace), and their dynamic shapes."""
    from torch.export import Dim
    device = plan.geom.pix0.device
    dims = {name: Dim(name, min=1) for name in _EXAMPLE}
    # distinct tensors (new ones): export merges aliased inputs, and the plan shares some
    s_idx = torch.zeros(_EXAMPLE["n"], dtype=torch.int64, device=device)
    args = [s_idx, s_idx.clone(), torch.empty(_EXAMPLE["O"], dtype=torch.float64, device=device)]
    shapes = [{0: dims["n"]}, {0: dims["n"]}, {0: dims["O"]}]
    for path, t in _tensor_leaves(plan):
        axes = _sizes_of(path, t)
        shape = [(_EXAMPLE[axes[a]] if a in axes else n) for a, n in enumerate(t.shape)]
        example = torch.rand(shape, dtype=torch.float64, device=device).to(t.dtype) + 0.5
        args.append(example.contiguous())
        shapes.append({a: dims[name] for a, name in axes.items()} or None)
    for _, v in _runtime_numbers(plan):
        args.append(_number(v, device).clone())
        shapes.append(None)
    return tuple(args), tuple(shapes[:3]) + (tuple(shapes[3:]),)   # forward(s, f, O, *inputs)


def _source_hash() -> str:
    h = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()


_SOURCE_HASH = _source_hash()


def features(plan, state, layout) -> tuple:
    """What a compiled kernel is specialised on: the flags, which tensors the plan holds
    (with their fixed axes), the layout and the run state; never sizes or values."""
    skip = set(_NUMBERS) | set(_UNREAD)
    plan, state = compiled_view(plan, state)
    out = []
    for path, kind, *rest in _static_leaves(plan):
        if path in skip:
            continue
        if kind == "tensor":
            shape, dtype, device = rest
            t = _get(plan, path)
            axes = _sizes_of(path, t)
            shape = tuple("*" if a in axes else n for a, n in enumerate(shape))
            out.append((path, shape, dtype, device))
        else:
            out.append((path, kind))
    return (tuple(out), plan.culling, layout, state.interpolating, state.first_loop_done)


def cache_key(plan, state) -> str:
    """Cache key: torch version, kernel sources and the kernel's features."""
    h = hashlib.sha256(_SOURCE_HASH.encode())
    h.update(repr(sorted(AOT_OPTIONS.items())).encode())
    h.update(repr(features(plan, state, plan.layout(False))).encode())
    return h.hexdigest()[:32]


def is_built(key: str) -> bool:
    """Whether the kernel of this cache key is loaded or in the cache folder."""
    return key in _LOADED or (CACHE_DIR / "aoti" / f"{key}.so").exists()


class AotKernel:
    """A loaded ahead-of-time kernel for one feature set and run state (CPU): any sizes."""

    def __init__(self, plan, state, key: str, announce: bool = True):
        layout = plan.layout(False)
        path = CACHE_DIR / "aoti" / f"{key}.so"
        if not path.exists() and announce:
            # a build takes 25-40 s on 2 cores (2026-12-04) with no output of its own: say so first
            print(f"nanobrag-torch: compiling the kernel for this feature set, once per machine "
                  f"(cached in {CACHE_DIR}; `nanobrag-torch -warmup` builds the everyday ones "
                  f"ahead): about 30-40 s", file=sys.stderr, flush=True)
        if not path.exists():
            _build(plan, state, layout, path)
        self.runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(path), 1)

    def __call__(self, s_idx, f_idx, inputs: list, state) -> kernel.ChunkResult:
        """Pixels (s_idx, f_idx) of the plan whose plan_inputs are `inputs`."""
        value, omega_sum = self.runner.run([s_idx, f_idx] + inputs)
        return kernel.ChunkResult(value, omega_sum, state)


def _build(plan, state, layout, path: Path) -> None:
    """Export render_pixels for this feature set and compile it to a shared library at path."""
    plan, state = compiled_view(plan, state)
    args, shapes = _example_inputs(plan)
    with torch.no_grad(), _wrapper_compiled_alongside(), warnings.catch_warnings():
        # torch's own pickling of its tree specs warns about its own deprecation
        warnings.filterwarnings("ignore", message=".*LeafSpec.*deprecated", category=FutureWarning)
        program = torch.export.export(_Exported(plan, state, layout), args,
                                      dynamic_shapes=shapes, strict=False)
        so_path = torch._inductor.aot_compile(program.module(), args, options=AOT_OPTIONS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    shutil.copyfile(so_path, tmp)
    os.replace(tmp, path)          # atomic: a concurrent run sees a whole library or none


@contextlib.contextmanager
def _wrapper_compiled_alongside():
    """Compile AOTInductor's wrapper (C++ compiler, in a thread) while its kernel
    compiles: the two are independent and otherwise run one after the other
    (about 3 s of a cold start on 2 cores). Any later build step waits for it."""
    try:
        from torch._inductor.cpp_builder import CppBuilder
        build = CppBuilder.build
    except (ImportError, AttributeError):        # another torch: compile as it does
        yield
        return
    pending: list = []

    def join():
        while pending:
            thread, errors = pending.pop()
            thread.join()
            if errors:
                raise errors[0]

    def concurrent_build(builder):
        if not pending and builder.get_target_file_path().endswith(".wrapper.o"):
            errors: list = []

            def run():
                try:
                    build(builder)
                except BaseException as e:     # re-raised by join()
                    errors.append(e)
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            pending.append((thread, errors))
            return None
        try:
            return build(builder)
        finally:
            join()

    CppBuilder.build = concurrent_build
    try:
        yield
        join()
    finally:
        CppBuilder.build = build
        for thread, _ in pending:
            thread.join()


_LOADED: dict = {}


def aot_kernel(plan, state, announce: bool = True) -> AotKernel:
    """The ahead-of-time kernel for this plan's features and state, built on first use."""
    key = cache_key(plan, state)
    if key not in _LOADED:
        _LOADED[key] = AotKernel(plan, state, key, announce)
    return _LOADED[key]


def is_cached(plan, state=kernel.RunState()) -> bool:
    """Whether this plan's kernel is built (in this process or the cache folder)."""
    return is_built(cache_key(plan, state))


_COMPILED = []


def compiled_render_pixels():
    """render_pixels through torch.compile (static shapes; one graph per static plan)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(kernel.render_pixels, dynamic=False, options=INDUCTOR_OPTIONS))
    return _COMPILED[0]
