"""Spec mode's physical -water (docs/modes.md row 16) and per-subpixel -oversample_* factors
(row 17), against independent references: nonbragg-torch's image of the same water on the
same geometry, the C's formula (c-parity) and its r_e^2 fluence / steps factors, and a finer
detector whose pixels are the subpixels.  These replace the spec-mode corpus references that
no longer hold (tests/test_parity.py SPEC_REPLACED)."""
import numpy as np
import pytest

from nanobrag_torch import nonbragg as nb
from nanobrag_torch.cli import config_from_args
from nanobrag_torch.simulator import Simulator
from nanobrag_torch.units import DEFAULT_FLUENCE, R_E_SQR

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PX, NPIX, XBEAM = 0.5, 24, 6.0                   # mm; nanoBragg's MOSFLM beam adds half a pixel
GEO = ["-distance", "20", "-pixel", str(PX), "-detpixels", str(NPIX), "-lambda", "1.0"]
CRYSTAL = ["-cell", "100", "100", "100", "90", "90", "90", "-misset", "10", "20", "30", "-N", "3"]


def ring_table(tmp_path):
    """A water-like ring: F rises from 2.57 to a peak at stol 0.1 (inside this detector)."""
    s = np.arange(0.0, 1.0001, 0.02)
    F = 2.57 + 3.0 * np.exp(-((s - 0.1) / 0.03) ** 2)
    path = tmp_path / "ring.stol"
    path.write_text("".join(f"{a:.4f} {b:.6f}\n" for a, b in zip(s, F)))
    return str(path)


def flat_table(tmp_path):
    path = tmp_path / "flat.stol"
    path.write_text("".join(f"{a:.2f} 2.57\n" for a in np.arange(0.0, 1.0001, 0.05)))
    return str(path)


def nano(extra, mode="spec", water="50", bragg=False, xbeam=XBEAM, geo=GEO):
    crystal = CRYSTAL + ["-default_F", "100"] if bragg else \
        ["-cell", "100", "100", "100", "90", "90", "90", "-default_F", "1e-6", "-N", "0"]
    args = crystal + (["-water", water] if water else []) + geo + \
        ["-Xbeam", str(xbeam), "-Ybeam", str(xbeam)] + extra
    if "-oversample" not in extra:
        args += ["-oversample", "1"]          # not the automatic choice, which depends on the crystal
    return Simulator(config_from_args(args), mode=mode).run().pixels.detach().numpy()


def nonbragg(table, extra):
    xb = str(XBEAM + PX / 2)
    cfg = nb.config_from_args(["-stol", table, "-thick", "0.05", "-width", "0.05", "-height", "0.05",
                               "-beamsize", "1", "-Xbeam", xb, "-Ybeam", xb] + GEO + extra)
    return nb.simulate(cfg).photons.detach().numpy()


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("with_table", [True, False], ids=["ring_table", "constant_2.57"])
def test_spec_water_is_nonbraggs_image(tmp_path, with_table):
    """-water 50 (um) = nonbragg-torch's 50 um water cube, with the -stol ring or constant 2.57."""
    if with_table:
        table = ring_table(tmp_path)
        spec = nano(["-stol", table])
    else:
        table = flat_table(tmp_path)
        spec = nano([])
    ref = nonbragg(table, [])
    assert rel(spec, ref) < 1e-9
    if with_table:      # the ring shows: not the flat C background
        flat = nano([])
        assert rel(spec, flat) > 0.1


@pytest.mark.parametrize("fluence", [None, "1e24"])
def test_spec_water_against_the_c_formula(fluence):
    """At the default fluence with one step spec = the C (r_e^2 fluence = 1.000); elsewhere
    C / spec = r_e^2 fluence, pixel by pixel (the C multiplies by it twice)."""
    extra = [] if fluence is None else ["-fluence", fluence]
    spec, c = nano(extra), nano(extra, "c-parity")
    f = DEFAULT_FLUENCE if fluence is None else float(fluence)
    assert np.allclose(c / spec, R_E_SQR * f, rtol=1e-9, atol=0)
    if fluence is None:
        assert rel(spec, c) < 1e-6


