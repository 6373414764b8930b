"""Gradients of the image with respect to every differentiable config value (docs/gradients.md).

torch.autograd.gradcheck in float64 on a 6x6 detector placed on a Bragg spot
(so every pixel depends on every parameter), in spec and c-parity mode; the
removable singularities (Miller index exactly integer, phi = 0 with the
c-parity carryover, a pixel centre exactly on the beam, the E-vector along the
beam) have finite gradients that pass the same check; the structure factors,
batches of orientations and the torch.compile kernel; float32 against float64
on a 256x256 image.

Finite differences use eps = 1e-6 (relative 1e-8 to 1e-6 of the values), the
gradcheck defaults of atol 1e-5 / rtol 1e-3 tightened to atol 1e-6 / rtol 1e-4.
One exception: the mosaic spread, whose domain angles are rounded to float32
as the C does (a step of 1e-6 deg moves them by a few float32 ulps), is
differenced with eps = 1e-3 deg (the rounding then adds < 1e-4 relative error).
"""
import copy

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from nanobrag_torch import HKLData, Simulator, config_from_args
from nanobrag_torch.kernel import sincg
from nanobrag_torch.units import deg_to_rad
from nanobrag_torch.vec import rotation_matrix_xyz

F64 = torch.float64
TOL = dict(atol=1e-6, rtol=1e-4)

# 6x6 pixels on the (triclinic, N = 3) spot around pixel (3, 3); 3 mosaic domains,
# phi 0 .. 0.2 deg in 2 steps (c-parity carries the last step's rotation into phi = 0)
CRYSTAL = "-cell 70 80 90 75 85 95 -misset 10 20 30 -default_F 100 -N 3 -lambda 1.0".split()
DET = "-distance 100 -pixel 0.1 -detpixels 6 -oversample 1".split()
SPOT = "-Xbeam -0.65 -Ybeam 1.45".split()
BASE = CRYSTAL + DET + SPOT + "-polar 0.5 -mosaic 0.3 -mosaic_domains 3 -phi 0 -osc 0.2 -phisteps 2".split()

# attribute: (value at the base point, finite-difference step)
PARAMS = {
    "crystal.cell": ([70, 80, 90, 75, 85, 95], 1e-6),
    "crystal.misset_deg": ([10, 20, 30], 1e-6),
    "crystal.n_cells": ([3, 3, 3], 1e-6),
    "crystal.mosaic_spread_deg": (0.3, 1e-3),
    "detector.distance_mm": (100.0, 1e-6),
    "detector.beam_center_mm": ([-0.65, 1.45], 1e-6),
    "detector.rotation_deg": ([0.0, 0.0, 0.0], 1e-6),
    "detector.twotheta_deg": (0.0, 1e-6),
    "beam.wavelength_A": (1.0, 1e-6),
    "beam.fluence": (1.0, 1e-6),          # in units of the default fluence (see image_of)
    "beam.polarization": (0.5, 1e-6),
}
MODES = ["spec", "c-parity"]


def image_of(args, name, mode="spec", dtype=F64, **sim_kw):
    """f(x) = the image with config attribute `name` set to the tensor x."""
    cfg = config_from_args(args)
    group, attr = name.split(".")
    target = getattr(cfg, group)
    scale = target.fluence if attr == "fluence" else 1.0     # fluence ~1e29: differentiate in units of it
    sim = Simulator(cfg, mode=mode, dtype=dtype, **sim_kw)

    def f(x):
        setattr(target, attr, x * scale if attr == "fluence" else x)
        return sim.run().pixels
    return f


