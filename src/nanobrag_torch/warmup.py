"""nanobrag-torch -warmup: build the compiled kernels of the everyday feature sets ahead of time.

A compiled kernel is specialised on features (dtype, crystal shape, a structure-factor grid
or one default F, polarisation, a thick sensor, spec mode's water background, which of
subpixels x layers, sources or rotated cells is the longest axis of the evaluations), never
on sizes or values (compiled.features). Each feature set is built once per machine (about
30-40 s on 2 cores); afterwards every run of that feature set, of any size, uses it from
the first image. This builds the feature sets of everyday runs, two at a time.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

# (what it serves, flags): tiny detectors, since only the features matter
_GEOMETRY = "-cell 70 80 90 75 85 95 -misset 10 20 30 -lambda 1 -distance 100 -pixel 0.1 -detpixels 8 -N 5"
_LONGEST = {
    "subpixels": "-oversample 3",
    "rotated cells": "-oversample 2 -mosaic 0.5 -mosaic_domains 10 -phisteps 2 -osc 0.1",
    "sources": "-oversample 2 -divergence 0.5 -divsteps 5 -dispersion 0.2 -dispsteps 3",
}
_F = {"one F": "-default_F 100", "F grid": "-hkl {hkl}"}


def feature_sets() -> list:
    """(name, flags) of the feature sets -warmup builds, most common first."""
    sets = []
    for dtype in ("float64", "float32"):
        for f_name, f_flags in _F.items():
            for longest, flags in _LONGEST.items():
                sets.append((f"{dtype}, {f_name}, {longest} longest",
                             f"{_GEOMETRY} {f_flags} {flags} -dtype {dtype}"))
        sets.append((f"{dtype}, F grid, thick sensor",
                     f"{_GEOMETRY} -hkl {{hkl}} -oversample 2 -detector_thick 450 -detector_abs 500 "
                     f"-detector_thicksteps 5 -phisteps 3 -osc 0.25 -dtype {dtype}"))
        sets.append((f"{dtype}, F grid, water background, rotated cells longest",
                     f"{_GEOMETRY} -hkl {{hkl}} -water 50 {_LONGEST['rotated cells']} -dtype {dtype}"))
    return sets


def _plans(flags: str):
    """The kernel plans a run of these flags compiles (several when a pixel's evaluations
    are split), with the state its compiled chunks run in."""
    import torch
    from . import execution
    from .cli import config_from_args
    from .simulator import Simulator
    with torch.no_grad():
        sim = Simulator(config_from_args(flags.split()), compile=True)
        plan = sim.static.plan
        parts = execution.split_plan(plan, execution.EVALS_PER_CHUNK) or [plan]
    return parts


def _key_of(flags: str) -> list:
    from . import compiled, kernel
    return [compiled.cache_key(p, kernel.RunState()) for p in _plans(flags)]


def _build(flags: str) -> float:
    """Build (or find) the kernels of one feature set; seconds taken."""
    import warnings
    from . import compiled, kernel
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for plan in _plans(flags):
            compiled.aot_kernel(plan, kernel.RunState(), announce=False)
    return time.perf_counter() - start


def _hkl_file(folder: Path) -> Path:
    path = folder / "warmup.hkl"
    path.write_text("".join(f"{h} {k} {l} {10.0 + h + k + l}\n"
                            for h in range(-3, 4) for k in range(-3, 4) for l in range(-3, 4)))
    return path


def run(jobs: int | None = None, stream=None) -> int:
    """Build every feature set not yet in the cache, `jobs` at a time (default: up to 2,
    one per core); one progress line per feature set. Returns an exit status."""
    from . import compiled, execution
    stream = stream or sys.stderr
    if not execution.compile_enabled():
        print("nanobrag-torch -warmup: NANOBRAGG_COMPILE=0: nothing to build", file=stream)
        return 0
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="nanobrag-warmup-") as tmp:
        hkl = _hkl_file(Path(tmp))
        sets = [(name, flags.format(hkl=hkl)) for name, flags in feature_sets()]
        missing = [(name, flags) for name, flags in sets
                   if not all(compiled.is_built(k) for k in _key_of(flags))]
        total = len(sets)
        done = total - len(missing)
        print(f"nanobrag-torch -warmup: {total} feature sets, {done} already built "
              f"(cache {compiled.CACHE_DIR}); building {len(missing)}, {jobs} at a time, "
              f"about half a minute each", file=stream, flush=True)
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_build, flags): name for name, flags in missing}
            for future in as_completed(futures):
                seconds = future.result()
                done += 1
                bar = "#" * (20 * done // total)
                print(f"[{bar:<20}] {done}/{total} built: {futures[future]} ({seconds:.0f} s)",
                      file=stream, flush=True)
        print(f"nanobrag-torch -warmup: done in {time.perf_counter() - start:.0f} s",
              file=stream, flush=True)
    return 0
