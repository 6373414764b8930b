"""Bad input and faults (issue 13): every parser and the flag tables never give a traceback,
and each failure class ends in one line, a non-zero exit, no new or changed file.

Property-based tests (hypothesis) feed random files to every reader and random token
sequences to the four command lines (their runs replaced by the output check, so no
simulation starts); the other tests try one or a few cases of each class. Runs are tiny
(4 x 4 pixels); two tests start a subprocess (SIGTERM, a closed pipe).
"""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanobrag_torch import cli, entry, floatadd, noisify, nonbragg, runner, writers
from nanobrag_torch import io as nio
from nanobrag_torch.errors import ConfigError
from nanobrag_torch.io import outputs as outs
from nanobrag_torch.io.hkl import fdump_chunks

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
TINY = ["-cell", "50", "-default_F", "10", "-N", "1", "-detpixels", "4", "-seed", "1"]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def snapshot(folder: Path) -> dict:
    """Every entry of folder (hidden ones too): name -> bytes (None for non-files)."""
    return {p.name: (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in folder.iterdir()}


def one_line_error(err: str, prog: str = "nanobrag-torch") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), err
    assert "Traceback" not in err
    return lines[0]


def main(argv, capsys, command=cli):
    status = command.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ============================================================== property-based: parsers
TOKENS = ["1", "-2", "3.5", "1e3", "0", "-0", "nan", "NaN", "inf", "-inf", "1e999", "x",
          "#", "0x1p3", "", ",", ";", "\t", "\r", "1.5e-300", "+", "e5", "\x00", "\u00e9",
          "2147483648", "-999999", "1_0"]
LINE = st.lists(st.sampled_from(TOKENS), max_size=7).map(" ".join)
TEXT = st.lists(LINE, max_size=10).map("\n".join).map(lambda s: s.encode("utf-8"))
CONTENT = TEXT | st.binary(max_size=300)


def _header(pairs) -> bytes:
    text = "{\nHEADER_BYTES=512;\n" + "".join(f"{k}={v};\n" for k, v in pairs) + "}\f"
    return text.encode("latin-1")[:512].ljust(512, b" ")


SMV_KEYS = ["SIZE1", "SIZE2", "PIXEL_SIZE", "DISTANCE", "CLOSE_DISTANCE", "WAVELENGTH",
            "BEAM_CENTER_X", "BEAM_CENTER_Y", "ORGX", "ORGY", "PHI", "OSC_RANGE", "HEADER_BYTES"]
SMV = st.builds(lambda pairs, data: _header(pairs) + data,
                st.lists(st.tuples(st.sampled_from(SMV_KEYS), st.sampled_from(TOKENS + ["4", "2"])),
                         max_size=8),
                st.binary(max_size=64))
FDUMP = st.builds(lambda head, data: head.encode() + data,
                  st.lists(st.sampled_from(["0", "1", "-1", "2", "x", "99999"]), min_size=0,
                           max_size=7).map(lambda t: " ".join(t) + "\n\f"),
                  st.binary(max_size=200))


def _no_traceback(path, read):
    """read(path) returns, or raises a one-line ConfigError naming the file."""
    try:
        return read(path)
    except ConfigError as err:
        msg = str(err)
        assert "\n" not in msg and str(path) in msg, msg
        return None