def check(args, name, mode, value=None, eps=None, **kw):
    default, default_eps = PARAMS[name]
    x = torch.tensor(default if value is None else value, dtype=F64, requires_grad=True)
    f = image_of(args, name, mode)
    image = f(x)
    assert float(image.detach().min()) > 0
    grad, = torch.autograd.grad(image.sum(), x)
    assert torch.isfinite(grad).all() and bool((grad != 0).any())
    assert gradcheck(f, (x,), eps=eps or default_eps, **TOL, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_gradcheck_parameter(name, mode):
    check(BASE, name, mode)


# features, each checked with the parameters they involve
FEATURES = {
    "thickness_running_product": SPOT + ("-oversample 2 -oversample_thick -oversample_polar "
                                         "-oversample_omega -detector_thick 100 -detector_thicksteps 2 "
                                         "-polar 0.5").split(),
    "divergence_dispersion": SPOT + "-hdivrange 0.5 -hdivsteps 3 -dispersion 1 -dispsteps 3".split(),
    "curved_twotheta_sample_pivot": SPOT + "-curved_det -twotheta 5 -pivot sample".split(),
    "round_xtal": SPOT + ["-round_xtal"],
    "gauss_xtal": SPOT + ["-gauss_xtal"],
    "water_background": SPOT + "-water 0.02".split(),
    "dmin_culling": SPOT + "-dmin 12".split(),
}
FEATURE_PARAMS = ["crystal.cell", "detector.distance_mm", "detector.twotheta_deg", "beam.wavelength_A"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FEATURE_PARAMS)
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_gradcheck_feature(feature, name, mode):
    value = 5.0 if (name == "detector.twotheta_deg" and "-twotheta" in FEATURES[feature]) else None
    check(CRYSTAL + DET + FEATURES[feature], name, mode, value=value)


# ------------------------------------------------------------ removable singularities
ON_BEAM = CRYSTAL[:6] + "-default_F 100 -N 3 -lambda 1.0".split() + DET + "-Xbeam 0.2 -Ybeam 0.2".split()
SINGULAR = {
    # pixel (2, 2)'s centre is exactly on the beam: d = b, q = 0, h = k = l = 0 exactly
    # (sincg at its node, atan2(0, 0) in the polarisation azimuth)
    "pixel_on_beam": ON_BEAM + "-polar 0.5".split(),
    # the E-vector along the beam: B_in = p x b = 0 (zero vectors unitised)
    "polarisation_along_beam": ON_BEAM + "-polar_vector 1 0 0 -polar 0.5".split(),
    # phi = 0 exactly at the first step (c-parity: C-PARITY-001 carryover, first loop unrotated)
    "phi_zero": CRYSTAL + DET + SPOT + "-phi 0 -osc 0.3 -phisteps 3".split(),
}
SINGULAR_PARAMS = ["crystal.cell", "crystal.misset_deg", "crystal.n_cells", "detector.distance_mm",
                   "detector.beam_center_mm", "detector.rotation_deg", "beam.wavelength_A",
                   "beam.polarization"]


def test_pixel_on_beam_is_exact():
    cfg = config_from_args(SINGULAR["pixel_on_beam"])
    sim = Simulator(cfg)
    g = sim.run().setup.geom
    P = 0.25e-3 * g.fdet + 0.25e-3 * g.sdet + g.pix0           # pixel (2, 2) centre
    assert torch.equal(torch.cross(P, g.beam, dim=0), torch.zeros(3, dtype=F64))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SINGULAR_PARAMS)
@pytest.mark.parametrize("case", sorted(SINGULAR))
def test_gradcheck_singular(case, name, mode):
    args = SINGULAR[case]
    value = None
    if name == "detector.beam_center_mm" and "-Xbeam" in args:
        i = args.index("-Xbeam")
        value = [float(args[i + 1]), float(args[i + 3])]
    if name == "crystal.misset_deg" and "-misset" not in args:
        value = [0.0, 0.0, 0.0]
    default, eps = PARAMS[name]
    x = torch.tensor(default if value is None else value, dtype=F64, requires_grad=True)
    f = image_of(args, name, mode)
    grad, = torch.autograd.grad(f(x).sum(), x)
    assert torch.isfinite(grad).all()
    assert gradcheck(f, (x,), eps=eps, **TOL)


def test_sincg_gradient_at_nodes():
    """d sincg(u, N)/du and /dN at integer u (0/0 in the closed form) against the limit."""
    u = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0], dtype=F64, requires_grad=True)
    N = torch.tensor(5.0, dtype=F64, requires_grad=True)
    assert gradcheck(lambda u, N: sincg(u, N), (u, N), eps=1e-6, **TOL)
    du, dN = torch.autograd.grad(sincg(u, N).sum(), (u, N))
    assert torch.all(du == 0) and float(dN) == pytest.approx(5.0)   # N^2-1 term vanishes at 0


# ------------------------------------------------------------ structure factors
def small_grid(interpolate):
    """A 7x7x7 structure-factor grid (h, k, l in -3..3) with the C's padding slab."""
    rng = np.random.default_rng(5)
    F = np.zeros((8, 8, 8))
    F[:7, :7, :7] = 50 + 100 * rng.random((7, 7, 7))
    return HKLData(F=F, h_min=-3, h_max=3, k_min=-3, k_max=3, l_min=-3, l_max=3, hkls=343)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("interpolate", [False, True])
