"""The public API: simulate() -> Image, writers, mode/dtype/device from the config, the
library's validation, config round trips, the mode rules and a kernel that mutates nothing."""
import copy
import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from conftest import REPO, corpus_cases
from nanobrag_torch import cli, modes
from nanobrag_torch.compiled import _tensor_leaves
from nanobrag_torch.config import fingerprint
from nanobrag_torch.errors import FlagError
from nanobrag_torch.kernel import RunState, render_pixels

BASE = ("-cell 70 80 90 75 85 95 -misset 10 20 30 -default_F 100 -N 3 -lambda 1 -distance 100 "
        "-pixel 0.4 -detpixels 16").split()


def cfg_of(*extra):
    return nb.config_from_args(BASE + list(extra))


# ------------------------------------------------------------------ simulate and Image
def test_simulate_returns_a_frozen_image_equal_to_the_simulator_run():
    cfg = cfg_of("-mosaic", "0.3", "-mosaic_domains", "3")
    image = nb.simulate(cfg)
    assert isinstance(image, nb.Image)
    assert image.pixels.shape == (16, 16) and image.pixels.dtype == torch.float64
    assert torch.equal(image.pixels, nb.Simulator(cfg).run().pixels)
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.pixels = None
    st = image.stats
    assert st.max_I == pytest.approx(float(image.pixels.max()), rel=1e-6) and st.n == 256
    assert image.solid_angle_sr == pytest.approx(float(image.omega_sum) / image.setup.steps)
    assert image.setup.geom.fpixels == 16 and image.config is cfg


def test_writers_write_what_the_command_line_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = BASE + ["-seed", "7", "-floatfile", "c.bin", "-intfile", "c.img", "-noisefile", "n.img",
                   "-pgmfile", "c.pgm"]
    assert cli.main(args) == 0
    image = nb.simulate(nb.config_from_args(args))
    nb.write_float("p.bin", image)
    nb.write_smv("p.img", image)
    nb.write_pgm("p.pgm", image)
    nb.write_noise("pn.img", image)
    for ours, theirs in (("p.bin", "c.bin"), ("p.img", "c.img"), ("p.pgm", "c.pgm"), ("pn.img", "n.img")):
        assert Path(ours).read_bytes() == Path(theirs).read_bytes(), ours


def test_mode_dtype_and_device_come_from_the_config():
    cfg = cfg_of("-mode", "c-parity", "-dtype", "float32", "-phi", "0", "-osc", "2", "-phisteps", "3")
    sim = nb.Simulator(cfg)
    assert sim.mode is modes.C_PARITY and sim.dtype == torch.float32
    image = sim.run()
    assert image.mode == "c-parity" and image.pixels.dtype == torch.float32
    # keyword arguments override the config
    spec = nb.Simulator(cfg, mode="spec", dtype="float64").run()
    assert spec.mode == "spec" and spec.pixels.dtype == torch.float64
    assert not torch.allclose(spec.pixels.float(), image.pixels)       # C-PARITY-001 differs


def test_overriding_the_mode_rereads_mode_dependent_files(tmp_path, monkeypatch):
    """Files parsed the spec way are re-read by the c-parity rules (docs/modes.md row 9)."""
    monkeypatch.chdir(tmp_path)
    Path("f.hkl").write_text("0 0 1 100 0.5 3\n1 0 0 50 0.2 2\n")      # 6 columns: read differently
    spec_cfg = cfg_of("-hkl", "f.hkl")
    c_cfg = cfg_of("-hkl", "f.hkl", "-mode", "c-parity")
    overridden = nb.Simulator(spec_cfg, mode="c-parity")
    assert fingerprint(overridden.config.crystal.hkl) == fingerprint(c_cfg.crystal.hkl)
    assert fingerprint(spec_cfg.crystal.hkl) != fingerprint(c_cfg.crystal.hkl)    # untouched
    assert torch.equal(overridden.run().pixels, nb.simulate(c_cfg).pixels)