READERS = {
    "hkl strict": (CONTENT, lambda p: nio.read_hkl(p, 0.0, True)),
    "hkl c": (CONTENT, lambda p: nio.read_hkl(p, 0.0, False)),
    "fdump": (FDUMP, nio.read_fdump),
    "fdump c": (FDUMP, lambda p: nio.read_fdump(p, c_quirk=True)),
    "mat": (CONTENT, nio.read_mat),
    "source strict": (CONTENT, lambda p: nio.read_sourcefile(p, strict=True)),
    "source c": (CONTENT, lambda p: nio.read_sourcefile(p, strict=False)),
    "stol strict": (CONTENT, lambda p: nio.read_stol(p, strict=True)),
    "stol c": (CONTENT, lambda p: nio.read_stol(p, strict=False)),
    "smv": (SMV | CONTENT, nio.read_smv),
    "smv header": (SMV, lambda p: nio.read_smv(p, data=False)),
    "pgm": (st.builds(lambda a, b: b"P5" + a + b, TEXT, st.binary(max_size=50)) | CONTENT,
            nio.read_pgm),
    "float image": (CONTENT, lambda p: nio.read_float_image(p, (2, 2))),
    "expt": (st.sampled_from([b"{", b"[]", b'{"experiment": []}', b'{"detector": [1]}']) | CONTENT,
             nio.read_expt),
    "detector json": (st.sampled_from([b"{}", b'{"format": 1}', b"null"]) | CONTENT,
                      nio.read_detector_json),
}


@pytest.mark.parametrize("name", list(READERS))
def test_parsers_never_give_a_traceback(name, tmp_path):
    strategy, read = READERS[name]
    path = tmp_path / "input.file"

    @FUZZ
    @given(content=strategy)
    def check(content):
        path.write_bytes(content)
        got = _no_traceback(path, read)
        values = getattr(got, "F", got)
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            assert not np.isinf(values).any()      # non-finite numbers are refused
            if name.startswith(("hkl", "fdump", "mat")):
                assert np.isfinite(values).all()

    check()


@FUZZ
@given(key=st.sampled_from(SMV_KEYS), value=st.sampled_from(TOKENS + ["12", "-3", "0"]))
def test_checked_header_values(key, value):
    header = f"{{\nHEADER_BYTES=512;\n{key}={value};\n}}"
    try:
        v = nio.checked_header_value("h.img", header, key)
    except ConfigError as err:
        assert str(err).startswith("h.img: header value ") and "\n" not in str(err)
        return
    assert v is None or math.isfinite(v)
    if key in ("PIXEL_SIZE", "DISTANCE", "WAVELENGTH"):
        assert v > 0


