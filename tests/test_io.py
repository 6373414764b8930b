"""Tests of nanobrag_torch.io: file formats against the C's behaviour and the parity corpus.

Expected values marked "C:" were checked against the reference nanoBragg binary
(and glibc's scanf/atof) while writing the readers.
"""
from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from nanobrag_torch.config import HKLData
from nanobrag_torch.errors import ConfigError
from nanobrag_torch import io as nio
from nanobrag_torch.io import (
    SMVFile, c_atof, c_atoi, header_value, read_fdump, read_float_image, read_hkl,
    read_hkl_with_messages, read_mat, read_pgm, read_smv, read_sourcefile, read_stol,
    smv_header_lines, write_fdump, write_float_image, write_pgm, write_smv,
)
from nanobrag_torch.io._common import atomic_write
from nanobrag_torch.io.cnum import scan_double, scan_int

GOLDEN = Path(os.environ.get("NANOBRAGG_GOLDEN",
                             Path(__file__).resolve().parents[1].parent / "shared" / "golden"))
needs_golden = pytest.mark.skipif(
    not (GOLDEN / "cases.json").is_file(),
    reason=f"parity corpus not found at {GOLDEN} (set NANOBRAGG_GOLDEN)")
INPUTS = GOLDEN / "inputs"
CASES = GOLDEN / "cases"


def write(tmp_path, name, content) -> Path:
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


# ----------------------------------------------------------------------------- cnum

@pytest.mark.parametrize("text, value", [
    ("1.5", 1.5), ("  -2e3xyz", -2000.0), ("", 0.0), ("abc", 0.0), (".5", 0.5),
    ("1e", 1.0), ("1e+", 1.0), ("5.", 5.0), ("\v\f\r\n 7", 7.0), ("0x1.8p1", 3.0),
    ("0x", 0.0), ("0x.8", 0.5), ("inf", math.inf), ("-Infinity", -math.inf), ("infinit", math.inf),
    ("1e400", math.inf), ("4.9e-324", 5e-324), ("1_0", 1.0), ("+.e1", 0.0), ("12;", 12.0),
])
def test_c_atof(text, value):
    assert c_atof(text) == value


def test_c_atof_nan_and_signed_zero():
    assert math.isnan(c_atof("nan(abc)")) and math.isnan(c_atof(" NAN"))
    assert math.copysign(1.0, c_atof("-nan")) == -1.0
    assert math.copysign(1.0, c_atof("-0")) == -1.0


@pytest.mark.parametrize("text, value", [
    ("12.7", 12), ("-3x", -3), ("x", 0), ("  +5", 5), ("", 0), ("1e5", 1),
    ("2147483648", -2147483648), ("99999999999", 1215752191),   # glibc: (int) strtol
])
def test_c_atoi(text, value):
    assert c_atoi(text) == value


@pytest.mark.parametrize("text, result", [
    # C: glibc scanf("%lg") -> (value, characters consumed) or failure
    ("1e x", (1.0, 2)), ("1e+-5", (1.0, 3)), ("-", None), (".", None), ("+.", None),
    ("0x", None), ("0xg", None), ("0x.", (0.0, 3)), ("0x1p", (1.0, 4)), (".e1", None),
    ("infinit", None), ("infinity", (math.inf, 8)), ("1..2", (1.0, 2)), ("1e5.5", (1e5, 3)),
    ("00x1", (0.0, 2)), ("na", None), ("  -0.25", (-0.25, 7)),
])
def test_scan_double_matches_glibc(text, result):
    assert scan_double(text.encode(), 0) == result


def test_scan_double_nan_stops_before_paren():
    value, pos = scan_double(b"nan(abc)", 0)
    assert math.isnan(value) and pos == 3


@pytest.mark.parametrize("text, result", [
    ("1.5", (1, 1)), ("-0", (0, 2)), ("+3", (3, 2)), ("- 3", None), ("1e2", (1, 1)),
    ("2147483648", (-2147483648, 10)),
])
def test_scan_int_matches_glibc(text, result):
    assert scan_int(text.encode(), 0) == result


# ----------------------------------------------------------------------------- SMV

HEADER = "{\nHEADER_BYTES=512;\nDISTANCE=100;\nXDS_ORGX=12.5;\nCLOSE_DISTANCE=99;\nNOEQ"


@pytest.mark.parametrize("key, value", [
    ("DISTANCE", 99.0),          # last occurrence: inside CLOSE_DISTANCE
    ("ORGX", 12.5),              # substring of XDS_ORGX
    ("HEADER_BYTES", 512.0),
    ("PHI", None),               # absent: the C returns NaN
    ("NOEQ", 0.0),               # no '=' after it: the C returns 0
])
def test_header_value(key, value):
    assert header_value(HEADER, key) == value


