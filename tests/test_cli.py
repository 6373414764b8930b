"""Command-line parsing: nanoBragg flags -> SimConfig (src/nanobrag_torch/cli.py)."""
from __future__ import annotations

import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from nanobrag_torch import cli
from nanobrag_torch.cli import FileError, FlagError, config_from_args, main, usage_text
from nanobrag_torch.config import HKLData
from nanobrag_torch.errors import ConfigError, UsageError

GOLDEN = Path(os.environ.get("NANOBRAGG_GOLDEN",
                             Path(__file__).resolve().parents[1].parent / "shared" / "golden"))
INPUTS = GOLDEN / "inputs"
needs_golden = pytest.mark.skipif(not (GOLDEN / "cases.json").is_file(),
                                  reason=f"golden corpus not found at {GOLDEN} (set NANOBRAGG_GOLDEN)")

BASE = ["-cell", "100", "-default_F", "1"]


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    """A clean working directory (no Fdump.bin) holding inputs -> the corpus inputs."""
    if INPUTS.is_dir():
        (tmp_path / "inputs").symlink_to(INPUTS, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def parse(*args):
    return config_from_args(BASE + [str(a) for a in args])


def get(cfg, path):
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------
# the corpus

def _cases():
    if not (GOLDEN / "cases.json").is_file():
        return []
    return json.loads((GOLDEN / "cases.json").read_text())["cases"]


@needs_golden
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_corpus_args_parse(case, rundir):
    cfg = config_from_args(case["args"])
    assert cfg.argv == case["args"]
    assert cfg.crystal.hkl is not None or cfg.crystal.default_F != 0


# --------------------------------------------------------------------------
# flag -> config table (values stay in command-line units)

FLAG_TABLE = [
    (["-distance", "123.5"], "detector.distance_mm", 123.5),
    (["-close_distance", "95"], "detector.close_distance_mm", 95.0),
    (["-pixel", "0.172"], "detector.pixel_size_mm", 0.172),
    (["-detpixels", "64"], "detector.detpixels", [64, 64]),
    (["-detpixels_x", "200", "-detpixels_y", "120"], "detector.detpixels", [200, 120]),
    (["-detpixels_f", "200", "-detpixels_s", "120"], "detector.detpixels", [200, 120]),
    (["-detsize", "20"], "detector.detsize_mm", [20.0, 20.0]),
    (["-detsize_f", "20", "-detsize_s", "30"], "detector.detsize_mm", [20.0, 30.0]),
    (["-Xbeam", "10.1", "-Ybeam", "14.3"], "detector.beam_center_mm", [10.1, 14.3]),
    (["-Xclose", "11", "-Yclose", "14"], "detector.close_center_mm", [11.0, 14.0]),
    (["-ORGX", "100.5", "-ORGY", "140.25"], "detector.org_px", [100.5, 140.25]),
    (["-detector_rotx", "5", "-detector_roty", "-3", "-detector_rotz", "2"],
     "detector.rotation_deg", [5.0, -3.0, 2.0]),
    (["-twotheta", "15"], "detector.twotheta_deg", 15.0),
    (["-detector_thick", "300"], "detector.thickness_um", 300.0),
    (["-detector_thicksteps", "4"], "detector.thicksteps", 4),
    (["-thicksteps", "0"], "detector.thicksteps", None),
    (["-detector_abs", "500"], "detector.mu_per_m", 1.0 / (500 * 1e-6)),
    (["-detector_absorb", "inf"], "detector.mu_per_m", 0.0),
    (["-curved_det"], "detector.curved", True),
    (["-point_pixel"], "detector.point_pixel", True),
    (["-roi", "20", "100", "30", "150"], "detector.roi", (20, 100, 30, 150)),
    (["-pivot", "Sample"], "detector.pivot", "SAMPLE"),
    (["-xds"], "detector.convention", "XDS"),
    (["-xds", "-mosflm"], "detector.convention", "MOSFLM"),
    (["-dials", "-denzo", "-adxv"], "detector.convention", "ADXV"),
    (["-fdet_vector", "0", "0", "1"], "detector.fdet_vector", [0.0, 0.0, 1.0]),
    (["-beam_vector", "0.9998", "-0.02", "0"], "beam.beam_vector", [0.9998, -0.02, 0.0]),
    (["-polar_vector", "0", "1", "0"], "beam.polar_vector", [0.0, 1.0, 0.0]),
    (["-spindle_axis", "0", "1", "0"], "crystal.spindle_axis", [0.0, 1.0, 0.0]),
    (["-twotheta_axis", "0", "0", "-2"], "detector.twotheta_axis", [0.0, 0.0, -2.0]),
    (["-pix0_vector", "0.1", "0.01", "-0.015"], "detector.pix0_vector_m", [0.1, 0.01, -0.015]),
    (["-pix0_vector_mm", "100", "10", "-15"], "detector.pix0_vector_m", [0.1, 0.01, -0.015]),
    (["-lambda", "6.2"], "beam.wavelength_A", 6.2),
    (["-wave", "1.5"], "beam.wavelength_A", 1.5),
    (["-energy", "2000"], "beam.wavelength_A", 12398.42 / 2000),
    (["-energy", "2000", "-lambda", "1.1"], "beam.wavelength_A", 1.1),
    (["-lambda", "1.1", "-energy", "12398.42"], "beam.wavelength_A", 1.0),
    (["-dispersion", "2", "-dispsteps", "5"], "beam.dispersion_pct", 2.0),
    (["-dispsteps", "5"], "beam.dispsteps", 5),
    (["-divergence", "2"], "beam.hdivrange_mrad", 2.0),
    (["-divergence", "2"], "beam.vdivrange_mrad", 2.0),
    (["-hdivrange", "1", "-vdivrange", "0.5"], "beam.vdivrange_mrad", 0.5),
    (["-hdivstep", "0.25"], "beam.hdivstep_mrad", 0.25),
    (["-vdivstep", "0.5"], "beam.vdivstep_mrad", 0.5),
    (["-divsteps", "4"], "beam.hdivsteps", 4),
    (["-divsteps", "4", "-vdivsteps", "3"], "beam.vdivsteps", 3),
    (["-square_div"], "beam.round_div", False),
    (["-square_div", "-round_div"], "beam.round_div", True),
    (["-polar", "0.5"], "beam.polarization", 0.5),
    (["-nopolar"], "beam.nopolar", True),
    (["-nopolar", "-polar", "0.9"], "beam.nopolar", False),
    (["-polar", "0.9", "-nopolar"], "beam.nopolar", True),
    (["-fluence", "1e24"], "beam.fluence", 1e24),
    (["-exposure", "2"], "beam.exposure_s", 2.0),
    (["-beamsize", "0.05"], "beam.beamsize_mm", 0.05),
    (["-N", "5"], "crystal.n_cells", [5.0, 5.0, 5.0]),
    (["-Na", "3", "-Nb", "8", "-Nc", "15"], "crystal.n_cells", [3.0, 8.0, 15.0]),
    (["-Na", "3", "-N", "4"], "crystal.n_cells", [4.0, 4.0, 4.0]),
    (["-N", "4", "-Nb", "2"], "crystal.n_cells", [4.0, 2.0, 4.0]),
    (["-N", "0"], "crystal.n_cells", [0.0, 0.0, 0.0]),
    (["-xtalsize", "0.0007"], "crystal.sample_size_mm", [0.0007] * 3),
    (["-samplesize", "0.05", "-sample_thick", "0.01"], "crystal.sample_size_mm", [0.01, 0.05, 0.05]),
    (["-xtal_x", "0.01", "-width", "0.02", "-height", "0.03"], "crystal.sample_size_mm",
     [0.01, 0.02, 0.03]),
    (["-sample_y", "0.02", "-xtal_z", "0.03"], "crystal.sample_size_mm", [0.0, 0.02, 0.03]),
    (["-round_xtal"], "crystal.shape", "round"),
    (["-gauss_xtal"], "crystal.shape", "gauss"),
    (["-binary_spots"], "crystal.shape", "tophat"),
    (["-tophat_spots", "-square_xtal"], "crystal.shape", "square"),
    (["-fudge", "2"], "crystal.fudge", 2.0),
    (["-mosaic", "0.5"], "crystal.mosaic_spread_deg", 0.5),
    (["-mosaic_spr", "0.3"], "crystal.mosaic_spread_deg", 0.3),
    (["-mosaic_domains", "5"], "crystal.mosaic_domains", 5),
    (["-mosaic_dom", "0"], "crystal.mosaic_domains", None),
    (["-mosaic_seed", "777"], "crystal.mosaic_seed", 777),
    (["-misset_seed", "12345"], "crystal.misset_seed", 12345),
    (["-seed", "99"], "output.seed", 99),
    (["-phi", "10", "-osc", "2", "-phisteps", "4"], "crystal.phi_deg", 10.0),
    (["-osc", "2"], "crystal.osc_deg", 2.0),
    (["-phistep", "0.5"], "crystal.phistep_deg", 0.5),
    (["-phisteps", "0"], "crystal.phisteps", 0),
    (["-misset", "5", "-3", "7"], "crystal.misset_deg", [5.0, -3.0, 7.0]),
    (["-misset", "random"], "crystal.misset_random", True),
    (["-misset", "random", "-misset", "1", "2", "3"], "crystal.misset_random", False),
    (["-interpolate"], "crystal.interpolate", True),
    (["-interpolate", "-nointerpolate"], "crystal.interpolate", False),
    (["-default_F", "0.5"], "crystal.default_F", 0.5),
    (["-dump", "my.bin"], "crystal.dump_file", "my.bin"),
    (["-oversample", "3"], "oversample", 3),
    (["-oversample", "0"], "oversample", None),
    (["-oversample_thick"], "oversample_thick", True),
    (["-oversample_polar"], "oversample_polar", True),
    (["-oversample_omega"], "oversample_omega", True),
    (["-dmin", "12"], "dmin_A", 12.0),
    (["-water", "500"], "background.water_um", 500.0),
    (["-floatfile", "a.bin"], "output.floatfile", "a.bin"),
    (["-floatimage", "b.bin"], "output.floatfile", "b.bin"),
    (["-intimage", "c.img"], "output.intfile", "c.img"),
    (["-noiseimage", "d.img"], "output.noisefile", "d.img"),
    (["-pgmimage", "e.pgm"], "output.pgmfile", "e.pgm"),
    (["-nonoise"], "output.write_noise", False),
    (["-nonoise", "-noisefile", "n.img"], "output.write_noise", True),
    (["-noisefile", "n.img", "-nonoise"], "output.write_noise", False),
    (["-nopgm"], "output.write_pgm", False),
    (["-nopgm", "-pgmfile", "p.pgm"], "output.write_pgm", True),
    (["-nopgm", "-pgmscale", "2"], "output.write_pgm", True),
    (["-pgmscale", "2"], "output.pgmscale", 2.0),
    (["-pgmscale", "2"], "output.scale", 0.0),     # "-scale" does not match "-pgmscale"
    (["-scale", "10", "-adc", "20"], "output.scale", 10.0),
    (["-adc", "20"], "output.adc", 20.0),
    (["-printout"], "output.printout", True),
    (["-printout_pixel", "5", "7"], "output.printout_pixel", (5, 7)),
    (["-printout_pixel", "5", "7"], "output.printout", True),
    (["-noprogress"], "output.progress", False),
    (["-noprogress", "-progress"], "output.progress", True),
    (["-trace_pixel", "7", "5"], "output.trace_pixel", (7, 5)),
    (["-mode", "c-parity"], "mode", "c-parity"),
    (["-dtype", "float32"], "dtype", "float32"),
    (["-device", "auto"], "device", "auto"),
    (["-pixel_batch_size", "4096"], "pixel_batch_size", 4096),
    (["-coherent", "-density", "1.2", "-MW", "14000", "-stolout", "x.txt"], "mode", "spec"),
    (["-debug"], "mode", "spec"),
]


@pytest.mark.parametrize("args,path,expected", FLAG_TABLE,
                         ids=[" ".join(a) + " -> " + p for a, p, _ in FLAG_TABLE])
def test_flag_table(args, path, expected, rundir):
    value = get(parse(*args), path)
    if isinstance(expected, float):
        assert value == pytest.approx(expected, rel=1e-15)
    else:
        assert value == expected
        assert type(value) is type(expected)


def test_defaults(rundir):
    cfg = parse()
    assert cfg.crystal.cell == [100.0, 100.0, 100.0, 90.0, 90.0, 90.0]
    assert cfg.crystal.n_cells == [1.0, 1.0, 1.0] and isinstance(cfg.crystal.n_cells, list)
    assert cfg.crystal.misset_deg is None and not cfg.crystal.misset_random
    assert cfg.detector.convention == "MOSFLM"
    assert cfg.detector.pivot is None and cfg.detector.pivot_from_flags == "BEAM"
    assert cfg.output.seed is None and cfg.crystal.misset_seed is None
    assert cfg.oversample is None and cfg.mode == "spec"
    assert cfg.beam.fluence == 125932015286227086360700780544.0
    assert cfg.c_quirks.misset == "same" and cfg.c_quirks.twotheta_deg is None
    assert cfg.crystal.hkl is None and cfg.notes == []
    assert cfg.argv == BASE


@pytest.mark.parametrize("cell,expected", [
    (["70"], [70, 70, 70, 90, 90, 90]),
    (["70", "80"], [70, 80, 70, 90, 90, 90]),
    (["70", "80", "90", "75"], [70, 80, 90, 75, 90, 90]),
    (["70", "0", "0", "0", "85", "95"], [70, 70, 70, 90, 85, 95]),
    (["70", "80", "90", "75", "85", "95"], [70, 80, 90, 75, 85, 95]),
])
def test_cell_defaults(cell, expected, rundir):
    cfg = config_from_args(["-cell", *cell, "-default_F", "1"])
    assert cfg.crystal.cell == [float(x) for x in expected]
    assert all(type(x) is float for x in cfg.crystal.cell)


def test_cell_stops_at_dash_and_later_cell_overrides_given_positions(rundir):
    cfg = config_from_args(["-cell", "70", "80", "90", "-N", "2", "-cell", "60", "-default_F", "1"])
    # like the C's a[0], b[0], c[0]: the second -cell replaces only a
    assert cfg.crystal.cell == [60.0, 80.0, 90.0, 90.0, 90.0, 90.0]
    assert cfg.crystal.n_cells == [2.0, 2.0, 2.0]


@needs_golden
def test_mat_and_hkl_files(rundir):
    cfg = config_from_args(["-mat", "inputs/A.mat", "-hkl", "inputs/at027.hkl", "-lambda", "1"])
    assert cfg.crystal.cell is None
    assert cfg.crystal.mat_file == "inputs/A.mat"
    assert cfg.crystal.mat.shape == (3, 3)
    assert cfg.crystal.mat[0, 0] == pytest.approx(0.01853399)
    assert cfg.crystal.hkl_file == "inputs/at027.hkl"
    assert cfg.crystal.hkl.hkls > 0


@needs_golden
def test_hkl_uses_final_default_F(rundir):
    # default_F prefills the grid; the value that counts is the last one in argv
    a = config_from_args(["-cell", "100", "-hkl", "inputs/at027.hkl", "-default_F", "7"])
    b = config_from_args(["-cell", "100", "-default_F", "7", "-hkl", "inputs/at027.hkl"])
    np.testing.assert_array_equal(np.asarray(a.crystal.hkl.F), np.asarray(b.crystal.hkl.F))
    assert 7.0 in np.asarray(a.crystal.hkl.F)


@needs_golden
def test_sourcefile_and_stol(rundir):
    cfg = parse("-sourcefile", "inputs/sources.txt", "-stol", "inputs/bg.stol")
    src = cfg.beam.sources
    assert src.position_m.shape == (4, 3) and src.weight.shape == (4,)
    assert src.wavelength_m[2] == pytest.approx(1.01e-10)
    assert src.weight.tolist() == [1.0, 0.5, 0.7, 0.3]
    assert cfg.background.stol_file == "inputs/bg.stol"
    assert cfg.background.stol_table.shape[1] == 2
    assert cfg.background.stol_mult == 1e10


@needs_golden
@pytest.mark.parametrize("flag,mult", [("-stol", 1e10), ("-4stol", 1e10 / 4),
                                       ("-Q", 1e10 / np.pi / 4)])
def test_stol_multipliers(flag, mult, rundir):
    assert parse(flag, "inputs/bg.stol").background.stol_mult == mult


def test_fdump_is_read_when_hkl_absent(rundir):
    from nanobrag_torch.io.hkl import write_fdump
    F = np.zeros((3, 2, 2))
    F[0, 0, 0], F[1, 0, 0] = 10.0, 20.0
    write_fdump("Fdump.bin", HKLData(F=F, h_min=0, h_max=1, k_min=0, k_max=0,
                                     l_min=0, l_max=0, hkls=2))
    # the command line reads the cache as the C does (default_F 0 is fine with a dump) ...
    cfg = config_from_args(["-cell", "100"], implicit_dump=True)
    assert cfg.crystal.hkl is not None
    assert np.asarray(cfg.crystal.hkl.F)[1, 0, 0] == 20.0
    assert cfg.crystal.hkl_file is None           # the log then says "reading Fs from Fdump.bin"
    # ... the library only when -dump names it: a leftover Fdump.bin is never read implicitly
    with pytest.raises(UsageError, match="no hkl file and no dump file"):
        config_from_args(["-cell", "100"])
    assert np.asarray(config_from_args(["-cell", "100", "-dump", "Fdump.bin"]).crystal.hkl.F)[1, 0, 0] == 20
    # -dump names another cache; it does not exist, so F is missing again
    with pytest.raises(UsageError, match="no hkl file and no dump file"):
        config_from_args(["-cell", "100", "-dump", "other.bin"], implicit_dump=True)


# --------------------------------------------------------------------------
# pivots, conventions and the C quirks recorded in c_quirks

@pytest.mark.parametrize("args,pivot", [
    ([], "BEAM"),
    (["-distance", "90"], "BEAM"),
    (["-close_distance", "90"], "SAMPLE"),
    (["-close_distance", "90", "-distance", "80"], "BEAM"),
    (["-Xclose", "3"], "SAMPLE"),
    (["-ORGY", "3", "-Ybeam", "2"], "BEAM"),
    (["-twotheta", "5"], "SAMPLE"),
    (["-xds"], "SAMPLE"),
    (["-dials"], "BEAM"),            # the C sets BEAM while parsing -dials
    (["-xds", "-pivot", "beam"], "BEAM"),
    (["-pivot", "sample", "-mosflm"], "BEAM"),
    (["-twotheta_axis", "0", "1", "0"], "BEAM"),
])
def test_pivot_from_flags(args, pivot, rundir):
    assert parse(*args).detector.pivot_from_flags == pivot


def test_explicit_pivot_is_remembered(rundir):
    cfg = parse("-pivot", "sample", "-mosflm")
    assert cfg.detector.pivot == "SAMPLE" and cfg.detector.pivot_from_flags == "BEAM"
    assert parse("-pivot", "sample", "-pivot", "BEAM").detector.pivot == "BEAM"


@pytest.mark.parametrize("args", [
    ["-fdet_vector", "0", "0", "1"], ["-sdet_vector", "0", "-1", "0"],
    ["-odet_vector", "1", "0", "0"], ["-beam_vector", "1", "0", "0"],
    ["-polar_vector", "0", "0", "1"], ["-spindle_axis", "0", "0", "1"],
    ["-twotheta_axis", "0", "0", "-1"], ["-pix0_vector", "0.1", "0", "0"],
    ["-pix0_vector_mm", "100", "0", "0"], ["-mosflm", "-beam_vector", "1", "0", "0"],
])
def test_vectors_select_custom(args, rundir):
    assert parse(*args).detector.convention == "CUSTOM"
    assert parse(*args, "-xds").detector.convention == "XDS"


def test_twotheta_axis_quirk(rundir):
    cfg = parse("-twotheta", "12", "-twotheta_axis", "0", "1", "0")
    assert cfg.detector.twotheta_deg == 12.0          # spec: the axis does not set the angle
    assert cfg.c_quirks.twotheta_deg == 0.0           # C: "-twotheta" matched, 2theta = X = 0
    cfg = parse("-distance", "90", "-twotheta_axis", "0", "1", "0")
    assert cfg.detector.pivot_from_flags == "BEAM"
    assert cfg.c_quirks.pivot_from_flags == "SAMPLE"
    assert cfg.detector.twotheta_deg == 0.0 and cfg.c_quirks.twotheta_deg is None
    cfg = parse("-twotheta_axis", "0", "1", "0", "-twotheta", "12")
    assert cfg.detector.twotheta_deg == 12.0 and cfg.c_quirks.twotheta_deg is None
    cfg = parse("-twotheta", "20", "-twotheta_axis", "3", "0", "-1")
    assert cfg.c_quirks.twotheta_deg == 3.0
    cfg = parse("-twotheta_axis", "0", "1", "0", "-distance", "90")
    assert cfg.c_quirks.pivot_from_flags == "BEAM"


def test_misset_seed_quirk(rundir):
    # seed first: the C's explicit misset from "-misset_seed 12345 -misset random" is
    # then replaced by random, as the spec reading
    cfg = parse("-misset_seed", "12345", "-misset", "random")
    assert cfg.crystal.misset_random and cfg.crystal.misset_seed == 12345
    assert cfg.c_quirks.misset == "same"
    # seed after: the C reads -misset_seed N A B as an explicit misset (N, atof A, atof B)
    cfg = parse("-misset", "random", "-misset_seed", "12345", "-N", "5")
    assert cfg.crystal.misset_random and cfg.crystal.misset_deg is None
    assert cfg.c_quirks.misset == (12345.0, 0.0, 5.0)
    # fewer than 3 tokens after it: no effect in the C either
    cfg = parse("-misset", "random", "-misset_seed", "12345")
    assert cfg.c_quirks.misset == "same"
    cfg = parse("-misset_seed", "9", "-N", "2")
    assert cfg.crystal.misset_deg is None and cfg.c_quirks.misset == (9.0, 0.0, 2.0)


def test_misset_seed_quirk_uses_c_atof(rundir):
    cfg = config_from_args(BASE + ["-misset", "1", "2", "3", "-misset_seed", "7",
                                   "-floatfile", "2.5e1x"])
    assert cfg.crystal.misset_deg == [1.0, 2.0, 3.0]
    assert cfg.c_quirks.misset == (7.0, 0.0, 25.0)


# --------------------------------------------------------------------------
# header ingestion (-img, -mask)

@needs_golden
def test_img_header(rundir):
    cfg = config_from_args(["-img", "inputs/header.img", "-cell", "70", "-default_F", "1"])
    det = cfg.detector
    assert det.detpixels == [160, 120]
    assert (det.fpixels, det.spixels) == (160, 120)
    assert det.pixel_size_mm == 0.172
    # "DISTANCE" matches the later CLOSE_DISTANCE=140 too (the C's ValueOf), not DISTANCE=150
    assert det.distance_mm == 140.0
    assert det.close_distance_mm == 140.0
    assert cfg.beam.wavelength_A == 1.3
    assert det.beam_center_mm == [12.1, 9.8]
    assert cfg.crystal.phi_deg == 5.0 and cfg.crystal.osc_deg == 1.0
    assert det.twotheta_deg == 0.0                   # header TWOTHETA is ignored (as the C)
    assert det.mask is None and det.pivot_from_flags == "BEAM"


@needs_golden
def test_cli_overrides_header(rundir):
    cfg = config_from_args(["-cell", "70", "-default_F", "1", "-lambda", "2", "-Xbeam", "3",
                            "-img", "inputs/header.img", "-detpixels", "64", "-phi", "0"])
    assert cfg.beam.wavelength_A == 2.0
    assert cfg.detector.beam_center_mm == [3.0, 9.8]
    assert cfg.detector.detpixels == [64, 64] and cfg.crystal.phi_deg == 0.0


@needs_golden
def test_mask_header_and_flip(rundir):
    cfg = config_from_args(["-cell", "70", "-default_F", "1", "-mask", "inputs/mask.img"])
    det = cfg.detector
    assert det.detpixels == [128, 128] and det.pixel_size_mm == 0.1
    assert det.distance_mm == 100.0 and cfg.beam.wavelength_A == 1.0
    assert det.beam_center_mm[0] == 6.4
    # mask: Ybeam = detsize_s - BEAM_CENTER_Y = 12.8 - 6.4 (exact after the simulator's /1000)
    assert det.beam_center_mm[1] / 1000.0 == 0.1 / 1000.0 * 128 - 6.4 / 1000.0
    assert det.beam_center_mm[1] == pytest.approx(6.4)
    assert det.mask.shape == (128, 128) and det.mask.dtype == np.uint16
    assert (det.mask == 0).any() and (det.mask != 0).any()


def _write_smv(path, keys, data):
    text = "{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
    text += "".join(f"{k}={v};\n" for k, v in keys.items()) + "}\f"
    Path(path).write_bytes(text.encode().ljust(512, b" ") + data.astype("<u2").tobytes())


def test_img_header_wins_over_mask_regardless_of_order(rundir):
    mask = np.ones((20, 30), np.uint16)
    mask[:5, :5] = 0
    _write_smv("m.img", dict(SIZE1=30, SIZE2=20, PIXEL_SIZE=0.2, WAVELENGTH=1.5,
                             BEAM_CENTER_X=1.0, BEAM_CENTER_Y=1.0, DISTANCE=80), mask)
    _write_smv("i.img", dict(SIZE1=30, SIZE2=20, PIXEL_SIZE=0.2, WAVELENGTH=2.5,
                             DISTANCE=90), np.zeros((20, 30)))
    for order in (["-mask", "m.img", "-img", "i.img"], ["-img", "i.img", "-mask", "m.img"]):
        cfg = config_from_args(["-cell", "70", "-default_F", "1", *order])
        assert cfg.beam.wavelength_A == 2.5 and cfg.detector.distance_mm == 90.0
        assert cfg.detector.beam_center_mm[0] == 1.0
        assert cfg.detector.beam_center_mm[1] == pytest.approx(0.2 * 20 - 1.0)
        np.testing.assert_array_equal(cfg.detector.mask, mask)


@needs_golden
def test_mask_shape_must_match_detector(rundir):
    with pytest.raises(FileError, match="inputs/mask.img"):
        config_from_args(["-cell", "70", "-default_F", "1", "-mask", "inputs/mask.img",
                          "-detpixels", "256"])


# --------------------------------------------------------------------------
# fluence and beam clipping

def test_flux_sets_fluence(rundir):
    from nanobrag_torch.beam import fluence
    cfg = parse("-flux", "1e12", "-exposure", "2", "-beamsize", "0.05")
    assert fluence(cfg) == 1e12 * 2 / (0.05 / 1000) / (0.05 / 1000)
    cfg = parse("-fluence", "1e24", "-flux", "1e12")     # flux wins, default beam 0.1 mm
    assert fluence(cfg) == pytest.approx(1e12 / 1e-8)
    cfg = parse("-flux", "1e12", "-exposure", "0", "-fluence", "3e20")
    assert fluence(cfg) == 3e20
    # the library honours a flux set in code (the config keeps what was given)
    cfg = parse()
    cfg.beam.flux = 1e12
    assert fluence(cfg) == pytest.approx(1e12 / 1e-8) and cfg.beam.fluence != fluence(cfg)


def test_beam_clips_sample(rundir):
    from nanobrag_torch.crystal import sample_size_m
    cfg = parse("-xtalsize", "0.2", "-beamsize", "0.05")
    assert cfg.crystal.sample_size_mm == [0.2, 0.2, 0.2]           # as given
    sizes, notes = sample_size_m(cfg)
    assert sizes == [0.0002, 0.05 / 1000, 0.05 / 1000]
    assert notes == ["WARNING: clipping sample (0.0002 m high) with beam (5e-05 m)",
                     "WARNING: clipping sample (0.0002 m wide) with beam (5e-05 m)"]
    assert sample_size_m(parse("-xtalsize", "0.2", "-beamsize", "-1"))[0] == [0.0002] * 3
    assert sample_size_m(parse("-xtalsize", "0.05"))[1] == []


# --------------------------------------------------------------------------
# argv order rules

def test_detector_abs_order(rundir):
    cfg = parse("-detector_thick", "300", "-detector_abs", "inf")
    assert cfg.detector.thickness_um == 0.0 and cfg.detector.mu_per_m == 0.0
    cfg = parse("-detector_abs", "0", "-detector_thick", "300")
    assert cfg.detector.thickness_um == 300.0 and cfg.detector.mu_per_m == 0.0
    cfg = parse("-detector_thick", "300", "-detector_abs", "500")
    assert cfg.detector.thickness_um == 300.0


def test_misset_random_then_explicit(rundir):
    cfg = parse("-misset", "1", "2", "3", "-misset", "random")
    assert cfg.crystal.misset_random and cfg.crystal.misset_deg is None
    cfg = parse("-misset", "RANDOM", "-misset", "1", "2", "3")
    assert not cfg.crystal.misset_random and cfg.crystal.misset_deg == [1.0, 2.0, 3.0]


def test_list_fields_are_lists(rundir):
    cfg = parse("-misset", "1", "2", "3", "-Xbeam", "1", "-fdet_vector", "0", "0", "1")
    for value in (cfg.crystal.misset_deg, cfg.crystal.cell, cfg.crystal.n_cells,
                  cfg.detector.beam_center_mm, cfg.detector.fdet_vector,
                  cfg.detector.rotation_deg, cfg.crystal.sample_size_mm):
        assert isinstance(value, list)
    cfg.crystal.cell[0] = 50.0      # users may replace values


# --------------------------------------------------------------------------
# errors

ERRORS = [
    (["-foo"], "unknown flag '-foo'"),
    (["-distnace", "100"], "did you mean '-distance'"),
    (["--distance", "100"], "did you mean '-distance'"),
    (["-xbeam", "100"], "did you mean '-Xbeam'"),
    (["-distance"], "flag -distance needs 1 value"),
    (["-distance", "-pixel", "0.1"], "flag -distance needs 1 value"),
    (["-roi", "1", "2", "3"], "flag -roi needs 4 values"),
    (["-misset", "1", "2"], "flag -misset needs 3 values (RX RY RZ) or 'random'"),
    (["-misset", "1", "2", "-N", "3"], "flag -misset needs 3 values (RX RY RZ) or 'random'"),
    (["-misset", "1", "2", "x"], "-misset: expected a number, got 'x'"),
    (["-misset", "rand"], "flag -misset needs 3 values"),
    (["-cell"], "flag -cell needs 1 to 6 values"),
    (["-distance", "abc"], "-distance: expected a number, got 'abc'"),
    (["-distance", "nan"], "-distance: expected a finite number"),
    (["-distance", "0"], "-distance: expected a number > 0, got '0'"),
    (["-N", "5.0"], "-N: expected an integer, got '5.0'"),
    (["-N", "-2"], "-N: expected an integer >= 0"),
    (["-phisteps", "-1"], "-phisteps"),
    (["-seed", "-5"], "-seed: expected an integer >= 0, got '-5'"),
    (["-mosaic_seed", "1.5"], "-mosaic_seed: expected an integer, got '1.5'"),
    (["-mosaic_domains", "-1"], "-mosaic_domains"),
    (["-pixel", "0"], "-pixel"),
    (["-detpixels", "0"], "-detpixels"),
    (["-lambda", "-1"], "-lambda"),
    (["-energy", "0"], "-energy"),
    (["-pivot", "middle"], "-pivot: expected one of beam|sample, got 'middle'"),
    (["-mode", "fast"], "-mode: expected one of spec|c-parity"),
    (["-dtype", "float16"], "-dtype"),
    (["-device", "tpu"], "-device"),
    (["-polar", "2"], "-polar"),
    (["-beamsize", "0"], "-beamsize"),
    (["-detector_abs", "-5"], "-detector_abs"),
    (["-roi", "10", "5", "0", "5"], "-roi: need xmin <= xmax"),
    (["-roi", "0", "5", "0", "2000"], "-roi: (0, 5, 0, 2000) is outside the detector"),
    (["-detpixels", "64", "-trace_pixel", "64", "0"], "-trace_pixel: (64, 0) is outside"),
    (["-distance", "100", "5"], "unexpected argument '5'"),
    (["stray"], "unexpected argument 'stray'"),
    (["-dispstep", "3"], "-dispstep is not a nanoBragg flag"),
    (["-hdiv", "1"], "use -hdivrange"),
    (["-vdiv", "1"], "use -vdivrange"),
    (["-fdet_vector", "0", "0", "0"], "-fdet_vector: the vector must not be (0, 0, 0)"),
    (["-detsize", "0.01"], "the detector has 0 pixels"),
]


@pytest.mark.parametrize("args,message", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_flag_errors(args, message, rundir):
    with pytest.raises(FlagError) as err:
        parse(*args)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cell,message", [
    (["-cell", "70", "80", "-90"], "must be positive, got '-90'"),
    (["-cell", "0"], "-cell: cell length a must be >= 0.5 Angstrom"),
    (["-cell", "70", "70", "70", "200"], "-cell: alpha must be between 0 and 180 deg, got 200"),
    (["-cell", "70", "70", "70", "10", "10", "90"], "do not form a unit cell"),
    (["-cell", "70", "x"], "-cell: expected a number, got 'x'"),
])
def test_cell_errors(cell, message, rundir):
    with pytest.raises(FlagError, match=message):
        config_from_args(cell + ["-default_F", "1"])


