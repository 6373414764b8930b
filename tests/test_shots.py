"""Serial batches (-shots N, nanobrag_torch.shots): shot k of seed s depends on (s, k) only,
orientations uniform over the rotations, a manifest whose rows re-render their shot."""
from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from nanobrag_torch.cli import main
from nanobrag_torch.shots import a_matrix, noise_seed, shot_rotation

BASE = ["-cell", "70", "80", "90", "75", "85", "95", "-default_F", "100", "-N", "5",
        "-pixel", "0.4", "-distance", "50", "-oversample", "2", "-detpixels", "16"]


def test_shot_rotation_is_a_rotation_fixed_by_seed_and_shot():
    U = shot_rotation(7, 3)
    np.testing.assert_allclose(U @ U.T, np.eye(3), atol=1e-14)
    assert np.linalg.det(U) == pytest.approx(1.0)
    assert np.array_equal(U, shot_rotation(7, 3))
    assert not np.allclose(U, shot_rotation(7, 4)) and not np.allclose(U, shot_rotation(8, 3))
    assert noise_seed(7, 3) == noise_seed(7, 3) != noise_seed(7, 4)
    assert 0 < noise_seed(7, 3) < 2 ** 31


def test_shot_rotations_uniform():
    """Haar measure: E[U] = 0 and E[trace U] = 0; the rotation angle's density is
    (1 - cos w) / pi, so E[cos w] = -1/2 (trace = 1 + 2 cos w)."""
    Us = np.stack([shot_rotation(11, k) for k in range(1, 3001)])
    assert np.abs(Us.mean(axis=0)).max() < 0.05           # entry std 1/sqrt(3): 4.7 sigma
    cos_w = (np.trace(Us, axis1=1, axis2=2) - 1) / 2
    assert cos_w.mean() == pytest.approx(-0.5, abs=0.03)


@pytest.mark.parametrize("mode", ["spec", "c-parity"])
def test_shot_independent_of_order(mode):
    cfg = nb.config_from_args(BASE + ["-mode", mode])
    batch = dict((k, im.pixels.clone()) for k, im in nb.shots(cfg, 3, seed=5))
    alone = dict((k, im.pixels) for k, im in nb.shots(cfg, 3, seed=5, only=[3, 1]))
    assert torch.equal(alone[3], batch[3]) and torch.equal(alone[1], batch[1])
    assert not torch.equal(batch[1], batch[2])