def test_header_value_resumes_after_each_match():
    # strstr loop restarts after the match: "AA" in "AAA=1" ends at index 2
    assert header_value("xAAA=1;", "AA") == 1.0
    assert header_value("A=1;A=2;", "A") == 2.0
    with pytest.raises(ValueError):
        header_value(HEADER, "")


def parse_smv_header(raw: bytes) -> list:
    """(key, value) pairs of a C-written header: numbers as int/float, strings kept."""
    text = raw[2:raw.index(b"}\f")].decode()
    pairs = []
    for line in text.split("\n")[:-1]:
        key, val = line.split("=", 1)
        if key in ("BYTE_ORDER", "TYPE", "DETECTOR_SN", "BEAMLINE"):
            pairs.append((key, val.rstrip(";")))
        elif not val.endswith(";"):
            pairs.append((key, tuple(float(v) for v in val.split(","))))
        elif re.fullmatch(r"-?\d+", val[:-1]):
            pairs.append((key, int(val[:-1])))
        else:
            pairs.append((key, float(val[:-1])))
    return pairs


def split_smv(raw: bytes):
    pairs = parse_smv_header(raw)
    d = dict(pairs)
    n = d["SIZE1"] * d["SIZE2"]
    # data start = file size - 2*pixels (the header may run past 512 bytes)
    data = np.frombuffer(raw[len(raw) - 2 * n:], "<u2").reshape(d["SIZE2"], d["SIZE1"])
    return pairs, data


@needs_golden
@pytest.mark.parametrize("case, name", [
    ("cubic_basic", "int.img"), ("complex_at020_spec", "int.img"), ("noise_seed", "noise.img"),
])
def test_write_smv_reproduces_corpus_bytes(tmp_path, case, name):
    raw = (CASES / case / name).read_bytes()
    pairs, data = split_smv(raw)
    out = tmp_path / "out.img"
    write_smv(out, data, pairs)
    assert out.read_bytes() == raw


@needs_golden
def test_write_smv_reproduces_every_corpus_image(tmp_path):
    images = sorted(CASES.glob("*/int.img")) + sorted(CASES.glob("*/noise.img"))
    assert images
    out = tmp_path / "out.img"
    for path in images:
        raw = path.read_bytes()
        pairs, data = split_smv(raw)
        write_smv(out, data, pairs)
        assert out.read_bytes() == raw, path


@needs_golden
def test_long_header_has_no_padding(tmp_path):
    raw = (CASES / "complex_at020_spec" / "int.img").read_bytes()
    pairs, data = split_smv(raw)
    assert raw.index(b"}\f") + 2 == 513 and len(raw) == 513 + 2 * data.size
    assert ("PHI", 1e-30) in pairs


@needs_golden
def test_smv_header_lines_matches_c_order(tmp_path):
    raw = (CASES / "cubic_basic" / "int.img").read_bytes()
    pairs, data = split_smv(raw)
    fixed = {"HEADER_BYTES", "DIM", "BYTE_ORDER", "TYPE", "DETECTOR_SN", "BEAMLINE"}
    values = {k.lower(): v for k, v in pairs if k not in fixed}
    out = tmp_path / "out.img"
    write_smv(out, data, smv_header_lines(**values))
    assert out.read_bytes() == raw
    with pytest.raises(TypeError):
        smv_header_lines(bogus=1)


def test_write_smv_pads_to_512_and_formats_values(tmp_path):
    data = np.arange(6, dtype=np.uint16).reshape(2, 3) * 1000
    header = [("HEADER_BYTES", 512), ("SIZE1", 3), ("SIZE2", 2), ("PIXEL_SIZE", 0.1),
              ("BIG", 16777216), ("WAVE", 1234567.0), ("DIALS_ORIGIN", (1.5, -2.0, np.float32(0.25))),
              ("NEGNAN", -math.nan), ("SN", "000")]
    out = tmp_path / "x.img"
    write_smv(out, data, header)
    raw = out.read_bytes()
    text = raw[:raw.index(b"}\f") + 2].decode()
    assert text == ("{\nHEADER_BYTES=512;\nSIZE1=3;\nSIZE2=2;\nPIXEL_SIZE=0.1;\nBIG=16777216;\n"
                    "WAVE=1.23457e+06;\nDIALS_ORIGIN=1.5,-2,0.25\nNEGNAN=-nan;\nSN=000;\n}\f")
    assert raw[len(text):512] == b" " * (512 - len(text))
    assert len(raw) == 512 + 12
    assert np.array_equal(np.frombuffer(raw[512:], "<u2").reshape(2, 3), data)


