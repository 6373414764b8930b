"""The simulator against tests/reference.py, the loop-nest transcription of nanoBragg.c.

Every case is a tiny detector (3x3 to 8x8 pixels) rendered by the eager kernel
(and two by the compiled one) in spec and c-parity mode, and by the reference,
which loops over pixels, layers, subpixels, sources, phi steps and mosaic
domains one evaluation at a time (SPEC 4.1). Together the cases cover mosaic
domains, phi steps (with the c-parity phi = 0 carryover), divergence,
dispersion and a weighted source file, a thick detector (capture fraction,
parallax) with detector rotations and two-theta, oversampling, polarisation,
the four crystal shapes, tricubic interpolation and its sticky out-of-range
switch, water background, dmin culling, the -oversample_thick/_polar/_omega
running products, the five named conventions, pivots, ROI, mask, -mat and
-xtalsize, curved detector and point pixels.

Values: float64, max |simulator - reference| <= 1e-12 max |reference| over the
image (image-relative: a pixel far below the image maximum, near a zero of
the lattice transform, is ill-conditioned in the last bits of h). One per-case
exception, stated with the case (c_form_high_angle). Gradients: autograd
through the simulator against central differences of the reference, every
pixel, for distance, cell, misset, wavelength, mosaic spread, N and
polarisation.

The oracle itself is tied to the C: SPEC's check values (AT-GEO-001 pix0,
the water example), and, when the corpus is present, float32-equality with
nanoBragg.c's float.bin at sampled pixels of every corpus case it supports.
"""
import copy
import functools
import json
import zlib

import numpy as np
import pytest
import torch

import reference
from conftest import corpus_dir
from nanobrag_torch import Simulator, config_from_args

MODES = ("spec", "c-parity")
TOL = 1e-12

# issue 9 item 9: spec mode is to compute the mosaic angles in float64 (the C rounds them to
# float32). Until it does, spec-mode values are compared with the C's rounding; when it
# lands, test_spec_mode_mosaic_angles_in_float64 XPASSes (strict): set this to False and
# drop that test's xfail marker.
SPEC_MOSAIC_F32 = False

TRI = "-cell 70 80 90 75 85 95 -misset 10 20 30 -lambda 1.0 -distance 100 -pixel 0.1".split()
F100 = "-default_F 100 -N 3".split()
NEAR = "-Xbeam -0.3 -Ybeam 1.2".split()      # a few pixels next to the direct beam, on a spot


def a(text):
    return text.split()


def _mask(cfg):
    cfg.detector.mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 0], [1, 0, 1, 1]],
                                 dtype=np.uint16)


