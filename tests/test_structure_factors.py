"""Structure factors from MTZ, mmCIF, atomic models and arrays (io.sf, io.mtz, io.sfcif, io.model).

MTZ and mmCIF files are written here with gemmi (or by hand), plus the real files
in ../shared/golden/inputs: 7n2l.mtz (P1, FOBS/IOBS), 1yjp.pdb (P 1 21 1).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import nanobrag_torch as nb
from conftest import corpus_dir
from nanobrag_torch.cli import FileError, FlagError, config_from_args, main
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io import read_hkl, write_fdump
from nanobrag_torch.io.sf import expand_to_p1, read_structure_factors, structure_factors

gemmi = pytest.importorskip("gemmi")

INPUTS = corpus_dir() / "inputs"
needs_inputs = pytest.mark.skipif(not (INPUTS / "7n2l.mtz").is_file(),
                                  reason=f"real MTZ/PDB files not found in {INPUTS}")
P21_CELL = (21.937, 4.866, 23.477, 90.0, 107.08, 90.0)
DETECTOR = ["-N", "3", "-lambda", "1", "-distance", "60", "-pixel", "0.5", "-detpixels", "24",
            "-noprogress"]


def grid_value(hkl, h, k, l):
    return hkl.F[h - hkl.h_min, k - hkl.k_min, l - hkl.l_min]


def write_mtz(path, sg, cell, miller, columns):
    """An MTZ with H K L and (label, type, values) columns."""
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.SpaceGroup(sg)
    mtz.set_cell_for_all(gemmi.UnitCell(*cell))
    mtz.add_dataset("test")
    for label, kind, _ in columns:
        mtz.add_column(label, kind)
    data = np.column_stack([miller] + [v for _, _, v in columns]).astype(np.float32)
    mtz.set_data(data)
    mtz.write_to_file(str(path))
    return path


def asu_reflections(sg, cell, dmin, seed=0):
    """Unique reflections of sg to dmin (gemmi's asymmetric unit) with random F > 0."""
    miller = np.asarray(gemmi.make_miller_array(gemmi.UnitCell(*cell), gemmi.SpaceGroup(sg),
                                                dmin), dtype=np.int64)
    F = np.random.default_rng(seed).uniform(1.0, 100.0, len(miller)).astype(np.float32)
    return miller, F.astype(np.float64)          # values an MTZ (float32) holds exactly


def mates(sg, h):
    """Every symmetry and Friedel mate of h, from gemmi's own operators."""
    ops = gemmi.SpaceGroup(sg).operations()
    plus = {tuple(op.apply_to_hkl([int(x) for x in h])) for op in ops.sym_ops}
    return plus, {tuple(-x for x in m) for m in plus}


# ----------------------------------------------------------------------------- MTZ

@needs_inputs
def test_real_mtz_default_column_cell_and_friedel_mates():
    hkl, notes = read_structure_factors(INPUTS / "7n2l.mtz")
    assert "F = FOBS" in notes[0] and "3437 reflections in P 1 -> 6874 in P1" in notes[0]
    mtz = gemmi.read_mtz_file(str(INPUTS / "7n2l.mtz"))
    miller = np.asarray(mtz.make_miller_array())
    fobs = np.asarray(mtz.column_with_label("FOBS").array, dtype=np.float64)
    idx = miller - [hkl.h_min, hkl.k_min, hkl.l_min]
    assert np.array_equal(hkl.F[tuple(idx.T)], fobs)
    idx = -miller - [hkl.h_min, hkl.k_min, hkl.l_min]
    assert np.array_equal(hkl.F[tuple(idx.T)], fobs)
    assert hkl.cell == pytest.approx((4.87, 10.06, 30.66, 94.85, 90.264, 99.988), rel=1e-6)
    assert (hkl.F != 0).sum() == 6874
    hkl_I, notes = read_structure_factors(INPUTS / "7n2l.mtz", column="IOBS")
    assert notes[0].startswith(f"reading {INPUTS / '7n2l.mtz'}: F = sqrt(IOBS)")


def test_mtz_p21_expansion_anomalous_pairs_and_intensities(tmp_path):
    miller, F = asu_reflections("P 1 21 1", P21_CELL, 3.0)
    Fm = F * 0.9
    I = F ** 2
    I[0] = -5.0
    path = write_mtz(tmp_path / "p21.mtz", "P 1 21 1", P21_CELL, miller,
                     [("FP", "F", F), ("F(+)", "G", F), ("F(-)", "G", Fm), ("IMEAN", "J", I)])
    hkl, notes = read_structure_factors(path)
    assert "F = FP;" in notes[0] and "in P 1 21 1 ->" in notes[0]
    for h, f in zip(miller[:40], F[:40]):
        plus, minus = mates("P 1 21 1", h)
        assert all(grid_value(hkl, *m) == f for m in plus | minus)
    p1 = {tuple(x) for x in np.argwhere(hkl.F != 0) + [hkl.h_min, hkl.k_min, hkl.l_min]}
    want = set().union(*(set().union(*mates("P 1 21 1", h)) for h in miller))
    assert p1 == want                                      # no more, no fewer reflections

    anom, notes = read_structure_factors(path, column="F(-)")
    assert "F = F(+)/F(-) (kept apart)" in notes[0]
    for h, fp, fm in zip(miller[:40], F[:40], Fm[:40]):
        plus, minus = mates("P 1 21 1", h)
        if plus & minus:                                   # centric: F(+), F(-) both land there
            continue
        assert all(grid_value(anom, *m) == fp for m in plus)
        assert all(grid_value(anom, *m) == np.float32(fm) for m in minus)

    inten, notes = read_structure_factors(path, column="IMEAN")
    assert "F = sqrt(IMEAN), 1 negative intensities set to F = 0" in notes[0]
    assert grid_value(inten, *miller[0]) == 0.0
    assert grid_value(inten, *miller[1]) == pytest.approx(F[1], rel=1e-6)
    with pytest.raises(ConfigError, match=r"no column 'FOO' \(columns: H \(H\), K \(H\)"):
        read_structure_factors(path, column="FOO")


def test_mtz_without_amplitudes_uses_sqrt_of_intensity(tmp_path):
    miller, F = asu_reflections("P 1", (30, 40, 50, 90, 90, 90), 6.0)
    path = write_mtz(tmp_path / "i.mtz", "P 1", (30, 40, 50, 90, 90, 90), miller,
                     [("I", "J", F ** 2), ("SIGI", "Q", F)])
    hkl, notes = read_structure_factors(path)
    assert "F = sqrt(I);" in notes[0]
    assert grid_value(hkl, *miller[3]) == pytest.approx(F[3], rel=1e-6)


def test_sf_mmcif_gives_the_grid_of_the_same_mtz(tmp_path):
    miller, F = asu_reflections("P 1 21 1", P21_CELL, 4.0)
    mtz = write_mtz(tmp_path / "x.mtz", "P 1 21 1", P21_CELL, miller, [("FP", "F", F)])
    rows = "\n".join(f"{h} {k} {l} o {f} 0.5" for (h, k, l), f in zip(miller, F))
    cif = tmp_path / "x-sf.cif"
    cif.write_text("data_rxsf\n" + "".join(
        f"_cell.{n} {v}\n" for n, v in zip(("length_a", "length_b", "length_c", "angle_alpha",
                                            "angle_beta", "angle_gamma"), P21_CELL))
        + "_symmetry.space_group_name_H-M 'P 1 21 1'\nloop_\n_refln.index_h\n_refln.index_k\n"
          "_refln.index_l\n_refln.status\n_refln.F_meas_au\n_refln.F_meas_sigma_au\n"
        + rows + "\n1 1 1 o ? ?\n")
    a, _ = read_structure_factors(mtz)
    b, notes = read_structure_factors(cif)
    assert "(block rxsf): F = F_meas_au" in notes[0]
    assert np.array_equal(np.asarray(a.F, dtype=np.float32), np.asarray(b.F, dtype=np.float32))
    assert b.cell == pytest.approx(P21_CELL) and b.spacegroup == "P 1 21 1"


# ----------------------------------------------------------------------------- the image

def test_mtz_image_equals_image_of_its_p1_text_list_and_fdump(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cell = (30.0, 35.0, 40.0, 90.0, 90.0, 90.0)
    miller, F = asu_reflections("P 21 21 21", cell, 5.0)
    write_mtz(tmp_path / "x.mtz", "P 21 21 21", cell, miller, [("FOBS", "F", F)])
    p1_hkl, p1_F = expand_to_p1(miller, F.astype(np.float32), "P 21 21 21")
    (tmp_path / "x.hkl").write_text("".join(f"{h} {k} {l} {repr(float(f))}\n"
                                            for (h, k, l), f in zip(p1_hkl, p1_F)))
    cell_args = ["-cell"] + [str(x) for x in cell] + ["-misset", "10", "20", "30"]
    from_mtz = config_from_args(["-hkl", "x.mtz"] + DETECTOR + ["-misset", "10", "20", "30"])
    from_text = config_from_args(["-hkl", "x.hkl"] + DETECTOR + cell_args)
    assert from_mtz.crystal.cell == list(cell)
    assert np.array_equal(from_mtz.crystal.hkl.F, read_hkl("x.hkl").F)
    a = nb.Simulator(from_mtz).run().pixels
    b = nb.Simulator(from_text).run().pixels
    assert torch.equal(a, b) and float(a.max()) > 0
    # the Fdump cache the run writes serves the next run without -hkl
    write_fdump("Fdump.bin", from_mtz.crystal.hkl)
    cached = config_from_args(DETECTOR + cell_args, implicit_dump=True)   # the CLI's reading
    assert np.array_equal(cached.crystal.hkl.F, from_mtz.crystal.hkl.F)
    assert torch.equal(nb.Simulator(cached).run().pixels, a)


def test_cell_from_file_and_disagreement_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cell = (30.0, 35.0, 40.0, 90.0, 90.0, 90.0)
    miller, F = asu_reflections("P 1", cell, 8.0)
    write_mtz(tmp_path / "x.mtz", "P 1", cell, miller, [("F", "F", F)])
    cfg = config_from_args(["-hkl", "x.mtz"] + DETECTOR)
    assert cfg.crystal.cell == list(cell) and any("cell from x.mtz" in n for n in cfg.notes)
    close = config_from_args(["-hkl", "x.mtz", "-cell", "30.2", "35", "40", "90", "90", "90"]
                             + DETECTOR)
    assert close.crystal.cell[0] == 30.2 and not any("WARNING" in n for n in close.notes)
    far = config_from_args(["-hkl", "x.mtz", "-cell", "30.6", "35", "40", "90", "90", "90"]
                           + DETECTOR)
    assert any("WARNING: the cell of -cell (30.6 35 40 90 90 90) differs from the cell in x.mtz"
               in n for n in far.notes) and far.crystal.cell[0] == 30.6
    # a -mat matrix: its cell (reciprocal axes / lambda) is compared
    a_star = np.diag([1 / 31.0, 1 / 35.0, 1 / 40.0])          # 3 % off along a
    (tmp_path / "A.mat").write_text("".join(" ".join(map(str, r)) + "\n" for r in a_star)
                                    + "0 0 0\n0 0 0\n")
    mat = config_from_args(["-hkl", "x.mtz", "-mat", "A.mat"] + DETECTOR)
    assert any("WARNING: the cell of -mat A.mat (31 35 40 90 90 90)" in n for n in mat.notes)


# ----------------------------------------------------------------------------- atomic models

@needs_inputs
def test_model_1yjp_symmetry_expansion_and_direct_summation():
    hkl, notes = read_structure_factors(INPUTS / "1yjp.pdb", dmin_A=2.0)
    assert "66 atoms" in notes[0] and "IT92" in notes[0] and "no bulk solvent" in notes[0]
    assert "in P 1 21 1 ->" in notes[0] and hkl.spacegroup == "P 1 21 1"
    st = gemmi.read_structure(str(INPUTS / "1yjp.pdb"))
    direct = gemmi.StructureFactorCalculatorX(st.cell)
    miller = np.asarray(gemmi.make_miller_array(st.cell, st.find_spacegroup(), 2.0))
    picks = miller[:: max(1, len(miller) // 60)]
    F = np.array([abs(direct.calculate_sf_from_model(st[0], [int(x) for x in h])) for h in picks])
    for h, f in zip(picks, F):
        plus, minus = mates("P 1 21 1", h)
        got = {grid_value(hkl, *m) for m in plus | minus}
        assert len(got) == 1                              # all mates share one amplitude
        assert abs(got.pop() - f) < 1e-3 * F.max()        # FFT vs direct sum over atoms


@needs_inputs
def test_model_on_the_command_line_reaches_the_detector_edge(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config_from_args(["-model", str(INPUTS / "1yjp.pdb")] + DETECTOR)
    assert cfg.crystal.cell == pytest.approx(list(P21_CELL))
    from nanobrag_torch.resolution import detector_dmin_A
    edge = detector_dmin_A(cfg)
    A = np.array(gemmi.UnitCell(*P21_CELL).frac.mat).T        # rows: a*, b*, c* (1/A)
    idx = np.argwhere(cfg.crystal.hkl.F != 0) + [cfg.crystal.hkl.h_min, cfg.crystal.hkl.k_min,
                                                  cfg.crystal.hkl.l_min]
    s_max = np.linalg.norm(idx @ A, axis=1).max()
    assert 1 / edge < s_max                                   # F beyond the edge's resolution
    fixed = config_from_args(["-model", str(INPUTS / "1yjp.pdb"), "-dmin", "3"] + DETECTOR)
    assert "to 3 A by gemmi" in fixed.notes[0]
    assert any(n.startswith("-model: the detector reaches d = ") for n in cfg.notes)


# ----------------------------------------------------------------------------- arrays, errors

def test_structure_factors_from_arrays():
    miller = np.array([[1, 2, 3], [0, 1, 0]])
    hkl = structure_factors(np.column_stack([miller, [10.0, 20.0]]))
    assert hkl.hkls == 4 and grid_value(hkl, -1, -2, -3) == 10.0 and grid_value(hkl, 0, -1, 0) == 20
    sym = structure_factors(miller, [10.0, 20.0], spacegroup="P 1 21 1", cell=P21_CELL)
    assert {grid_value(sym, *m) for m in [(1, 2, 3), (-1, 2, -3), (1, -2, 3), (-1, -2, -3)]} == {10}
    assert sym.cell == P21_CELL


@needs_inputs
@pytest.mark.parametrize("args, error, message", [
    (["-hkl", "MODEL"], FileError, "an atomic model, not structure factors: use -model"),
    (["-model", "MTZ"], FileError, "not a PDB or mmCIF atomic model: use -hkl"),
    (["-hkl", "MTZ", "-model", "MODEL"], FlagError, "use one of them"),
    (["-hkl", "TEXT", "-mtz_column", "F", "-cell", "50"], FlagError, "not an MTZ or mmCIF"),
    (["-hkl", "MTZ", "-mtz_column", "SIGFOBS"], FileError, "type Q, not an amplitude"),
])
def test_structure_factor_flag_errors(args, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = {"MODEL": INPUTS / "1yjp.pdb", "MTZ": INPUTS / "7n2l.mtz", "TEXT": INPUTS / "P1.hkl"}
    args = [str(files.get(a, a)) for a in args]
    with pytest.raises(error, match=message):
        config_from_args(args + DETECTOR)


def test_missing_gemmi_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    miller, F = asu_reflections("P 1", (30, 40, 50, 90, 90, 90), 8.0)
    write_mtz(tmp_path / "x.mtz", "P 1", (30, 40, 50, 90, 90, 90), miller, [("F", "F", F)])
    monkeypatch.setitem(sys.modules, "gemmi", None)
    with pytest.raises(ConfigError, match=r"-hkl x.mtz: reading MTZ.*pip install "
                                          r"'nanobrag-torch\[formats\]'"):
        config_from_args(["-hkl", "x.mtz"] + DETECTOR)
    assert main(["-hkl", "x.mtz"] + DETECTOR) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gemmi', which is not installed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mtz"]