# ============================================================== property-based: flag tables
@pytest.fixture(scope="module")
def inputs_dir(tmp_path_factory):
    """Small valid input files for random argvs, and a few bad ones."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "F.hkl").write_text("0 0 0 10\n1 2 3 4.5\n-1 0 2 7\n")
    (d / "A.mat").write_text("0.02 0 0\n0 0.02 0\n0 0 0.02\n")
    (d / "src.txt").write_text("-1 0 0 1 1e-10\n-1 0.001 0 1 1e-10\n")
    (d / "w.stol").write_text("0 10\n0.5 5\n1 1\n")
    (d / "img.smv").write_bytes(_header([("SIZE1", 4), ("SIZE2", 4), ("PIXEL_SIZE", 0.1),
                                          ("DISTANCE", 100)]) + bytes(32))
    np.full(16, 3.0, "<f4").tofile(d / "f.bin")
    (d / "panels.json").write_text(json.dumps(PANELS))
    (d / "folder").mkdir()
    return d


PANELS = {"format": "nanobrag-torch detector", "version": 1, "frame": "nanobragg",
          "defaults": {"pixel_size_mm": 0.1, "size_px": [4, 4]},
          "detector": {"name": "d", "fast": [0, 0, 1], "slow": [0, -1, 0],
                       "origin_mm": [100, 0.45, -0.45],
                       "children": [{"name": "a", "origin_mm": [0, 0, 0]},
                                    {"name": "b", "origin_mm": [0.5, 0, 0]}]}}
NUMBERS = ["1", "2", "4", "0.5", "100", "-1", "0", "1e3", "90", "-0.2"]
VALUES = NUMBERS * 3 + [
    "nan", "inf", "1e400", "x", "", "-", "1,2", "beam", "sample", "c-parity", "spec", "float32",
    "cpu", "linear", "log", "random", "F.hkl", "A.mat", "src.txt", "w.stol", "img.smv", "f.bin",
    "panels.json", "folder", "missing.txt", "out.img", "/dev/null", "floatimage.bin", "F.hkl"]


def _argvs(flags):
    """Random argvs: mostly flags followed by as many values as they take (random ones), with
    now and then a value too few or a stray word, so parsing gets past the tokenizer."""
    names = sorted((n, len(f.convs) or (6 if n in ("-cell", "-misset") else 0))
                   for f in flags for n in f.names if n != "-debug")
    value = st.sampled_from(VALUES)
    use = st.sampled_from(names).flatmap(
        lambda nv: st.tuples(st.integers(-1, 8), st.lists(value, min_size=nv[1] + 1, max_size=nv[1] + 1))
        .map(lambda t: [nv[0]] + t[1][:max(0, nv[1] + min(t[0], 0))] + (t[1][-1:] if t[0] == 1 else [])))
    stray = st.integers(0, 9).flatmap(lambda k: value.map(lambda v: [v]) if k == 0 else st.just([]))
    return st.lists(st.tuples(use, stray).map(lambda t: t[0] + t[1]), max_size=8).map(
        lambda parts: sum(parts, []))


def _fuzz_command(command, prog, argv, capsys):
    status = command.main(argv)
    out, err = capsys.readouterr()
    assert status in (0, 1, 2, 9), (argv, status, err)
    assert "Traceback" not in out + err
    if status in (1, 2):
        assert one_line_error(err, prog).startswith(f"{prog}: error: "), (argv, err)
    else:
        assert err == "", (argv, err)


def _checked_only(output_set):
    """A run replaced by its output check (no simulation starts, nothing is written)."""
    def run(cfg, *args, **kw):
        output_set(cfg).check()
        return 0
    return run




def test_flag_table_random_argvs(inputs_dir, monkeypatch, capsys):
    monkeypatch.chdir(inputs_dir)
    monkeypatch.setattr(runner, "run", _checked_only(runner.output_set))
    before = snapshot(inputs_dir)

    @settings(max_examples=400, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(argv=_argvs(cli.FLAGS) | _argvs(cli.FLAGS).map(lambda a: TINY + a))
    def check(argv):
        _fuzz_command(cli, "nanobrag-torch", argv, capsys)

    check()
    assert snapshot(inputs_dir) == before


@pytest.mark.parametrize("command, prog, base", [
    (nonbragg, "nonbragg-torch", ["-stol", "w.stol", "-detpixels", "4"]),
    (noisify, "noisify-torch", ["-floatfile", "f.bin"]),
    (floatadd, "floatadd-torch", ["f.bin", "f.bin", "sum.bin"]),
])
def test_suite_flag_tables_random_argvs(command, prog, base, inputs_dir, monkeypatch, capsys):
    monkeypatch.chdir(inputs_dir)
    monkeypatch.setattr(command, "run", _checked_only(command.output_set))
    before = snapshot(inputs_dir)

    @settings(max_examples=80, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(argv=_argvs(command.FLAGS) | _argvs(command.FLAGS).map(lambda a: base + a))
    def check(argv):
        _fuzz_command(command, prog, argv, capsys)

    check()
    assert snapshot(inputs_dir) == before


# ============================================================== input files
@pytest.mark.parametrize("flag", ["-hkl", "-mat", "-sourcefile", "-stol", "-img", "-mask"])
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_fifo_device_directory_inputs_refused(flag, kind, here, capsys):
    path = {"fifo": here / "pipe", "device": Path("/dev/zero"), "directory": here / "d"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    argv = ["-cell", "50", "-default_F", "10", flag, path] if flag != "-hkl" else ["-cell", "50", flag, path]
    before = snapshot(here)
    status, _, err = main(argv, capsys)             # returns at once: no open() blocks
    words = {"fifo": "is a FIFO (named pipe)", "device": "is a character device",
             "directory": "is a directory"}
    assert status == 1
    assert one_line_error(err).startswith(f"nanobrag-torch: error: {flag} {path}: {words[kind]}")
    assert "input files must be regular files" in err
    assert snapshot(here) == before


@pytest.mark.parametrize("flag, name, text, message", [
    ("-hkl", "F.hkl", "0 0 0 1\n1 2 x 5\n", "F.hkl:2: expected 'h k l F'"),
    ("-hkl", "F.hkl", "0 0 0 1\n\n1 2 3 nan\n", "F.hkl:3: F must be a finite number"),
    ("-hkl", "F.hkl", "0 0 0 1e999\n", "F.hkl:1:"),
    ("-mat", "A.mat", "0.02 0 0\n0 0.02 junk\n0 0 0.02\n", "A.mat:2: expected 9 numbers"),
    ("-mat", "A.mat", "0.02 0 0\n0 0.02 0\n0 0 inf\n", "A.mat:3: 'inf' is not a finite number"),
    ("-sourcefile", "s.txt", "-1 0 0 1 1e-10\n# comment\n", "s.txt:2: comment lines"),
    ("-sourcefile", "s.txt", "-1 0 0 1 1e-10\n-1 0 0 nan 1e-10\n", "s.txt:2: nan is not a finite"),
    ("-sourcefile", "s.txt", "-1 0 0 1 -1e-10\n", "s.txt:1: wavelength -1e-10 m must be > 0"),
    ("-stol", "w.stol", "0 10\nwater 5\n", "w.stol:2: expected numbers"),
    ("-stol", "w.stol", "0 10\n0.5 inf\n", "w.stol:2: inf is not a finite number"),
    ("-stol", "w.stol", "0 10\n0.5 5\n0.4 3\n", "w.stol:3: the first column must rise"),
])
def test_malformed_and_non_finite_lines_name_file_and_line(flag, name, text, message, here, capsys):
    (here / name).write_text(text)
    argv = ["-cell", "50", "-default_F", "10", "-detpixels", "4", flag, name]
    before = snapshot(here)
    status, _, err = main(argv, capsys)
    assert status == 1
    assert one_line_error(err).startswith(f"nanobrag-torch: error: {flag} {name}")
    assert message in err
    assert snapshot(here) == before


@pytest.mark.parametrize("pairs, message", [
    ([("DISTANCE", 0)], "header value DISTANCE=0 must be > 0"),
    ([("DISTANCE", -5)], "header value DISTANCE=-5 must be > 0"),
    ([("PIXEL_SIZE", "garbage")], "header value PIXEL_SIZE=garbage is not a number"),
    ([("WAVELENGTH", "nan")], "header value WAVELENGTH=nan is not a finite number"),
])
def test_bad_image_header_values(pairs, message, here, capsys):
    (here / "h.img").write_bytes(_header([("SIZE1", 4), ("SIZE2", 4)] + pairs) + bytes(32))
    status, _, err = main(["-cell", "50", "-default_F", "10", "-img", "h.img"], capsys)
    assert status == 1 and message in one_line_error(err) and "-img h.img" in err


def test_c_parity_reads_text_stol_lines_as_the_c(here, capsys):
    """modes.md row 15: c-parity keeps the C's reading of a text line (zeros)."""
    (here / "w.stol").write_text("0 10\nwater 5\n")
    cfg = cli.config_from_args(["-cell", "50", "-default_F", "1", "-stol", "w.stol",
                                "-mode", "c-parity"])
    assert cfg.background.stol_table[1].tolist() == [0.0, 5.0]


