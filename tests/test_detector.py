"""Detector geometry (SPEC 1): conventions, beam centres, pivots, rotations, pix0,
pixel positions, curved detector, solid angle, detector size.

Expected values come from SPEC.md (worked examples and tables) or are derived
here independently (numpy rotation matrices, ray/plane intersections); they
are never read back from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nanobrag_torch import detector
from nanobrag_torch.cli import config_from_args
from rotations import axis_angle, rx, ry, rz
from nanobrag_torch.simulator import Simulator
from nanobrag_torch.units import R_E_SQR

F64 = torch.float64
BASE = ["-cell", "100", "-default_F", "1"]
RTD = 180.0 * (1.0 / math.pi)


@pytest.fixture(autouse=True)
def _clean_cwd(tmp_path, monkeypatch):
    # config_from_args reads ./Fdump.bin when there is no -hkl: stay in an empty folder
    monkeypatch.chdir(tmp_path)


def cfg_of(*args):
    return config_from_args(BASE + [str(a) for a in args])


def geom_of(*args, mode="spec"):
    return detector.detector_geometry(cfg_of(*args), mode, F64, "cpu")


def npv(t):
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


def beam_intercept(g):
    """Fast/slow coordinates (m, from pix0) where the direct beam meets the detector plane."""
    b, o, f, s, p0 = (npv(x) for x in (g.beam, g.odet, g.fdet, g.sdet, g.pix0))
    t = np.dot(p0, o) / np.dot(b, o)
    hit = t * b - p0
    return np.dot(hit, f), np.dot(hit, s)


# --------------------------------------------------------------------------
# AT-GEO-001, beam centres (SPEC 1.4)

def test_at_geo_001_mosflm_pix0_and_beam_centre():
    """AT-GEO-001 / SPEC 1.6 check value: MOSFLM, px 0.1 mm, 100 mm, Xbeam=Ybeam=51.2 mm ->
    pix0 = (0.1, 0.05125, -0.05125) m (+-1e-9), Fbeam = Sbeam = 51.25 mm, BEAM pivot."""
    g = geom_of("-pixel", 0.1, "-distance", 100, "-Xbeam", 51.2, "-Ybeam", 51.2)
    assert g.pivot == "BEAM"
    np.testing.assert_allclose(npv(g.pix0), [0.1, 0.05125, -0.05125], rtol=0, atol=1e-9)
    assert float(g.Fbeam) == pytest.approx(0.05125, abs=1e-12)
    assert float(g.Sbeam) == pytest.approx(0.05125, abs=1e-12)
    assert float(g.distance) == pytest.approx(0.1, abs=1e-15)
    assert float(g.close_distance) == pytest.approx(0.1, abs=1e-15)


@pytest.mark.parametrize("flag,beam_mm,index", [
    ("-mosflm", 51.30, 512.5),
    ("-denzo", 51.25, 512.0),
    ("-adxv", 51.25, 512.0),
    ("-xds", 51.20, 511.5),
    ("-dials", 51.20, 511.5),
])
def test_default_beam_centre_per_convention(flag, beam_mm, index):
    """SPEC 1.4 notes: default beam positions of a 1024 x 0.1 mm detector: MOSFLM 51.30 mm
    (index 512.5), DENZO/ADXV 51.25 mm (512.0), XDS/DIALS 51.20 mm (511.5)."""
    g = geom_of(flag, "-pixel", 0.1, "-detpixels", 1024)
    assert float(g.Fbeam) == pytest.approx(beam_mm / 1000, abs=1e-12)
    assert float(g.Sbeam) == pytest.approx(beam_mm / 1000, abs=1e-12)
    # where the direct beam really lands, in 0-based pixel-centre units
    fb, sb = beam_intercept(g)
    assert fb / 1e-4 - 0.5 == pytest.approx(index, abs=1e-9)
    assert sb / 1e-4 - 0.5 == pytest.approx(index, abs=1e-9)


def test_mosflm_half_pixel_shift_applies_to_user_beam_centre():
    """SPEC 1.4 note ([C] verified): -Xbeam 3.2 -Ybeam 3.1 -> Fbeam 3.15 mm, Sbeam 3.25 mm
    (MOSFLM: Fbeam = Ybeam + px/2, Sbeam = Xbeam + px/2)."""
    g = geom_of("-Xbeam", 3.2, "-Ybeam", 3.1, "-detpixels", 64)
    assert float(g.Fbeam) == pytest.approx(3.15e-3, abs=1e-12)
    assert float(g.Sbeam) == pytest.approx(3.25e-3, abs=1e-12)
    fb, sb = beam_intercept(g)
    assert fb == pytest.approx(3.15e-3, abs=1e-12)
    assert sb == pytest.approx(3.25e-3, abs=1e-12)
    # header values are the user's
    assert float(g.Xbeam) == pytest.approx(3.2e-3, abs=1e-12)
    assert float(g.Ybeam) == pytest.approx(3.1e-3, abs=1e-12)


def test_denzo_has_no_half_pixel_shift():
    """SPEC 1.4 table: DENZO Fbeam = Ybeam, Sbeam = Xbeam."""
    g = geom_of("-denzo", "-Xbeam", 3.2, "-Ybeam", 3.1, "-detpixels", 64)
    assert float(g.Fbeam) == pytest.approx(3.1e-3, abs=1e-12)
    assert float(g.Sbeam) == pytest.approx(3.2e-3, abs=1e-12)


def test_adxv_beam_centre_mapping():
    """SPEC 1.4 table: ADXV Fbeam = Xbeam, Sbeam = detsize_s - Ybeam; b=+Z, f=+X, s=-Y."""
    g = geom_of("-adxv", "-Xbeam", 12, "-Ybeam", 11, "-detpixels", 256, "-distance", 100)
    assert float(g.Fbeam) == pytest.approx(0.012, abs=1e-12)
    assert float(g.Sbeam) == pytest.approx(0.0256 - 0.011, abs=1e-12)
    # pix0 = -Fbeam f - Sbeam s + d b with f=(1,0,0), s=(0,-1,0), b=(0,0,1)
    np.testing.assert_allclose(npv(g.pix0), [-0.012, 0.0146, 0.1], atol=1e-12)


def test_xds_orgx_orgy_mapping():
    """SPEC 1.2/1.4: XDS Fclose = (ORGX-0.5) px, Sclose = (ORGY-0.5) px, SAMPLE pivot,
    pix0 = -Fclose f - Sclose s + close o with f=+X, s=+Y, o=+Z; reported ORGX/ORGY round-trip."""
    g = geom_of("-xds", "-ORGX", 100.5, "-ORGY", 140.25, "-detpixels", 256, "-distance", 100)
    assert g.pivot == "SAMPLE"
    np.testing.assert_allclose(npv(g.pix0), [-0.0100, -0.013975, 0.1], atol=1e-12)
    assert float(g.orgx) == pytest.approx(100.5, abs=1e-9)
    assert float(g.orgy) == pytest.approx(140.25, abs=1e-9)
    # header beam centre defaults to Xclose = Fclose
    assert float(g.Xbeam) == pytest.approx(0.0100, abs=1e-12)
    assert float(g.Ybeam) == pytest.approx(0.013975, abs=1e-12)
    # the direct beam lands at continuous index ORGX - 1 (0-based pixel centres)
    fb, sb = beam_intercept(g)
    assert fb / 1e-4 - 0.5 == pytest.approx(99.5, abs=1e-9)
    assert sb / 1e-4 - 0.5 == pytest.approx(139.25, abs=1e-9)


def test_xds_beam_and_close_flags_change_only_the_header():
    """SPEC 1.4 note: under XDS, -Xbeam/-Ybeam and -Xclose/-Yclose change only BEAM_CENTER;
    the geometry (pix0) is that of plain -xds."""
    plain = geom_of("-xds", "-detpixels", 128)
    for extra in (["-Xbeam", 5, "-Ybeam", 7], ["-Xclose", 11, "-Yclose", 14]):
        g = geom_of("-xds", "-detpixels", 128, *extra)
        np.testing.assert_array_equal(npv(g.pix0), npv(plain.pix0))
    g = geom_of("-xds", "-detpixels", 128, "-Xbeam", 5, "-Ybeam", 7)
    assert float(g.Xbeam) == pytest.approx(0.005, abs=1e-12)


def test_mosflm_orgx_has_no_geometric_effect():
    """SPEC 1.4 note: in MOSFLM (BEAM pivot) -ORGX/-Xclose do not move the detector."""
    plain = geom_of("-detpixels", 128)
    g = geom_of("-detpixels", 128, "-ORGX", 30, "-Xclose", 4)
    np.testing.assert_array_equal(npv(g.pix0), npv(plain.pix0))


def test_custom_convention_beam_centre_mapping():
    """SPEC 1.4/1.8: CUSTOM drops the +0.5 px shift and maps Fbeam = Xbeam, Sbeam = Ybeam
    (C-DESIGN-FLAW-001); also Fclose = Xbeam, so both pivots give the same unrotated detector."""
    vecs = ["-fdet_vector", 0, 0, 1, "-sdet_vector", 0, -1, 0, "-odet_vector", 1, 0, 0]
    g = geom_of(*vecs, "-Xbeam", 11, "-Ybeam", 13, "-detpixels", 256, "-distance", 100)
    assert g.convention == "CUSTOM"
    assert g.pivot == "BEAM"
    assert float(g.Fbeam) == pytest.approx(0.011, abs=1e-12)
    assert float(g.Sbeam) == pytest.approx(0.013, abs=1e-12)
    np.testing.assert_allclose(npv(g.pix0), [0.1, 0.013, -0.011], atol=1e-12)
    gs = geom_of(*vecs, "-Xbeam", 11, "-Ybeam", 13, "-detpixels", 256, "-distance", 100,
                 "-pivot", "sample")
    assert gs.pivot == "SAMPLE"
    np.testing.assert_allclose(npv(gs.pix0), [0.1, 0.013, -0.011], atol=1e-12)
    # the same numbers under MOSFLM carry the half-pixel shift and the X/Y swap
    gm = geom_of("-Xbeam", 11, "-Ybeam", 13, "-detpixels", 256, "-distance", 100)
    assert float(gm.Fbeam) == pytest.approx(0.01305, abs=1e-12)
    assert float(gm.Sbeam) == pytest.approx(0.01105, abs=1e-12)


# --------------------------------------------------------------------------
# 2theta axes (AT-GEO-004), pivots (AT-GEO-002), rotations (AT-GEO-003)

@pytest.mark.parametrize("flag,axis", [
    ("-mosflm", (0, 0, -1)), ("-denzo", (0, 0, -1)), ("-adxv", (-1, 0, 0)),
    ("-xds", (1, 0, 0)), ("-dials", (0, 1, 0)),
])
def test_at_geo_004_default_twotheta_axis(flag, axis):
    """AT-GEO-004 / SPEC 1.4: default 2theta axes; the detector normal swings about it by
    2theta (right-handed) and the reported TWOTHETA equals the input."""
    g = geom_of(flag, "-twotheta", 10, "-detpixels", 64)
    np.testing.assert_allclose(npv(g.twotheta_axis), axis, atol=0)
    assert float(g.twotheta_rad) * RTD == pytest.approx(10.0, abs=1e-12)
    o0 = {"-mosflm": (1, 0, 0), "-denzo": (1, 0, 0), "-adxv": (0, 0, 1),
          "-xds": (0, 0, 1), "-dials": (0, 0, 1)}[flag]
    expect = axis_angle(axis, 10 / RTD) @ np.array(o0, dtype=float)
    np.testing.assert_allclose(npv(g.odet), expect, atol=1e-15)


def test_custom_default_twotheta_axis_is_plus_y():
    """SPEC 1.4/1.8: CUSTOM's default 2theta axis is (0,1,0), not MOSFLM's (0,0,-1)."""
    g = geom_of("-fdet_vector", 0, 0, 1, "-twotheta", 10, "-detpixels", 64)
    np.testing.assert_allclose(npv(g.twotheta_axis), (0, 1, 0), atol=0)
    np.testing.assert_allclose(npv(g.odet), axis_angle((0, 1, 0), 10 / RTD) @ [1, 0, 0], atol=1e-15)


CUSTOM = ["-fdet_vector", "0", "0", "1"]


@pytest.mark.parametrize("args,spec,cpar", [
    (["-distance", "100"], "BEAM", "BEAM"),                       # AT-GEO-002 A
    (["-close_distance", "100"], "BEAM", "BEAM"),                 # named convention forces BEAM
    (["-pivot", "sample", "-distance", "100"], "SAMPLE", "BEAM"),  # AT-GEO-002 C (spec honours -pivot)
    (["-distance", "100", "-pivot", "sample"], "SAMPLE", "BEAM"),
    (["-twotheta", "10"], "BEAM", "BEAM"),
    (["-Xclose", "10"], "BEAM", "BEAM"),
    (["-xds"], "SAMPLE", "SAMPLE"),
    (["-dials"], "SAMPLE", "SAMPLE"),
    (["-adxv", "-ORGX", "10"], "BEAM", "BEAM"),
    (["-xds", "-pivot", "beam"], "BEAM", "SAMPLE"),
    (["-xds", "-Xbeam", "10"], "SAMPLE", "SAMPLE"),
    (CUSTOM + ["-close_distance", "90"], "SAMPLE", "SAMPLE"),     # AT-GEO-002 B (CUSTOM)
    (CUSTOM + ["-Xclose", "10"], "SAMPLE", "SAMPLE"),
    (CUSTOM + ["-Yclose", "10"], "SAMPLE", "SAMPLE"),
    (CUSTOM + ["-ORGX", "10"], "SAMPLE", "SAMPLE"),
    (CUSTOM + ["-ORGY", "10"], "SAMPLE", "SAMPLE"),
    (CUSTOM + ["-twotheta", "5"], "SAMPLE", "SAMPLE"),
    (CUSTOM + ["-Xclose", "10", "-Xbeam", "10"], "BEAM", "BEAM"),  # last flag wins
    (CUSTOM + ["-Xbeam", "10", "-ORGY", "10"], "SAMPLE", "SAMPLE"),
    (CUSTOM + ["-close_distance", "90", "-distance", "100"], "BEAM", "BEAM"),
    (CUSTOM + ["-Xclose", "10", "-pivot", "beam"], "BEAM", "BEAM"),
    (CUSTOM + ["-pivot", "sample", "-Xbeam", "10"], "SAMPLE", "BEAM"),
])
def test_at_geo_002_pivot_selection(args, spec, cpar):
    """AT-GEO-002 / SPEC 1.7 + SPEC 0 item 2: argv-order running pivot, forced by named
    conventions (MOSFLM/DENZO/ADXV BEAM, XDS/DIALS SAMPLE); spec mode honours -pivot."""
    cfg = cfg_of(*args)
    assert detector.choose_pivot(cfg, "spec") == spec
    assert detector.choose_pivot(cfg, "c-parity") == cpar


def _ratio(rot_deg, o=(1.0, 0.0, 0.0), b=(1.0, 0.0, 0.0)):
    r = [x / RTD for x in rot_deg]
    return float(np.dot(b, rz(r[2]) @ ry(r[1]) @ rx(r[0]) @ np.array(o)))


def test_at_geo_003_beam_pivot_rotations_close_distance():
    """AT-GEO-003 / SPEC 1.6: BEAM pivot, rotx/y/z, explicit close_distance: distance =
    close/ratio, reported close_distance = input, Fbeam/Sbeam = the user beam centre, and
    the basis is Rz.Ry.Rx of the MOSFLM basis."""
    rot = (5.0, 3.0, 2.0)
    g = geom_of("-close_distance", 95, "-Xbeam", 10.1, "-Ybeam", 14.3, "-detpixels", 256,
                "-detector_rotx", rot[0], "-detector_roty", rot[1], "-detector_rotz", rot[2])
    assert g.pivot == "BEAM"
    ratio = _ratio(rot)
    assert float(g.distance) == pytest.approx(0.095 / ratio, rel=1e-13)
    assert float(g.close_distance) == pytest.approx(0.095, rel=1e-13)
    assert float(g.Fbeam) == pytest.approx(0.01430 + 0.00005, abs=1e-13)
    assert float(g.Sbeam) == pytest.approx(0.01010 + 0.00005, abs=1e-13)
    M = rz(rot[2] / RTD) @ ry(rot[1] / RTD) @ rx(rot[0] / RTD)
    np.testing.assert_allclose(npv(g.fdet), M @ [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(npv(g.sdet), M @ [0, -1, 0], atol=1e-15)
    np.testing.assert_allclose(npv(g.odet), M @ [1, 0, 0], atol=1e-15)
    fb, sb = beam_intercept(g)
    assert fb == pytest.approx(float(g.Fbeam), abs=1e-13)
    assert sb == pytest.approx(float(g.Sbeam), abs=1e-13)


def test_at_geo_003_sample_pivot_rotations_close_distance():
    """AT-GEO-003 / SPEC 1.6 step 3 and 6: SAMPLE pivot: pix0 = R(-Fclose f - Sclose s + close o);
    reported Fclose/Sclose/close_distance equal the input and distance = close/ratio;
    Fbeam/Sbeam are the direct-beam intercept."""
    rot = (4.0, -6.0, 3.0)
    g = geom_of("-xds", "-close_distance", 95, "-ORGX", 120, "-ORGY", 130, "-detpixels", 256,
                "-detector_rotx", rot[0], "-detector_roty", rot[1], "-detector_rotz", rot[2])
    assert g.pivot == "SAMPLE"
    M = rz(rot[2] / RTD) @ ry(rot[1] / RTD) @ rx(rot[0] / RTD)
    Fc, Sc = 119.5e-4, 129.5e-4
    expect = M @ (-Fc * np.array([1, 0, 0]) - Sc * np.array([0, 1, 0]) + 0.095 * np.array([0, 0, 1.0]))
    np.testing.assert_allclose(npv(g.pix0), expect, atol=1e-15)
    assert float(g.close_distance) == pytest.approx(0.095, rel=1e-13)
    assert float(g.Fclose) == pytest.approx(Fc, abs=1e-14)
    assert float(g.Sclose) == pytest.approx(Sc, abs=1e-14)
    ratio = _ratio(rot, o=(0, 0, 1.0), b=(0, 0, 1.0))
    assert float(g.distance) == pytest.approx(0.095 / ratio, rel=1e-13)
    fb, sb = beam_intercept(g)
    assert float(g.Fbeam) == pytest.approx(fb, abs=1e-13)
    assert float(g.Sbeam) == pytest.approx(sb, abs=1e-13)


def test_twotheta_reported_beam_centre_quirk_spec_example():
    """SPEC 1.6 step 7: MOSFLM, 64 px, 2theta=10: Fbeam 3.30 mm, Sbeam 3.564 mm, DISTANCE
    98.48 mm (ratio excludes 2theta); pix0 itself is the rotated BEAM-pivot corner."""
    g = geom_of("-detpixels", 64, "-twotheta", 10, "-distance", 100)
    assert g.pivot == "BEAM"
    assert float(g.Fbeam) * 1000 == pytest.approx(3.30, abs=5e-4)
    assert float(g.Sbeam) * 1000 == pytest.approx(3.564, abs=5e-4)
    assert float(g.distance) * 1000 == pytest.approx(98.48, abs=5e-3)
    M = axis_angle((0, 0, -1), 10 / RTD)
    f, s = M @ [0, 0, 1.0], M @ [0, -1.0, 0]
    expect = -0.0033 * f - 0.0033 * s + 0.1 * np.array([1.0, 0, 0])
    np.testing.assert_allclose(npv(g.pix0), expect, atol=1e-15)


def test_close_distance_overrides_distance():
    """SPEC 1.6 step 2: -close_distance (when given) wins over -distance; distance =
    close/ratio. Without it close = |ratio * distance|."""
    ratio = math.cos(4 / RTD)       # o=(1,0,0) rotated about y by 4 deg
    g = geom_of("-distance", 200, "-close_distance", 95, "-detector_roty", 4, "-detpixels", 64)
    assert float(g.close_distance) == pytest.approx(0.095, rel=1e-13)
    assert float(g.distance) == pytest.approx(0.095 / ratio, rel=1e-13)
    g = geom_of("-close_distance", 95, "-distance", 200, "-detector_roty", 4, "-detpixels", 64)
    assert float(g.close_distance) == pytest.approx(0.095, rel=1e-13)
    g = geom_of("-distance", 200, "-detector_roty", 4, "-detpixels", 64)
    assert float(g.close_distance) == pytest.approx(0.2 * ratio, rel=1e-13)
    assert float(g.distance) == pytest.approx(0.2, rel=1e-13)


def test_dials_origin_from_pix0():
    """SPEC 1.6 step 9: DIALS origin (mm) = 1000 (pix0.z, pix0.y, -pix0.x)."""
    g = geom_of("-detpixels", 64, "-Xbeam", 3, "-Ybeam", 2)
    p = npv(g.pix0)
    np.testing.assert_allclose(npv(g.dials_origin_mm), 1000 * np.array([p[2], p[1], -p[0]]), atol=1e-12)


# --------------------------------------------------------------------------
# pixel positions, curved detector, solid angle

def test_pixel_centres_and_subpixels():
    """SPEC 1.9: pixel (f,s) centre at pix0 + (f+0.5)px f + (s+0.5)px s; oversample N puts
    subpixel centres at (f*N + j + 0.5) px/N."""
    g = geom_of("-detpixels", 16, "-detector_rotz", 7, "-Xbeam", 0.8, "-Ybeam", 0.9)
    p0, f, s = npv(g.pix0), npv(g.fdet), npv(g.sdet)
    s_idx, f_idx = torch.tensor([0, 3, 15]), torch.tensor([0, 7, 2])
    P = npv(detector.pixel_positions(g, s_idx, f_idx, 1, torch.zeros(1, dtype=F64)))
    assert P.shape == (3, 1, 1, 1, 3)
    for n, (si, fi) in enumerate(zip([0, 3, 15], [0, 7, 2])):
        np.testing.assert_allclose(P[n, 0, 0, 0], p0 + (fi + 0.5) * 1e-4 * f + (si + 0.5) * 1e-4 * s,
                                   atol=1e-16)
    P2 = npv(detector.pixel_positions(g, torch.tensor([3]), torch.tensor([7]), 2,
                                      torch.tensor([0.0, 1e-5], dtype=F64)))
    assert P2.shape == (1, 2, 2, 2, 3)
    o = npv(g.odet)
    for t in range(2):
        for js in range(2):
            for jf in range(2):
                expect = p0 + (7 * 2 + jf + 0.5) * 5e-5 * f + (3 * 2 + js + 0.5) * 5e-5 * s + t * 1e-5 * o
                np.testing.assert_allclose(P2[0, t, js, jf], expect, atol=1e-16)


def test_at_geo_005_curved_detector_constant_radius():
    """AT-GEO-005 / SPEC 1.9 (+ 8.3 item 14): with -curved_det every pixel is at |P| = distance;
    the point is distance*b rotated about s by P_y/distance then about f by P_z/distance
    (P_y, P_z lab components of the flat position), so for MOSFLM axes its angle from the
    beam is arccos(cos(P_y/d) cos(P_z/d))."""
    args = ("-detpixels", 32, "-pixel", 0.2, "-distance", 50, "-Xbeam", 2.1, "-Ybeam", 3.9)
    g_flat = geom_of(*args)
    g = geom_of(*args, "-curved_det")
    assert g.curved
    s_idx, f_idx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    s_idx, f_idx = s_idx.reshape(-1), f_idx.reshape(-1)
    z = torch.zeros(1, dtype=F64)
    Pc = npv(detector.pixel_positions(g, s_idx, f_idx, 1, z))[:, 0, 0, 0]
    Pf = npv(detector.pixel_positions(g_flat, s_idx, f_idx, 1, z))[:, 0, 0, 0]
    R = np.linalg.norm(Pc, axis=1)
    np.testing.assert_allclose(R, 0.05, rtol=1e-13)
    assert np.linalg.norm(Pf, axis=1).max() > 0.05 * 1.001      # the flat corners are further
    d = 0.05
    ang = np.arccos(np.clip(Pc[:, 0] / R, -1, 1))
    expect = np.arccos(np.cos(Pf[:, 1] / d) * np.cos(Pf[:, 2] / d))
    np.testing.assert_allclose(ang, expect, atol=1e-9)
    # one pixel in full, with independent rotation matrices
    k = 5 * 32 + 27
    a1, a2 = Pf[k, 1] / d, Pf[k, 2] / d
    expect_k = axis_angle((0, 0, 1), a2) @ axis_angle((0, -1, 0), a1) @ np.array([d, 0, 0])
    np.testing.assert_allclose(Pc[k], expect_k, atol=1e-15)
    # small rotations: the curved point stays close to the flat one (second order in angle)
    assert np.abs(ang - np.arccos(Pf[:, 0] / np.linalg.norm(Pf, axis=1))).max() < 1e-3


def _water_omega_image(*args):
    """Pure water background, -nopolar: the image is r_e^2 fluence I_bg ω per pixel (SPEC 5)."""
    cfg = cfg_of("-water", 100, "-nopolar", "-oversample", 1, *args)
    cfg.crystal.default_F = 0.0
    sim = Simulator(cfg, mode="c-parity")           # the C's I_bg (spec mode's water: modes.md 16)
    img = npv(sim.run().pixels)
    plan = sim.static.plan
    return img / float(plan.scale * plan.I_bg), sim.static.geom


@pytest.mark.parametrize("point", [False, True])
def test_at_geo_006_solid_angle(point):
    """AT-GEO-006 / SPEC 1.9: ω = px^2/R^2 * close_distance/R, or 1/R^2 with -point_pixel
    (checked through the kernel on a tilted detector, where close/R matters)."""
    extra = ["-point_pixel"] if point else []
    omega, g = _water_omega_image("-detpixels", 12, "-pixel", 0.5, "-distance", 40,
                                  "-detector_roty", 20, "-detector_rotx", 10, *extra)
    p0, f, s, o = npv(g.pix0), npv(g.fdet), npv(g.sdet), npv(g.odet)
    close = float(np.dot(p0, o))
    assert close == pytest.approx(float(g.close_distance), rel=1e-14)
    checked = 0
    for si, fi in [(0, 0), (5, 7), (11, 3), (11, 11)]:
        P = p0 + (fi + 0.5) * 5e-4 * f + (si + 0.5) * 5e-4 * s
        R = np.linalg.norm(P)
        expect = 1 / R ** 2 if point else (5e-4) ** 2 / R ** 2 * close / R
        assert omega[si, fi] == pytest.approx(expect, rel=1e-12)
        checked += 1
    assert checked == 4
    # tilted detector: the obliquity factor makes the two models differ
    if not point:
        P = p0 + 0.5 * 5e-4 * f + 0.5 * 5e-4 * s
        assert close / np.linalg.norm(P) < 0.99


# --------------------------------------------------------------------------
# detector size, odet regeneration

@pytest.mark.parametrize("args,fp,sp", [
    ([], 1024, 1024),
    (["-detsize", "20"], 200, 200),
    (["-detsize", "20.04"], 200, 200),     # ceil(200.4 - 0.5) = 200
    (["-detsize", "20.06"], 201, 201),     # ceil(200.6 - 0.5) = 201
    (["-detsize_f", "20", "-detsize_s", "30"], 200, 300),
    (["-detpixels", "64", "-detsize", "20"], 64, 64),      # a pixel count wins
    (["-detsize", "20", "-detpixels", "64"], 64, 64),
    (["-detpixels_f", "200", "-detpixels_s", "120"], 200, 120),
    (["-pixel", "0.172", "-detsize", "10"], 58, 58),       # ceil(58.14 - 0.5)
])
def test_detector_size_rules(args, fp, sp):
    """SPEC 1.5: detsize = px * count when a count is set; fpixels = ceil(detsize/px - 0.5)."""
    g = geom_of(*args)
    assert (g.fpixels, g.spixels) == (fp, sp)
    px = g.pixel_size_m
    if any(a.startswith("-detpixels") for a in args):
        assert g.detsize_f_m == pytest.approx(fp * px, rel=1e-12)
        assert g.detsize_s_m == pytest.approx(sp * px, rel=1e-12)


def test_detpixels_sets_default_beam_centre():
    """SPEC 1.4/1.5: the default MOSFLM beam centre follows the pixel-count detector size:
    64 px x 0.1 mm -> Xbeam = Ybeam = (6.4+0.1)/2 = 3.25 mm, Fbeam = Sbeam = 3.30 mm."""
    g = geom_of("-detpixels", 64, "-detsize", 500)
    assert float(g.Xbeam) == pytest.approx(3.25e-3, abs=1e-13)
    assert float(g.Fbeam) == pytest.approx(3.30e-3, abs=1e-13)


@pytest.mark.parametrize("odet,regen,expect", [
    ((0, 2, 0), True, (1, 0, 0)),       # |o| = 2: o = unit(f x s) = (1,0,0), not (0,1,0)
    ((0, 0, 0), True, (1, 0, 0)),
    ((1, 0, 0), False, (1, 0, 0)),
    ((0, 0, -1), False, (0, 0, -1)),     # unit length: kept as given
])
def test_odet_regenerated_when_not_unit(odet, regen, expect):
    """SPEC 1.3: if the supplied o has |o| != 1 the C warns and sets o = unit(f x s)."""
    cfg = cfg_of("-fdet_vector", 0, 0, 1, "-sdet_vector", 0, -1, 0, "-odet_vector", *odet, "-detpixels", 8)
    vec = detector.lab_vectors(cfg, F64, "cpu")
    assert vec.odet_regenerated is regen
    np.testing.assert_allclose(npv(vec.odet), expect, atol=0)


def test_mosflm_convention_ignores_user_vectors_after_it():
    """SPEC 1.8: a named convention given last overwrites all user vectors."""
    cfg = cfg_of("-fdet_vector", 0, 1, 0, "-mosflm", "-detpixels", 8)
    assert cfg.detector.convention == "MOSFLM"
    vec = detector.lab_vectors(cfg, F64, "cpu")
    np.testing.assert_array_equal(npv(vec.fdet), [0, 0, 1])
    np.testing.assert_array_equal(npv(vec.vert), [0, -1, 0])    # unit(b x p) = (1,0,0)x(0,0,1)