def test_the_api_never_reads_a_leftover_fdump(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = "-cell 70 80 90 75 85 95 -N 3 -lambda 1 -distance 100 -pixel 0.4 -detpixels 4".split()
    Path("f.hkl").write_text("0 0 1 3866\n")
    assert cli.main(args + ["-hkl", "f.hkl", "-nonoise", "-nopgm"]) == 0 and Path("Fdump.bin").exists()
    # (the README example's failure: an unrelated Fdump.bin in the working directory)
    assert nb.config_from_args(args + ["-default_F", "2"]).crystal.hkl is None
    with pytest.raises(nb.UsageError):
        nb.config_from_args(args)


# ------------------------------------------------------------------------ the kernel
def test_rendering_changes_nothing_it_is_given():
    """The C's run-wide state is a value passed in and returned (issue 9): a plan is
    unchanged by rendering, in every path (interpolation switch, first phi loop)."""
    cfg = cfg_of("-mode", "c-parity", "-phi", "0", "-osc", "1", "-phisteps", "2", "-N", "2",
                 "-hkl", str(REPO.parent / "shared" / "golden" / "inputs" / "small.hkl"), "-interpolate")
    sim = nb.Simulator(cfg)
    plan = sim.static.plan
    before = copy.deepcopy({k: v for k, v in vars(plan).items()})
    tensors = [t.clone() for _, t in _tensor_leaves(plan)]
    s_idx, f_idx = sim.static.pixels_s, sim.static.pixels_f
    start = RunState()
    res = render_pixels(s_idx, f_idx, plan, start)
    assert start == RunState()
    assert res.state.first_loop_done and res.first_loop_pixel == 0
    image = sim.run()
    assert image.state == res.state
    assert set(vars(plan)) == set(before)
    for (path, t), t0 in zip(_tensor_leaves(plan), tensors):
        assert torch.equal(t, t0), path
    for key, value in before.items():
        if not isinstance(value, torch.Tensor) and not dataclasses.is_dataclass(value):
            assert vars(plan)[key] == value, key
    # a second run renders the same image
    assert torch.equal(sim.run().pixels, image.pixels)


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize("path,value,error,message", [
    ("crystal.cell", [70, 80, 90, 200, 90, 90], ValueError, "crystal.cell: alpha must be between 0 and 180 deg, got 200"),
    ("crystal.cell", [70, 80, 90, 90, 90, 0], ValueError, "gamma must be between 0 and 180"),
    ("crystal.cell", "70 80 90", TypeError, "crystal.cell: expected 6 numbers, got '70 80 90'"),
    ("crystal.cell", [1e-3, 1, 1, 90, 90, 90], ValueError, "cell length a must be >= 0.5 Angstrom"),
    ("beam.wavelength_A", -1.0, ValueError, "beam.wavelength_A: must be > 0 Angstrom, got -1.0"),
    ("beam.wavelength_A", float("nan"), ValueError, "must be a finite number, got nan"),
    ("beam.wavelength_A", torch.tensor([1.0, 2.0]), TypeError, "expected a number, got tensor of shape (2,)"),
    ("beam.dispersion_pct", 300.0, ValueError, "beam.dispersion_pct: must be < 200 %"),
    ("detector.distance_mm", "100", TypeError, "detector.distance_mm: expected a number, got '100'"),
    ("detector.detpixels", [0, 16], ValueError, "detector.detpixels[0]: must be >= 1, got 0"),
    ("detector.detpixels", [16.0, 16], TypeError, "detector.detpixels[0]: expected an integer"),
    ("detector.detpixels", [2 ** 21, 16], ValueError, "detector.detpixels[0]: must be <= 1048576"),
    ("crystal.mosaic_domains", 2.5, TypeError, "crystal.mosaic_domains: expected an integer, got 2.5"),
    ("crystal.mat", np.zeros((3, 3)), ValueError, "crystal.mat: the matrix is singular"),
    ("crystal.shape", "cube", ValueError, "crystal.shape: must be one of square, round, gauss, tophat"),
    ("oversample", 0, ValueError, "oversample: must be >= 1, got 0"),
    ("mode", "fast", ValueError, "mode: must be one of spec, c-parity, got 'fast'"),
])
def test_validation_names_the_field_and_quotes_the_value(path, value, error, message):
    cfg = cfg_of()
    obj, _, name = path.rpartition(".")
    setattr(cfg if not obj else getattr(cfg, obj), name, value)
    with pytest.raises(error) as err:
        nb.Simulator(cfg)
    assert message in str(err.value) and isinstance(err.value, nb.ConfigError)
    assert err.value.field.split("[")[0] == path.split("[")[0] or path in str(err.value)


def test_validation_runs_on_every_run_and_conflicts_are_runtime_errors():
    cfg = cfg_of("-detector_rotz", "0")
    sim = nb.Simulator(cfg)
    cfg.detector.convention = "CUSTOM"
    cfg.detector.fdet_vector = [0, 1, 0]
    cfg.detector.sdet_vector = [0, 2, 0]
    with pytest.raises(RuntimeError, match="detector.fdet_vector: the fast and slow detector axes are parallel"):
        sim.run()
    with pytest.raises(TypeError, match="config: expected a SimConfig, got NoneType"):
        nb.Simulator(None)


def test_suspicious_values_warn():
    with pytest.warns(nb.SuspiciousValueWarning, match="crystal.n_cells"):
        nb.Simulator(cfg_of("-N", "0"))


@pytest.mark.parametrize("args,message", [
    (["-cell", "70", "80", "90", "200"], "-cell: alpha must be between 0 and 180 deg, got 200"),
    (["-xtal_size", "-1"], "-xtal_size: expected a number >= 0"),
    (["-dispersion", "300"], "-dispersion: must be < 200 %, got 300.0"),
    (["-mosaic", "120"], "-mosaic: must be <= 90 deg, got 120.0"),
])
def test_the_command_line_reports_the_library_message_with_the_flag(args, message):
    with pytest.raises(FlagError) as err:
        nb.config_from_args(BASE + args)
    assert message in str(err.value)


def test_absurd_detector_sizes_are_refused():
    args = "-cell 70 -default_F 1 -pixel 0.1".split()
    with pytest.raises(FlagError, match="-detsize: 1e\\+30 mm is more than 1048576 pixels"):
        nb.config_from_args(args + ["-detsize", "1e30"])


def test_flag_targets_are_config_fields():
    """A misspelt target fails when the module loads (here: the check itself)."""
    bad = cli.Flag(names=("-x",), metavar="", convs=(), apply=cli._set("detector.distance_m"), help="")
    cli.FLAGS.append(bad)
    try:
        with pytest.raises(AssertionError, match="no config field 'detector.distance_m'"):
            cli._check_targets()
    finally:
        cli.FLAGS.remove(bad)
    assert cli._FIELD_FLAG["detector.distance_mm"] == "-distance"


# ------------------------------------------------------------------ config round trip
@pytest.mark.parametrize("case", corpus_cases(), ids=[c["id"] for c in corpus_cases()])
def test_config_round_trips_through_dicts(case, run_dir):
    cfg = nb.config_from_args(case["args"])
    again = nb.from_dict(nb.to_dict(cfg))
    assert fingerprint(again) == fingerprint(cfg)
    assert dataclasses.fields(again) == dataclasses.fields(cfg)
    assert nb.to_dict(again).keys() == nb.to_dict(cfg).keys()


# ------------------------------------------------------------------------ the modes
def test_every_row_of_docs_modes_has_a_rule():
    text = (REPO / "docs" / "modes.md").read_text()
    section = text.split("## ")[0] if "## " in text else text
    rows = [int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)]
    assert rows and sorted(modes.ROWS) == rows
    names = {f.name for f in dataclasses.fields(modes.Mode)} - {"name"}
    assert set(modes.ROWS.values()) == names
    for rule in names:
        assert getattr(modes.SPEC, rule) != getattr(modes.C_PARITY, rule), rule


