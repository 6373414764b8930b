#!/usr/bin/env python
"""Many images: throughput of our batches and sweeps against the C looped once per image.

Side by side in one run (issue 12's measurements), on the cores given to it:

  (a) serial batch   `nanobrag-torch ARGS -shots N -seed 1` (one process, the first
                     compile included; --fresh-cache: a new empty NANOBRAGG_CACHE_DIR, so
                     the compile is really paid) against the C run once per shot in a loop,
                     each shot's orientation given to the C as a -mat file written from our
                     manifest's A matrix (the same crystal orientations)
  (b) rotation sweep `nanobrag-torch ARGS -misset 10 20 30 -nimages M -phi 0 -osc 0.1
                     -phisteps 1` against the C looped over -phi i*0.1 (-osc 0.1 -phisteps 1)
  (c) Dask workers   the batch of (a) with -workers 1 and with -workers 2 (skipped when this
                     tree has no -workers or dask is not installed)

ARGS (issue 12): -cell 50 60 70 90 90 90 -hkl P1.hkl -lambda 1 -N 10 -distance 100
-pixel 0.1 -detpixels 512 -mosaic 0.1 -mosaic_domains 10 -oversample 2 -nonoise -nopgm.
The C is the build named by NB_C_BIN (or --c-bin), run with OMP_NUM_THREADS=2 (--threads).
Times are whole-process wall clock (the C: the sum of its processes). Prints a markdown
table. Full size: --shots 200 --images 90 (the defaults); a quick run:

    NB_C_BIN=/path/to/nanoBragg .venv/bin/python benchmarks/many.py --shots 20 --images 10
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HKL_DEFAULT = ROOT.parent / "shared" / "golden" / "inputs" / "P1.hkl"


def base_args(hkl, pixels):
    return ["-cell", "50", "60", "70", "90", "90", "90", "-hkl", str(hkl), "-lambda", "1",
            "-N", "10", "-distance", "100", "-pixel", "0.1", "-detpixels", str(pixels),
            "-mosaic", "0.1", "-mosaic_domains", "10", "-oversample", "2", "-nonoise", "-nopgm"]


def ours_cmd():
    exe = Path(sys.executable).with_name("nanobrag-torch")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nanobrag_torch"]


def timed(cmd, cwd, env):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"many.py: failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}")
    return dt


def write_mat(path, row):
    """A -mat file from a manifest row: the 9 numbers A11 ... A33 as three lines."""
    a = [row[f"A{i}{j}"] for i in (1, 2, 3) for j in (1, 2, 3)]
    Path(path).write_text("".join(" ".join(a[3 * i:3 * i + 3]) + "\n" for i in range(3)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=200, help="shots of the serial batch (issue: 200)")
    ap.add_argument("--images", type=int, default=90, help="images of the rotation sweep (issue: 90)")
    ap.add_argument("--pixels", type=int, default=512, help="detector pixels per side (issue: 512)")
    ap.add_argument("--hkl", default=str(HKL_DEFAULT), help="the P1 HKL file")
    ap.add_argument("--c-bin", default=os.environ.get("NB_C_BIN"), help="nanoBragg.c build (env NB_C_BIN)")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the C (default 2)")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="our runs start from an empty NANOBRAGG_CACHE_DIR (the compile is paid)")
    ap.add_argument("--no-workers", action="store_true", help="skip (c), the 1 vs 2 Dask workers")
    ap.add_argument("--keep", help="keep the outputs in this folder (default: a temporary one)")
    a = ap.parse_args(argv)
    if not Path(a.hkl).is_file():
        sys.exit(f"many.py: --hkl: no such file {a.hkl}")
    c_bin = a.c_bin if a.c_bin and Path(a.c_bin).is_file() else None

    work = Path(a.keep or tempfile.mkdtemp(prefix="nb-many-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(a.threads)
    args = base_args(Path(a.hkl).resolve(), a.pixels)
    rows = []

    def ours_env(tag):
        e = dict(env)
        if a.fresh_cache:
            e["NANOBRAGG_CACHE_DIR"] = str(work / f"cache-{tag}")
        return e

    # (a) serial batch
    d = work / "batch"
    d.mkdir(exist_ok=True)
    t_ours = timed(ours_cmd() + args + ["-shots", str(a.shots), "-seed", "1", "-noprogress",
                                        "-floatfile", "f.bin", "-intfile", "i.img", "-manifest", "m.csv"],
                   d, ours_env("batch"))
    t_c = None
    if c_bin:
        with open(d / "m.csv", newline="") as fh:
            manifest = list(csv.DictReader(fh))
        cargs = [x for x in args]
        i = cargs.index("-cell")
        del cargs[i:i + 7]                       # the -mat file gives the cell and orientation
        t_c = 0.0
        for row in manifest:
            write_mat(d / "A.mat", row)
            t_c += timed([c_bin] + cargs + ["-mat", "A.mat", "-floatfile", "c.bin", "-intfile", "c.img"],
                         d, env)
    rows.append((f"serial batch, {a.shots} shots", a.shots, t_c, t_ours))

    # (b) rotation sweep
    d = work / "sweep"
    d.mkdir(exist_ok=True)
    sw = ["-misset", "10", "20", "30", "-osc", "0.1", "-phisteps", "1"]
    t_ours = timed(ours_cmd() + args + sw + ["-nimages", str(a.images), "-phi", "0", "-noprogress",
                                             "-floatfile", "f.bin", "-intfile", "i.img"],
                   d, ours_env("sweep"))
    t_c = None
    if c_bin:
        t_c = sum(timed([c_bin] + args + sw + ["-phi", repr(round(0.1 * i, 10)), "-floatfile", "c.bin",
                                               "-intfile", "c.img"], d, env) for i in range(a.images))
    rows.append((f"rotation sweep, {a.images} x 0.1 deg", a.images, t_c, t_ours))

    # (c) 1 vs 2 Dask workers
    workers = []
    if not a.no_workers:
        import importlib.util
        have = importlib.util.find_spec("distributed") is not None and "-workers" in subprocess.run(
            ours_cmd() + ["-help"], env=env, capture_output=True, text=True).stdout
        if have:
            for w in (1, 2):
                d = work / f"workers{w}"
                d.mkdir(exist_ok=True)
                t = timed(ours_cmd() + args + ["-shots", str(a.shots), "-seed", "1", "-noprogress",
                                              "-workers", str(w), "-floatfile", "f.bin", "-intfile", "i.img",
                                              "-manifest", "m.csv"], d, ours_env(f"w{w}"))
                workers.append((w, t))
        else:
            print("(c) skipped: no -workers in this tree or dask.distributed not installed", file=sys.stderr)

    per_h = lambda n, t: f"{3600 * n / t:,.0f}" if t else "n/a"  # noqa: E731
    sec = lambda t: f"{t:.1f}" if t else "n/a"  # noqa: E731
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"{a.pixels}^2 px, mosaic 0.1 deg x 10 domains, oversample 2, C with OMP_NUM_THREADS={a.threads}"
          f"{', fresh compile cache' if a.fresh_cache else ''}\n")
    print("| workload | C once per image: s | C images/h | ours: s | ours images/h | ours / C |")
    print("|---|---|---|---|---|---|")
    for name, n, tc, to in rows:
        ratio = f"{tc / to:.2f}x" if tc else "n/a"
        print(f"| {name} | {sec(tc)} | {per_h(n, tc)} | {sec(to)} | {per_h(n, to)} | {ratio} |")
    if workers:
        print("\n| Dask workers (batch of (a)) | s | images/h |")
        print("|---|---|---|")
        for w, t in workers:
            print(f"| {w} | {t:.1f} | {per_h(a.shots, t)} |")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
