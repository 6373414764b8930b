#!/usr/bin/env python
"""First-run ("cold") performance of nanobrag-torch beside nanoBragg.c, measured in one run.

Per workload and dtype, side by side (ratios from one run): C (NB_C_BIN or --c-bin, whole
process, OMP_NUM_THREADS=2); fresh (`nanobrag-torch ARGS -noprogress -nonoise -nopgm -floatfile
F -dtype D`, whole process, NANOBRAGG_CACHE_DIR a new empty folder); warmed process (the same,
with a cache holding only what `-warmup` builds); first run() and steady (the first and second
sim.run() of config_from_args + Simulator in a fresh Python process, warmed cache); import
(`python -c "import nanobrag_torch"`, median of 3, exiting with os._exit as the CLI does). Peak RSS of our processes, and parity of
our float images against the C's. Details: benchmarks/README.md.

    NB_C_BIN=/path/to/nanoBragg .venv/bin/python benchmarks/cold.py
    .venv/bin/python benchmarks/cold.py --quick --cases e1 e3 --skip-fresh    # smoke test
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as steady  # noqa: E402  (benchmarks/run.py: process runner, RSS, machine helpers)

SHARED = HERE.parent.parent / "shared"
GOLDEN = SHARED / "golden"
TOLERANCE = steady.TOLERANCE
COMMON = ["-noprogress", "-nonoise", "-nopgm", "-floatfile", "float.bin"]
EVERYDAY = {
    "e1": "-cell 100 100 100 90 90 90 -default_F 100 -N 10 -lambda 1 -distance 100 -detpixels 512 -oversample 2",
    "e2": "-cell 70 80 90 75 85 95 -hkl inputs/P1.hkl -N 5 -lambda 1 -distance 100 -detpixels 256 "
          "-mosaic 0.5 -mosaic_domains 10 -phi 1 -phisteps 5 -osc 0.5 -oversample 2",
    "e3": "-cell 70 80 90 75 85 95 -default_F 100 -N 5 -lambda 1 -distance 100 -detpixels 256 -hdivrange 0.5 "
          "-hdivsteps 5 -vdivrange 0.5 -vdivsteps 5 -dispersion 0.2 -dispsteps 3 -oversample 2",
    "e4": "-mat inputs/A.mat -hkl inputs/P1.hkl -N 5 -distance 100 -detpixels 1024 -mosaic 0.5 "
          "-mosaic_domains 5 -water 50 -oversample 2",
    "e5": "-cell 70 80 90 75 85 95 -hkl inputs/P1.hkl -N 5 -lambda 1 -distance 100 -detpixels 512 "
          "-oversample 1 -detector_thick 300 -detector_thicksteps 4 -phi 1 -phisteps 3 -osc 0.3",
}
# -phi 1 where there are phi steps: from -phi 0 the C reuses the previous pixel's rotated
# cell (docs/modes.md, the phi carryover), which spec mode corrects: the images would differ
# where spec mode differs from the C by design, the parity check runs ours once more in c-parity
# mode (untimed): e4's water background is physical in spec mode, the C's divides it by the
# step count (docs/modes.md row 16: here 5 domains x 4 subpixels, a factor 20)
PARITY_MODE = {"e4": "c-parity"}
_SWEEP_BASE = "-cell 70 80 90 75 85 95 -hkl inputs/P1.hkl -lambda 1 -distance 100 -mosaic 0.5 -phi 1 -osc 0.5"
SWEEP = [f"{_SWEEP_BASE} -N {n} -mosaic_domains {m} -phisteps {p} -detpixels {d} -oversample {o}"
         for n, m, p, d, o in [(5, 10, 5, 256, 2), (10, 5, 3, 384, 1), (3, 20, 2, 512, 1),
                               (8, 10, 5, 320, 3), (5, 2, 10, 448, 2), (12, 8, 4, 512, 2)]]
ORIG_ENV = dict(os.environ)


def workloads(quick: bool) -> list:
    """(name, [argv, ...], inputs folder): the bench cases, e1..e5 and the six-run sweep."""
    cases = json.loads((SHARED / "bench" / "cases.json").read_text())["cases"]
    out = [(c["id"], [list(c["args"])], SHARED / "bench") for c in cases]
    out += [(k, [v.split()], GOLDEN) for k, v in EVERYDAY.items()]
    out.append(("sweep", [s.split() for s in SWEEP], GOLDEN))
    if quick:          # every detector 64 x 64
        out = [(n, [[("64" if i and a[i - 1].startswith("-detpixels") else x) for i, x in enumerate(a)]
                    for a in argvs], inp) for n, argvs, inp in out]
    return out


def env_for(cache) -> dict:
    env = steady.child_env(2)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)       # follows NANOBRAGG_CACHE_DIR
    if cache is not None:
        env["NANOBRAGG_CACHE_DIR"] = str(cache)
    return env


def processes(cmds: list, inputs: Path, root: Path, label: str, env: dict, opts) -> dict:
    """Each command once, in its own scratch folder: wall times, total, peak RSS, images."""
    runs = []
    for i, cmd in enumerate(cmds):
        d = steady.scratch_dir(root, f"{label}-{i}", inputs)
        r = steady.run_process(cmd, d, env, opts.timeout, "log")
        err = steady.describe_failure(r, opts.timeout) if r.timed_out or r.returncode else None
        runs.append({"cmd": cmd, "wall_s": r.wall_s, "cpu_s": r.cpu_s, "other_load": r.other_load,
                     "rss_mib": None if r.maxrss_kib is None else r.maxrss_kib / 1024,
                     "image": str(d / "float.bin"), "error": err})
    ok = all(r["error"] is None for r in runs)
    rss = [r["rss_mib"] for r in runs if r["rss_mib"] is not None]
    return {"runs": runs, "wall_s": sum(r["wall_s"] for r in runs) if ok else None,
            "peak_rss_mib": max(rss) if rss else None,
            "error": None if ok else next(r["error"] for r in runs if r["error"])}


def api(argvs: list, dtype: str, inputs: Path, root: Path, label: str, env: dict, opts) -> dict:
    """The first and the second sim.run() of each argv, all in one fresh process (worker)."""
    d = steady.scratch_dir(root, label, inputs)
    (d / "job.json").write_text(json.dumps({"items": argvs, "dtype": dtype}))
    r = steady.run_process([sys.executable, str(Path(__file__).resolve()), "--_worker", str(d)],
                           d, env, opts.timeout * 3 * len(argvs), "log")
    if r.timed_out or r.returncode:
        return {"error": steady.describe_failure(r, opts.timeout * 3 * len(argvs))}
    res = json.loads((d / "result.json").read_text())
    items = res["items"]
    res.update(first_s=sum(i["first_s"] for i in items), steady_s=sum(i["steady_s"] for i in items),
               setup_s=sum(i["setup_s"] for i in items), evaluations=sum(i["evaluations"] for i in items),
               process_wall_s=r.wall_s, other_load=r.other_load, error=None,
               peak_rss_mib=None if r.maxrss_kib is None else r.maxrss_kib / 1024)
    return res


def worker(folder: str) -> None:
    """In a fresh process: for each argv, config_from_args, Simulator, first run(), second run()."""
    d = Path(folder)
    job = json.loads((d / "job.json").read_text())
    t0 = time.perf_counter()
    import torch
    import nanobrag_torch as nb
    torch.set_num_threads(2)
    out = {"import_s": time.perf_counter() - t0, "items": []}
    with torch.no_grad():
        for i, argv in enumerate(job["items"]):
            t0 = time.perf_counter()
            sim = nb.Simulator(nb.config_from_args(argv + ["-dtype", job["dtype"]]))
            t1 = time.perf_counter()
            try:
                cached = bool(sim.renderer(sim.static).kernels_cached())
            except Exception:                   # private API: informative only
                cached = None
            t2 = time.perf_counter()
            image = sim.run().pixels
            t3 = time.perf_counter()
            image = sim.run().pixels
            t4 = time.perf_counter()
            np.save(d / f"api{i}.npy", image.numpy())
            out["items"].append({"setup_s": t1 - t0, "first_s": t3 - t2, "steady_s": t4 - t3,
                                 "evaluations": int(sim.evaluations), "kernels_cached": cached,
                                 "would_build": bool(sim.compile), "image": str(d / f"api{i}.npy")})
    (d / "result.json").write_text(json.dumps(out))


def rel_err(ours: str, c_image: str) -> dict:
    """max|ours - C| / max|C| of two float images (-floatfile raw float32, or .npy)."""
    try:
        a = np.load(ours) if ours.endswith(".npy") else np.fromfile(ours, dtype="<f4")
        c = np.fromfile(c_image, dtype="<f4").astype(np.float64)
    except OSError as e:
        return {"error": str(e)}
    a = a.astype(np.float64).ravel()
    if a.size != c.size:
        return {"error": f"size mismatch: ours {a.size}, C {c.size}"}
    scale = float(np.max(np.abs(c)))
    diff = float(np.max(np.abs(a - c)))
    return {"rel_err": diff / scale if scale > 0 else diff, "max_abs_diff": diff}


def warm_cache(root: Path, opts) -> tuple:
    """A new folder holding only aoti/<key>.so of warmup.feature_sets(), from the user's cache."""
    user = Path(ORIG_ENV.get("NANOBRAGG_CACHE_DIR", Path.home() / ".cache" / "nanobrag-torch"))
    print(f"warmed cache: `nanobrag-torch -warmup` into {user} (a no-op when built) ...", flush=True)
    env = steady.child_env(2)
    env["NANOBRAGG_CACHE_DIR"] = str(user)
    r = steady.run_process(steady.our_command() + ["-warmup"], root, env, 3 * 3600, "warmup.log")
    if r.timed_out or r.returncode:
        sys.exit(f"-warmup failed: {steady.describe_failure(r, 3 * 3600)}")
    import warnings
    from nanobrag_torch import warmup           # the only nanobrag_torch import in this process
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hkl = warmup._hkl_file(Path(tmp))
        keys = [k for _, flags in warmup.feature_sets() for k in warmup._key_of(flags.format(hkl=hkl))]
    os.environ.clear()
    os.environ.update(ORIG_ENV)                 # compiled.py sets TORCHINDUCTOR_CACHE_DIR
    folder = root / "warm-cache"
    (folder / "aoti").mkdir(parents=True)
    missing = [k for k in keys if not (user / "aoti" / f"{k}.so").exists()]
    for k in keys:
        if k not in missing:
            shutil.copyfile(user / "aoti" / f"{k}.so", folder / "aoti" / f"{k}.so")
    if missing:
        print(f"WARNING: {len(missing)} warmup kernel(s) not in {user}: {missing}")
    return folder, {"warmup_s": r.wall_s, "keys": keys, "missing": missing, "source": str(user)}