@pytest.mark.parametrize("args,name", [
    (["-hkl", "missing.hkl"], "missing.hkl"),
    (["-mat", "missing.mat"], "missing.mat"),
    (["-sourcefile", "missing.txt"], "missing.txt"),
    (["-stol", "missing.stol"], "missing.stol"),
    (["-img", "missing.img"], "missing.img"),
    pytest.param(["-mask", "inputs/A.mat"], "inputs/A.mat", marks=needs_golden),
])
def test_file_errors(args, name, rundir):
    with pytest.raises(FileError) as err:
        parse(*args)
    assert name in str(err.value) and args[0] in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_comment_line_in_sourcefile(rundir):
    Path("src.txt").write_text("# a comment\n-10 0 0 1 1e-10\n")
    with pytest.raises(FileError, match="src.txt"):
        parse("-sourcefile", "src.txt")
    # c-parity reads it as the C: a source at the origin with weight and lambda 0, which
    # has no direction (the C renders a NaN image): refused, naming the source
    with pytest.raises(FlagError, match="-sourcefile: source 1 has wavelength 0 m"):
        parse("-sourcefile", "src.txt", "-mode", "c-parity")


def test_usage_errors(rundir):
    with pytest.raises(UsageError, match="ERROR: no hkl file and no dump file to read."):
        config_from_args(["-cell", "100"])
    with pytest.raises(UsageError):
        config_from_args(["-default_F", "100"])
    # the C checks -cell/-mat before it opens the -hkl file
    with pytest.raises(UsageError):
        config_from_args(["-hkl", "missing.hkl"])