def test_write_smv_rejects_bad_data(tmp_path):
    out = tmp_path / "x.img"
    with pytest.raises(ValueError):
        write_smv(out, np.zeros((2, 2), np.int32) - 1, [("SIZE1", 2)])
    with pytest.raises(ValueError):
        write_smv(out, np.zeros((2, 2), np.float32), [])
    with pytest.raises(ValueError):
        write_smv(out, np.zeros((2, 3), np.uint16), [("SIZE1", 2)])
    assert not out.exists()


def test_read_smv_roundtrip_and_fields(tmp_path):
    data = (np.arange(20, dtype=np.uint16) * 3001).reshape(4, 5)
    out = tmp_path / "x.img"
    write_smv(out, data, [("HEADER_BYTES", 512), ("DIM", 2), ("BYTE_ORDER", "little_endian"),
                          ("TYPE", "unsigned_short"), ("SIZE1", 5), ("SIZE2", 4), ("DISTANCE", 150.5)])
    smv = read_smv(out)
    assert isinstance(smv, SMVFile)
    assert (smv.header_bytes, smv.width, smv.height) == (512, 5, 4)
    assert smv.data.dtype == np.uint16 and np.array_equal(smv.data, data)
    assert len(smv.header) == 512 and smv.header.rstrip(" ").endswith("}\f")   # padding kept
    assert header_value(smv.header, "DISTANCE") == 150.5


@needs_golden
def test_read_smv_corpus_inputs():
    smv = read_smv(INPUTS / "header.img")
    assert (smv.width, smv.height, smv.header_bytes) == (160, 120, 512)
    assert smv.data.shape == (120, 160)
    # the C's ValueOf: "DISTANCE" matches the later CLOSE_DISTANCE=140 (header says DISTANCE=150)
    assert header_value(smv.header, "DISTANCE") == 140.0
    assert header_value(smv.header, "PIXEL_SIZE") == 0.172
    assert header_value(smv.header, "ORGX") is None
    mask = read_smv(INPUTS / "mask.img")
    assert mask.data.shape == (mask.height, mask.width) and mask.data.dtype == np.uint16


@needs_golden
def test_read_smv_long_header_reads_data_at_header_bytes():
    # C: GetFrame takes the data from offset HEADER_BYTES (512) even though the
    # writer's 513-byte header pushed them one byte further
    path = CASES / "complex_at020_spec" / "int.img"
    raw = path.read_bytes()
    smv = read_smv(path)
    assert smv.data.tobytes() == raw[512:512 + 2 * 256 * 256]


@pytest.mark.parametrize("content, message", [
    (b"P5\n" + b" " * 600, "does not look like an SMV"),
    (b"{\nHEADER_BYTES=512;\n", "too short"),
    (b"{\nHEADER_BYTES=512;\nSIZE1=4;\nSIZE2=4;\n}\f".ljust(512) + b"\0" * 10, "too short for a 4 x 4"),
    (b"{\nHEADER_BYTES=1024;\nSIZE1=4;\n}\f".ljust(600), "shorter than its HEADER_BYTES"),
    (b"{\nHEADER_BYTES=512;\n}\f".ljust(600), "SIZE1/SIZE2"),
    (b"{\nHEADER_BYTEZ=512;\n}\f".ljust(600), "HEADER_BYTES"),
])
def test_read_smv_errors(tmp_path, content, message):
    path = write(tmp_path, "bad.img", content)
    with pytest.raises(ConfigError, match=message) as err:
        read_smv(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_read_smv_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.img"):
        read_smv(tmp_path / "nope.img")


def test_read_smv_detector_dimensions_fallback(tmp_path):
    header = b"{\nHEADER_BYTES=512;\nSIZE1=0;\nDETECTOR_DIMENSIONS=3;\n}\f".ljust(512)
    path = write(tmp_path, "d.img", header + bytes(18))
    smv = read_smv(path)
    assert (smv.width, smv.height) == (3, 3)


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"

    def chunks():
        yield b"partial"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, chunks())
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_write(target, chunks())
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_atomic_write_unwritable_folder(tmp_path):
    with pytest.raises(ConfigError, match="cannot write"):
        write_float_image(tmp_path / "no" / "such" / "dir.bin", np.zeros((2, 2)))


# ----------------------------------------------------------------------------- PGM

