"""nonbragg-torch: the nonBragg.c corpus in both modes, and the amorphous physics.

Corpus cases (see suite_corpus.py) run in-process; c-parity runs must give the
C's float image bit for bit and its console statistics.  The unit tests check
the amorphous formula analytically (a constant-F table against
r_e^2 fluence N F^2 polar omega), the table interpolation, the sample's
molecule count, and gradients against finite differences.
"""
import math

import numpy as np
import pytest
import torch

from nanobrag_torch import amorphous as am
from nanobrag_torch import nonbragg as nb
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.units import AVOGADRO, R_E_SQR
from suite_corpus import compare_outputs, compare_stats, need_corpus, run_in, suite_cases

CASES = suite_cases("nonbragg")
SPEC = [c for c in CASES if c.get("mode", "both") in ("both", "spec")]
CPAR = [c for c in CASES if c.get("mode", "both") in ("both", "c-parity")]
STATS = {
    "max_I": r"max_I = (\S+)", "mean": r"mean= (\S+)", "rms": r"rms= (\S+)", "rmsd": r"rmsd= (\S+)",
    "intfile_scale": r"intfile_scale = (\S+)", "pgm_scale": r"pgm_scale = (\S+)",
    "omega_sr": r"solid angle subtended by detector = (\S+)", "fluence": r"incident fluence: (\S+)",
    "molecules": r"\((\S+) molecules\)", "sources": r"^  (\d+) sources$",
    "noise_photons": r"^(\S+) photons on noise image", "noise_overloads": r"\((\d+) overloads\)",
}


def run_case(case, tmp_path, mode):
    corpus = need_corpus("nonbragg")
    args = list(case["args"]) + ["-floatfile", "float.bin", "-intfile", "int.img", "-noprogress",
                                 "-mode", mode]
    args += ["-noisefile", "noise.img"] if "noise.img" in case["outputs"] else ["-nonoise"]
    args += ["-pgmfile", "image.pgm"] if "image.pgm" in case["outputs"] else ["-nopgm"]
    status, out = run_in(tmp_path, corpus, nb.main, args)
    assert status == 0, out
    ref = corpus / "cases" / case["id"]
    problems = compare_outputs(case, ref, tmp_path, mode)
    if mode == "c-parity":
        problems += compare_stats(case, out, STATS)
        if out != (ref / "stdout.txt").read_text():
            problems.append("console output differs from the C's")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("case", SPEC, ids=[c["id"] for c in SPEC])
def test_corpus_spec(case, tmp_path):
    run_case(case, tmp_path, "spec")


@pytest.mark.parametrize("case", CPAR, ids=[c["id"] for c in CPAR])
def test_corpus_c_parity(case, tmp_path):
    run_case(case, tmp_path, "c-parity")


def test_corpus_is_complete():
    need_corpus("nonbragg")
    assert len(CASES) == 35 and len(SPEC) == 32 and len(CPAR) == 32


# ------------------------------------------------------------------------------------------
# physics

def _unity_table(F=2.5, mult=1e10):
    return am.stol_table(np.array([[0.0, F], [0.5, F], [1.0, F], [2.0, F]]), mult)


def test_constant_table_gives_the_analytic_image(tmp_path):
    """F = const: photons = r_e^2 fluence N F^2 omega polar, pixel by pixel (no interpolation error)."""
    (tmp_path / "c.stol").write_text("0 2.5\n0.5 2.5\n1 2.5\n2 2.5\n")
    cfg = nb.config_from_args(["-stol", str(tmp_path / "c.stol"), "-detpixels", "16", "-pixel", "1",
                               "-distance", "40", "-fluence", "1e20", "-thickness", "0.2", "-density", "0.5",
                               "-MW", "20"])
    img = nb.simulate(cfg).photons
    g = nb.setup(cfg).geom
    s, f = torch.meshgrid(torch.arange(16.0, dtype=torch.float64), torch.arange(16.0, dtype=torch.float64),
                          indexing="ij")
    P = ((f + 0.5)[..., None] * 1e-3 * g.fdet + (s + 0.5)[..., None] * 1e-3 * g.sdet + g.pix0)
    R = P.norm(dim=-1)
    omega = 1e-6 / R ** 2 * float(g.close_distance) / R
    cos2 = P[..., 0] / R                               # beam along x
    polar = 0.5 * (1 + cos2 ** 2)                      # K = 0
    N = 0.2e-3 * 0.1e-3 * 0.1e-3 * 0.5e6 * AVOGADRO / 20
    expect = R_E_SQR * 1e20 * N * 2.5 ** 2 * omega * polar
    assert torch.allclose(img, expect, rtol=1e-12, atol=0)


