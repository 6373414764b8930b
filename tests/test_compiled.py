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


# each (case, dtype) is a feature set of its own: a build of about a minute where the cache
# lacks it (groups_inner and rotations_inner are -warmup's, dmin_polar's cut is not)
@pytest.mark.parametrize("name,dtype", [(n, d) for n in sorted(CASES) for d in (torch.float64, torch.float32)
                                        if (n, d) != ("dmin_polar", torch.float32)])
def test_compiled_equals_eager(name, dtype, run_dir):
    cfg = config_from_args(CASES[name])
    with torch.no_grad():
        eager = Simulator(cfg, dtype=dtype, compile=False).run().pixels
        sim = Simulator(cfg, dtype=dtype, compile=True)
        sim.config.pixel_batch_size = 500          # several chunks, the last one padded
        compiled = sim.run().pixels
    eager, compiled = eager.to(torch.float64).numpy(), compiled.to(torch.float64).numpy()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert np.abs(compiled - eager).max() <= tol * np.abs(eager).max()


@pytest.mark.parametrize("extra", [
    "-default_F 100 -dispersion 1 -dispsteps 3 -mosaic 0.5 -mosaic_domains 2 -phi 1 -osc 1 -phisteps 2 -water 50",
    "-default_F 100 -sourcefile inputs/sources.txt -polar 0.7 -mosaic 0.5 -mosaic_domains 3",
])
def test_pixels_with_more_evaluations_than_a_chunk_are_split_exactly(extra, run_dir, monkeypatch):
    """Memory stays bounded when one pixel alone exceeds a chunk: the rotated cells (then the
    sources) are sliced and the slices' values summed; the image is unchanged."""
    import nanobrag_torch.execution as execution
    args = TRI[:-2] + ["-detpixels", "12", "-oversample", "2"] + extra.split()
    cfg = config_from_args(args)
    with torch.no_grad():
        whole = Simulator(cfg, compile=False).run().pixels.numpy()
        monkeypatch.setattr(execution, "EVALS_PER_CHUNK", 10)
        image = Simulator(cfg, compile=False).run()
        sliced = image.pixels.numpy()
    assert len(execution.split_plan(image.setup.plan, 10)) > 2
    np.testing.assert_allclose(sliced, whole, rtol=1e-12, atol=0)


def test_a_kernel_build_is_announced_on_stderr_before_it_starts(run_dir, monkeypatch, capfd, tmp_path):
    """A build takes 15-40 s with no output of its own: the user is told first."""
    import nanobrag_torch.compiled as compiled

    class Started(Exception):
        pass

    def build(*args):
        assert "compiling the kernel" in capfd.readouterr().err
        raise Started

    monkeypatch.setattr(compiled, "CACHE_DIR", tmp_path / "empty-cache")
    monkeypatch.setattr(compiled, "_LOADED", {})
    monkeypatch.setattr(compiled, "_build", build)
    cfg = config_from_args(CASES["groups_inner"])
    with torch.no_grad(), pytest.raises(Started):
        Simulator(cfg, compile=True).run()