# name: (argv, config edit or None)
CASES = {
    "mosaic_phi": (TRI + F100 + a("-detpixels 6 -Xbeam -0.65 -Ybeam 1.45 -oversample 1 -polar 0.5 "
                                  "-mosaic 0.3 -mosaic_domains 3 -phi 0 -osc 0.2 -phisteps 2"), None),
    "high_angle": (TRI + F100 + a("-detpixels_f 5 -detpixels_s 4 -Xbeam -30 -Ybeam 25 -oversample 2 "
                                  "-mosaic 0.5 -mosaic_domains 3 -phi 0 -osc 0.3 -phisteps 3"), None),
    "div_disp": (TRI + F100 + NEAR + a("-detpixels 4 -oversample 2 -polar 0.8 -hdivrange 0.6 "
                                       "-vdivrange 0.4 -divsteps 3 -dispersion 0.5 -dispsteps 2"), None),
    "square_div": (TRI + F100 + NEAR + a("-detpixels 3 -oversample 1 -divergence 0.5 -divsteps 2 "
                                         "-square_div -polar 0.4"), None),
    "sourcefile": (TRI + F100 + NEAR + a("-detpixels 4 -oversample 2 -sourcefile sources.txt -phi 0 "
                                         "-osc 0.2 -phisteps 2"), None),
    "thick": (TRI + F100 + NEAR + a("-detpixels 4 -oversample 2 -detector_thick 50 -detector_abs 30 "
                                    "-thicksteps 3 -detector_rotx 5 -detector_roty 3 -twotheta 8"), None),
    "running": (TRI + F100 + NEAR + a("-detpixels_f 4 -detpixels_s 3 -oversample 2 -oversample_thick "
                                      "-oversample_polar -oversample_omega -detector_thick 40 -thicksteps 2 "
                                      "-water 5 -polar 0.3 -dispersion 0.4 -dispsteps 2"), None),
    "running_nopolar": (TRI + F100 + NEAR + a("-detpixels 3 -oversample 2 -nopolar -oversample_polar "
                                              "-oversample_omega -dmin 10"), None),
    "round": (TRI + NEAR + a("-default_F 100 -N 4 -round_xtal -detpixels 4 -oversample 2 "
                             "-mosaic 0.2 -mosaic_domains 2"), None),
    "gauss": (TRI + NEAR + a("-default_F 100 -N 4 -gauss_xtal -detpixels 4 -oversample 2 "
                             "-mosaic 0.2 -mosaic_domains 2 -fudge 1.3"), None),
    "tophat": (TRI + NEAR + a("-default_F 100 -N 4 -tophat_spots -fudge 0.8 -detpixels 4 -oversample 2 "
                              "-mosaic 0.2 -mosaic_domains 2"), None),
    # N = 2 selects tricubic interpolation; the grid's h >= -1 limit (h_min + 2) is crossed at
    # pixel (3, 4), after which the whole run uses nearest neighbours
    "tricubic": (TRI + a("-hkl small.hkl -N 2 -detpixels 6 -Xbeam -2.5 -Ybeam 2.5 -distance 40 "
                         "-oversample 1 -phi 0 -osc 0.3 -phisteps 2"), None),
    # dmin 3.56 A culls the top-left corner entirely (those pixels are 0: polar stays 0) and
    # one of the two sources along the edge; water seeds every other pixel
    "water_dmin": (TRI + F100 + a("-detpixels 6 -Xbeam 22.6 -Ybeam 18.6 -oversample 2 -water 0.05 "
                                  "-dmin 3.56 -hdivrange 1 -hdivsteps 2 -phi 0 -osc 0.2 -phisteps 2"), None),
    "xds": (TRI + F100 + a("-xds -detpixels 4 -ORGX -8 -ORGY 12 -oversample 2 -detector_roty 4 "
                           "-twotheta 6 -polar 0.6"), None),
    # spec mode honours -pivot sample under MOSFLM; c-parity keeps the convention's BEAM pivot
    "pivot_sample": (TRI + F100 + NEAR + a("-detpixels 4 -oversample 1 -detector_rotx 4 -detector_rotz 3 "
                                           "-pivot sample"), None),
    "roi_phi": (TRI + F100 + NEAR + a("-detpixels 5 -oversample 1 -roi 1 3 2 4 -phi 0 -osc 0.3 "
                                      "-phisteps 3 -mosaic 0.2 -mosaic_domains 2"), None),
    "mask": (TRI + F100 + NEAR + a("-detpixels 4 -oversample 1 -phi 0 -osc 0.3 -phisteps 2"), _mask),
    "auto_curved": (a("-cell 100 100 100 90 90 90 -default_F 100 -N 5 -lambda 1 -distance 100 "
                      "-detpixels 4 -Xbeam -0.2 -Ybeam 1.5 -curved_det -point_pixel -nopolar"), None),
    "matfile_xtalsize": (a("-mat A.mat -default_F 100 -xtalsize 0.0002 -lambda 1 -distance 80 "
                           "-detpixels 4 -Xbeam -0.4 -Ybeam 1.1 -oversample 1 -phi 2 -osc 0.2 "
                           "-phisteps 2"), None),
    # high angle (h up to 25): the C's sin(N pi h)/sin(pi h) carries its own rounding (below)
    "c_form_high_angle": (TRI + F100 + a("-detpixels 8 -Xbeam -40 -Ybeam 35 -oversample 1"), None),
}
for _conv in ("denzo", "adxv", "dials"):
    CASES[_conv] = (TRI + F100 + a(f"-{_conv} -detpixels_f 3 -detpixels_s 4 -oversample 1 "
                                   "-detector_rotz 2 -twotheta 3"), None)

SOURCES = "-10 0 0 1.0 1e-10\n-10 0.002 0.001 2.0 1.01e-10\n-10 -0.001 0.003 0.5\n"
# MOSFLM A matrix (rows x, y, z; columns a*, b*, c* times lambda = 1 A)
A_MAT = ("0.0143 -0.0025 0.0017\n0.0031 0.0128 -0.0036\n-0.0020 0.0041 0.0118\n")


