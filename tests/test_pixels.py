"""Simulator.run(pixels=): chosen pixels equal the full image there, bit for bit, with gradients.

The cases make the run-wide state matter: the tricubic switch half way through
the first chunk (pixels after it use nearest-neighbour F in the C layout of
that chunk), c-parity's first phi loop at a pixel after fully culled ones,
running products, ROI and mask, the compiled kernel; chunks are kept small
(-pixel_batch_size) so that pixels fall in many of them.
"""
import numpy as np
import pytest
import torch

from nanobrag_torch import Simulator, config_from_args
from nanobrag_torch.errors import ConfigError

TRI = "-cell 70 80 90 75 85 95 -misset 10 20 30 -lambda 1.0 -distance 100 -pixel 0.1 -detpixels 48".split()
ORTHO_SMALL_HKL = ("-cell 50 60 70 90 90 90 -misset 2 3 4 -lambda 1.0 -distance 100 -pixel 0.1 -detpixels 48 "
                   "-hkl inputs/small.hkl -N 2 -Xbeam 0.5 -Ybeam 0.5").split()
CASES = {
    # (args, mode, expected (rank of the interpolation switch, rank of the first phi loop))
    "oversample_thick_absorb_polar": (TRI + ("-default_F 100 -N 5 -oversample 2 -detector_thick 100 "
                                             "-detector_thicksteps 2 -polar 0.6 -water 1").split(),
                                      "spec", None),
    "running_product": (TRI + "-default_F 100 -N 5 -oversample 2 -oversample_omega -oversample_polar".split(),
                        "spec", None),
    "roi": (TRI + "-default_F 100 -N 5 -roi 5 40 3 30 -mosaic 0.5 -mosaic_domains 4".split(), "spec", None),
    "interpolation_switch": (ORTHO_SMALL_HKL, "spec", (34, None)),
    "first_phi_loop_after_culled": (TRI + ("-default_F 100 -N 5 -dmin 40 -phi 0 -osc 0.5 -phisteps 3 "
                                           "-Xbeam 4.8 -Ybeam 4.8").split(), "c-parity", (None, 1149)),
    "switch_and_first_loop": (ORTHO_SMALL_HKL + "-dmin 14 -phi 0 -osc 0.5 -phisteps 2".split(),
                              "c-parity", (34, 0)),
}


def simulator(args, mode, compile=False, mask=None):
    cfg = config_from_args(args)
    cfg.pixel_batch_size = 50
    if mask is not None:
        cfg.detector.mask = mask
    return Simulator(cfg, mode=mode, compile=compile)


def random_pixels(n_total, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_total, (n,), generator=g)


@pytest.mark.parametrize("case", sorted(CASES))
def test_pixels_equal_full_image(case, run_dir):
    args, mode, state = CASES[case]
    sim = simulator(args, mode)
    with torch.no_grad():
        image = sim.run()
    full = image.pixels
    flat = full.reshape(-1)
    idx = torch.cat((random_pixels(flat.numel(), 300, 1), torch.arange(60), torch.tensor([0, 0, 7])))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            subset = sim.run(pixels=idx)
        values = subset.pixels
        assert values.shape == idx.shape and values.dtype == full.dtype
        assert torch.equal(values.detach(), flat[idx])
        assert subset.warnings == image.warnings
    if state is not None:
        scan = sim._scan_cache[1]
        assert (scan.interp_off_rank, scan.first_loop_rank) == state
    # (s, f) pairs select the same pixels
    pairs = torch.stack((idx // 48, idx % 48), dim=1)
    with torch.no_grad():
        assert torch.equal(sim.run(pixels=pairs).pixels, flat[idx])


def test_pixels_mask_and_roi_are_zero(run_dir):
    mask = np.ones((48, 48), dtype=np.uint16)
    mask[10:20, 5:30] = 0
    sim = simulator(TRI + "-default_F 100 -N 5 -roi 2 45 1 40".split(), "spec", mask=mask)
    with torch.no_grad():
        full = sim.run().pixels.reshape(-1)
        values = sim.run(pixels=torch.arange(48 * 48)).pixels
    assert torch.equal(values, full)
    s, f = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    outside = ((f < 2) | (f > 45) | (s < 1) | (s > 40)).reshape(-1) | torch.from_numpy(mask == 0).reshape(-1)
    assert torch.all(values[outside] == 0) and torch.all(values[~outside] > 0)


def test_pixels_gradients_equal_full_image_gradients(run_dir):
    args, mode, _ = CASES["switch_and_first_loop"]
    sim = simulator(args, mode)
    cfg = sim.config
    idx = random_pixels(48 * 48, 200, 3)
    grads = []
    for use_pixels in (False, True):
        cell = torch.tensor([50.0, 60, 70, 90, 90, 90], dtype=torch.float64, requires_grad=True)
        dist = torch.tensor(100.0, dtype=torch.float64, requires_grad=True)
        cfg.crystal.cell, cfg.detector.distance_mm = cell, dist
        values = sim.run(pixels=idx).pixels if use_pixels else sim.run().pixels.reshape(-1)[idx]
        grads.append(torch.autograd.grad((values * values).sum(), (cell, dist)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_pixels_compiled_path(run_dir):
    """With compile=True the pixels go through the same compiled kernel as the full image
    (a feature set -warmup builds: F grid, rotated cells the longest axis)."""
    args = ORTHO_SMALL_HKL + "-phi 0 -osc 0.5 -phisteps 2 -mosaic 0.5 -mosaic_domains 4".split()
    sim = simulator(args, "spec", compile=True)
    with torch.no_grad():
        full = sim.run().pixels.reshape(-1)
        idx = random_pixels(full.numel(), 300, 4)
        assert torch.equal(sim.run(pixels=idx).pixels, full[idx])


def test_pixels_batch_of_orientations(run_dir):
    cfg = config_from_args(TRI + "-default_F 100 -N 5".split())
    cfg.crystal.misset_deg = torch.tensor([[10.0, 20, 30], [12, 18, 33]], dtype=torch.float64)
    sim = Simulator(cfg)
    full = sim.run().pixels
    idx = random_pixels(48 * 48, 100, 5)
    values = sim.run(pixels=idx).pixels
    assert values.shape == (2, 100)
    assert torch.equal(values, full.reshape(2, -1)[:, idx])


def test_pixels_bad_input(run_dir):
    sim = simulator(TRI + "-default_F 100 -N 5".split(), "spec")
    for bad in (torch.tensor([48 * 48]), torch.tensor([-1]), torch.tensor([[0, 48]]), torch.tensor([0.5]),
                torch.zeros((2, 3), dtype=torch.int64)):
        with pytest.raises(ConfigError):
            sim.run(pixels=bad)
    assert sim.run(pixels=torch.zeros(0, dtype=torch.int64)).pixels.shape == (0,)


def test_config_changes_seen_without_gradients():
    """run() under no_grad rebuilds the setup when the config changed after construction."""
    cfg = config_from_args(TRI + "-default_F 100 -N 5".split())
    sim = Simulator(cfg)
    with torch.no_grad():
        before = sim.run().pixels
        cfg.detector.distance_mm = 101.0
        moved = sim.run().pixels
        fresh = Simulator(cfg).run().pixels
    assert not torch.equal(before, moved) and torch.equal(moved, fresh)