def test_interpolation_is_the_cubic_through_four_nodes():
    x = np.array([0.0, 0.1, 0.25, 0.3, 0.5, 0.7])
    F = 1 + 2 * x - 3 * x ** 2 + 0.5 * x ** 3          # a cubic: reproduced exactly
    table = am.stol_table(np.stack([x, F], 1), 1.0)
    q = torch.tensor([0.12, 0.26, 0.31, 0.49], dtype=torch.float64)
    got = am.interpolate_F(table, q)
    want = 1 + 2 * q - 3 * q ** 2 + 0.5 * q ** 3
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    # in the first interval the -1e98 guard node leaves the quadratic through the first three
    q0 = torch.tensor([0.05], dtype=torch.float64)
    quad = sum(F[i] * np.prod([(0.05 - x[j]) / (x[i] - x[j]) for j in range(3) if j != i]) for i in range(3))
    assert float(am.interpolate_F(table, q0)) == pytest.approx(quad, abs=1e-13)
    # at the nodes the table's own values
    assert torch.allclose(am.interpolate_F(table, torch.tensor(x[1:4])), torch.tensor(F[1:4]), atol=1e-14)


def test_table_guards_follow_the_c():
    t = am.stol_table(np.array([[0.0, 3.0], [0.1, np.nan], [0.2, 5.0]]), 1e10)
    assert t.x.tolist() == [-1e99, -1e98, 0.0, 0.1e10, 0.2e10, 1e98, 1e99]
    assert t.F.tolist() == [3.0, 3.0, 3.0, 0.0, 5.0, 5.0, 5.0]       # missing F reads 0


def test_molecules_of_the_default_water_cube():
    n, density, size = am.molecules_in_sample(1e-4, 1e-4, 1e-4, 1.0, 18.0)
    assert n == pytest.approx(3.34563e16, rel=1e-5)                    # the C prints 3.34563e+16
    n2, d2, size2 = am.molecules_in_sample(1e-4, 5e-4, 2e-4, 1.0, 18.0, beamsize_m=1.5e-4)
    assert size2 == (1e-4, 1.5e-4, 1.5e-4)
    n3, d3, _ = am.molecules_in_sample(1e-4, 1e-4, 1e-4, 1.0, 50000.0, molecules=1e15)
    assert n3 == pytest.approx(1e15, rel=1e-12)
    assert d3 == pytest.approx(1e15 / 1e-12 / AVOGADRO * 50000.0 / 1e6, rel=1e-12)


def test_oversample_and_sources_average_not_sum(tmp_path):
    """The image is the mean over sub-pixels: -oversample 2 changes it by the omega/polar
    variation across a pixel only (nanoBragg's -water divides by the steps instead)."""
    (tmp_path / "c.stol").write_text("0 2.5\n0.5 2.5\n1 2.5\n2 2.5\n")
    base = ["-stol", str(tmp_path / "c.stol"), "-detpixels", "8", "-distance", "100"]
    one = nb.simulate(nb.config_from_args(base)).photons
    two = nb.simulate(nb.config_from_args(base + ["-oversample", "2"])).photons
    assert torch.allclose(one, two, rtol=1e-6)