@needs_golden
def test_write_pgm_reproduces_corpus(tmp_path):
    raw = (CASES / "pgm" / "image.pgm").read_bytes()
    assert raw.startswith(b"P5\n256 256\n# pixels scaled by 2\n255\n")
    data = read_pgm(CASES / "pgm" / "image.pgm")
    assert data.shape == (256, 256) and data.dtype == np.uint8
    out = tmp_path / "image.pgm"
    write_pgm(out, data, 2.0)
    assert out.read_bytes() == raw


def test_pgm_roundtrip_nonsquare(tmp_path):
    data = (np.arange(15, dtype=np.uint8) * 17).reshape(3, 5)   # first byte 0: no whitespace trouble
    data[0, 0] = 0x20
    out = tmp_path / "x.pgm"
    write_pgm(out, data, 0.000123456789)
    assert out.read_bytes().startswith(b"P5\n5 3\n# pixels scaled by 0.000123457\n255\n")
    assert np.array_equal(read_pgm(out), data)
    with pytest.raises(ValueError):
        write_pgm(out, data.astype(np.uint16), 1.0)


def test_read_pgm_errors(tmp_path):
    with pytest.raises(ConfigError, match="P5"):
        read_pgm(write(tmp_path, "a.pgm", b"P2\n1 1\n255\n0"))
    with pytest.raises(ConfigError, match="too short"):
        read_pgm(write(tmp_path, "b.pgm", b"P5\n4 4\n255\n\0\0"))


# ----------------------------------------------------------------------------- float images

def test_float_image_roundtrip(tmp_path):
    img = np.random.default_rng(0).random((3, 7)) * 1e6
    out = tmp_path / "f.bin"
    write_float_image(out, img)
    raw = out.read_bytes()
    assert len(raw) == 3 * 7 * 4
    assert np.array_equal(np.frombuffer(raw, "<f4").reshape(3, 7), img.astype(np.float32))
    back = read_float_image(out, (3, 7))
    assert back.dtype == np.float32 and np.array_equal(back, img.astype(np.float32))
    with pytest.raises(ConfigError, match="expected 80"):
        read_float_image(out, (4, 5))


@needs_golden
def test_float_image_corpus_bytes(tmp_path):
    path = CASES / "det_nonsquare" / "float.bin"
    img = read_float_image(path, (120, 200))
    out = tmp_path / "f.bin"
    write_float_image(out, img)
    assert out.read_bytes() == path.read_bytes()


# ----------------------------------------------------------------------------- HKL

@needs_golden
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("name, bounds, hkls", [
    ("P1.hkl", (-12, 12, -12, 12, -12, 12), 15625),
    ("sparse.hkl", (-6, 6, -6, 6, -6, 6), 679),
    ("small.hkl", (-4, 4, -4, 4, -4, 4), 729),
    ("at027.hkl", (0, 2, 0, 2, 0, 0), 6),
])
def test_read_hkl_corpus(name, bounds, hkls, strict):
    hkl, messages = read_hkl_with_messages(INPUTS / name, 0.0, strict)
    assert (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max) == bounds
    assert hkl.hkls == hkls and messages == []
    h0, h1, k0, k1, l0, l1 = bounds
    assert hkl.F.shape == (h1 - h0 + 2, k1 - k0 + 2, l1 - l0 + 2) and hkl.F.dtype == np.float64
    # padding slab stays zero
    assert not hkl.F[-1].any() and not hkl.F[:, -1].any() and not hkl.F[:, :, -1].any()
    assert hkl.source == str(INPUTS / name)


@needs_golden
def test_read_hkl_values():
    p1 = read_hkl(INPUTS / "P1.hkl")
    assert p1.F[0, 0, 0] == 107.69 and p1.F[0, 0, 1] == 106.53     # -12 -12 -12, -12 -12 -11
    at = read_hkl(INPUTS / "at027.hkl")
    assert at.F[0, 0, 0] == 100 and at.F[1, 1, 0] == 12.5 and at.F[2, 0, 0] == 200
    assert at.F[2, 2, 0] == 0.0


@needs_golden
def test_read_hkl_default_F_prefills_real_range_only():
    sparse = read_hkl(INPUTS / "sparse.hkl", default_F=20.0)
    plain = read_hkl(INPUTS / "sparse.hkl")
    real = (slice(0, 13),) * 3
    given = plain.F[real] != 0
    assert np.array_equal(sparse.F[real][given], plain.F[real][given])
    assert np.all(sparse.F[real][~given] == 20.0)
    assert not sparse.F[13].any() and not sparse.F[:, 13].any() and not sparse.F[:, :, 13].any()


FOUR = "0 0 0 100\n1 0 0 50\n0 1 0 25\n-1 -2 3 7\n"


