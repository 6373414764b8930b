"""The nonBragg.c and noisify.c corpora (beside the nanoBragg corpus) and their comparisons.

Corpora: $NANOBRAGG_GOLDEN/../golden_nonbragg and ../golden_noisify (default
../shared/golden_* beside the repository).  Each case runs in-process (the
command's main(argv)) in a scratch folder holding inputs/, and every output is
compared at the thresholds of ../shared/tools/parity.py: float image max|d| <=
1e-5 of max, SMV pixels within 1 count and header values equal, PGM within 1,
noise image identical in 99.9 % of pixels (c-parity) or mean within 1 % (spec),
output.stol stol/mean/rmsd/count columns to 1e-4.  In c-parity mode the console
statistics the corpus recorded (max_I, mean, rms, rmsd, scales, photons ...) are
checked too.
"""
import io
import json
import math
import os
import re
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from conftest import corpus_dir


def suite_dir(name: str) -> Path:
    """../golden_<name> beside the nanoBragg corpus ($NANOBRAGG_GOLDEN or ../shared/golden)."""
    return corpus_dir().parent / f"golden_{name}"


def suite_cases(name: str):
    path = suite_dir(name) / "cases.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["cases"]


def need_corpus(name: str) -> Path:
    path = suite_dir(name)
    if not (path / "cases.json").exists():
        pytest.skip(f"{name} corpus not found at {path} (set NANOBRAGG_GOLDEN to the nanoBragg "
                    f"corpus; golden_{name} must lie beside it)")
    return path


def read_smv(path):
    raw = Path(path).read_bytes()
    head = raw[:512].split(b"}")[0].decode("ascii", "replace")
    keys = {}
    for line in head.splitlines():
        line = line.strip().rstrip(";")
        if "=" in line:
            k, v = line.split("=", 1)
            keys[k.strip()] = v.strip()
    w, h = int(keys.get("SIZE1", 0)), int(keys.get("SIZE2", 0))
    bpp, dtype = (4, "<u4") if keys.get("TYPE") == "long_integer" else (2, "<u2")
    data = np.frombuffer(raw[len(raw) - bpp * w * h:], dtype=dtype).reshape(h, w)
    return keys, data


def read_pgm(path):
    parts = Path(path).read_bytes().split(b"\n", 4)
    w, h = (int(x) for x in parts[1].split())
    return np.frombuffer(parts[4][: w * h], dtype=np.uint8).reshape(h, w)


def same_value(a, b):
    try:
        fa = [float(x) for x in a.split(",")]
        fb = [float(x) for x in b.split(",")]
    except ValueError:
        return a == b
    return len(fa) == len(fb) and all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6) for x, y in zip(fa, fb))


def run_in(work: Path, corpus: Path, main, args):
    """main(args) in work (holding inputs/), stdout captured; returns (status, stdout)."""
    if not (work / "inputs").exists():
        (work / "inputs").symlink_to((corpus / "inputs").resolve())
    old = os.getcwd()
    os.chdir(work)
    try:
        buf = io.StringIO()
        with redirect_stdout(buf):
            status = main(args)
    finally:
        os.chdir(old)
    return status, buf.getvalue()


def compare_outputs(case, ref: Path, work: Path, mode: str, float_image: bool = True):
    """Problems (list of strings) comparing work's outputs with the corpus case ref."""
    problems = []
    if float_image:
        c_img = np.fromfile(ref / "float.bin", dtype="<f4").astype(np.float64)
        p_img = np.fromfile(work / "float.bin", dtype="<f4").astype(np.float64)
        if p_img.shape != c_img.shape:
            return [f"float image has {p_img.size} pixels, C {c_img.size}"]
        both_nan = np.isnan(c_img) & np.isnan(p_img)
        diff = np.where(both_nan, 0.0, np.abs(p_img - c_img))
        rel = np.nanmax(diff) / max(np.nanmax(np.abs(c_img)), 1e-300) if diff.size else 0.0
        if not rel <= 1e-5:
            problems.append(f"float max|d|/max = {rel:.2e} at flat index {int(np.nanargmax(diff))}")
        if mode == "c-parity" and not np.array_equal(c_img.view(np.int64), p_img.view(np.int64)):
            problems.append("float image not bit-identical in c-parity mode")
    for name in ("int.img", "noise.img"):
        if name not in case["outputs"]:
            continue
        if not (work / name).exists():
            problems.append(f"no {name} written")
            continue
        ck, cd = read_smv(ref / name)
        pk, pd = read_smv(work / name)
        bad = [k for k in ck if k not in pk or not same_value(ck[k], pk[k])]
        if bad:
            problems.append(f"{name} header: " + ", ".join(f"{k}={pk.get(k)!r} (C {ck[k]!r})" for k in bad))
        if cd.shape != pd.shape:
            problems.append(f"{name} shape {pd.shape} vs {cd.shape}")
            continue
        d = np.abs(cd.astype(np.int64) - pd.astype(np.int64))
        if name == "int.img":
            limit = 0 if mode == "c-parity" else 1
            if d.max() > limit:
                problems.append(f"int.img max |d| = {d.max()} counts at (s, f) = "
                                f"{np.unravel_index(np.argmax(d), d.shape)}")
        elif mode == "c-parity":
            same = (d == 0).mean()
            if same < 0.999:
                problems.append(f"noise.img identical in only {same:.4f} of pixels")
        else:
            ratio = pd.astype(np.float64).mean() / max(cd.astype(np.float64).mean(), 1e-300)
            if abs(ratio - 1) > 0.01:
                problems.append(f"noise.img mean ratio {ratio:.4f}")
    if "image.pgm" in case["outputs"]:
        if not (work / "image.pgm").exists():
            problems.append("no image.pgm written")
        else:
            d = np.abs(read_pgm(ref / "image.pgm").astype(int) - read_pgm(work / "image.pgm").astype(int))
            if d.max() > 1:
                problems.append(f"image.pgm max |d| = {d.max()}")
    if "output.stol" in case["outputs"]:
        cr = [[float(x) for x in ln.split()] for ln in (ref / "output.stol").read_text().splitlines()]
        pr = [[float(x) for x in ln.split()] for ln in (work / "output.stol").read_text().splitlines()]
        if len(cr) != len(pr):
            problems.append(f"output.stol has {len(pr)} lines, C {len(cr)}")
        else:
            for c, p in zip(cr, pr):
                if not all(math.isclose(c[k], p[k], rel_tol=1e-4, abs_tol=1e-6) for k in (0, 1, 2, 5)):
                    problems.append(f"output.stol line {c} vs {p}")
                    break
    return problems


def compare_stats(case, stdout: str, patterns: dict):
    """Console statistics against the corpus's (cases.json "stats"), to 1e-5 relative."""
    problems = []
    for key, pat in patterns.items():
        if key not in case["stats"]:
            continue
        m = re.search(pat, stdout, re.M)
        if not m:
            problems.append(f"no {key} line in the console output")
            continue
        got, want = float(m.group(1)), case["stats"][key]
        if not (math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-300) or (math.isnan(got) and math.isnan(want))):
            problems.append(f"{key} = {got:g}, C {want:g}")
    return problems
