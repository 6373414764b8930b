"""noisify-torch: the noisify.c corpus in both modes, and the detector-response stages.

Corpus cases (see suite_corpus.py) run in-process; c-parity runs must give the
C's images (noise streams included) and its console photon counts.  Unit tests:
PSF kernels are normalised (analytic volume), the FFT and the C-order PSF agree,
the spec PSF drops what leaves the detector where the C wraps it, the C's shared
ran1 statics, quantisation rules, and gradients of the deterministic stages
(PSF width, gain, scale) against finite differences.
"""
import math

import numpy as np
import pytest
import torch

from nanobrag_torch import detector_response as dr
from nanobrag_torch import noisify as nz
from nanobrag_torch.rng import CNoise, Ran1, Ran1Pointer
from suite_corpus import compare_outputs, compare_stats, need_corpus, run_in, suite_cases

CASES = suite_cases("noisify")
SPEC = [c for c in CASES if c.get("mode", "both") in ("both", "spec")]
CPAR = [c for c in CASES if c.get("mode", "both") in ("both", "c-parity")]
STATS = {
    "max_input": r"maximum value in input file: (\S+)",
    "max_photons": r"maximum value in input file: \S+ \( (\S+) on photon scale\)",
    "photons_before_psf": r"^(\S+) photons on noise image before PSF",
    "noise_photons": r"^(\S+) photons on noise image \(",
    "noise_overloads": r"photons on noise image \((\d+) overloads\)",
    "psf_radius": r"auto-selected psf_radius = (\d+)",
    "lost_photons": r"adding back (\S+) lost photons",
}


def run_case(case, tmp_path, mode):
    corpus = need_corpus("noisify")
    args = list(case["args"]) + ["-intfile", "int.img", "-mode", mode]
    args += ["-noisefile", "noise.img"] if "noise.img" in case["outputs"] else ["-nonoise"]
    args += ["-pgmfile", "image.pgm"] if "image.pgm" in case["outputs"] else ["-nopgm"]
    status, out = run_in(tmp_path, corpus, nz.main, args)
    assert status == 0, out
    ref = corpus / "cases" / case["id"]
    problems = compare_outputs(case, ref, tmp_path, mode, float_image=False)
    if mode == "c-parity":
        problems += compare_stats(case, out, STATS)
        want = (ref / "stdout.txt").read_text()
        if out != want:
            problems.append("console output differs from the C's")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("case", SPEC, ids=[c["id"] for c in SPEC])
def test_corpus_spec(case, tmp_path):
    run_case(case, tmp_path, "spec")


@pytest.mark.parametrize("case", CPAR, ids=[c["id"] for c in CPAR])
def test_corpus_c_parity(case, tmp_path):
    run_case(case, tmp_path, "c-parity")


def test_corpus_is_complete():
    need_corpus("noisify")
    assert len(CASES) == 27 and len(SPEC) == 23 and len(CPAR) == 27


# ------------------------------------------------------------------------------------------
# PSF

@pytest.mark.parametrize("kind, fwhm", [("gauss", 1.3), ("gauss", 3.0), ("fiber", 0.8)])
def test_psf_kernel_is_normalised(kind, fwhm):
    """The pixel integrals of a unit-volume PSF sum to the volume inside the radius."""
    R = 40
    k = dr.psf_kernel(kind, fwhm, R)
    if kind == "gauss":
        # the disc of radius R holds all but exp(-ln16 (R/fwhm)^2) of a Gaussian
        assert float(k.sum()) == pytest.approx(1.0, abs=1e-9)
    else:
        # fiber: 1 - g/sqrt(g^2 + R^2) inside radius R, up to the square pixels at the rim
        g = dr.psf_g(fwhm)
        assert float(k.sum()) == pytest.approx(1 - g / math.sqrt(g * g + R * R), abs=2e-4)
    assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.flip(1)) and torch.allclose(k, k.T)
    # the central pixel of a Gaussian: erf(sqrt(ln 2)/fwhm)^2 (the C's 0.25 * 2 erf * 2 erf)
    if kind == "gauss":
        c = math.erf(math.sqrt(math.log(2)) / fwhm) ** 2
        assert float(k[R, R]) == pytest.approx(c, rel=1e-12)