def _hkl_text():
    rs = np.random.default_rng(1)
    rows = [f"{h} {k} {l} {rs.uniform(10, 200):.3f}"
            for h in range(-3, 4) for k in range(-10, -1) for l in range(-9, 1)]
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("reference")
    (d / "sources.txt").write_text(SOURCES)
    (d / "small.hkl").write_text(_hkl_text())
    (d / "A.mat").write_text(A_MAT)
    return d


@pytest.fixture(autouse=True)
def _in_workdir(workdir, monkeypatch):
    # input files by relative name; no Fdump.bin from elsewhere can be picked up
    monkeypatch.chdir(workdir)


def config(name, mode):
    argv, edit = CASES[name]
    cfg = config_from_args(argv + ["-mode", mode])
    if edit is not None:
        edit(cfg)
    return cfg


@functools.lru_cache(maxsize=None)
def _reference(name, mode, mosaic_f32):
    return reference.render(config(name, mode), mode, mosaic_f32=mosaic_f32)


def expected(name, mode):
    return _reference(name, mode, True if mode == "c-parity" else SPEC_MOSAIC_F32)


def simulate(cfg, mode, compile=False):
    with torch.no_grad():
        result = Simulator(cfg, mode=mode, compile=compile).run()
    return np.asarray(getattr(result, "pixels", result), dtype=np.float64)


def allowance(name, mode):
    """Per-pixel tolerance beyond TOL * max: only c_form_high_angle in c-parity.

    There the reference evaluates F_latt as the C writes it, sin(N x)/sin(x) with
    x = pi*h rounded in double: at h ~ 25 the argument N pi h ~ 240 carries ~3e-14 of
    rounding, a relative error ulp/|sin(N pi h)| that reaches 1e-12 of the image near
    the spot. The simulator evaluates the same function about the nearest node,
    sin(N pi (h-h0))/sin(pi (h-h0)) with the C's sign, without that rounding. The
    allowance is the C expression's own deviation, measured per pixel as the
    difference between the reference's two forms (c-parity minus spec).
    """
    if name != "c_form_high_angle" or mode != "c-parity":
        return 0.0
    return np.abs(expected(name, "c-parity").image - expected(name, "spec").image)