def test_five_and_six_columns_match_four(tmp_path):
    ref = read_hkl(write(tmp_path, "a.hkl", FOUR))
    five = "".join(line + " 0\n" for line in FOUR.splitlines())
    six = "\n\n".join(line + " 12.5 1.0" for line in FOUR.splitlines()) + "\n"
    for text in (five, six):
        hkl = read_hkl(write(tmp_path, "b.hkl", text))
        assert np.array_equal(hkl.F, ref.F) and hkl.hkls == 4
        assert (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max) == \
               (ref.h_min, ref.h_max, ref.k_min, ref.k_max, ref.l_min, ref.l_max)


def test_negative_indices(tmp_path):
    hkl = read_hkl(write(tmp_path, "a.hkl", FOUR))
    assert (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max) == (-1, 1, -2, 1, 0, 3)
    assert hkl.F.shape == (4, 5, 5)
    assert hkl.F[-1 + 1, -2 + 2, 3] == 7 and hkl.F[1, 2, 0] == 100 and hkl.F[2, 2, 0] == 50


def test_c_mode_misreads_five_columns(tmp_path):
    # C: the stream is read 4 numbers at a time: (0 0 0 100) (0 1 0 0) (50 0 0 1) (0 25 0 -1) (-2 3 7 0)
    five = "0 0 0 100 0\n1 0 0 50 0\n0 1 0 25 0\n-1 -2 3 7 0\n"
    hkl = read_hkl(write(tmp_path, "a.hkl", five), strict=False)
    assert hkl.hkls == 5
    assert (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max) == (-2, 50, 0, 25, 0, 7)
    assert hkl.F[2, 0, 0] == 100 and hkl.F[52, 0, 0] == 1


def test_non_integer_index_warnings(tmp_path):
    path = write(tmp_path, "a.hkl", "0 0 0 100\n1.5 0 0 50\n0 1 0 25\n-0.7 2 3 7\n")
    expected = ["WARNING: non-integer value for h (1.5) at line 1",     # C: same text and numbers
                "WARNING: non-integer value for h (-0.7) at line 3"]
    strict, msgs = read_hkl_with_messages(path)
    assert msgs == expected
    assert strict.h_min == 0 and strict.h_max == 1          # truncation toward zero
    assert strict.F[1, 0, 0] == 50 and strict.F[0, 2, 3] == 7
    c_hkl, c_msgs = read_hkl_with_messages(path, 0.0, strict=False)
    assert c_msgs == expected
    # C: the "%d" re-read stops at "1.5", so only the first entry is stored
    assert c_hkl.hkls == 4 and c_hkl.F[0, 0, 0] == 100 and np.count_nonzero(c_hkl.F) == 1
    assert read_hkl(write(tmp_path, "b.hkl", "1.0 2 3 4\n"), strict=True).F[0, 0, 0] == 4


def test_c_mode_fractional_l_misaligns_the_fill(tmp_path):
    # C: "%d" reads the 3 of "3.0", then "%lg" reads ".0" as F; the next "%d" (7) is
    # followed by end of file, so (-1, 2, 3) holds 0, not 7
    path = write(tmp_path, "a.hkl", "0 0 0 100\n1 0 0 50\n0 1 0 25\n-1 2 3.0 7\n")
    c_hkl = read_hkl(path, default_F=3.0, strict=False)
    assert c_hkl.F[0, 2, 3] == 0.0 and c_hkl.F[1, 0, 0] == 100
    assert read_hkl(path, default_F=3.0).F[0, 2, 3] == 7.0


def _exact_reference(raw: bytes, strict: bool):
    """(entries, stored) by the plain line-by-line / scanf-by-scanf readings (no fast path, one
    block), or the ConfigError type name."""
    from nanobrag_torch.io import hkl as H
    from nanobrag_torch.io.cnum import scan_double, scan_int
    if strict:
        try:
            entries = H._StrictScan("x")._parse_lines(1, raw)
        except ConfigError:
            return "error"
        return entries, H._truncated(entries)

    def scan(convs):
        rows, pos = [], 0
        while True:
            row = []
            for conv in convs:
                got = conv(raw, pos)
                if got is None:
                    return np.array(rows, dtype=np.float64).reshape(-1, 4)
                row.append(float(got[0]))
                pos = got[1]
            rows.append(row)
    entries = scan((scan_double,) * 4)
    stored = scan((scan_int,) * 3 + (scan_double,))
    if not (np.isfinite(entries).all() and np.isfinite(stored).all()):
        return "error"
    return entries, stored