# ------------------------------------------------------------- resources and overflow
@pytest.mark.parametrize("extra,message", [
    (["-lambda", "1e-6"], r"this run needs .* subpixels"),
    (["-N", "1000000"], r"this run needs .* subpixels"),
    (["-phisteps", "1000000000"], r"GiB of memory .*1000000000 phi steps"),
    (["-divsteps", "100000", "-divergence", "1"], r"GiB of memory .*10000000000 sources"),
    (["-detpixels", "100000"], r"GiB of memory .*10000000000 pixels"),
    (["-xtalsize", "0.5"], r"this run needs .* subpixels"),
])
def test_runs_that_cannot_fit_or_finish_stop_at_once_with_the_numbers(extra, message, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    args = BASE[:-2] + ["-detpixels", "32"] + extra
    with pytest.raises(nb.ConfigError, match=message):
        nb.Simulator(nb.config_from_args(args))
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: this run needs" in err and list(tmp_path.iterdir()) == []


def test_max_hours_sets_the_time_limit():
    from nanobrag_torch import resources
    cfg = cfg_of("-lambda", "1e-2")
    est = resources.estimate(cfg, modes.SPEC)
    # oversampling recommended for a 3-cell, 90 A crystal at 0.01 A and 100 mm with 0.4 mm pixels
    assert est.oversample - math.ceil(3 * 3 * 90e-10 / (1e-12 * 0.1 / 4e-4)) in (0, 1)
    assert est.evaluations == 16 * 16 * est.oversample ** 2
    resources.check(est, max_hours=1.0)
    with pytest.raises(resources.ResourceError, match="more than -max_hours 1e-09"):
        resources.check(est, max_hours=1e-9)


def test_an_overflowing_image_is_not_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(BASE + ["-fluence", "1e300"]) == 1
    err = capsys.readouterr().err.strip()
    assert "the float32 image has 256 non-finite pixels (first: slow 0, fast 0, value inf)" in err
    assert [p.name for p in tmp_path.iterdir()] == []
    cfg = cfg_of()
    cfg.crystal.default_F = torch.tensor(float("inf"))
    with pytest.raises(nb.ConfigError, match="crystal.default_F: must be a finite number"):
        nb.simulate(cfg)
