"""Compiled kernels are specialised on features, never on sizes or values (issue 10).

The cache key (compiled.cache_key) of runs that differ only in detector size, pixel
size, distance, N, cell, wavelength, oversampling, mosaic domain and phi step counts,
thickness layers or the dmin value is one key; a change of feature (dtype, structure
factors from a grid, crystal shape, polarisation, a thick sensor, the dmin cut, the
longest evaluation axis, c-parity's closed forms) is another. -warmup's feature sets
are distinct and serve the everyday and benchmark workloads.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nanobrag_torch import Simulator, compiled, config_from_args, kernel, warmup
from nanobrag_torch.cli import main

BASE = ("-cell 70 80 90 75 85 95 -misset 10 20 30 -lambda 1.0 -distance 100 -pixel 0.1 "
        "-detpixels 48 -N 5").split()
GRID = "-hkl inputs/P1.hkl -mosaic 0.5 -mosaic_domains 8 -oversample 2 -phisteps 3 -osc 1"
# one feature set (float64, F grid, rotated cells longest), many sizes and values
SAME = [
    GRID,
    GRID + " -mosaic_domains 30 -oversample 3 -detpixels 64 -pixel 0.05 -distance 250",
    GRID + " -mosaic 1 -mosaic_domains 5 -phisteps 4 -N 20 -lambda 1.5 -detsize 3",
    GRID + " -cell 50 60 70 90 90 90 -misset 0 0 0 -oversample 1 -detpixels 20 -phisteps 1",
    GRID + " -polar 0.5 -Xbeam 2 -Ybeam 3 -twotheta 5 -detector_rotx 3",
]
# each a feature away from SAME and from one another
OTHER = {
    "float32": GRID + " -dtype float32",
    "one F": GRID.replace("-hkl inputs/P1.hkl", "-default_F 100"),
    "gauss shape": GRID + " -gauss_xtal",
    "no polarisation": GRID + " -nopolar",
    "thick sensor": GRID + " -detector_thick 100 -detector_thicksteps 2",
    "dmin cut": GRID + " -dmin 5",
    "subpixels longest": "-hkl inputs/P1.hkl -oversample 4",
    "sources longest": "-hkl inputs/P1.hkl -dispersion 1 -dispsteps 9",
    "c-parity": GRID + " -mode c-parity",
}


def key(args: str) -> str:
    cfg = config_from_args(BASE + args.split())
    with torch.no_grad():
        plan = Simulator(cfg, compile=False).static.plan
    return compiled.cache_key(plan, kernel.RunState())


def test_sizes_and_values_share_one_kernel(run_dir):
    assert len({key(a) for a in SAME}) == 1


def test_features_have_kernels_of_their_own(run_dir):
    keys = {name: key(a) for name, a in OTHER.items()}
    assert len(set(keys.values())) == len(keys)
    assert key(SAME[0]) not in keys.values()


def test_the_c_order_only_features_do_not_split_kernels(run_dir):
    """Compiled kernels run where the C's order no longer matters: c-parity's water
    background (a constant I_bg), the interpolation switch once off and the first phi loop
    once done are not features."""
    parity = GRID + " -mode c-parity"
    assert key(parity) == key(parity + " -water 50")


def test_one_kernel_renders_every_size_of_its_feature_set(run_dir, monkeypatch):
    """The first configuration may build the kernel (about a minute, once per machine; the
    same feature set as test_compiled's rotations_inner); every other size and value then
    runs on it, and each image equals the eager kernel's."""
    builds = []
    build = compiled._build
    monkeypatch.setattr(compiled, "_build", lambda *a: builds.append(1) or build(*a))
    for args in SAME:
        cfg = config_from_args(BASE + args.split())
        with torch.no_grad():
            eager = Simulator(cfg, compile=False).run().pixels.numpy()
            fused = Simulator(cfg, compile=True).run().pixels.numpy()
        assert np.abs(fused - eager).max() <= 1e-12 * np.abs(eager).max(), args
    assert len(builds) <= 1


def test_a_cached_feature_set_is_used_by_a_small_run(run_dir, monkeypatch):
    """Below the build threshold a run is eager unless its kernel is built already."""
    cfg = config_from_args(BASE + GRID.split())
    with torch.no_grad():
        sim = Simulator(cfg)
        assert not sim.compile
        monkeypatch.setattr(compiled, "is_built", lambda k: False)
        assert not sim.renderer(sim.static).compile
        monkeypatch.setattr(compiled, "is_built", lambda k: True)
        assert sim.renderer(sim.static).compile
        assert not Simulator(cfg, compile=False).renderer(sim.static).compile
    with torch.enable_grad():       # gradients take torch.compile, which no cache serves
        assert not sim.renderer(sim.static).compile



def test_forward_mode_tangents_take_the_eager_kernel(run_dir):
    """A dual tensor (torch.autograd.forward_ad, under no_grad as examples/refine.py runs it)
    has no tangent in a compiled kernel: such a run is eager even with compile=True."""
    import torch.autograd.forward_ad as fwAD
    cfg = config_from_args(BASE + GRID.split())
    tangents = {}
    for forced in (False, True):
        with fwAD.dual_level(), torch.no_grad():
            cfg.detector.distance_mm = fwAD.make_dual(torch.tensor(100.0, dtype=torch.float64),
                                                      torch.tensor(1.0, dtype=torch.float64))
            _, tangents[forced] = fwAD.unpack_dual(Simulator(cfg, compile=forced).run().pixels)
    assert tangents[True] is not None and tangents[True].abs().max() > 0
    assert torch.equal(tangents[True], tangents[False])

# ---------------------------------------------------------------------------- -warmup
def _warmup_keys(tmp_path):
    hkl = warmup._hkl_file(tmp_path)
    keys = [warmup._key_of(flags.format(hkl=hkl)) for _, flags in warmup.feature_sets()]
    return keys


def test_warmup_feature_sets_are_distinct(tmp_path):
    keys = _warmup_keys(tmp_path)
    assert len({tuple(k) for k in keys}) == len(keys)


EVERYDAY = [   # the everyday workloads
    "-cell 100 100 100 90 90 90 -default_F 100 -N 10 -lambda 1 -distance 100 -detpixels 512 -oversample 2",
    "-cell 70 80 90 75 85 95 -hkl inputs/P1.hkl -N 5 -lambda 1 -distance 100 -detpixels 256 "
    "-mosaic 0.5 -mosaic_domains 10 -phisteps 5 -osc 0.5 -oversample 2",
    "-cell 70 80 90 75 85 95 -default_F 100 -N 5 -lambda 1 -distance 100 -detpixels 256 "
    "-hdivrange 0.5 -hdivsteps 5 -vdivrange 0.5 -vdivsteps 5 -dispersion 0.2 -dispsteps 3 -oversample 2",
    "-mat inputs/A.mat -hkl inputs/P1.hkl -N 5 -distance 100 -detpixels 1024 -mosaic 0.5 "
    "-mosaic_domains 5 -water 50 -oversample 2",
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_warmup_serves_the_everyday_and_bench_workloads(dtype, tmp_path, run_dir, corpus):
    built = {k for keys in _warmup_keys(tmp_path) for k in keys}
    bench = corpus.parent / "bench"
    cases = json.loads((bench / "cases.json").read_text())["cases"] if bench.exists() else []
    (run_dir / "bench").mkdir()
    (run_dir / "bench" / "inputs").symlink_to((bench / "inputs").resolve()) if bench.exists() else None
    workloads = [(a.split(), run_dir) for a in EVERYDAY]
    workloads += [(c["args"], run_dir / "bench") for c in cases]
    for args, where in workloads:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(where)
            cfg = config_from_args(list(args) + ["-dtype", dtype])
            with torch.no_grad():
                sim = Simulator(cfg, compile=False)
                renderer = sim.renderer(sim.static)
            for plan in renderer._parts or [renderer.plan]:
                assert compiled.cache_key(plan, kernel.RunState()) in built, " ".join(args)


def test_warmup_takes_no_other_flags(capsys):
    assert main(["-warmup", "-N", "5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "nanobrag-torch: error: -warmup: takes no other flags (it builds kernels and exits)"