# ============================================================== outputs: inputs never overwritten
@pytest.mark.parametrize("argv", [
    ["-hkl", "F.hkl", "-floatfile", "F.hkl"],
    ["-hkl", "F.hkl", "-dump", "F.hkl"],                    # the Fdump cache over the HKL file
    ["-mat", "A.mat", "-intfile", "A.mat"],
    ["-mask", "m.img", "-noisefile", "m.img"],
    ["-hkl", "F.hkl", "-pgmfile", "hard.hkl"],              # a hard link to an input
    ["-hkl", "F.hkl", "-floatfile", "soft.hkl"],            # a symlink to an input
    ["-hkl", "F.hkl", "-floatfile", "a.bin", "-intfile", "a.bin"],
    ["-hkl", "F.hkl", "-cbffile", "x_00001.cbf", "-floatfile", "./x_00001.cbf"],
])
def test_output_equal_to_an_input_or_another_output(argv, here, capsys):
    (here / "F.hkl").write_text("0 0 0 10\n1 1 1 5\n")
    (here / "A.mat").write_text("0.02 0 0\n0 0.02 0\n0 0 0.02\n")
    (here / "m.img").write_bytes(_header([("SIZE1", 4), ("SIZE2", 4)]) + b"\1\0" * 16)
    os.link(here / "F.hkl", here / "hard.hkl")
    (here / "soft.hkl").symlink_to("F.hkl")
    os.utime(here / "F.hkl", (1e9, 1e9))
    before = snapshot(here)
    base = ["-default_F", "1", "-N", "1", "-detpixels", "4"] + ([] if "-mat" in argv else ["-cell", "50"])
    status, _, err = main(base + argv, capsys)
    line = one_line_error(err)
    assert status == 1, err
    assert ("refusing to overwrite it" in line) or ("is the same file as the output" in line)
    assert snapshot(here) == before and os.stat(here / "F.hkl").st_mtime == 1e9