def bench_row(name, argvs, inputs, dtypes, root, warm, import_s, opts) -> list:
    c = None
    if opts.c_bin:
        print(f"[{name}] C ...", flush=True)
        c = processes([[opts.c_bin] + a + COMMON for a in argvs], inputs, root, f"{name}-c",
                      steady.child_env(2), opts)
    rows = []
    for dtype in dtypes:
        tag = f"{name}-{dtype}"
        cmds = [steady.our_command() + a + COMMON + ["-dtype", dtype] for a in argvs]
        row = {"workload": name, "dtype": dtype, "args": argvs, "c": c, "fresh": None}
        if not opts.skip_fresh:
            print(f"[{name} {dtype}] fresh process ...", flush=True)
            empty = root / f"{tag}-empty-cache"
            empty.mkdir()
            row["fresh"] = processes(cmds, inputs, root, f"{tag}-fresh", env_for(empty), opts)
        print(f"[{name} {dtype}] warmed process, first run() ...", flush=True)
        row["warmed_process"] = processes(cmds, inputs, root, f"{tag}-warm", env_for(warm), opts)
        row["api"] = api(argvs, dtype, inputs, root, f"{tag}-api", env_for(warm), opts)
        if name in PARITY_MODE and c:
            mode = PARITY_MODE[name]
            print(f"[{name} {dtype}] {mode} process for the parity check ...", flush=True)
            row["parity_mode"] = mode
            row["parity_process"] = processes([cmd + ["-mode", mode] for cmd in cmds], inputs, root,
                                              f"{tag}-{mode}", env_for(warm), opts)
        finish(row, import_s * len(argvs))
        rows.append(row)
    return rows