def test_blocks_and_fast_path_match_exact_parsers(tmp_path, monkeypatch):
    """The streamed reader (fast path per block, entries carried across blocks) gives the entries
    of the plain line-by-line and scanf-by-scanf readings, whatever the block size."""
    from nanobrag_torch.io import hkl as H
    rng = np.random.default_rng(5)
    pieces = ["0", "1", "-2", "+3", "1.5", "3.0", "-0.7", "1e1", ".5", "2.", "12", "-0",
              "5.e-1", "1234567890", "1-2", "e5", "1e", ".", "+", "--1", "1.2.3", "inf", "1e999"]
    path = tmp_path / "x.hkl"

    def read(strict, block):
        monkeypatch.setattr(H, "BLOCK_BYTES", block)
        scan = H._StrictScan(path) if strict else H._CScan(path)
        s = []
        try:
            with open(path, "rb") as fh:
                for lineno, b in H._blocks(path, fh, strict):
                    s.append(scan.pass1(lineno, b))
        except ConfigError:
            return "error"
        return scan, np.concatenate(s) if s else np.zeros((0, 4))

    for _ in range(300):
        ncols = int(rng.integers(3, 8))
        lines = [" ".join(rng.choice(pieces, ncols)) for _ in range(int(rng.integers(0, 6)))]
        raw = ("\n".join(lines) + rng.choice(["", "\n", "\n\n"])).encode()
        path.write_bytes(raw)
        for strict in (True, False):
            ref = _exact_reference(raw, strict)
            for block in ((128, 1 << 20) if strict else (12, 17, 1 << 20)):
                got = read(strict, block)
                if ref == "error" or got == "error":
                    assert ref == got, (raw, strict, block)
                    continue
                scan, stored = got
                assert scan.n == len(ref[0]) and np.array_equal(stored, ref[1]), (raw, strict, block)
                if len(ref[0]):
                    lo = [min(1e9, ref[0][:, c].min()) for c in range(3)]
                    assert scan.lo == lo, (raw, strict, block)


def test_duplicates_last_wins(tmp_path):
    hkl = read_hkl(write(tmp_path, "a.hkl", "0 0 0 100\n0 0 0 50\n1 1 1 3\n"))
    assert hkl.F[0, 0, 0] == 50 and hkl.hkls == 3