# ============================================================== outputs: links, devices, names
def test_symlink_output_is_written_through_its_target(here, capsys):
    (here / "target.bin").write_bytes(b"old")
    (here / "link.bin").symlink_to("target.bin")
    (here / "dangling.img").symlink_to("new.img")
    status, _, err = main(TINY + ["-floatfile", "link.bin", "-intfile", "dangling.img", "-nopgm"],
                          capsys)
    assert status == 0, err
    assert (here / "link.bin").is_symlink() and (here / "dangling.img").is_symlink()
    assert (here / "target.bin").stat().st_size == 4 * 16
    assert (here / "new.img").stat().st_size == 512 + 2 * 16
    assert not [p for p in os.listdir(here) if p.startswith(".")]


def test_device_outputs_are_written_through_never_replaced(here, capsys):
    status, _, err = main(TINY + ["-floatfile", "/dev/null", "-intfile", "/dev/null",
                                  "-pgmfile", "/dev/null", "-noisefile", "/dev/null"], capsys)
    assert status == 0, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert os.listdir(here) == []


def test_fifo_output_without_a_reader_fails_instead_of_hanging(here, capsys):
    os.mkfifo(here / "out.pipe")
    status, _, err = main(TINY + ["-floatfile", "out.pipe"], capsys)
    assert status == 1 and "no process is reading this FIFO" in one_line_error(err)
    assert sorted(os.listdir(here)) == ["out.pipe"]


@pytest.mark.parametrize("path, message", [
    ("missing/a.bin", "the folder missing does not exist"),
    ("sub", "is a directory"),
    ("x" * 300 + ".bin", "more than the file system's limit"),
    ("sub/", "is a folder name"),
])
def test_bad_output_paths_refused_before_the_run(path, message, here, capsys):
    (here / "sub").mkdir()
    status, out, err = main(TINY + ["-floatfile", path], capsys)
    assert status == 1 and message in one_line_error(err) and "-floatfile" in err
    assert "solid angle" not in out                     # nothing was computed
    assert sorted(os.listdir(here)) == ["sub"]