def finish(row: dict, import_s: float) -> None:
    c, wp, a = row["c"] or {}, row["warmed_process"], row["api"]
    cs, ps, first, st = c.get("wall_s"), wp.get("wall_s"), a.get("first_s"), a.get("steady_s")
    ev = a.get("evaluations")
    div = lambda x, y: x / y if x is not None and y else None       # noqa: E731
    row.update(evaluations=ev, import_s=import_s, above_startup_s=None if ps is None else ps - import_s,
               c_over_first=div(cs, first), c_over_process=div(cs, ps), steady_evals_per_s=div(ev, st),
               c_over_above_startup=div(cs, None if ps is None else ps - import_s),
               c_evals_per_s=div(ev, cs), steady_x_c=div(cs, st))
    par, errors = [], [f"{k}: {v['error']}" for k in ("c", "fresh", "warmed_process", "api")
                       if (v := row.get(k)) and v.get("error")]
    if c and not c.get("error") and row.get("parity_mode"):
        for i, r in enumerate(row["parity_process"].get("runs", [])):
            if not r["error"]:
                par.append(dict(rel_err(r["image"], c["runs"][i]["image"]), of=f"{row['parity_mode']}[{i}]"))
        errors += [f"{row['parity_mode']}: {row['parity_process']['error']}"] if row["parity_process"].get(
            "error") else []
    elif c and not c.get("error"):
        for kind in ("fresh", "warmed_process"):
            for i, r in enumerate((row.get(kind) or {}).get("runs", [])):
                if not r["error"]:
                    par.append(dict(rel_err(r["image"], c["runs"][i]["image"]), of=f"{kind}[{i}]"))
        for i, it in enumerate(a.get("items", [])):
            par.append(dict(rel_err(it["image"], c["runs"][i]["image"]), of=f"api[{i}]"))
    errors += [f"parity {p['of']}: {p['error']}" for p in par if "error" in p]
    row["parity"] = par
    row["max_rel_err"] = max((p["rel_err"] for p in par if "rel_err" in p), default=None)
    row["kernels_cached"] = [it["kernels_cached"] for it in a.get("items", [])]
    row["errors"] = errors
    bad = row["max_rel_err"] is not None and not row["max_rel_err"] <= TOLERANCE[row["dtype"]]
    row["status"] = "ERROR" if errors else "FAIL" if bad else "ok"