def test_psf_conserves_photons_and_matches_the_c_order():
    """Away from the edges, spec (FFT) and c-parity (the C's float32 sums) agree, and the total
    is each pixel times its kernel's sum plus the lost photons added back: photons are
    conserved to the difference between the square-pixel kernel on a disc and the
    continuous Gaussian tail the lost photons assume (~1e-6)."""
    img = torch.zeros(40, 50, dtype=torch.float64)
    img[20, 25], img[10, 12], img[30, 30] = 1000.0, 250.0, 40.0
    spec = dr.apply_psf(img, "gauss", 1.7, 0)
    cpar = dr.apply_psf(img.float(), "gauss", 1.7, 0, c_order=True, wrap=True)
    vals = img[img > 0].numpy()
    radii = dr.psf_radius_for("gauss", vals, 1.7)
    ksum = [float(dr.psf_kernel("gauss", 1.7, int(r)).sum()) for r in radii]
    expect = float(np.dot(vals, ksum)) + float(spec.lost)
    assert float(spec.image.sum()) == pytest.approx(expect, rel=1e-12)
    assert float(spec.image.sum()) == pytest.approx(float(img.sum()), rel=1e-5)
    assert torch.allclose(spec.image.float(), cpar.image, rtol=1e-6, atol=1e-4)
    assert spec.radius == cpar.radius


def test_psf_edge_wrap_is_c_parity_only():
    """A photon at the right edge: the C puts what reaches x = F into column 0 of the next row."""
    img = torch.zeros(6, 8, dtype=torch.float64)
    img[2, 7] = 100.0
    spec = dr.apply_psf(img, "gauss", 1.0, 2).image
    cpar = dr.apply_psf(img.float(), "gauss", 1.0, 2, c_order=True, wrap=True).image
    k = dr.psf_kernel("gauss", 1.0, 2)
    lost = dr.lost_photons("gauss", np.array([100.0]), np.array([2]), 1.0)[0] / 48
    # offset (dy, dx) = (0, 1) reaches x = 8 = F: flat index 2*8 + 8, i.e. row 3, column 0
    assert float(cpar[3, 0]) == pytest.approx(100 * float(k[2 + 0, 2 + 1]) + lost, rel=1e-6)
    assert float(spec[3, 0]) == pytest.approx(lost, rel=1e-9)
    # what the spec PSF loses past the edge is the kernel mass that falls outside
    inside = dr.apply_psf(img, "gauss", 1.0, 2).image.sum()
    assert float(inside) < 100.0


