"""Instrument model, -expt reader/writer, -detector_json layouts (instrument.py, io/expt.py,
io/detector_json.py, experiment.py) against dxtbx's own numbers and nanoBragg.c's command."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from nanobrag_torch.cli import config_from_args, main
from nanobrag_torch.detector import detector_geometry, lab_vectors
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.experiment import config_from_expt, experiment_from_config
from nanobrag_torch.instrument import (Detector, cross, from_dials, matrix_to_dials, panel_tensors,
                                       single_panel, to_dials)
from nanobrag_torch.io import (read_detector_json, read_expt, read_mat, write_detector_json,
                               write_expt)
from nanobrag_torch.io.expt import _Doc, dxtbx_crystal, flatten_detector

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("NANOBRAGG_GOLDEN", REPO.parent / "shared" / "golden"))
EXPT = GOLDEN / "inputs" / "expt"
NAMES = ["single_mosflm", "tiled_2x2", "xfel_8tile"]
needs_expt = pytest.mark.skipif(not (EXPT / "single_mosflm.expt").is_file(),
                                reason=f"expt ground truth not found at {EXPT} (set NANOBRAGG_GOLDEN)")
README_CMD = ["-mat", "inputs/expt/single_mosflm.mat", "-lambda", "1", "-distance", "100", "-pixel",
              "0.1", "-detpixels", "256", "-polar", "1", "-phi", "30", "-osc", "0.1"]
REST = ["-hkl", "inputs/P1.hkl", "-N", "5", "-oversample", "2", "-phisteps", "2"]


def close(a, b, rel=1e-9):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= rel * max(np.abs(b).max(), 1e-300), (a, b)


def truth(name):
    return json.loads((EXPT / f"{name}.panels.json").read_text())


@pytest.fixture
def rundir(tmp_path, monkeypatch):
    (tmp_path / "inputs").symlink_to(GOLDEN / "inputs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------
# the reader against dxtbx

@needs_expt
@pytest.mark.parametrize("name", NAMES)
def test_reader_reproduces_every_dxtbx_value(name):
    exp, t = read_expt(EXPT / f"{name}.expt"), truth(name)
    assert exp.identifier == t["identifier"] and len(exp.detector) == len(t["panels"])
    mm = lambda v: np.array(to_dials(v)) * 1000  # noqa: E731
    for p, tp in zip(exp.detector, t["panels"]):
        assert p.name == tp["name"] and list(p.size_px) == tp["image_size_fast_slow"]
        close(np.array(p.pixel_size_m) * 1000, tp["pixel_size_mm"])
        assert (p.thickness_m, p.mu_per_m) == (tp["thickness_mm"] / 1000, tp["mu_per_mm"] * 1000)
        close(to_dials(p.fast), tp["fast_axis"])
        close(to_dials(p.slow), tp["slow_axis"])
        close(to_dials(p.normal), tp["normal"])
        close(mm(p.origin_m), tp["origin_mm"])
        close(mm(p.pixel_centre_m(0, 0)), tp["pixel_0_0_centre_mm"])
        close(mm(p.pixel_centre_m(p.fpixels - 1, p.spixels - 1)), tp["last_pixel_centre_mm"])
        close(p.distance_m * 1000, tp["distance_mm"])
        hit = np.array(p.beam_centre_m(exp.beam.direction))
        close(hit * 1000, tp["beam_centre_mm_fast_slow"])
        close(hit / np.array(p.pixel_size_m), tp["beam_centre_px_fast_slow"])
    b = t["beam"]
    close(exp.beam.wavelength_A, b["wavelength"])
    close(to_dials(exp.beam.direction), b["unit_s0"])
    close(np.array(to_dials(exp.beam.direction)) / exp.beam.wavelength_A, b["s0"])
    assert exp.beam.polarization == 2 * b["polarization_fraction"] - 1
    e_vector = np.cross(b["unit_s0"], b["polarization_normal"])
    close(to_dials(exp.beam.polar_axis), e_vector / np.linalg.norm(e_vector))
    c = t["crystal"]
    close(np.array(matrix_to_dials(exp.crystal.A)).ravel(), c["A_row_major"])
    close(np.linalg.inv(np.array(matrix_to_dials(exp.crystal.A))),
          [c["real_space_a"], c["real_space_b"], c["real_space_c"]])
    if t["goniometer"] is None:
        assert exp.goniometer is None and exp.scan is None
        return
    close(to_dials(exp.goniometer.axis), t["goniometer"]["rotation_axis"])
    s = t["scan"]
    assert exp.scan.num_images == s["num_images"] and list(exp.scan.image_range) == s["image_range"]
    close([exp.scan.osc_start_deg, exp.scan.osc_width_deg], s["oscillation_start_width"])
    for k, start_width in s["image_oscillation"].items():
        close(exp.scan.image_oscillation(int(k)), start_width)


@needs_expt
@pytest.mark.parametrize("name", NAMES)
def test_hierarchy_and_crystal_are_dxtbx_bit_for_bit(name):
    """In dxtbx's frame and units the composition is dxtbx's, to the last bit."""
    data, t = json.loads((EXPT / f"{name}.expt").read_text()), truth(name)
    flat = flatten_detector(_Doc(name), data["detector"][0], "detector[0]")
    for f, tp in zip(flat, t["panels"]):
        assert (list(f["fast"]), list(f["slow"]), list(f["normal"]), list(f["origin"])) == \
            (tp["fast_axis"], tp["slow_axis"], tp["normal"], tp["origin_mm"])
        assert f["path"] == tp["hierarchy_path"]
    c, tc = data["crystal"][0], t["crystal"]
    got = dxtbx_crystal(c["real_space_a"], c["real_space_b"], c["real_space_c"])
    assert list(got["A"]) == tc["A_row_major"] and list(got["U"]) == tc["U_row_major"]
    assert list(got["B"]) == tc["B_row_major"] and list(got["unit_cell"]) == tc["unit_cell"]
    assert [list(v) for v in got["real_space"]] == [tc[k] for k in ("real_space_a", "real_space_b",
                                                                    "real_space_c")]


def test_frames_are_a_proper_rotation():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.normal(size=3), rng.normal(size=3)
        assert from_dials(to_dials(a)) == tuple(a)
        assert to_dials(cross(a, b)) == cross(to_dials(a), to_dials(b))
    # nanoBragg's MOSFLM defaults: beam +x, spindle and E-vector +z -> DIALS beam -z, axis +x
    assert to_dials((1, 0, 0)) == (0, 0, -1) and to_dials((0, 0, 1)) == (1, 0, 0)


# --------------------------------------------------------------------------
# single_mosflm.expt is the README's nanoBragg.c command

@needs_expt
def test_single_mosflm_is_the_readme_command(rundir):
    cmd = config_from_args(README_CMD + REST)
    via_cli = config_from_args(["-expt", "inputs/expt/single_mosflm.expt"] + REST)
    via_lib = config_from_expt("inputs/expt/single_mosflm.expt")
    via_lib.crystal.hkl, via_lib.crystal.n_cells = via_cli.crystal.hkl, [5.0, 5.0, 5.0]
    via_lib.oversample, via_lib.crystal.phisteps = 2, 2
    mat = read_mat("inputs/expt/single_mosflm.mat")
    for cfg in (via_cli, via_lib):
        assert np.array_equal(cfg.crystal.mat, mat) and cfg.beam.polarization == 1.0
        for mode in ("spec", "c-parity"):
            g0, g1 = (detector_geometry(c, mode, torch.float64, "cpu") for c in (cmd, cfg))
            for key in ("pix0", "fdet", "sdet", "odet", "beam", "distance"):
                assert torch.equal(getattr(g0, key), getattr(g1, key)), (mode, key)
        v0, v1 = (lab_vectors(c, torch.float64, "cpu") for c in (cmd, cfg))
        assert torch.equal(v0.polar, v1.polar) and torch.equal(v0.spindle, v1.spindle)
    # the file's angles (30 and 0.1 after dxtbx's deg -> rad -> deg): float64 bit for bit with
    # the command given those angles, and the C's float image (float32) bit for bit with the README's
    exact = config_from_args(README_CMD[:-4] + ["-phi", "29.999999999999996", "-osc",
                                                "0.10000000000000014"] + REST)
    images = [nb.Simulator(c).run().pixels for c in (via_cli, via_lib, exact, cmd)]
    assert float(images[0].max()) > 100
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
    assert torch.equal(images[0].float(), images[3].float())


@needs_expt
def test_flags_override_the_file_and_say_so(rundir):
    cfg = config_from_args(["-expt", "inputs/expt/single_mosflm.expt", "-expt_image", "3", "-lambda",
                            "1.2", "-Xbeam", "12", "-default_F", "1"])
    assert cfg.beam.wavelength_A == 1.2 and cfg.crystal.phi_deg == pytest.approx(30.2, abs=1e-12)
    assert cfg.detector.pix0_vector_m is None and cfg.detector.beam_center_mm == [12.0, pytest.approx(12.9)]
    notes = "\n".join(cfg.notes)
    assert "-lambda overrides the file's wavelength (1 A)" in notes
    assert "-Xbeam overrides the file's beam centre along fast (12.9 mm)" in notes
    assert "image 3 of 1..5" in notes
    # the crystal is the file's whatever the wavelength (A * lambda, lambda divided out again)
    from nanobrag_torch.crystal import crystal_lattice
    lat = crystal_lattice(cfg, "spec", torch.tensor(1.2e-10, dtype=torch.float64), torch.float64, "cpu")
    A = np.array(read_expt("inputs/expt/single_mosflm.expt").crystal.A)
    close(torch.stack((lat.a_star, lat.b_star, lat.c_star), 1).numpy(), A, rel=1e-14)


@needs_expt
def test_cli_run_prints_the_overrides(rundir, capsys):
    assert main(["-expt", "inputs/expt/single_mosflm.expt", "-hkl", "inputs/P1.hkl", "-N", "2",
                 "-osc", "0.2", "-roi", "120", "123", "120", "123", "-nonoise", "-nopgm"]) == 0
    out = capsys.readouterr().out
    assert "-expt inputs/expt/single_mosflm.expt: -osc overrides the file's oscillation width (0.1 deg)" in out
    assert "floatimage.bin" in os.listdir(rundir) and "intimage.img" in os.listdir(rundir)


@needs_expt
def test_tilted_panel_and_beam_in_c_parity_mode(tmp_path):
    """c-parity ignores -pix0_vector (as the C): the distance and beam centre put the panel back."""
    exp = read_expt(EXPT / "xfel_8tile.expt")
    write_expt(tmp_path / "tile.expt", dataclasses.replace(exp, detector=Detector((exp.detector[5],))))
    cfg = config_from_expt(tmp_path / "tile.expt")
    spec, cpar = (detector_geometry(cfg, mode, torch.float64, "cpu") for mode in ("spec", "c-parity"))
    assert tuple(spec.pix0.tolist()) == exp.detector[5].origin_m
    close(cpar.pix0, spec.pix0, 1e-14)
    assert torch.equal(cpar.fdet, spec.fdet) and torch.equal(cpar.odet, spec.odet)


@needs_expt
@pytest.mark.parametrize("argv, status, message", [
    (["-expt", "inputs/expt/tiled_2x2.expt", "-distance", "90"], 1,
     "a detector of 4 panels is placed by the file: flags that move or resize the detector do not apply"),
    (["-expt", "inputs/expt/single_mosflm.expt", "-xds"], 2, "-xds cannot be combined with -expt"),
    (["-expt", "inputs/expt/single_mosflm.expt", "-expt_image", "6"], 2,
     "-expt_image 6: not an image of inputs/expt/single_mosflm.expt (images 1..5)"),
    (["-expt_image", "2"], 2, "-expt_image needs -expt FILE"),
    (["-expt", "missing.expt"], 1, "-expt missing.expt: cannot read file"),
])
def test_bad_expt_use_fails_in_one_line(rundir, capsys, argv, status, message):
    assert main(argv + ["-default_F", "1", "-cell", "50"]) == status
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(os.listdir(rundir)) == ["inputs"]


# --------------------------------------------------------------------------
# writing an experiment back

def key_tree(x):
    if isinstance(x, dict):
        return {k: key_tree(v) for k, v in x.items() if k not in ("children",)}
    if isinstance(x, list) and x and isinstance(x[0], dict):
        return key_tree(x[0])
    return type(x).__name__ if not isinstance(x, (int, float)) or isinstance(x, bool) else "number"


@needs_expt
@pytest.mark.parametrize("name", NAMES)
def test_write_expt_round_trips_as_dxtbx_json(name, tmp_path):
    exp = read_expt(EXPT / f"{name}.expt")
    write_expt(tmp_path / "out.expt", exp)
    back = read_expt(tmp_path / "out.expt")
    for p, q in zip(exp.detector, back.detector):
        assert q.origin_m == p.origin_m and q.pixel_size_m == p.pixel_size_m and q.name == p.name
        close(q.fast, p.fast, 1e-15)
        close(q.slow, p.slow, 1e-15)
    close(back.beam.direction, exp.beam.direction, 1e-15)
    close(back.beam.polar_axis, exp.beam.polar_axis, 1e-15)
    assert back.beam.polarization == exp.beam.polarization
    close(back.crystal.A, exp.crystal.A, 1e-15)
    assert back.goniometer == exp.goniometer
    if exp.scan is not None:
        close([back.scan.osc_start_deg, back.scan.osc_width_deg],
              [exp.scan.osc_start_deg, exp.scan.osc_width_deg], 1e-14)
        assert back.scan.image_range == exp.scan.image_range
    # the same JSON structure as dxtbx's own file (keys and value types of every model)
    ours, theirs = (json.loads(Path(p).read_text()) for p in (tmp_path / "out.expt", EXPT / f"{name}.expt"))
    assert key_tree(ours["experiment"]) == key_tree(theirs["experiment"])
    for model in ("beam", "detector", "goniometer", "scan", "crystal"):
        assert key_tree(ours[model]) == key_tree(theirs[model]), model


@needs_expt
def test_experiment_from_config_is_the_file(rundir, tmp_path):
    """The README command written as an experiment is single_mosflm.expt again."""
    exp = experiment_from_config(config_from_args(README_CMD + REST))
    ref = read_expt("inputs/expt/single_mosflm.expt")
    assert exp.detector == ref.detector and exp.goniometer == ref.goniometer
    assert exp.beam == ref.beam
    close(exp.crystal.A, ref.crystal.A, 1e-15)
    close(exp.scan.osc_start_deg, ref.scan.osc_start_deg, 1e-15)
    write_expt(tmp_path / "cmd.expt", exp)
    again = config_from_expt(tmp_path / "cmd.expt")
    g0, g1 = (detector_geometry(c, "spec", torch.float64, "cpu")
              for c in (config_from_args(README_CMD + REST), again))
    assert all(torch.equal(getattr(g0, k), getattr(g1, k)) for k in ("pix0", "fdet", "sdet", "odet"))


@pytest.mark.parametrize("argv", [
    [],
    ["-xds", "-detpixels_f", "300", "-detpixels_s", "200", "-detector_rotx", "3", "-detector_roty", "-4",
     "-detector_rotz", "5", "-twotheta", "10"],
    ["-fdet_vector", "0", "0.2", "1", "-sdet_vector", "0", "-1", "0.2", "-odet_vector", "1", "0", "0",
     "-beam_vector", "1", "0.01", "0", "-detector_rotz", "7", "-pix0_vector_mm", "100", "11", "-12"],
])
def test_single_panel_is_todays_detector(argv):
    cfg = config_from_args(["-cell", "50", "-default_F", "1"] + argv)
    geom = detector_geometry(cfg, "spec", torch.float64, "cpu")
    (panel,) = single_panel(cfg).panels
    assert panel.fast == tuple(geom.fdet.tolist()) and panel.slow == tuple(geom.sdet.tolist())
    assert panel.normal == tuple(geom.odet.tolist()) and panel.origin_m == tuple(geom.pix0.tolist())
    assert panel.size_px == (geom.fpixels, geom.spixels)
    tensors = panel_tensors(single_panel(cfg))
    assert torch.equal(tensors["pix0"][0], geom.pix0) and torch.equal(tensors["odet"][0], geom.odet)


# --------------------------------------------------------------------------
# our JSON detector layouts

def test_example_layouts(tmp_path):
    tiled = read_detector_json(REPO / "examples" / "detector_2x2.json")
    assert [p.name for p in tiled] == ["p00", "p01", "p10", "p11"]
    p00, p01, p10 = tiled[0], tiled[1], tiled[2]
    assert all(p.normal == (1.0, 0.0, 0.0) and p.distance_m == pytest.approx(0.1) for p in tiled)
    close(np.subtract(p01.origin_m, p00.origin_m), np.array(p00.fast) * 13.8e-3, 1e-12)
    close(np.subtract(p10.origin_m, p00.origin_m), np.array(p00.slow) * 13.8e-3, 1e-12)
    close(p00.beam_centre_m((1, 0, 0)), (13.3e-3, 13.3e-3), 1e-12)    # the beam in the 1 mm gap
    xfel = read_detector_json(REPO / "examples" / "detector_xfel8.json")
    assert len(xfel) == 8 and {p.size_px for p in xfel} == {(96, 192)}
    for layout in (tiled, xfel):
        for frame in ("nanobragg", "dxtbx"):
            write_detector_json(tmp_path / "d.json", layout, frame=frame)
            back = read_detector_json(tmp_path / "d.json")
            for p, q in zip(layout, back):
                assert (q.name, q.origin_m, q.size_px, q.pixel_size_m) == (p.name, p.origin_m, p.size_px,
                                                                           p.pixel_size_m)
                for v, w in ((p.fast, q.fast), (p.slow, q.slow), (p.normal, q.normal)):
                    close(w, v, 1e-15)


def test_layout_with_flags(rundir, tmp_path):
    layout = tmp_path / "one.json"
    layout.write_text(json.dumps({"format": "nanobrag-torch detector", "version": 1, "detector": {
        "fast": [0, 0, 1], "slow": [0, -1, 0], "origin_mm": [80, 5, -6], "size_px": [64, 48],
        "pixel_size_mm": 0.2, "thickness_um": 100, "attenuation_depth_um": 300}}))
    cfg = config_from_args(["-cell", "50", "-default_F", "1", "-xds", "-detector_json", str(layout),
                            "-pixel", "0.1"])
    assert cfg.detector.pix0_vector_m == [0.08, 0.005, -0.006] and cfg.detector.detpixels == [64, 48]
    assert cfg.detector.pixel_size_mm == 0.1 and cfg.detector.thickness_um == pytest.approx(100)
    assert cfg.beam.beam_vector == [0.0, 0.0, 1.0]      # -xds's beam kept under CUSTOM
    # several panels render (tests/test_panels.py); flags that would move them are refused
    two = ["-cell", "50", "-default_F", "1", "-N", "2", "-detector_json", str(REPO / "examples" / "detector_2x2.json")]
    assert main(two + ["-nonoise", "-nopgm"]) == 0
    assert main(two + ["-pixel", "0.1"]) == 1


GOOD = {"format": "nanobrag-torch detector", "version": 1, "defaults": {"pixel_size_mm": 0.1},
        "detector": {"children": [{"name": "a", "size_px": [8, 8]},
                                  {"name": "b", "size_px": [8, 8], "origin_mm": [1, 0, 0]}]}}


def _set(path, value):
    def change(doc):
        *keys, last = path
        for k in keys:
            doc = doc[k]
        if value is KeyError:
            del doc[last]
        else:
            doc[last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set(["format"], "nanobragg"), "format: expected 'nanobrag-torch detector', got \"nanobragg\""),
    (_set(["frame"], "lab"), "frame: expected one of nanobragg|dxtbx"),
    (_set(["detector", "children", 1, "size_px"], [8]), "detector.children[1].size_px: expected 2 integers"),
    (_set(["detector", "children", 0, "pixle_size_mm"], 0.1), "detector.children[0].pixle_size_mm: unknown field"),
    (_set(["defaults", "pixel_size_mm"], KeyError), "detector.children[0].pixel_size_mm: missing field"),
    (_set(["defaults", "pixel_size_mm"], -1), "defaults.pixel_size_mm: expected a number > 0"),
    (_set(["detector", "fast"], [1, 0.5, 0]), "detector: fast and slow are not perpendicular"),
    (_set(["detector", "slow"], [0, 0, 0]), "detector.slow: the vector must not be (0, 0, 0)"),
    (_set(["detector", "rotation_deg"], [0, 0, 90]), None),
    (_set(["detector", "children", 0, "rotation_deg"], [0, 0]), "children[0].rotation_deg: expected 3 numbers"),
    (_set(["detector", "children", 0, "thickness_um"], 100), "thickness_um: a sensor thickness needs"),
    (_set(["detector", "children", 1, "name"], "a"), "detector.children[1].name: panel name 'a' is used twice"),
    (_set(["detector", "children"], []), "detector.children: a group needs at least one child"),
    (_set(["detector", "children", 0, "origin_mm"], [0, float("nan"), 0]), "origin_mm[1]: expected a finite number"),
])
def test_bad_layouts_fail_in_one_line(tmp_path, change, message):
    doc = copy.deepcopy(GOOD)
    change(doc)
    if message is None:                     # a valid variant
        assert len(read_detector_json(_write(tmp_path, doc))) == 2
        return
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        read_detector_json(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def _write(tmp_path, doc, name="layout.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


@needs_expt
@pytest.mark.parametrize("change, message", [
    (lambda d: "{" + json.dumps(d)[:40], "not valid JSON (Expecting"),
    (_set(["experiment", 0, "beam"], 3), "experiment[0].beam: index 3 is outside the 'beam' list"),
    (_set(["beam", 0, "wavelength"], -1), "beam[0].wavelength: expected a number > 0, got -1"),
    (_set(["beam", 0, "polarization_fraction"], 2), "beam[0].polarization_fraction: expected a number in [0, 1]"),
    (_set(["detector", 0, "panels", 0, "image_size"], [256]), "detector[0].panels[0].image_size: expected 2"),
    (_set(["detector", 0, "panels", 0, "fast_axis"], [0, 0, 0]), "panels[0].fast_axis: the vector must not"),
    (_set(["detector", 0, "hierarchy", "children"], []), "detector[0].hierarchy: panel 0 is not in the hierarchy"),
    (_set(["goniometer", 0, "axes"], [[1, 0, 0]]), "goniometer[0].axes: multi-axis goniometers"),
    (lambda d: d["crystal"][0].update(real_space_b=[2 * x for x in d["crystal"][0]["real_space_a"]]),
     "crystal[0]: the real-space vectors are coplanar"),
    (_set(["scan", 0, "properties", "oscillation"], [1, 2]), "scan[0].properties.oscillation: expected 5 angles"),
])
def test_bad_expt_files_fail_in_one_line(tmp_path, change, message):
    doc = json.loads((EXPT / "single_mosflm.expt").read_text())
    text = change(doc)
    path = _write(tmp_path, text if isinstance(text, str) else doc, "bad.expt")
    with pytest.raises(ConfigError) as err:
        read_expt(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)