@pytest.mark.parametrize("steps, n", [(["-oversample", "2"], 4), (["-phisteps", "3", "-osc", "0.3"], 3),
                                      (["-mosaic", "0.2", "-mosaic_domains", "2"], 2)],
                         ids=["oversample2", "phisteps3", "domains2"])
def test_spec_water_does_not_fall_with_steps(steps, n):
    """Spec mode: more steps leave the background as it was (oversample 2 moves the held
    solid angle to the first subpixel: < 2e-2 on this wide-angle detector); the C divides
    it by the step count."""
    one_spec, one_c = nano([]), nano([], "c-parity")
    spec, c = nano(steps), nano(steps, "c-parity")
    tol = 2e-2 if steps[0] == "-oversample" else 1e-12
    assert rel(spec, one_spec) < tol
    assert rel(c * n, one_c) < tol


def test_spec_water_with_subpixel_factors_is_nonbraggs_oversampled_image(tmp_path):
    """At oversample 2 with -oversample_omega -oversample_polar each subpixel's solid angle and
    polarisation multiply that subpixel's water, as nonBragg's oversampled image."""
    table = ring_table(tmp_path)
    spec = nano(["-stol", table, "-oversample", "2", "-oversample_omega", "-oversample_polar"])
    ref = nonbragg(table, ["-oversample", "2"])
    assert rel(spec, ref) < 1e-9


def test_spec_water_mixes_with_spots():
    """Spots + water = spots alone + water alone (the background adds linearly)."""
    both = nano([], bragg=True)
    spots = nano([], bragg=True, water=None)
    water = nano([])
    assert rel(both, spots + water) < 1e-12


@pytest.mark.parametrize("flags", [["-oversample_omega"], ["-oversample_omega", "-oversample_polar"]])
def test_spec_oversample_omega_per_subpixel(flags):
    """Spec -oversample_omega at oversample 2: the image is the 2 x 2 block sum of a detector
    with half the pixel (its pixels are the subpixels, each with its own solid angle), and
    differs from the image without the flag by ~1e-2 of max on this wide-angle detector
    (the C's running product keeps about one subpixel's share)."""
    fine_geo = ["-distance", "20", "-pixel", str(PX / 2), "-detpixels", str(2 * NPIX), "-lambda", "1.0"]
    polar = [] if "-oversample_polar" in flags else ["-nopolar"]
    coarse = nano(["-oversample", "2"] + flags + polar, bragg=True, water=None)
    plain = nano(["-oversample", "2"] + polar, bragg=True, water=None)
    fine = nano(["-oversample", "1"] + polar, bragg=True, water=None, xbeam=XBEAM + PX / 4, geo=fine_geo)
    blocks = fine.reshape(NPIX, 2, NPIX, 2).sum(axis=(1, 3))
    assert rel(coarse, blocks) < 1e-9
    d = rel(coarse, plain)
    assert 1e-5 < d < 5e-2


def test_spec_water_gradient_in_the_water_size(tmp_path):
    """The image is N ∝ water^3 times the rest: d(sum)/d(water_um) = 3 sum / water_um."""
    import torch
    args = ["-cell", "100", "100", "100", "90", "90", "90", "-default_F", "1e-6", "-N", "0", "-water", "50",
            "-stol", ring_table(tmp_path), "-oversample", "1", "-detpixels", "8"] + GEO[:4] + GEO[6:]
    cfg = config_from_args(args)
    w = torch.tensor(50.0, dtype=torch.float64, requires_grad=True)
    cfg.background.water_um = w
    total = Simulator(cfg).run().pixels.sum()
    total.backward()
    assert float(w.grad) == pytest.approx(3 * float(total) / 50.0, rel=1e-10)