def test_psf_gradient_wrt_width_matches_finite_differences():
    img = torch.zeros(9, 9, dtype=torch.float64)
    img[4, 4], img[2, 6] = 50.0, 20.0

    def f(fw):
        return dr.apply_psf(img, "gauss", fw, 3).image
    fw = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (fw,), eps=1e-6, atol=1e-7, rtol=1e-5)

    def g(fw):
        return dr.apply_psf(img, "fiber", fw, 3).image
    assert torch.autograd.gradcheck(g, (fw,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_expected_adu_gradient():
    photons = torch.rand(6, 7, dtype=torch.float64) * 100

    def f(gain, adc, fw, scale):
        return dr.expected_adu(dr.photon_scale(photons, 1.25932015286227086e29, scale), gain, adc,
                               psf="gauss", fwhm_px=fw, radius=2)
    args = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (2.5, 40.0, 1.1, 1.5))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# the C's random stream and integer rules

def test_shared_ran1_statics():
    """Two seed pointers on one table: the C's sequence, checked against a hand-rolled ran1."""
    a = Ran1(-5)
    b = Ran1Pointer(a, -9)
    got = [a.next(), b.next(), a.next(), a.next(), b.next()]
    # reference: one table, two idum values, the C's ran1 written out
    IA, IM, IQ, IR, NDIV = 16807, 2147483647, 127773, 2836, 1 << 26
    iv, st = [0] * 32, {"iy": 0}
    ids = {"a": -5, "b": -9}

    def ran1(name):
        idum = ids[name]
        if idum <= 0 or not st["iy"]:
            idum = 1 if -idum < 1 else -idum
            for j in range(39, -1, -1):
                k = idum // IQ
                idum = IA * (idum - k * IQ) - IR * k
                idum += IM if idum < 0 else 0
                if j < 32:
                    iv[j] = idum
            st["iy"] = iv[0]
        k = idum // IQ
        idum = IA * (idum - k * IQ) - IR * k
        idum += IM if idum < 0 else 0
        j = st["iy"] // NDIV
        st["iy"] = iv[j]
        iv[j] = idum
        ids[name] = idum
        return float(np.float32(st["iy"] / IM))
    want = [ran1(n) for n in "abaab"]
    assert got == pytest.approx(want, abs=1.2e-7)


def test_default_calib_seed_is_one():
    """SUITE N1: the positive default calib seed is read as 1 by ran1 (a fresh table)."""
    n1 = CNoise(Ran1(0))
    g1 = n1.gaussdev(Ran1Pointer(n1.rng, 123456789))
    n2 = CNoise(Ran1(0))
    g2 = n2.gaussdev(Ran1Pointer(n2.rng, -1))
    assert g1 == g2


def test_quantize_rules():
    adu = np.array([-3.2, 0.0, 12.7, 70000.0, 3e9, np.nan])
    wrap, over = dr.quantize(adu, 16, after_noise=True, clamp_negative=False)
    assert wrap.tolist() == [65533, 0, 12, 65535, 65535, 0] and over == 2
    clamp, _ = dr.quantize(adu, 16, after_noise=True, clamp_negative=True)
    assert clamp.tolist()[:3] == [0, 0, 12]
    b32, over32 = dr.quantize(adu, 32, after_noise=True, clamp_negative=False)
    assert b32.tolist()[2:5] == [12, 70000, 2147483647] and over32 == 1
    quiet, _ = dr.quantize(adu, 32, after_noise=False, clamp_negative=False)
    assert quiet.tolist()[3] == 65535                  # SUITE N5: the noiseless 32-bit image clamps


def test_spec_calibration_pattern_ignores_seed(tmp_path):
    """spec: the calibration error is static (depends on -calib_seed only; the C's changes with -seed)."""
    img = np.full((32, 32), 1.0e7, dtype=np.float32)     # Gaussian branch: shot noise small
    path = tmp_path / "flat.bin"
    img.tofile(path)

    def noise(seed):
        cfg = nz.config_from_args(["-floatfile", str(path), "-calibration", "0.1", "-seed", str(seed),
                                   "-scale", str(1 / 1.0), "-bits", "32", "-adc", "0"])
        return nz.simulate(cfg).noise_image.astype(np.float64)
    a, b = noise(1), noise(2)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


# ------------------------------------------------------------------------------------------
# command line

def test_spec_refuses_a_size_mismatch(tmp_path, capsys):
    np.zeros(100, dtype=np.float32).tofile(tmp_path / "a.bin")
    argv = ["-floatfile", str(tmp_path / "a.bin"), "-detpixels", "8", "-intfile", str(tmp_path / "i.img")]
    assert nz.main(argv) == 1
    assert "400 bytes, expected 256" in capsys.readouterr().err
    assert not (tmp_path / "i.img").exists()
    assert nz.main(argv + ["-mode", "c-parity", "-nonoise", "-nopgm"]) == 0     # the C reads the first 64


def test_no_input_prints_usage(capsys):
    assert nz.main(["-seed", "1"]) == 9
    assert "usage" in capsys.readouterr().out


def test_bad_bits_is_an_error_in_spec(tmp_path, capsys):
    np.zeros(16, dtype=np.float32).tofile(tmp_path / "a.bin")
    assert nz.main(["-floatfile", str(tmp_path / "a.bin"), "-bits", "8"]) == 2
    assert "-bits" in capsys.readouterr().err
