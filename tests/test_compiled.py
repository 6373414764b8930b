"""The compiled kernel (torch.compile) gives the eager kernel's image.

Large runs use the compiled kernel (Simulator(compile=None) decides by size);
the corpus cases are small and run eagerly, so this checks the compiled path
on a few configurations that exercise its layouts: evaluations laid out
(pixel, rotation, group) and (pixel, group, rotation), structure factors from
a grid, sources with weights, dmin culling, float32.
"""
import numpy as np
import pytest
import torch

from nanobrag_torch import Simulator, config_from_args

TRI = "-cell 70 80 90 75 85 95 -misset 10 20 30 -lambda 1.0 -distance 100 -pixel 0.1 -detpixels 48".split()
CASES = {
    "groups_inner": TRI + "-default_F 100 -N 5 -oversample 2 -dispersion 1 -dispsteps 3".split(),
    "rotations_inner": TRI + "-hkl inputs/P1.hkl -N 5 -mosaic 1 -mosaic_domains 8 -phi 1 -osc 1 -phisteps 3".split(),
    "dmin_polar": TRI + "-default_F 100 -N 5 -dmin 12 -polar 0.5 -detector_thick 100 -thicksteps 2".split(),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_equals_eager(name, dtype, run_dir):
    cfg = config_from_args(CASES[name])
    with torch.no_grad():
        eager = Simulator(cfg, dtype=dtype, compile=False).run()
        sim = Simulator(cfg, dtype=dtype, compile=True)
        sim.config.pixel_batch_size = 500          # several chunks, the last one padded
        compiled = sim.run()
    eager, compiled = eager.to(torch.float64).numpy(), compiled.to(torch.float64).numpy()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert np.abs(compiled - eager).max() <= tol * np.abs(eager).max()