COLS = [("workload", 16), ("evals", 9), ("C s", 7), ("fresh s", 7), ("proc s", 7), ("-import", 7),
        ("1st run", 7), ("steady", 7), ("C/1st", 6), ("C/p-i", 6), ("C/proc", 6), ("ev/s", 8),
        ("xC ev/s", 7), ("RSS MiB", 7), ("max|d|/C", 8), ("cached", 6), ("", 5)]


def line(row: dict) -> list:
    f = lambda v, s: "-" if v is None else format(v, s)             # noqa: E731
    cached = row["kernels_cached"]
    short = {"float64": "f64", "float32": "f32"}[row["dtype"]]
    return [f"{row['workload']} {short}", f(row["evaluations"], ".3g"), f((row["c"] or {}).get("wall_s"), ".2f"),
            f((row["fresh"] or {}).get("wall_s"), ".2f"), f(row["warmed_process"].get("wall_s"), ".2f"),
            f(row["above_startup_s"], ".2f"), f(row["api"].get("first_s"), ".3f"),
            f(row["api"].get("steady_s"), ".3f"), f(row["c_over_first"], ".2f"),
            f(row["c_over_above_startup"], ".2f"), f(row["c_over_process"], ".2f"),
            f(row["steady_evals_per_s"], ".3g"), f(row["steady_x_c"], ".2f"),
            f(row["warmed_process"].get("peak_rss_mib"), ".0f"), f(row["max_rel_err"], ".1e"),
            "-" if not cached or None in cached else f"{sum(cached)}/{len(cached)}", row["status"]]


def print_table(rows: list, import_s: float) -> None:
    cells = lambda vals: "  ".join(f"{v:<{w}}" if i == 0 else f"{v:>{w}}"    # noqa: E731
                                   for i, (v, (_, w)) in enumerate(zip(vals, COLS)))
    head = cells([n for n, _ in COLS])
    print(head + "\n" + "-" * len(head))
    for row in rows:
        print(cells(line(row)))
    print(f"seconds; import = `import nanobrag_torch; os._exit` = {import_s:.2f} s (median of 3); "
          "proc = warmed cache, whole process; -import = proc minus import (x6 for the sweep)")
    print("1st run / steady: first / second sim.run() in a fresh process, warmed cache; C/x = C s / "
          "ours s (> 1: ours faster); xC ev/s = steady evals/s / the C process's evals/s")
    if any(row.get("parity_mode") for row in rows):
        print("max|d|/C of " + ", ".join(f"{r['workload']}" for r in rows if r.get("parity_mode"))
              + ": our image in -mode " + "/".join(sorted({r["parity_mode"] for r in rows if r.get("parity_mode")}))
              + " (spec mode differs from the C there by design: PARITY_MODE in cold.py)")
    print("RSS: peak of the warmed process; max|d|/C: worst of our images vs the C image, tolerance "
          f"{TOLERANCE['float64']:g} (f64) / {TOLERANCE['float32']:g} (f32); cached: runs finding their kernels")
    loads = [r["other_load"] for row in rows for k in ("c", "fresh", "warmed_process")
             for r in (row.get(k) or {}).get("runs", []) if r.get("other_load") is not None]
    if loads and max(loads) > 0.10:
        print(f"WARNING: other processes used up to {100 * max(loads):.0f}% of our cores: timings noisy")
    for row in rows:
        for e in row["errors"]:
            print(f"  {row['workload']} {row['dtype']}: {e}")