@pytest.mark.parametrize("text, message", [
    ("0 0 0 100\n1 0 0 50\nfoo bar\n", r":3: expected 'h k l F'.*'foo bar'"),
    ("0 0 0\n", r":1: .*3 numbers"),
    ("0 0 0 1 2 3 4\n", r":1: .*7 numbers"),
    ("0 0 0 1\n1 1 1 2 3\n", r":2: 5 columns, but line 1 has 4"),
    ("# comment\n0 0 0 1\n", r":1: expected 'h k l F'"),
    ("0 0 nan 1\n", r":1: h k l must be finite"),
    ("", "not enough HKL indices"),
    ("\n  \n", "not enough HKL indices"),
])
def test_read_hkl_strict_errors(tmp_path, text, message):
    path = write(tmp_path, "x.hkl", text)
    with pytest.raises(ConfigError, match=message) as err:
        read_hkl(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_read_hkl_c_mode_stops_at_garbage(tmp_path):
    hkl = read_hkl(write(tmp_path, "x.hkl", "0 0 0 100\n1 0 0 50\nfoo bar\n0 1 0 25\n"), strict=False)
    assert hkl.hkls == 2 and hkl.k_max == 0
    with pytest.raises(ConfigError, match="not enough HKL indices"):
        read_hkl(write(tmp_path, "y.hkl", "# comment\n0 0 0 1\n"), strict=False)
    with pytest.raises(ConfigError, match="cannot read"):
        read_hkl(tmp_path / "missing.hkl")


@needs_golden
@pytest.mark.parametrize("name", ["P1.hkl", "sparse.hkl", "small.hkl", "at027.hkl"])
def test_fdump_roundtrip(tmp_path, name):
    hkl = read_hkl(INPUTS / name, default_F=3.0)
    out = tmp_path / "Fdump.bin"
    write_fdump(out, hkl)
    raw = out.read_bytes()
    header = "%d %d %d %d %d %d\n\f" % (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max)
    assert raw.startswith(header.encode()) and len(raw) == len(header) + 8 * hkl.F.size
    back = read_fdump(out)
    assert np.array_equal(back.F, hkl.F)
    assert (back.h_min, back.h_max, back.k_min, back.k_max, back.l_min, back.l_max) == \
           (hkl.h_min, hkl.h_max, hkl.k_min, hkl.k_max, hkl.l_min, hkl.l_max)
    r = (hkl.h_max - hkl.h_min + 1) * (hkl.k_max - hkl.k_min + 1) * (hkl.l_max - hkl.l_min + 1)
    assert back.hkls == r and back.source == str(out)
    if hkl.F.flat[0] != 0 and raw[len(header)] not in b" \t\n\v\f\r":
        assert np.array_equal(read_fdump(out, c_quirk=True).F, hkl.F)


def test_fdump_c_quirk_swallows_whitespace_byte(tmp_path):
    F = np.full((3, 3, 3), 50.0)
    F[0, 0, 0] = struct.unpack("<d", bytes.fromhex("2000000000005940"))[0]   # 100.00000000000045
    out = tmp_path / "Fdump.bin"
    write_fdump(out, HKLData(F=F, h_min=0, h_max=1, k_min=0, k_max=1, l_min=0, l_max=1, hkls=8))
    assert read_fdump(out).F[0, 0, 0] == 100.00000000000045
    quirk = read_fdump(out, c_quirk=True).F
    # C: -printout shows F_cell=1.81874e-307 for hkl 0 0 0 with this Fdump.bin
    assert "%g" % quirk[0, 0, 0] == "1.81874e-307"
    raw = out.read_bytes()
    assert raw[:14] == b"0 1 0 1 0 1\n\f "
    shifted = np.frombuffer(raw[14:] + b"\0", "<f8").reshape(3, 3, 3)
    assert np.array_equal(quirk, shifted)


def test_write_fdump_accepts_tensor_like_and_checks_shape(tmp_path):
    class FakeTensor:
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    F = np.arange(8.0).reshape(2, 2, 2)
    out = tmp_path / "Fdump.bin"
    write_fdump(out, HKLData(F=FakeTensor(F), h_min=5, h_max=5, k_min=-1, k_max=-1, l_min=0, l_max=0, hkls=1))
    assert out.read_bytes()[:15] == b"5 5 -1 -1 0 0\n\f"
    assert np.array_equal(read_fdump(out).F, F)
    with pytest.raises(ValueError):
        write_fdump(out, HKLData(F=F, h_min=0, h_max=2, k_min=0, k_max=0, l_min=0, l_max=0, hkls=1))


@pytest.mark.parametrize("content, message", [
    (b"1 2 3\n\f", "six integers"),
    (b"0 0 0 0 0 0\n\f" + bytes(8 * 8 - 1), "too short"),
    (b"0 0 0 0 0 0\n" + bytes(64), "form feed"),
    (b"0 -1 0 0 0 0\n\f" + bytes(64), "invalid index ranges"),
])
def test_read_fdump_errors(tmp_path, content, message):
    path = write(tmp_path, "Fdump.bin", content)
    with pytest.raises(ConfigError, match=message):
        read_fdump(path)


# ----------------------------------------------------------------------------- -mat

@needs_golden
def test_read_mat_corpus():
    m = read_mat(INPUTS / "A.mat")
    assert m.shape == (3, 3) and m.dtype == np.float64
    assert m[0].tolist() == [0.01853399, -0.00501587, 0.00321526]
    assert m[2, 2] == 0.01388296


def test_read_mat_errors(tmp_path):
    assert read_mat(write(tmp_path, "a.mat", "1 2 3 4 5\n6 7 8 9 junk")).tolist() == \
        [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(ConfigError, match="found 8"):
        read_mat(write(tmp_path, "b.mat", "1 2 3\n4 5 6\n7 8\n"))
    with pytest.raises(ConfigError, match="'x' after 4"):
        read_mat(write(tmp_path, "c.mat", "1 2 3\n4 x 6\n7 8 9\n"))


# ----------------------------------------------------------------------------- source files

@needs_golden
def test_read_sourcefile_corpus():
    s = read_sourcefile(INPUTS / "sources.txt")
    assert s.shape == (4, 5)
    assert s[3].tolist() == [-10.0, 0.0003, 0.0003, 0.3, 9.900000000000001e-11]
    assert read_sourcefile(INPUTS / "sources_equal.txt").shape[1] == 5
    copies = read_sourcefile(INPUTS / "sources_weighted_as_copies.txt")
    assert copies.shape[0] > 4 and not np.isnan(copies).any()


@pytest.mark.parametrize("text, rows", [
    # C: compared with the sources the reference binary prints
    ("-10 0 0\n-10 0.001\n", [[-10, 0, 0, None, None], [-10, 0.001, None, None, None]]),
    ("-10 0 0 1 1e-10\n-10 0.01 0 1", [[-10, 0, 0, 1, 1e-10], [-10, 0.01, 0, 1, 0]]),  # no final newline
    ("-10 0 0\r\n", [[-10, 0, 0, 0, 0]]),                                               # CRLF: same quirk
    ("-10,0;0:1!2e-10\n  ,, \n\n\t-10 0.002 0\n", [[-10, 0, 0, 1, 2e-10], [-10, 0.002, 0, None, None]]),
    ("-10 0 0 , \n-10 0 0 1 1e-10   ", [[-10, 0, 0, None, None], [-10, 0, 0, 1, 1e-10]]),
    ("-10 0 0 1 0x1p-33\n", [[-10, 0, 0, 1, 2.0 ** -33]]),
])
def test_read_sourcefile_c_semantics(tmp_path, text, rows):
    path = write(tmp_path, "s.txt", text)
    got = read_sourcefile(path, strict=False)
    want = np.array([[np.nan if v is None else v for v in r] for r in rows])
    assert np.array_equal(got, want, equal_nan=True)
    if (want[:, 4] == 0).any():
        # spec mode: the quirk's wavelength 0 is refused (the C renders NaN)
        with pytest.raises(ConfigError, match=r"s.txt:\d+: wavelength 0 m must be > 0"):
            read_sourcefile(path)
    else:
        assert np.array_equal(read_sourcefile(path), want, equal_nan=True)


def test_sourcefile_comment_lines(tmp_path):
    path = write(tmp_path, "s.txt", "# comment\n-10 0 0 1 1e-10\n")
    with pytest.raises(ConfigError, match=r"s.txt:1: comment lines are not allowed"):
        read_sourcefile(path)
    c = read_sourcefile(path, strict=False)
    assert c[0].tolist() == [0, 0, 0, 0, 0] and c.shape == (2, 5)
    # C: "# 1 2" reads as 0 1 2 with the rest missing
    c2 = read_sourcefile(write(tmp_path, "t.txt", "# 1 2\n"), strict=False)
    assert np.array_equal(c2, [[0, 1, 2, np.nan, np.nan]], equal_nan=True)


@pytest.mark.parametrize("text, message", [
    ("-10 0 0 1 1e-10 5\n", ":1: 6 columns, at most 5"),
    ("-10 0 0\nfoo\n", ":2: expected numbers, got 'foo'"),
    ("-10 1x 0\n", "got '1x'"),
    ("-10 0 0 1 1e-10\n\r\n", ":2: line without numbers"),
    ("\n \n,\n", "no data"),
    ("", "no data"),
])
def test_sourcefile_strict_errors(tmp_path, text, message):
    path = write(tmp_path, "s.txt", text)
    with pytest.raises(ConfigError, match=message) as err:
        read_sourcefile(path)
    assert str(err.value).startswith(str(path))


def test_sourcefile_long_line_splits_like_fgets(tmp_path):
    path = write(tmp_path, "s.txt", "1 " * 6000 + "\n")     # fgets reads 10239 bytes at a time
    assert read_sourcefile(path, strict=False).shape == (2, 5)
    with pytest.raises(ConfigError, match=":1: line longer than 10239"):
        read_sourcefile(path)


def test_sourcefile_c_mode_keeps_extra_columns_out(tmp_path):
    got = read_sourcefile(write(tmp_path, "s.txt", "-10 0 0 1 1e-10 5 6\nfoo\n"), strict=False)
    assert got.tolist() == [[-10, 0, 0, 1, 1e-10], [0, 0, 0, 0, 0]]


# ----------------------------------------------------------------------------- stol

@needs_golden
def test_read_stol_corpus():
    t = read_stol(INPUTS / "bg.stol")
    assert t.shape == (41, 2)
    assert t[0].tolist() == [0.0, 2.57] and t[5].tolist() == [0.125, 2.5706]


def test_read_stol_errors_and_missing_values(tmp_path):
    with pytest.raises(ConfigError, match="no data"):
        read_stol(write(tmp_path, "e.stol", "\n\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        read_stol(tmp_path / "missing.stol")
    t = read_stol(write(tmp_path, "a.stol", "0.1 2\n0.2\n"))
    assert np.array_equal(t, [[0.1, 2], [0.2, np.nan]], equal_nan=True)


def test_package_exports():
    for name in ("c_atof", "c_atoi", "read_smv", "write_smv", "header_value", "SMVFile", "write_pgm",
                 "read_pgm", "write_float_image", "read_float_image", "read_hkl", "read_hkl_with_messages",
                 "write_fdump", "read_fdump", "read_mat", "read_sourcefile", "read_stol"):
        assert callable(getattr(nio, name)), name