def test_cli_batch_manifest_and_shot_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "one").mkdir()
    outs = lambda d: ["-floatfile", f"{d}/s.bin", "-intfile", f"{d}/s.img",  # noqa: E731
                      "-noisefile", f"{d}/n.img", "-nopgm", "-manifest", f"{d}/m.csv"]
    assert main(BASE + outs("b") + ["-shots", "3", "-seed", "9"]) == 0
    assert capsys.readouterr().out.count("100% done") == 1
    rows = list(csv.DictReader(open(tmp_path / "b" / "m.csv")))
    assert [int(r["shot"]) for r in rows] == [1, 2, 3]
    for r in rows:
        files = r["files"].split()
        assert files == [f"b/s_{int(r['shot']):05d}.bin", f"b/s_{int(r['shot']):05d}.img",
                         f"b/n_{int(r['shot']):05d}.img"]
        for f, digest in zip(files, r["sha256"].split()):
            assert hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() == digest
        assert int(r["noise_seed"]) == noise_seed(9, int(r["shot"]))
    # shot 2 alone: the same files, bit for bit, and no manifest
    assert main(BASE + outs("one") + ["-shots", "3", "-seed", "9", "-shot", "2"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["n_00002.img", "s_00002.bin",
                                                                     "s_00002.img"]
    for name in ("s_00002.bin", "s_00002.img", "n_00002.img"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # the manifest's A matrix, written as a -mat file, gives the shot's reciprocal vectors
    A = np.array([float(rows[1][f"A{i}{j}"]) for i in (1, 2, 3) for j in (1, 2, 3)]).reshape(3, 3)
    (tmp_path / "shot2.mat").write_text("\n".join(" ".join(repr(float(x)) for x in row) for row in A) + "\n")
    cfg = nb.config_from_args(BASE[7:] + ["-mat", "shot2.mat"])          # no -cell: the matrix's
    lat = nb.Simulator(cfg).static.lattice
    got = np.stack([v.numpy() for v in (lat.a_star, lat.b_star, lat.c_star)], axis=1) * cfg.beam.wavelength_A
    np.testing.assert_allclose(got, A, rtol=0, atol=1e-13)
    image = next(nb.shots(nb.config_from_args(BASE), 3, seed=9, only=[2]))[1]
    np.testing.assert_allclose(a_matrix(image), A, rtol=0, atol=1e-16)


@pytest.mark.parametrize("argv,word", [(["-shots", "2"], "-seed"), (["-shot", "1", "-seed", "1"], "-shots"),
                                       (["-shots", "2", "-shot", "3", "-seed", "1"], "-shot"),
                                       (["-shots", "0", "-seed", "1"], "-shots")])
def test_cli_shots_refused_in_one_line(tmp_path, monkeypatch, capsys, argv, word):
    monkeypatch.chdir(tmp_path)
    assert main(BASE + argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]
    assert list(tmp_path.iterdir()) == []


def _batch(d, n=6):
    return BASE + ["-floatfile", f"{d}/s.bin", "-intfile", f"{d}/s.img", "-noisefile", f"{d}/n.img",
                   "-nopgm", "-manifest", f"{d}/m.csv", "-shots", str(n), "-seed", "5"]


def _rendered(out):
    return sorted(int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("shot "))


def test_restart_renders_only_missing_or_corrupt_shots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    assert main(_batch("b")) == 0
    assert _rendered(capsys.readouterr().out) == [1, 2, 3, 4, 5, 6]
    first = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    (tmp_path / "b" / "s_00003.img").unlink()                    # shot 3 lost
    (tmp_path / "b" / "n_00005.img").write_bytes(b"corrupt")     # shot 5 corrupted
    assert main(_batch("b")) == 0
    out = capsys.readouterr().out
    assert "4 of 6 shots complete" in out and _rendered(out) == [3, 5]
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == first
    assert main(_batch("b")) == 0                                 # nothing left to do
    assert _rendered(capsys.readouterr().out) == []
    assert (tmp_path / "b" / "m.csv").read_bytes() == first["m.csv"]


def test_restart_after_interrupt_keeps_finished_blocks(tmp_path, monkeypatch, capsys):
    import importlib
    shots_mod = importlib.import_module("nanobrag_torch.shots")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ref").mkdir()
    (tmp_path / "b").mkdir()
    assert main(_batch("ref")) == 0
    capsys.readouterr()
    monkeypatch.setattr(shots_mod, "BLOCK_SHOTS", 2)
    real = shots_mod.run_shots

    def interrupted(sim, seed, ks, progress=None):             # Ctrl-C inside the second block
        for k, image in real(sim, seed, ks, progress):
            if k == 4:
                raise KeyboardInterrupt
            yield k, image
    monkeypatch.setattr(shots_mod, "run_shots", interrupted)
    assert main(_batch("b")) == 130
    assert "the 2 shots of the finished blocks are in place" in capsys.readouterr().err
    left = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert left == ["m.csv", "n_00001.img", "n_00002.img", "s_00001.bin", "s_00001.img",
                    "s_00002.bin", "s_00002.img"]              # block 1 in place, no temporaries
    monkeypatch.setattr(shots_mod, "run_shots", real)
    assert main(_batch("b")) == 0
    assert _rendered(capsys.readouterr().out) == [3, 4, 5, 6]
    for p in (tmp_path / "ref").iterdir():
        assert (tmp_path / "b" / p.name).read_bytes() == p.read_bytes().replace(b"ref/", b"b/")


JIT = ["-mosaic", "0.5", "-mosaic_dom", "3", "-jitter_N", "0.3", "-jitter_mosaic", "0.5",
       "-jitter_fluence", "0.2", "-jitter_lambda", "0.01", "-jitter_distance_mm", "2"]


def test_jitter_recorded_reproduced_by_shot_and_by_explicit_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for d in ("b", "one", "flags"):
        (tmp_path / d).mkdir()
    assert main(_batch("b", 3) + JIT) == 0
    rows = list(csv.DictReader(open(tmp_path / "b" / "m.csv")))
    assert list(rows[0])[21:28] == ["Na", "Nb", "Nc", "mosaic_deg", "fluence", "lambda_A", "distance_mm"]
    vals = {c: {float(r[c]) for r in rows} for c in ("Na", "mosaic_deg", "fluence", "lambda_A", "distance_mm")}
    assert all(len(v) == 3 for c, v in vals.items() if c != "Na")       # each shot its own draw
    assert all(48 <= d <= 52 for d in vals["distance_mm"]) and all(4 <= n <= 7 for n in vals["Na"])
    # -shot K: the batch's files, bit for bit
    assert main(_batch("one", 3)[:-4] + ["-manifest", "one/m.csv", "-shots", "3", "-seed", "5", "-shot", "2"] + JIT) == 0
    for name in ("s_00002.bin", "s_00002.img", "n_00002.img"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # the manifest row as explicit flags of a single run (-mat for the orientation)
    r = rows[1]
    (tmp_path / "s2.mat").write_text("\n".join(" ".join(r[f"A{i}{j}"] for j in (1, 2, 3)) for i in (1, 2, 3)) + "\n")
    argv = [a for a in BASE[7:] if True]
    i = argv.index("-N")
    argv[i:i + 2] = ["-Na", r["Na"], "-Nb", r["Nb"], "-Nc", r["Nc"]]
    i = argv.index("-distance")
    argv[i + 1] = r["distance_mm"]
    assert main(argv + ["-mat", "s2.mat", "-mosaic", r["mosaic_deg"], "-mosaic_dom", "3", "-fluence", r["fluence"],
                        "-lambda", r["lambda_A"], "-seed", r["noise_seed"], "-floatfile", "flags/s.bin",
                        "-intfile", "flags/s.img", "-nopgm"]) == 0
    capsys.readouterr()
    got = np.fromfile(tmp_path / "flags" / "s.bin", dtype=np.float32)
    ref = np.fromfile(tmp_path / "b" / "s_00002.bin", dtype=np.float32)
    assert ref.max() > 0
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * ref.max())
    # without the jitter flags the shot differs (the jitter took effect)
    assert main(_batch("one", 3)[:-4] + ["-manifest", "one/m.csv", "-shots", "3", "-seed", "5", "-shot", "2",
                                         "-mosaic", "0.5", "-mosaic_dom", "3"]) == 0
    assert (tmp_path / "one" / "s_00002.bin").read_bytes() != (tmp_path / "b" / "s_00002.bin").read_bytes()


def test_jitter_needs_shots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(BASE + ["-jitter_N", "0.1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-jitter_N" in err[0] and "-shots" in err[0]
    assert list(tmp_path.iterdir()) == []