def test_gradients_match_finite_differences(tmp_path):
    """d(image)/d(thickness, density, MW, fluence, F table) through the pure functions."""
    (tmp_path / "t.stol").write_text("0 14\n0.02 13\n0.05 11\n0.1 8\n0.2 5\n0.4 3\n")
    cfg = nb.config_from_args(["-stol", str(tmp_path / "t.stol"), "-detpixels", "4", "-pixel", "2",
                               "-distance", "30"])
    su = nb.setup(cfg)

    def image(thick, density, mw, fluence, F):
        n, _, _ = am.molecules_in_sample(thick, 1e-4, 1e-4, density, mw)
        table = am.StolTable(su.table.x, F, su.table.mult)
        return am.render_amorphous(su.geom, su.sources, table, molecules=n, fluence=fluence,
                                   polar_axis=su.polar_vector).photons
    args = tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True)
                 for v in (1e-4, 1.0, 29.0, 1e20))
    F = su.table.F.clone().requires_grad_(True)
    # scale the inputs to O(1) so gradcheck's finite differences are well conditioned
    scales = (1e-4, 1.0, 29.0, 1e20)

    def f(t, d, m, fl, FF):
        return image(t * scales[0], d * scales[1], m * scales[2], fl * scales[3], FF) / 1e3
    unit = tuple((a.detach() / s).requires_grad_(True) for a, s in zip(args, scales))
    assert torch.autograd.gradcheck(f, unit + (F,), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradient_wrt_distance():
    cfg = nb.config_from_args(["-stol", str(need_corpus("nonbragg") / "inputs" / "water.stol"),
                               "-detpixels", "5", "-pixel", "2", "-distance", "50"])
    su = nb.setup(cfg)

    def f(dist_mm):
        g = su.geom
        pix0 = g.pix0 + (dist_mm / 1000.0 - g.distance) * g.beam     # BEAM pivot: move along the beam
        geom = nb.DetectorGeometry(**{**g.__dict__, "pix0": pix0, "close_distance": torch.dot(pix0, g.odet)})
        return am.render_amorphous(geom, su.sources, su.table, molecules=su.molecules,
                                   fluence=1e20, polar_axis=su.polar_vector).photons
    d = torch.tensor(50.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (d,), eps=1e-4, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# command line

@pytest.mark.parametrize("argv, message", [
    (["-stol", "missing.stol"], "missing.stol"),
    (["-stol", "x.stol", "-distanse", "5"], "unknown flag '-distanse'"),
    (["-stol", "x.stol", "-distance"], "-distance needs 1 value"),
    (["-stol", "x.stol", "-polar", "2"], "-polar"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.stol").write_text("0 1\n1 1\n")
    assert nb.main(argv) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(p.suffix in (".bin", ".img", ".pgm") for p in tmp_path.iterdir())


def test_no_table_prints_usage_and_exits_9(capsys):
    assert nb.main([]) == 9
    assert "usage" in capsys.readouterr().out


def test_spec_rejects_comment_lines_in_a_table(tmp_path):
    path = tmp_path / "c.stol"
    path.write_text("# stol F\n0 1\n1 1\n")
    with pytest.raises(ConfigError, match=":1: comment lines"):
        nb.config_from_args(["-stol", str(path)])
    cfg = nb.config_from_args(["-stol", str(path), "-mode", "c-parity"])   # the C reads (0, 0)
    assert cfg.stol_rows.tolist()[0] == [0.0, 0.0]


def test_spec_detpixels_gives_that_many_pixels(tmp_path):
    (tmp_path / "c.stol").write_text("0 1\n1 1\n2 1\n3 1\n")
    args = ["-stol", str(tmp_path / "c.stol"), "-detpixels", "101", "-pixel", "0.1"]
    assert nb.setup(nb.config_from_args(args)).geom.fpixels == 101
    assert nb.setup(nb.config_from_args(args + ["-mode", "c-parity"])).geom.fpixels == 102