def machine(opts) -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_model": steady.cpu_model(),
            "cpu_count": os.cpu_count(), "cpus_used": steady.our_cpus(), "threads": 2,
            "torch": importlib.metadata.version("torch"), "numpy": np.__version__,
            "c_bin": opts.c_bin, "rss_method": steady.rss_method(), "loadavg_at_start": os.getloadavg()}
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True).stdout  # noqa
    info["git_commit"], info["src_dirty"] = git("rev-parse", "HEAD").strip() or None, bool(
        git("status", "--porcelain", "--", "src").strip())
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", metavar="NAME", help="workloads: bench ids (or a, b, c, d), "
                   "e1..e5, sweep (default: all)")
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default="float64")
    p.add_argument("--skip-fresh", action="store_true", help="no empty-cache runs (each new feature "
                   "set there costs a kernel build, about a minute, or an eager run)")
    p.add_argument("--quick", action="store_true", help="every detector 64x64 (smoke test)")
    p.add_argument("--c-bin", help="nanoBragg.c build (default: $NB_C_BIN)")
    p.add_argument("--warm-cache", type=Path, metavar="DIR", help="an existing warmed cache folder")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per process (default 3600)")
    p.add_argument("--json", type=Path, help="default benchmarks/results/cold-<YYYYMMDD-HHMMSS>.json")
    p.add_argument("--keep", action="store_true", help="keep the scratch folders")
    p.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.worker:
        worker(opts.worker)
        return 0
    all_loads = workloads(opts.quick)
    if opts.cases:
        match = lambda n, c: n == c or n.startswith(c + "_")          # noqa: E731
        unknown = [c for c in opts.cases if not any(match(n, c) for n, _, _ in all_loads)]
        if unknown:
            p.error(f"unknown case(s) {unknown}; known: {[n for n, _, _ in all_loads]}")
        all_loads = [w for w in all_loads if any(match(w[0], c) for c in opts.cases)]
    dtypes = ["float64", "float32"] if opts.dtype == "both" else [opts.dtype]
    opts.c_bin = steady.resolve_c_bin(opts)
    steady.pin_cores(2)
    stamp, info, t_start = time.strftime("%Y%m%d-%H%M%S"), machine(opts), time.time()
    print(f"{info['cpu_model']}, cores {info['cpus_used']}, torch {info['torch']}"
          + (", QUICK (64x64 detectors)" if opts.quick else ""), flush=True)
    with steady.scratch_root("nb-cold-", opts.keep) as root:
        if opts.warm_cache:
            warm, warm_info = opts.warm_cache.resolve(), {"source": str(opts.warm_cache.resolve())}
            if not (warm / "aoti").is_dir():
                print(f"WARNING: {warm} has no aoti/ folder: the warmed runs will find no kernels")
        else:
            warm, warm_info = warm_cache(root, opts)
        # one untimed run first (page cache), then the median of 3; os._exit as the CLI ends
        imp = processes([[sys.executable, "-c", "import os, nanobrag_torch; os._exit(0)"]] * 4, GOLDEN, root, "import",
                        env_for(warm), opts)
        if imp["error"]:
            sys.exit(f"import nanobrag_torch failed: {imp['error']}")
        import_s = statistics.median(r["wall_s"] for r in imp["runs"][1:])
        rows = []
        for name, argvs, inputs in all_loads:
            rows += bench_row(name, argvs, inputs, dtypes, root, warm, import_s, opts)
    print()
    print_table(rows, import_s)
    result = {"timestamp": stamp, "elapsed_s": time.time() - t_start, "machine": info,
              "settings": {"argv": sys.argv[1:] if argv is None else argv, "quick": opts.quick,
                           "dtypes": dtypes, "skip_fresh": opts.skip_fresh, "timeout_s": opts.timeout,
                           "tolerance": TOLERANCE},
              "warm_cache": warm_info, "import": imp, "import_s": import_s, "results": rows}
    path = opts.json or HERE / "results" / f"cold-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nJSON: {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
