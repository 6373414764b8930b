"""Detectors of several panels (issue 14): one panel where nanoBragg's detector is gives its
image bit for bit; DIALS experiment lists render every panel; per-panel outputs; gradients
with respect to per-panel origins and rotations."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from conftest import corpus_dir
from nanobrag_torch.experiment import apply_detector
from nanobrag_torch.instrument import Detector, single_panel

BASE = ("-cell 70 80 90 75 85 95 -misset 10 20 30 -default_F 100 -N 3 -lambda 1 -distance 100 "
        "-pixel 0.4 -detpixels 12 -mosaic 0.2 -mosaic_domains 3 -oversample 2").split()
GEOMETRIES = {
    "mosflm": [],
    "xds": ["-xds", "-detector_thick", "100", "-detector_abs", "300"],
    "rotated_custom": ["-detector_rotx", "5", "-detector_roty", "3", "-twotheta", "10",
                       "-fdet_vector", "0", "0", "1", "-sdet_vector", "0", "-1", "0", "-phi", "0",
                       "-osc", "1", "-phisteps", "2"],
}
EXPT = corpus_dir() / "inputs" / "expt"


def shifted(panel, d_m):
    return dataclasses.replace(panel, origin_m=tuple(x + d for x, d in zip(panel.origin_m, d_m)),
                               name=panel.name + "_shifted")


def two_panel_config(args, d_m=(0.0, 0.004, 0.001)):
    cfg = nb.config_from_args(args)
    p = single_panel(cfg)[0]
    multi = nb.config_from_args(args)
    apply_detector(multi, Detector((p, shifted(p, d_m))))
    return cfg, multi


@pytest.mark.parametrize("mode", ["spec", "c-parity"])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_a_panel_where_the_detector_is_gives_its_image_bit_for_bit(name, mode):
    cfg, multi = two_panel_config(BASE + GEOMETRIES[name] + ["-mode", mode])
    single = nb.simulate(cfg)
    image = nb.simulate(multi)
    assert image.pixels.shape == (2, 12, 12) and image.panel_count == 2
    assert torch.equal(image.pixels[0], single.pixels)
    assert torch.equal(image.panel(0).pixels, single.pixels)
    assert image.panel(0).stats == single.stats
    assert float(image.pixels[1].max()) > 0 and not torch.equal(image.pixels[1], single.pixels)


def test_the_second_panel_equals_a_detector_placed_there():
    """Panel 1 (shifted) equals a one-panel detector at the same place (its own run)."""
    args = BASE + ["-mode", "spec"]
    cfg, multi = two_panel_config(args)
    alone = nb.config_from_args(args)
    apply_detector(alone, Detector((multi.detector.panels[1],)))
    ref = nb.simulate(alone).pixels
    got = nb.simulate(multi).pixels[1]
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12 * float(ref.max()))


@pytest.mark.skipif(not EXPT.exists(), reason=f"corpus inputs not found at {EXPT}")
@pytest.mark.parametrize("name,shape", [("tiled_2x2", (4, 128, 128)), ("xfel_8tile", (8, 192, 96))])
def test_dials_experiment_lists_render_every_panel(name, shape, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["-expt", str(EXPT / f"{name}.expt"), "-default_F", "100", "-N", "3", "-oversample", "1",
            "-seed", "1", "-nexusfile", "x.nxs", "-pngfile", "x.png", "-noisefile", "noise.img"]
    from nanobrag_torch import cli
    assert cli.main(args) == 0
    cfg = nb.config_from_args(args)
    image = nb.simulate(cfg)
    assert image.pixels.shape == shape
    for i in range(shape[0]):
        assert Path(f"floatimage_p{i:02d}.bin").stat().st_size == 4 * shape[1] * shape[2]
        assert Path(f"noise_p{i:02d}.img").exists()
        assert float(image.pixels[i].max()) > 0
    # the NeXus modules carry every panel's own vectors (McStas frame, see io/nexus.py)
    h5py = pytest.importorskip("h5py")
    import hdf5plugin  # noqa: F401
    with h5py.File("x.nxs") as fh:
        det = fh["/entry/instrument/detector"]
        R = det.attrs["nanobrag_lab_to_mcstas"]
        assert fh["/entry/data/data"].shape == (1, shape[0] * shape[1], shape[2])
        for i, panel in enumerate(cfg.detector.panels):
            module = det[f"module_{i:02d}"]
            fast = module["fast_pixel_direction"].attrs["vector"]
            assert np.abs(fast - R @ np.array(panel.fast)).max() < 1e-9
            assert list(module["data_origin"][()]) == [i * shape[1], 0]


def test_gradients_with_respect_to_panel_origins_and_rotations():
    """(P, 3) origin offsets and (P, 3) rotations carry gradients equal to finite differences."""
    args = (BASE[:-4] + ["-detpixels", "6", "-oversample", "1", "-pixel", "0.8"])
    _, cfg = two_panel_config(args)
    sim = nb.Simulator(cfg)

    def image(offset, rotation):
        cfg.detector.panel_offset_m, cfg.detector.panel_rotation_deg = offset, rotation
        return sim.run().pixels

    offset = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    rotation = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    # metres and degrees are far apart in scale: central differences at suited steps
    assert torch.autograd.gradcheck(lambda o: image(o, rotation.detach()), (offset,), eps=1e-7,
                                    atol=1e-6, rtol=1e-4, fast_mode=True)
    assert torch.autograd.gradcheck(lambda r: image(offset.detach(), r), (rotation,), eps=1e-5,
                                    atol=1e-6, rtol=1e-4, fast_mode=True)
    grad_o, grad_r = torch.autograd.grad(image(offset, rotation).sum(), (offset, rotation))
    assert bool((grad_o != 0).all(dim=1).any()) and bool((grad_r != 0).any())


def test_bad_panel_parameters_are_refused():
    _, cfg = two_panel_config(BASE)
    cfg.detector.panel_offset_m = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match=r"detector.panel_offset_m: expected shape \(2, 3\) for 2 panels"):
        nb.Simulator(cfg)
    cfg.detector.panel_offset_m = None
    cfg.output.trace_pixel = (1, 1)
    with pytest.raises(RuntimeError, match="output.trace_pixel"):
        nb.Simulator(cfg)


def test_panel_refinement_recovers_a_shift_and_a_rotation():
    """examples/panel_refine.py: 0.2 mm and 0.1 deg of one panel of a 2x2 detector, found again."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import panel_refine
    shift, rotation, _ = panel_refine.refine(pixels=16, iterations=40, verbose=False)
    assert torch.allclose(shift, torch.tensor(panel_refine.TRUE_SHIFT_MM, dtype=torch.float64), atol=2e-3)
    assert torch.allclose(rotation, torch.tensor(panel_refine.TRUE_ROTATION_DEG, dtype=torch.float64), atol=2e-3)
