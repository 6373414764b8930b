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
INDUCTOR_OPTIONS = {"cpp.vec_isa_ok": True, "cpp_cache_precompile_headers": False}
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


class _Exported(torch.nn.Module):
    """render_pixels with the plan's tensors as positional inputs (what torch.export needs);
    the run state is static (compiled kernels run where it no longer changes)."""

    def __init__(self, plan, state):
        super().__init__()
        self.plan = plan
        self.state = state
        self.paths = [p for p, _ in _tensor_leaves(plan)]

    def forward(self, s_idx, f_idx, *tensors):
        plan = _rebuild(self.plan, dict(zip(self.paths, tensors)))
        res = kernel.render_pixels(s_idx, f_idx, plan, self.state)
        return res.value, res.omega_sum


def _source_hash() -> str:
    h = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()


_SOURCE_HASH = _source_hash()


def _key(plan, batch: int, state) -> str:
    """Cache key: torch version, kernel sources, chunk size, the run state and everything
    static in the plan."""
    h = hashlib.sha256(_SOURCE_HASH.encode())
    h.update(repr((batch, state.interpolating, state.first_loop_done, _static_leaves(plan))).encode())
    return h.hexdigest()[:32]


class AotKernel:
    """A loaded ahead-of-time kernel for one static plan, run state and chunk size (CPU)."""

    def __init__(self, plan, batch: int, state, key: str):
        self.batch = batch
        path = CACHE_DIR / "aoti" / f"{key}.so"
        if not path.exists():
            # a build takes 15-40 s with no output of its own: say so before it starts
            print(f"nanobrag-torch: compiling the kernel for this configuration once "
                  f"(cached in {CACHE_DIR}): about 20 s", file=sys.stderr, flush=True)
            _build(plan, batch, state, path)
        self.runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(path), 1)

    def __call__(self, s_idx, f_idx, plan, state) -> kernel.ChunkResult:
        inputs = [s_idx, f_idx] + [t.contiguous() for _, t in _tensor_leaves(plan)]
        value, omega_sum = self.runner.run(inputs)
        return kernel.ChunkResult(value, omega_sum, state)


def _build(plan, batch: int, state, path: Path) -> None:
    """Export render_pixels for this plan and compile it to a shared library at path."""
    device = plan.geom.pix0.device
    # distinct tensors (clones): export merges aliased inputs, and the plan shares some
    s_idx = torch.zeros(batch, dtype=torch.int64, device=device)
    f_idx = torch.zeros(batch, dtype=torch.int64, device=device)
    args = (s_idx, f_idx) + tuple(t.detach().clone().contiguous() for _, t in _tensor_leaves(plan))
    with torch.no_grad(), _wrapper_compiled_alongside(), warnings.catch_warnings():
        # torch's own pickling of its tree specs warns about its own deprecation
        warnings.filterwarnings("ignore", message=".*LeafSpec.*deprecated", category=FutureWarning)
        program = torch.export.export(_Exported(plan, state), args, strict=False)
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


def aot_kernel(plan, batch: int, state) -> AotKernel:
    """The ahead-of-time kernel for this plan, state and chunk size, built on first use."""
    key = _key(plan, batch, state)
    if key not in _LOADED:
        _LOADED[key] = AotKernel(plan, batch, state, key)
    return _LOADED[key]


_COMPILED = []


def compiled_render_pixels():
    """render_pixels through torch.compile (static shapes; one graph per static plan)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(kernel.render_pixels, dynamic=False, options=INDUCTOR_OPTIONS))
    return _COMPILED[0]
