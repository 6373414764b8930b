"""Rotation sweeps (-nimages N, nanobrag_torch.sweep): image i equals the single run at
-phi START + i*WIDTH, bit for bit, in both modes; numbered files; one NeXus stack."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from nanobrag_torch.cli import main
from nanobrag_torch.errors import ConfigError

CELL = ["-cell", "70", "80", "90", "75", "85", "95", "-default_F", "100", "-N", "5",
        "-pixel", "0.4", "-distance", "50", "-oversample", "2"]
# phi -4, -2, 0: the third image starts at phi = 0 exactly, where c-parity keeps the
# previous rotation (docs/modes.md row 1)
START, WIDTH, N = -4.0, 2.0, 3


def args(phi, mode, px=24, extra=()):
    return CELL + ["-detpixels", str(px), "-phi", repr(phi), "-osc", repr(WIDTH),
                   "-phisteps", "2", "-mode", mode] + list(extra)


@pytest.mark.parametrize("mode", ["spec", "c-parity"])
def test_sweep_images_equal_single_runs(mode):
    images = nb.sweep(nb.config_from_args(args(START, mode)), N)
    assert not isinstance(images, list)                  # a generator: one image at a time
    got = [im.pixels.clone() for im in images]
    assert len(got) == N
    for i, pixels in enumerate(got):
        ref = nb.simulate(nb.config_from_args(args(START + i * WIDTH, mode))).pixels
        assert torch.equal(pixels, ref), (mode, i)
        assert float(ref.max()) > 0
    assert not torch.equal(got[0], got[1])               # the crystal turned
    if mode == "c-parity":                               # the carryover did matter
        spec = nb.simulate(nb.config_from_args(args(START + 2 * WIDTH, "spec"))).pixels
        assert not torch.equal(got[2], spec)


def test_simulator_sweep_reuses_one_simulator_and_reports_progress():
    sim = nb.Simulator(nb.config_from_args(args(START, "spec", px=16)))
    seen = []
    images = list(sim.sweep(2, progress=lambda done, total: seen.append((done, total))))
    assert len(images) == 2
    assert seen[-1][0] == seen[-1][1] and len({t for _, t in seen}) == 1     # one meter
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert float(images[1].config.crystal.phi_deg) == START + WIDTH


@pytest.mark.parametrize("name,i,expected", [
    ("sweep.bin", 0, "sweep_00001.bin"), ("x.img", 11, "x_00012.img"),
    ("image_00000.cbf", 0, "image_00001.cbf"), ("dir/run1.img", 1, "dir/run1_00002.img")])
def test_sweep_path(name, i, expected):
    assert nb.sweep_path(name, i) == expected


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_nimages_must_be_positive_integer(bad):
    cfg = nb.config_from_args(args(START, "spec", px=16))
    with pytest.raises(ConfigError, match="-nimages"):
        next(nb.sweep(cfg, bad))


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "x"])
def test_cli_nimages_refused_in_one_line(tmp_path, monkeypatch, capsys, value):
    monkeypatch.chdir(tmp_path)
    assert main(args(START, "spec", px=16) + ["-nimages", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-nimages" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_sweep_without_oscillation_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(CELL + ["-detpixels", "16", "-nimages", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-nimages" in err[0] and "-osc" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["spec", "c-parity"])
def test_cli_sweep_files_equal_single_runs(tmp_path, monkeypatch, capsys, mode):
    """Numbered float, SMV, noise and PGM files, each equal byte for byte to those of the
    single run at its phi with -seed S+i; one progress meter over the sweep."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "single").mkdir()
    outs = lambda d: ["-floatfile", f"{d}/sweep.bin", "-intfile", f"{d}/x.img",  # noqa: E731
                      "-noisefile", f"{d}/n.img", "-pgmfile", f"{d}/p.pgm"]
    assert main(args(START, mode, px=16, extra=outs("sweep") + ["-seed", "7", "-nimages", "3"])) == 0
    log = capsys.readouterr().out
    assert log.count("100% done") == 1
    names = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    assert names == sorted(f"{stem}_{k:05d}.{ext}" for k in (1, 2, 3)
                           for stem, ext in (("sweep", "bin"), ("x", "img"), ("n", "img"), ("p", "pgm")))
    for i in range(3):
        single = ["-floatfile", "single/f.bin", "-intfile", "single/i.img",
                  "-noisefile", "single/n.img", "-pgmfile", "single/p.pgm", "-seed", str(7 + i)]
        assert main(args(START + i * WIDTH, mode, px=16, extra=single)) == 0
        for mine, theirs in (("sweep", "f.bin"), ("x", "i.img"), ("n", "n.img"), ("p", "p.pgm")):
            ext = theirs.split(".")[1]
            assert (tmp_path / "sweep" / f"{mine}_{i + 1:05d}.{ext}").read_bytes() == \
                (tmp_path / "single" / theirs).read_bytes(), (mine, i)
    capsys.readouterr()