def test_gradcheck_structure_factors(interpolate, mode):
    """d image / d F on the grid, nearest-neighbour and tricubic (random projections: 512 inputs)."""
    args = CRYSTAL + "-N 3 -distance 100 -pixel 0.3 -detpixels 6 -oversample 1".split()    # |h| < 1
    args += ["-interpolate" if interpolate else "-nointerpolate"]
    cfg = config_from_args(args)
    cfg.crystal.hkl = small_grid(interpolate)
    sim = Simulator(cfg, mode=mode)
    F = torch.tensor(cfg.crystal.hkl.F, dtype=F64, requires_grad=True)

    def f(F):
        cfg.crystal.hkl.F = F
        return sim.run().pixels
    cfg.crystal.hkl.F = F
    image = sim.run()
    grad, = torch.autograd.grad(image.pixels.sum(), F)
    assert image.warnings == ()                        # tricubic stayed on: no out-of-range lookups
    used = int((grad != 0).sum())
    assert used >= (64 if interpolate else 4)          # tricubic: 4x4x4 neighbourhoods
    assert gradcheck(f, (F,), eps=1e-6, fast_mode=True, **TOL)


# ------------------------------------------------------------ batches of orientations
def test_gradcheck_misset_batch():
    misset = torch.tensor([[10.0, 20.0, 30.0], [10.3, 19.8, 30.1]], dtype=F64, requires_grad=True)
    f = image_of(BASE, "crystal.misset_deg")
    assert f(misset).shape == (2, 6, 6)
    assert gradcheck(f, (misset,), eps=1e-6, **TOL)


def test_gradcheck_orientation_batch():
    """cfg.crystal.orientation (B, 3, 3), applied after the misset: d image / d U."""
    args = CRYSTAL + DET + SPOT
    cfg = config_from_args(args)
    sim = Simulator(cfg)
    U = torch.stack([rotation_matrix_xyz(*deg_to_rad(torch.tensor(a, dtype=F64)))
                     for a in ([0.0, 0.0, 0.0], [0.2, -0.1, 0.3])]).requires_grad_()

    def f(U):
        cfg.crystal.orientation = U
        return sim.run().pixels
    assert f(U).shape == (2, 6, 6)
    assert gradcheck(f, (U,), eps=1e-6, **TOL)


# ------------------------------------------------------------ compiled kernel
def test_compiled_gradients_equal_eager():
    """The torch.compile path (large runs) gives the eager gradients."""
    names = ["crystal.cell", "detector.distance_mm", "beam.wavelength_A"]

    def grads(compile):
        cfg = config_from_args(CRYSTAL + "-distance 100 -pixel 0.1 -detpixels 12 -oversample 2".split()
                               + "-Xbeam 0.0 -Ybeam 1.2 -mosaic 0.3 -mosaic_domains 3".split())
        cfg.pixel_batch_size = 50                          # several chunks, the last one padded
        xs = [torch.tensor(v, dtype=F64, requires_grad=True) for v in ([70, 80, 90, 75, 85, 95], 100.0, 1.0)]
        cfg.crystal.cell, cfg.detector.distance_mm, cfg.beam.wavelength_A = xs
        image = Simulator(cfg, compile=compile).run().pixels
        return [image.detach()] + list(torch.autograd.grad((image * image).sum(), xs))
    eager, compiled = grads(False), grads(True)
    for name, a, b in zip(["image"] + names, eager, compiled):
        assert torch.allclose(a, b, rtol=1e-10, atol=0), name


# ------------------------------------------------------------ float32
def test_float32_gradients_agree_with_float64():
    """A 256x256 image: float32 gradients of a loss agree with float64 to 1e-3."""
    args = CRYSTAL[:6] + ("-misset 10 20 30 -default_F 100 -N 5 -lambda 1.0 -distance 100 -pixel 0.1 "
                          "-detpixels 256").split()
    target = Simulator(config_from_args(args)).run().pixels.detach()
    values = {"crystal.cell": [70.2, 79.9, 90.1, 75.1, 85.0, 94.9], "crystal.misset_deg": [10.1, 19.9, 30.05],
              "detector.distance_mm": 100.5, "detector.beam_center_mm": [12.9, 12.8],
              "beam.wavelength_A": 1.001, "crystal.n_cells": [5.0, 5.0, 5.0]}

    def grads(dtype):
        cfg = config_from_args(args)
        xs = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in values.items()}
        for k, x in xs.items():
            group, attr = k.split(".")
            setattr(getattr(cfg, group), attr, x)
        image = Simulator(cfg, dtype=dtype).run().pixels
        loss = ((image.to(F64) - target) ** 2).mean()
        return torch.autograd.grad(loss, list(xs.values()))
    for name, g64, g32 in zip(values, grads(F64), grads(torch.float32)):
        err = float((g32 - g64).abs().max() / g64.abs().max())
        assert err < 1e-3, (name, err)