def test_long_legal_names_work(here, capsys):
    name = "n" * 250
    status, _, err = main(TINY + ["-floatfile", name + ".bin", "-intfile", name[:246] + ".img",
                                  "-nopgm"], capsys)
    assert status == 0, err
    assert (here / (name + ".bin")).stat().st_size == 64
    assert not [p for p in os.listdir(here) if p.startswith(".")]
    for base in ("a", "n" * 255):
        tmp = os.path.basename(outs.temp_name(str(here / base)))
        assert len(tmp.encode()) <= 255 and tmp.startswith(".")


# ============================================================== outputs: all or nothing
def test_a_later_output_failing_leaves_no_earlier_file(here, capsys):
    """Every format and per-panel files: /dev/full (the last output, PNG) fails at commit."""
    pytest.importorskip("fabio")
    pytest.importorskip("h5py")
    pytest.importorskip("PIL")
    (here / "F.hkl").write_text("0 0 0 10\n1 1 1 5\n")
    (here / "panels.json").write_text(json.dumps(PANELS))
    (here / "image_p00.img").write_bytes(b"an older image")
    before = snapshot(here)
    status, out, err = main(["-hkl", "F.hkl", "-cell", "50", "-N", "1", "-seed", "1",
                             "-detector_json", "panels.json", "-floatfile", "image.bin",
                             "-intfile", "image.img", "-pgmfile", "image.pgm",
                             "-noisefile", "noise.img", "-cbffile", "image_00001.cbf",
                             "-nexusfile", "image.nxs", "-exptfile", "image.expt",
                             "-pngfile", "/dev/full"], capsys)
    assert status == 1
    assert one_line_error(err) == ("nanobrag-torch: error: -pngfile /dev/full: cannot write file "
                                   "(No space left on device)")
    assert "writing image_p01.img" in out and "writing dump file" in out
    assert snapshot(here) == before                     # no Fdump.bin, no image_p00/p01 file