# --------------------------------------------------------------------------
# main()

@pytest.fixture
def fake_runner(monkeypatch):
    calls = []
    mod = types.ModuleType("nanobrag_torch.runner")
    mod.run = lambda cfg: calls.append(cfg) or 0
    monkeypatch.setitem(sys.modules, "nanobrag_torch.runner", mod)
    import nanobrag_torch
    monkeypatch.setattr(nanobrag_torch, "runner", mod, raising=False)
    return calls


@pytest.mark.parametrize("args,status", [
    (["-cell", "100", "-default_F", "1", "-foo"], 2),
    (["-cell", "100", "-default_F", "1", "-distance"], 2),
    (["-cell", "100", "-default_F", "1", "-distance", "abc"], 2),
    (["-cell", "100", "-default_F", "1", "-hkl", "missing.hkl"], 1),
    (["-cell", "100", "-default_F", "1", "-sourcefile", "src.txt"], 1),
])
def test_main_errors_one_line_no_files(args, status, rundir, capsys, fake_runner):
    Path("src.txt").write_text("# a comment\n-10 0 0 1 1e-10\n")
    before = sorted(os.listdir("."))
    assert main(args) == status
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanobrag-torch: error: ")
    assert out == ""
    assert sorted(os.listdir(".")) == before
    assert fake_runner == []