def assert_matches(image, name, mode):
    ref = expected(name, mode).image
    assert image.shape == ref.shape
    err = np.abs(image - ref)
    bound = TOL * np.abs(ref).max() + allowance(name, mode)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{name} {mode}: max |d| {err.max():.3g} (max |ref| "
                                  f"{np.abs(ref).max():.3g}) at pixel {worst}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_equals_reference(name, mode):
    assert_matches(simulate(config(name, mode), mode), name, mode)


@pytest.mark.parametrize("name,mode", [("water_dmin", "c-parity"), ("sourcefile", "spec")])
def test_compiled_equals_reference(name, mode, monkeypatch):
    """The compiled kernel (15-40 s to compile each case). Paths that need the C's order (the
    run's first phi loop in c-parity, tricubic before its switch, running products) run
    eagerly, so water_dmin goes in 6-pixel chunks: row 0 (culled pixels, then the first phi
    loop) eagerly, rows 1-5 compiled with the carried rotation; sourcefile in one compiled
    chunk with the spec-mode source weights."""
    from nanobrag_torch import compiled
    calls = []
    build = compiled.aot_kernel
    monkeypatch.setattr(compiled, "aot_kernel", lambda *args: calls.append(1) or build(*args))
    cfg = config(name, mode)
    if name == "water_dmin":
        cfg.pixel_batch_size = 6
    assert_matches(simulate(cfg, mode, compile=True), name, mode)
    assert calls, "the compiled kernel did not run"


def test_spec_mode_mosaic_angles_in_float64():
    """Spec mode's domain angles are spread * g in the run's dtype (docs/modes.md row 13)."""
    ref = _reference("mosaic_phi", "spec", False).image
    image = simulate(config("mosaic_phi", "spec"), "spec")
    assert np.abs(image - ref).max() <= TOL * np.abs(ref).max()


# ---------------------------------------------------------------------------------------------
# the cases exercise what they claim (on the reference alone)

def _differ(x, y, rel=1e-6):
    return np.abs(x - y).max() > rel * np.abs(y).max()


def test_mode_differences_are_exercised():
    for name in ("mosaic_phi", "high_angle", "roi_phi", "tricubic", "water_dmin"):   # C-PARITY-001
        assert _differ(expected(name, "c-parity").image, expected(name, "spec").image), name
    for name in ("sourcefile", "pivot_sample", "running"):                            # rows 7, 2, 17
        assert _differ(expected(name, "c-parity").image, expected(name, "spec").image), name
    for name in ("div_disp", "thick", "round", "xds", "dials"):                       # no quirk
        assert not _differ(expected(name, "c-parity").image, expected(name, "spec").image, 1e-11)


def test_run_wide_state_is_exercised():
    for mode in MODES:
        tri = expected("tricubic", mode)
        assert tri.interpolation_off_at == (3, 4)           # mid-raster, not at the first pixel
        wd = expected("water_dmin", mode)
        assert (wd.image == 0).sum() >= 3 and (wd.image > 0).sum() >= 20
        assert wd.first_phi_loop_at[0] == 0 and wd.first_phi_loop_at[1] > 0   # first pixels culled
        roi = expected("roi_phi", mode)
        assert roi.first_phi_loop_at == (2, 1)
        inside = np.zeros((5, 5), dtype=bool)
        inside[2:5, 1:4] = True
        assert np.all(roi.image[~inside] == 0) and np.all(roi.image[inside] > 0)
        assert np.array_equal(expected("mask", mode).image == 0, config("mask", mode).detector.mask == 0)
    assert expected("auto_curved", "spec").oversample == 2          # auto-selected (SPEC 2.9)
    assert expected("div_disp", "spec").steps == 5 * 2 * 4          # 3x3 raster trimmed to 5, x 2 wavelengths


# ---------------------------------------------------------------------------------------------
# gradients: autograd through the simulator against central differences of the reference

GRAD_ARGS = TRI + a("-default_F 100 -N 3 -detpixels 4 -Xbeam -0.3 -Ybeam 1.2 -oversample 2 "
                    "-polar 0.5 -mosaic 0.3 -mosaic_domains 3 -phi 0 -osc 0.2 -phisteps 2 "
                    "-hdivrange 0.4 -hdivsteps 2 -detector_thick 50 -thicksteps 2")
# attribute: finite-difference step (command-line units)
GRAD_PARAMS = {
    "detector.distance_mm": 1e-6,
    "crystal.cell": 1e-6,
    "crystal.misset_deg": 1e-6,
    "beam.wavelength_A": 1e-7,
    "crystal.mosaic_spread_deg": 1e-6,
    "crystal.n_cells": 1e-6,
    "beam.polarization": 1e-3,       # the image is linear in K: a larger step, no truncation
}


def _get(cfg, name):
    group, attr = name.split(".")
    return getattr(getattr(cfg, group), attr)


def _set(cfg, name, value):
    group, attr = name.split(".")
    setattr(getattr(cfg, group), attr, value)


def jacobians(name, mode, eps):
    """(autograd, central differences): arrays (n_components, spixels, fpixels)."""
    base = config_from_args(GRAD_ARGS + ["-mode", mode])
    x0 = np.atleast_1d(np.asarray(_get(base, name), dtype=np.float64))
    scalar = np.ndim(_get(base, name)) == 0

    def as_value(x):
        return x[0] if scalar else x

    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    cfg = copy.deepcopy(base)
    _set(cfg, name, as_value(x))
    image = Simulator(cfg, mode=mode, compile=False).run()
    image = getattr(image, "pixels", image)
    auto = torch.stack([torch.autograd.grad(v, x, retain_graph=True)[0] for v in image.reshape(-1)])
    auto = auto.T.reshape((len(x0),) + tuple(image.shape)).numpy()

    fd = []
    for j in range(len(x0)):
        images = []
        for sign in (1, -1):
            xj = x0.copy()
            xj[j] += sign * eps
            cfg = copy.deepcopy(base)
            _set(cfg, name, float(xj[0]) if scalar else [float(v) for v in xj])
            # the C's float32 mosaic angles make the image a staircase in the spread; autograd
            # differentiates the smooth angle, so difference the float64 angles
            images.append(reference.render(cfg, mode, mosaic_f32=False).image)
        fd.append((images[0] - images[1]) / (2 * eps))
    return auto, np.array(fd)


@pytest.mark.parametrize("name", list(GRAD_PARAMS))
def test_gradient_equals_reference_differences(name):
    auto, fd = jacobians(name, "spec", GRAD_PARAMS[name])
    for j in range(len(fd)):
        scale = np.abs(fd[j]).max()
        assert scale > 0
        assert np.abs(auto[j] - fd[j]).max() <= 1e-6 * scale, (name, j)


@pytest.mark.parametrize("name", ["crystal.cell", "detector.distance_mm"])
def test_gradient_c_parity(name):
    """c-parity, with the phi carryover (step 0 reuses step 1's rotation after the first loop)."""
    auto, fd = jacobians(name, "c-parity", 1e-5)
    for j in range(len(fd)):
        assert np.abs(auto[j] - fd[j]).max() <= 1e-6 * np.abs(fd[j]).max(), (name, j)


# ---------------------------------------------------------------------------------------------
# the oracle against the C

def test_reference_pix0_at_geo_001():
    """SPEC 1.6 check value: MOSFLM, 0.1 mm pixels, 100 mm, Xbeam = Ybeam = 51.2 mm."""
    cfg = config_from_args(a("-cell 100 100 100 90 90 90 -default_F 1 -distance 100 -pixel 0.1 "
                             "-detpixels 1024 -Xbeam 51.2 -Ybeam 51.2"))
    geo = reference.detector(cfg, "spec")
    np.testing.assert_allclose(geo.pix0, (0.1, 0.05125, -0.05125), rtol=0, atol=1e-15)


def test_reference_water_example():
    """SPEC 5: -water 100 -point_pixel -nopolar at 100 mm, steps = 1: 2.20976e19 on the beam."""
    cfg = config_from_args(a("-cell 100 100 100 90 90 90 -default_F 1e-30 -N 1 -distance 100 "
                             "-detpixels 3 -Xbeam 0.1 -Ybeam 0.1 -water 100 -point_pixel -nopolar "
                             "-oversample 1"))
    r = reference.render(cfg, "c-parity")
    assert r.steps == 1
    assert abs(r.image[1, 1] / 2.20976e19 - 1) < 5e-6


def _corpus_cases():
    path = corpus_dir() / "cases.json"
    return json.loads(path.read_text())["cases"] if path.exists() else []


def test_reference_equals_nanobragg_c(corpus, monkeypatch, tmp_path):
    """The reference at a few pixels of every corpus case it supports (no CUSTOM vectors, no
    random misset) equals the C's float.bin after the C's own float32 storage: within one
    float32 ulp, in practice bit for bit. Pixels: the image maximum and five seeded ones
    (among the first 24 of the first row where the run carries state from pixel to pixel,
    which the reference then renders in full)."""
    (tmp_path / "inputs").symlink_to((corpus / "inputs").resolve())
    monkeypatch.chdir(tmp_path)
    checked, mismatched, equal, compared = 0, [], 0, 0
    for case in _corpus_cases():
        mode = "spec" if case["mode"] == "spec" else "c-parity"
        cfg = config_from_args(case["args"] + ["-mode", mode])
        try:
            geo = reference.detector(cfg, mode)
            reference.crystal(cfg, mode)
        except NotImplementedError:
            continue
        c_image = np.fromfile(corpus / "cases" / case["id"] / "float.bin",
                              dtype="<f4").reshape(geo.spixels, geo.fpixels)
        stateful = (reference.StructureFactors(cfg).interpolate
                    or (mode == "c-parity" and _phi_zero_steps(cfg)))
        rows = c_image[:1, :24] if stateful else c_image
        rs = np.random.default_rng(zlib.crc32(case["id"].encode()))
        pixels = [np.unravel_index(int(np.argmax(rows)), rows.shape)]
        pixels += [(int(rs.integers(0, rows.shape[0])), int(rs.integers(0, rows.shape[1])))
                   for _ in range(5)]
        r = reference.render(cfg, mode, pixels=pixels, mosaic_f32=True)    # the C's rounding
        for p in pixels:
            ours, theirs = np.float32(r.image[p]), c_image[p]
            ulps = abs(int(ours.view(np.int32)) - int(theirs.view(np.int32)))
            equal += ulps == 0
            compared += 1
            if ulps > 1:
                mismatched.append((case["id"], p, float(ours), float(theirs)))
        checked += 1
    assert checked >= 70
    print(f"{checked} cases, {compared} pixels, {equal} bit-equal in float32")
    assert equal >= 0.99 * compared          # a 1-ulp flip needs a value within ~1e-13 of a tie
    assert not mismatched, mismatched[:5]


def _phi_zero_steps(cfg):
    phi0, step, steps = reference.phi_steps(cfg)
    return any(phi0 + step * i == 0.0 for i in range(steps))