def test_a_failing_library_writer_leaves_nothing(here, capsys, monkeypatch):
    pytest.importorskip("PIL")
    from PIL import Image as PILImage

    def full(self, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(PILImage.Image, "save", full)
    status, _, err = main(TINY + ["-pngfile", "p.png"], capsys)
    assert status == 1 and "-pngfile p.png: cannot write file (No space left" in one_line_error(err)
    assert os.listdir(here) == []


def test_a_failing_rename_puts_the_renamed_files_back(tmp_path, monkeypatch):
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    a.write_bytes(b"old a")
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.img"):
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(outs.os, "replace", replace)
    files = outs.OutputSet([("-intfile", a), ("-noisefile", b)])
    with pytest.raises(ConfigError, match="-noisefile .*b.img: cannot write file"):
        with files.staged():
            nio.write_float_image(a, np.zeros((2, 2)))
            nio.write_float_image(b, np.zeros((2, 2)))
    assert snapshot(tmp_path) == {"a.img": b"old a"}


def test_an_undeclared_write_inside_a_run_is_a_bug(tmp_path):
    files = outs.OutputSet([tmp_path / "a.bin"])
    with pytest.raises(ValueError, match="not one of the checked outputs"):
        with files.staged():
            nio.write_float_image(tmp_path / "b.bin", np.zeros((1, 1)))
    assert os.listdir(tmp_path) == []


def test_fdump_cache_written_atomically_and_kept_optional(here, capsys):
    (here / "F.hkl").write_text("0 0 0 10\n1 1 1 5\n")
    status, out, err = main(TINY + ["-hkl", "F.hkl", "-dump", "nodir/Fdump.bin"], capsys)
    assert status == 0 and "WARNING: unable to open dump file: nodir/Fdump.bin" in out
    assert sorted(os.listdir(here)) == ["F.hkl", "floatimage.bin", "image.pgm", "intimage.img",
                                        "noiseimage.img"]
    hkl = nio.read_hkl(here / "F.hkl")
    (here / "Fdump.bin").write_bytes(b"".join(fdump_chunks(hkl))[:-3])     # truncated
    status, _, err = main(["-cell", "50", "-dump", "Fdump.bin"], capsys)
    assert status == 1 and "-dump Fdump.bin" in one_line_error(err)


# ============================================================== interruption and stdout
def test_ctrl_c_while_writing_leaves_no_files(here, capsys, monkeypatch):
    def interrupted(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(writers, "write_pgm", interrupted)        # after float and SMV files
    status, out, err = main(TINY, capsys)
    assert status == 130 and "writing intimage.img" in out
    assert one_line_error(err) == "nanobrag-torch: interrupted; no files written"
    assert os.listdir(here) == []


def test_signal_during_the_renames_is_held_until_they_are_done(tmp_path, monkeypatch):
    real = os.replace
    calls = []

    def replace(src, dst):
        if not calls:
            signal.raise_signal(signal.SIGINT)
        calls.append(dst)
        return real(src, dst)
    monkeypatch.setattr(outs.os, "replace", replace)
    files = outs.OutputSet([tmp_path / "a.bin", tmp_path / "b.bin"])
    with pytest.raises(KeyboardInterrupt) as info:
        with files.staged():
            nio.write_float_image(tmp_path / "a.bin", np.zeros((1, 1)))
            nio.write_float_image(tmp_path / "b.bin", np.zeros((1, 1)))
    assert info.value.outputs_written is True and len(calls) == 2
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]
    assert entry._interrupted("p", info.value, 130) == 130


class _Broken:
    """A standard output whose writes fail like a closed pipe or a full disk."""

    def __init__(self, code):
        self.code = code

    def write(self, text):
        raise OSError(self.code, os.strerror(self.code))

    def flush(self):
        pass


@pytest.mark.parametrize("stdout, reason", [(None, "standard output is closed"),
                                            (_Broken(errno.EPIPE), "Broken pipe"),
                                            (_Broken(errno.ENOSPC), "No space left on device")])
@pytest.mark.parametrize("command, argv", [
    (cli, TINY),
    (nonbragg, ["-stol", "w.stol", "-detpixels", "4", "-seed", "1"]),
    (noisify, ["-floatfile", "f.bin", "-seed", "1"]),
    (floatadd, ["f.bin", "f.bin", "sum.bin"]),
])
def test_stdout_closed_or_full(stdout, reason, command, argv, here, capsys, monkeypatch):
    (here / "w.stol").write_text("0 10\n0.5 5\n1 1\n")
    np.full(16, 3.0, "<f4").tofile(here / "f.bin")
    before = snapshot(here)
    monkeypatch.setattr(sys, "stdout", stdout)
    status = command.main(argv)
    err = capsys.readouterr().err
    assert status == 1 and reason in one_line_error(err, command.PROG)
    assert snapshot(here) == before


@pytest.mark.parametrize("command, argv, message", [
    (nonbragg, ["-stol", "w.stol", "-detpixels", "4", "-floatfile", "w.stol"],
     "-floatfile w.stol: is the input file -stol w.stol of this run"),
    (noisify, ["-floatfile", "f.bin", "-noisefile", "f.bin"],
     "-noisefile f.bin: is the input file -floatfile f.bin of this run"),
    (floatadd, ["f.bin", "g.bin", "-outfile", "g.bin"], "-outfile g.bin: is the input file input 2"),
    (nonbragg, ["-stol", "w.stol", "-detpixels", "4", "-noisefile", "/dev/full"],
     "-noisefile /dev/full: cannot write file (No space left on device)"),
    (noisify, ["-floatfile", "f.bin", "-noisefile", "/dev/full"],
     "-noisefile /dev/full: cannot write file (No space left on device)"),
    (floatadd, ["f.bin", "g.bin", "-outfile", "/dev/full"],
     "-outfile /dev/full: cannot write file (No space left on device)"),
    (floatadd, ["f.bin", "pipe", "-outfile", "s.bin"], "pipe: is a FIFO"),
])
def test_suite_commands_outputs(command, argv, message, here, capsys):
    (here / "w.stol").write_text("0 10\n0.5 5\n1 1\n")
    np.full(16, 3.0, "<f4").tofile(here / "f.bin")
    np.full(16, 1.0, "<f4").tofile(here / "g.bin")
    os.mkfifo(here / "pipe")
    before = snapshot(here)
    status, _, err = main(argv, capsys, command)
    assert status == 1 and message in one_line_error(err, command.PROG)
    assert snapshot(here) == before


@pytest.mark.parametrize("command", [cli, nonbragg, noisify, floatadd])
def test_version(command, capsys):
    from nanobrag_torch import __version__
    for flag in ("-version", "--version"):
        assert command.main([flag]) == 0
        assert capsys.readouterr().out == f"{command.PROG} {__version__}\n"


def test_c_spellings(here, capsys):
    a = cli.config_from_args(["-cell", "50", "-default_F", "1", "-adcoffset", "10",
                              "-wavelength", "1.5"])
    assert a.output.adc == 10 and a.beam.wavelength_A == 1.5
    (here / "A.mat").write_text("0.02 0 0\n0 0.02 0\n0 0 0.02\n")
    assert cli.config_from_args(["-matrix", "A.mat", "-default_F", "1"]).crystal.mat_file == "A.mat"
    for flag, real in (("-hdiv", "-hdivrange"), ("-vdiv", "-vdivrange"), ("-detsize_x", "-detsize_f"),
                       ("-detsize_y", "-detsize_s"), ("-xdet_vector", "-fdet_vector"),
                       ("-zdet_vector", "-odet_vector"), ("-dispstep", "-dispsteps")):
        status, _, err = main(["-cell", "50", "-default_F", "1", flag, "0"], capsys)
        assert status == 2 and real in one_line_error(err) and "ignores it" in err


def _env():
    return dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")


def test_sigterm_ends_in_one_line_and_no_files(tmp_path):
    (tmp_path / "F.hkl").write_text("0 0 0 10\n1 1 1 5\n")
    argv = [sys.executable, "-m", "nanobrag_torch", "-hkl", "F.hkl", "-cell", "50", "-N", "5",
            "-detpixels", "2048", "-oversample", "4"]
    p = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # the Fdump cache is staged before the image is computed: wait for its temporary file
        while not any(n.startswith(".Fdump.bin.") for n in os.listdir(tmp_path)):
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1].decode()
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143
    assert one_line_error(err) == "nanobrag-torch: interrupted; no files written"
    assert os.listdir(tmp_path) == ["F.hkl"]