def test_main_debug_lets_traceback_through(rundir):
    with pytest.raises(FlagError):
        main(["-cell", "100", "-default_F", "1", "-foo", "-debug"])


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_main_help(flag, rundir, capsys, fake_runner):
    assert main(["-cell", "100", flag]) == 0
    out, err = capsys.readouterr()
    assert "-hkl" in out and "-detpixels" in out and err == ""
    assert fake_runner == [] and set(os.listdir(".")) <= {"inputs"}


@pytest.mark.parametrize("args", [["-default_F", "100"], ["-cell", "100"], []])
def test_main_usage_exit_9(args, rundir, capsys, fake_runner):
    assert main(args) == 9
    out, _ = capsys.readouterr()
    assert "usage:" in out and "-mat" in out
    if "-cell" in args:
        assert out.startswith("ERROR: no hkl file and no dump file to read.")
    assert fake_runner == []


def test_main_runs_good_input(rundir, capsys, fake_runner):
    assert main(BASE + ["-detpixels", "16"]) == 0
    assert len(fake_runner) == 1 and fake_runner[0].detector.detpixels == [16, 16]


def test_usage_lists_every_flag():
    text = usage_text()
    for flag in cli.FLAGS:
        for name in flag.names:
            listed = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None
            assert listed != flag.hidden, name
    for name in ["-hkl", "-mat", "-cell", "-pixel", "-detpixels", "-distance", "-lambda",
                 "-energy", "-floatfile", "-intfile", "-noisefile", "-pgmfile", "-scale",
                 "-adc", "-mosflm", "-xds", "-adxv", "-denzo", "-dials", "-roi", "-mode",
                 "-dtype", "-device", "-trace_pixel", "-pixel_batch_size"]:
        assert name in text
