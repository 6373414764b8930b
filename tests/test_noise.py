"""Noise images (SPEC 6.3): C stream bit for bit against the corpus, spec-mode Poisson draw."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nanobrag_torch import noise as N
from nanobrag_torch import rng as R

GOLDEN = Path(os.environ.get("NANOBRAGG_GOLDEN",
                             Path(__file__).resolve().parents[1].parent / "shared" / "golden"))


def _case(cid):
    if not (GOLDEN / "cases.json").is_file():
        pytest.skip(f"parity corpus not found at {GOLDEN} (set NANOBRAGG_GOLDEN)")
    cases = {c["id"]: c for c in json.loads((GOLDEN / "cases.json").read_text())["cases"]}
    if cid not in cases:
        pytest.skip(f"corpus has no case {cid}")
    return cases[cid], GOLDEN / "cases" / cid


def _arg(args, flag, n=1, default=None):
    if flag not in args:
        return default
    i = args.index(flag)
    return args[i + 1:i + 1 + n] if n > 1 else args[i + 1]


@pytest.mark.parametrize("cid", ["noise_seed", "noise_roi", "realistic"])
def test_corpus_noise_image_bit_exact(cid):
    case, d = _case(cid)
    args = case["args"]
    raw = (d / "noise.img").read_bytes()
    hdr = raw[:512].decode("latin1")
    F = int(re.search(r"SIZE1=(\d+);", hdr).group(1))
    S = int(re.search(r"SIZE2=(\d+);", hdr).group(1))
    ref = np.frombuffer(raw[len(raw) - 2 * S * F:], dtype="<u2").reshape(S, F)
    img = np.fromfile(d / "float.bin", dtype="<f4").reshape(S, F)
    roi = tuple(int(v) for v in _arg(args, "-roi", 4, (0, F - 1, 0, S - 1)))
    adc = float(_arg(args, "-adc", default=40.0))
    out, photons, overloads = N.c_noise_image(img, int(_arg(args, "-seed")), roi, adc)
    assert out.dtype == np.uint16 and out.shape == (S, F)
    assert np.array_equal(out, ref)
    line = next(l for l in (d / "stdout.txt").read_text().splitlines() if "photons on noise image" in l)
    m = re.match(r"\s*(\S+) photons on noise image \((\d+) overloads\)", line)
    assert f"{photons:.0f}" == m.group(1)
    assert overloads == int(m.group(2))


def _mixed_values(n, rs):
    k = rs.integers(0, 3, n)
    v = np.where(k == 0, rs.uniform(0, 12, n),
                 np.where(k == 1, np.exp(rs.uniform(np.log(12), np.log(1e6), n)),
                          rs.uniform(1e6, 5e9, n)))
    rep = rs.random(n) < 0.4                       # runs of equal / similar values
    v[1:][rep[1:]] = v[:-1][rep[1:]]
    edge = [-1.0, 2e9, -1.0, 0.0, 12.0, 11.999999, 1e6, 1000000.06, np.nan, -5.0, np.inf,
            1e6 + 64, 12.0, 1e-30, 999999.9, 1e5, -np.inf, 3.0]
    return np.concatenate([edge, v]).astype(np.float32)


@pytest.mark.parametrize("seed", [1, 12345])
def test_fast_path_equals_scalar_reference(seed):
    vals = _mixed_values(3000, np.random.default_rng(seed))
    noise = R.CNoise(R.Ran1(R.c_seed(seed)))
    ref = np.array([noise.poidev(x) for x in vals.tolist()], dtype=np.float32)
    fast = N.c_poidev_array(vals, R.Ran1(R.c_seed(seed)))
    assert np.array_equal(ref.view(np.uint32), fast.view(np.uint32))


def test_fast_path_rejection_branch_wide():
    # many rejection-branch pixels over the whole range (the fast accept/reject test)
    rs = np.random.default_rng(3)
    vals = np.exp(rs.uniform(np.log(12), np.log(1e6), 4000)).astype(np.float32)
    noise = R.CNoise(R.Ran1(-3))
    ref = np.array([noise.poidev(x) for x in vals.tolist()], dtype=np.float32)
    assert np.array_equal(ref, N.c_poidev_array(vals, R.Ran1(-3)))


def test_roi_and_order():
    rs = np.random.default_rng(4)
    img = rs.uniform(0, 30, (20, 30)).astype(np.float32)
    roi = (5, 12, 3, 9)                                  # fast 5..12, slow 3..9 inclusive
    out, photons, ov = N.c_noise_image(img, 99, roi, 10.0)
    inside = np.zeros(img.shape, bool)
    inside[3:10, 5:13] = True
    assert np.all(out[~inside] == 0)
    # ROI pixels in raster order (slow outer, fast inner), mask not involved
    counts = N.c_poidev_array(img[3:10, 5:13].reshape(-1), R.Ran1(-99))
    assert np.array_equal(out[inside], (counts + 10).astype(np.uint16))
    assert photons == float(counts.sum()) and ov == 0
    # ROI beyond the detector is clipped; an empty ROI gives zeros
    out2, _, _ = N.c_noise_image(img, 99, (-5, 100, -1, 100), 0.0)
    full, _, _ = N.c_noise_image(img, 99, (0, 29, 0, 19), 0.0)
    assert np.array_equal(out2, full)
    out3, ph3, ov3 = N.c_noise_image(img, 99, (10, 5, 0, 19), 40.0)
    assert not out3.any() and ph3 == 0.0 and ov3 == 0


def test_adc_clip_and_truncation():
    counts = np.array([0.0, 65494.0, 65495.0, 70000.0, 3.7, np.nan, -50.0], dtype=np.float32)
    img, photons, ov = N.finish_noise_image((1, 7), (0, 6, 0, 0), counts, 40.5)
    # +adc, > 65535 -> 65535 (overload), else (unsigned short) by int truncation;
    # NaN -> 0 as the binary's cvttsd2si; negatives truncate toward 0 and wrap (-9.5 -> 65527)
    assert img.tolist() == [[40, 65534, 65535, 65535, 44, 0, 65527]]
    assert ov == 2
    assert np.isnan(photons)


def test_c_noise_zero_image_and_seed_dependence():
    z = np.zeros((64, 64), np.float32)
    out, photons, ov = N.c_noise_image(z, 1, (0, 63, 0, 63), 40.0)
    assert np.all(out == 40) and photons == 0.0 and ov == 0
    img = np.full((64, 64), 5.0, np.float32)
    a, _, _ = N.c_noise_image(img, 1, (0, 63, 0, 63), 0.0)
    b, _, _ = N.c_noise_image(img, 2, (0, 63, 0, 63), 0.0)
    c, _, _ = N.c_noise_image(img, 1, (0, 63, 0, 63), 0.0)
    assert np.array_equal(a, c) and not np.array_equal(a, b)
    assert abs(a.mean() - 5.0) < 0.2


# ---------------------------------------------------------------------------------- spec

def test_spec_noise_statistics_and_reproducibility():
    img = torch.full((512, 512), 100.0)
    img[:8] = 3.0e6                                       # Gaussian-approximation rows
    out, photons, ov = N.spec_noise_image(img, 7, (0, 511, 0, 511), 0.0)
    assert out.dtype == np.uint16 and out.shape == (512, 512)
    body = out[8:].astype(np.float64)
    assert abs(body.mean() - 100.0) < 1.0                 # within 1 %
    assert abs(body.var() - 100.0) < 5.0                  # Poisson: var == mean
    assert np.all(out[:8] == 65535) and ov == 8 * 512     # 3e6 counts overload
    assert abs(photons - (body.sum() + 8 * 512 * 3.0e6)) < 1e-3 * photons
    again, p2, _ = N.spec_noise_image(img, 7, (0, 511, 0, 511), 0.0)
    other, _, _ = N.spec_noise_image(img, 8, (0, 511, 0, 511), 0.0)
    assert np.array_equal(out, again) and p2 == photons
    assert not np.array_equal(out, other)


def test_spec_noise_roi_adc_and_bad_values():
    img = np.full((10, 12), 4.0, np.float32)
    img[0, 0], img[0, 1] = np.nan, -3.0
    out, _, _ = N.spec_noise_image(img, 3, (0, 5, 0, 4), 40.0)
    assert np.all(out[5:] == 0) and np.all(out[:, 6:] == 0)
    assert out[0, 0] == 40 and out[0, 1] == 40               # NaN/negative means -> 0 counts
    assert np.all(out[:5, :6] >= 40)
    t, _, _ = N.spec_noise_image(img, None, (0, 11, 0, 9), 0.0)
    assert t.shape == (10, 12)