def test_cli_sweep_all_or_nothing(tmp_path, monkeypatch, capsys):
    """A numbered output that cannot be written (a folder in the way of image 2) fails the
    run before anything is computed, and no file of the sweep appears."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x_00002.img").mkdir()
    assert main(args(START, "spec", px=16, extra=["-floatfile", "sweep.bin", "-intfile", "x.img",
                                                  "-nonoise", "-nopgm", "-nimages", "3"])) != 0
    err = capsys.readouterr().err
    assert "x_00002.img" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_00002.img"]


def test_cli_sweep_nexus_stack_read_by_nxmx(tmp_path, monkeypatch, capsys):
    nxmx = pytest.importorskip("nxmx")
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("hdf5plugin")      # the data's compression filter
    monkeypatch.chdir(tmp_path)
    assert main(args(START, "spec", px=16, extra=["-floatfile", "sweep.bin", "-nonoise", "-nopgm",
                                                  "-nexusfile", "sweep.nxs", "-cbffile", "c.cbf",
                                                  "-nimages", "3"])) == 0
    capsys.readouterr()
    with h5py.File(tmp_path / "sweep.nxs", "r") as fh:
        entry = nxmx.NXmx(fh).entries[0]
        assert entry.definition == "NXmx"
        data = np.asarray(fh["/entry/data/data"][()])
        phi = entry.samples[0].depends_on
        start = phi[()].to("degree").magnitude
        end = phi.end[()].to("degree").magnitude
        axes = nxmx.get_rotation_axes(nxmx.get_dependency_chain(entry.samples[0].depends_on))
    assert data.shape == (3, 16, 16)
    np.testing.assert_allclose(start, [START, START + WIDTH, START + 2 * WIDTH])
    np.testing.assert_allclose(end - start, [WIDTH] * 3)
    assert np.allclose(np.abs(axes.axes[0]), [1, 0, 0])       # McStas: spindle along -x
    for i in range(3):
        floats = np.fromfile(tmp_path / f"sweep_{i + 1:05d}.bin", dtype="<f4").reshape(16, 16)
        np.testing.assert_array_equal(data[i], np.clip(np.rint(floats.astype(np.float64)), 0, 65535))
        assert (tmp_path / f"c_{i + 1:05d}.cbf").is_file()


def test_the_compile_decision_counts_every_image_of_a_run(monkeypatch, tmp_path):
    """A sweep or batch of small images is one large run: the kernel is compiled once for
    all of them when they need >= COMPILE_MIN_EVALS evaluations in all, and -shot K of
    a batch decides as its batch does (the same kernel, so the same bits)."""
    from nanobrag_torch import execution, runner
    from nanobrag_torch.simulator import Simulator
    monkeypatch.setenv("NANOBRAGG_COMPILE", "1")
    base = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "5", "-detpixels", "16"]
    cfg = nb.config_from_args(base)
    n = -(-execution.COMPILE_MIN_EVALS // Simulator(cfg).evaluations)     # just enough images
    assert not Simulator(cfg).compile and not Simulator(cfg, images=n - 1).compile
    assert Simulator(cfg, images=n).compile
    made = []
    monkeypatch.setattr(runner, "Simulator", lambda c, **kw: made.append(kw) or Simulator(c, **kw))
    monkeypatch.chdir(tmp_path)
    for extra, images in ((["-shots", "3", "-seed", "1", "-shot", "2"], 3), (["-nimages", "4", "-osc", "0.1"], 4),
                          ([], 1)):
        made.clear()
        assert main(base + ["-floatfile", "x.bin", "-nopgm", "-nonoise"] + extra) == 0
        assert [kw.get("images") for kw in made] == [images]