def test_closed_pipe_console_path(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "nanobrag_torch"] + TINY, cwd=tmp_path, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                                     # the reader is gone (as with | head)
    err = p.communicate(timeout=120)[1].decode()
    assert p.returncode == 1
    assert one_line_error(err) == ("nanobrag-torch: error: cannot write to standard output "
                                   "(Broken pipe); no files written")
    assert os.listdir(tmp_path) == []


def test_flags_doc_matches_the_flag_table():
    """docs/flags.md: every spelling it says we accept is a row name of cli.FLAGS, and every
    name of cli.FLAGS that is not port-only or refused appears in its table."""
    import re
    text = (REPO / "docs" / "flags.md").read_text()
    table = text.split("## Every pattern", 1)[1].split("\n## ", 1)[0]
    accepted = set()
    for row in table.splitlines():
        cols = row.split(" | ")
        if row.startswith("| `") and len(cols) >= 3:
            accepted |= set(re.findall(r"`(-[^`]+)`", cols[1]))
    names = {n: f for f in cli.FLAGS for n in f.names}
    assert accepted <= set(names)
    port_only = set(re.findall(r"`(-{1,2}[A-Za-z0-9_]+)[` ]", text.split("## Flags of this port only", 1)[1]
                               .split("\n## ", 1)[0]))
    missing = {n for n, f in names.items() if not f.hidden} - accepted - port_only
    assert not missing
