#!/usr/bin/env python
"""Side-by-side performance of nanobrag-torch and an optimised nanoBragg.c build.

One command runs the shared workloads (../shared/bench/cases.json) and, for each
workload, measures:

  C-2thr    the C build named by NB_C_BIN (or --c-bin), OMP_NUM_THREADS=2, whole
            process; its columns are skipped when no C build is given or found
  ours-f64  our code in float64 (and ours-f32 in float32), on the same cores:
              process  `nanobrag-torch ARGS -noprogress -nonoise -nopgm -floatfile F
                        -intfile I` (one warm-up run, then the timed run(s))
              API      config_from_args + Simulator(mode="spec"), in a fresh
                        subprocess per (workload, dtype): the first sim.run() (cold)
                        and then the timed sim.run() (warm)
              parity   our float image against the C reference image of the case
                        (cases/<id>/float.bin): max|d| / max|ref|, FAIL above the
                        dtype's tolerance

It prints a table and writes all the numbers plus the machine description as JSON
(default benchmarks/results/<YYYYMMDD-HHMMSS>.json).  Only the standard library,
numpy and torch are used.  Run it with the project's Python (the one that has
nanobrag_torch installed), e.g.

    NB_C_BIN=/path/to/nanoBragg .venv/bin/python benchmarks/run.py
    .venv/bin/python benchmarks/run.py --quick --cases b_mosaic_phi     # smoke test
    NB_C_BIN=/path/to/nanoBragg .venv/bin/python benchmarks/run.py cold   # first runs (cold.py)

--quick renders only a centred ROI covering 1/16 of each detector (-roi), scales
the evaluation counts to it and checks parity on the ROI pixels only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_BENCH = REPO.parent / "shared" / "bench"
DTYPES = ("float64", "float32")
TOLERANCE = {"float64": 1e-5, "float32": 1e-3}      # max|d| / max|ref|
IMPL_NAME = {"float64": "ours-f64", "float32": "ours-f32"}
COMMON_FLAGS = ["-noprogress", "-nonoise", "-nopgm"]


# --------------------------------------------------------------------------
# workloads

@dataclass
class Workload:
    id: str
    args: List[str]
    evals: int                 # evaluations for the rendered pixels (ROI-scaled in quick mode)
    fpixels: int
    spixels: int
    roi: Optional[tuple] = None        # (xmin, xmax, ymin, ymax) inclusive, fast = x
    c_wall_s_1thr: Optional[float] = None

    @property
    def run_args(self) -> List[str]:
        if self.roi is None:
            return list(self.args)
        return list(self.args) + ["-roi"] + [str(v) for v in self.roi]


def quick_roi(fpixels: int, spixels: int) -> tuple:
    """A centred ROI of (fpixels/4) x (spixels/4) pixels: 1/16 of the detector."""
    wf, ws = max(1, fpixels // 4), max(1, spixels // 4)
    x0, y0 = (fpixels - wf) // 2, (spixels - ws) // 2
    return (x0, x0 + wf - 1, y0, y0 + ws - 1)


def load_workloads(bench: Path, ids: Optional[List[str]], quick: bool) -> List[Workload]:
    cases = json.loads((bench / "cases.json").read_text())["cases"]
    known = [c["id"] for c in cases]
    if ids:
        unknown = [i for i in ids if i not in known]
        if unknown:
            sys.exit(f"unknown case id(s) {unknown}; known: {known}")
        cases = [c for c in cases if c["id"] in ids]
    out = []
    for c in cases:
        nf, ns = int(c["stats"]["fpixels"]), int(c["stats"]["spixels"])
        w = Workload(c["id"], list(c["args"]), int(c["evals"]), nf, ns,
                     c_wall_s_1thr=c.get("c_wall_s"))
        if quick:
            w.roi = quick_roi(nf, ns)
            x0, x1, y0, y1 = w.roi
            # evals = pixels x (per-pixel work): scale by the rendered fraction
            w.evals = int(round(c["evals"] * (x1 - x0 + 1) * (y1 - y0 + 1) / (nf * ns)))
        out.append(w)
    return out


@contextlib.contextmanager
def scratch_root(prefix: str, keep: bool):
    """A new temporary folder for a benchmark's runs: removed afterwards unless keep."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        if keep:
            print(f"scratch folders kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def scratch_dir(root: Path, name: str, bench: Path) -> Path:
    """A fresh run directory holding `inputs` -> the shared inputs (args name inputs/FILE)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "inputs").symlink_to((bench / "inputs").resolve())
    return d


# --------------------------------------------------------------------------
# running a process: wall time and peak RSS

@dataclass
class ProcResult:
    wall_s: float
    maxrss_kib: Optional[int]
    returncode: int
    timed_out: bool
    log: str
    cpu_s: Optional[float] = None          # user + system CPU seconds of the command
    busy_s: Optional[float] = None         # CPU seconds spent on our cores by anyone meanwhile

    @property
    def other_load(self) -> Optional[float]:
        """Fraction of our cores' capacity used by other processes during the run."""
        if self.cpu_s is None or self.busy_s is None or self.wall_s <= 0:
            return None
        return max(0.0, self.busy_s - self.cpu_s) / (self.wall_s * len(our_cpus()))


# The peak RSS must come from a small intermediate process: Linux carries a process's
# ru_maxrss across exec, so a child spawned straight from this (large) Python process
# would report at least this process's own RSS.  GNU time (fork + exec from a ~1 MiB
# process) is used where present, else this launcher (~5 MiB floor).
PY_LAUNCHER = """
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    f.write(f"{wall!r} {ru.ru_utime + ru.ru_stime!r} {ru.ru_maxrss}")
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""


def gnu_time() -> Optional[str]:
    """/usr/bin/time if it is GNU time (-f %M -o FILE work), else None."""
    exe = "/usr/bin/time"
    if not os.access(exe, os.X_OK):
        return None
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "t"
        try:
            subprocess.run([exe, "-f", "%M", "-o", str(out), "true"], capture_output=True,
                           timeout=30, check=True)
            int(out.read_text().split()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None
    return exe


_GNU_TIME = None


def rss_method() -> str:
    global _GNU_TIME
    if _GNU_TIME is None:
        _GNU_TIME = "" if os.environ.get("NB_BENCH_NO_GNU_TIME") else (gnu_time() or "")
    return "gnu-time" if _GNU_TIME else "python-launcher"


def run_process(cmd: List[str], cwd: Path, env: dict, timeout_s: float, log_name: str) -> ProcResult:
    """Run cmd to completion: wall seconds from spawn to exit and the peak RSS (KiB)."""
    log_path, rss_path = cwd / log_name, cwd / (log_name + ".maxrss")
    rss_path.unlink(missing_ok=True)
    if rss_method() == "gnu-time":
        full = [_GNU_TIME, "-f", "%U %S %M", "-o", str(rss_path)] + cmd
    else:
        full = [sys.executable, "-S", "-c", PY_LAUNCHER, str(rss_path)] + cmd
    busy0 = busy_cpu_s()
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        killed = threading.Event()

        def kill():
            killed.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    busy1 = busy_cpu_s()
    maxrss = cpu = None
    try:
        # GNU time: "[Command exited with non-zero status N]\nUSER SYS MAXRSS";
        # the launcher: "WALL CPU MAXRSS" (its own wall time: no Python startup)
        lines = rss_path.read_text().strip().splitlines()
        words = lines[-1].split()
        maxrss = int(words[-1])
        if _GNU_TIME:
            cpu = float(words[0]) + float(words[1])
        else:
            wall, cpu = float(words[0]), float(words[1])
    except (OSError, ValueError, IndexError):
        pass
    text = log_path.read_text(errors="replace")
    busy = None if busy0 is None or busy1 is None else busy1 - busy0
    return ProcResult(wall, maxrss, proc.returncode, killed.is_set(), text[-2000:], cpu, busy)


def our_cpus() -> List[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def busy_cpu_s() -> Optional[float]:
    """Non-idle CPU seconds so far on the cores we run on (/proc/stat), None if unreadable."""
    try:
        want = {f"cpu{i}" for i in our_cpus()}
        tick = os.sysconf("SC_CLK_TCK")
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines():
            f = line.split()
            if f and f[0] in want:
                vals = [int(v) for v in f[1:]]
                busy += sum(vals[:8]) - vals[3] - vals[4]      # minus idle and iowait
        return busy / tick
    except (OSError, ValueError, IndexError):
        return None


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def timed_process_runs(cmd, cwd, env, timeout_s, repeat, label) -> dict:
    """One warm-up run, then `repeat` timed runs; the best wall time and the largest peak RSS."""
    out = {"cmd": cmd, "warmup_s": None, "times_s": [], "maxrss_kib": [], "cpu_s": [],
           "other_load": [], "error": None}
    warm = run_process(cmd, cwd, env, timeout_s, f"{label}.warmup.log")
    out["warmup_s"] = warm.wall_s
    if warm.timed_out or warm.returncode != 0:
        out["error"] = describe_failure(warm, timeout_s)
        return out
    for i in range(repeat):
        r = run_process(cmd, cwd, env, timeout_s, f"{label}.run{i}.log")
        if r.timed_out or r.returncode != 0:
            out["error"] = describe_failure(r, timeout_s)
            return out
        out["times_s"].append(r.wall_s)
        out["maxrss_kib"].append(r.maxrss_kib)
        out["cpu_s"].append(r.cpu_s)
        out["other_load"].append(r.other_load)
    out["wall_s"] = min(out["times_s"])
    rss = [v for v in out["maxrss_kib"] if v is not None]
    out["peak_rss_mib"] = max(rss) / 1024.0 if rss else None
    return out


def describe_failure(r: ProcResult, timeout_s: float) -> str:
    if r.timed_out:
        return f"timed out after {timeout_s:g} s"
    tail = " | ".join(r.log.strip().splitlines()[-3:])
    return f"exit status {r.returncode}: {tail}"


# --------------------------------------------------------------------------
# measurements

def our_command() -> List[str]:
    exe = Path(sys.executable).parent / "nanobrag-torch"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("nanobrag-torch")
    return [found] if found else [sys.executable, "-m", "nanobrag_torch"]


def measure_c_process(w: Workload, c_bin: str, cwd: Path, opts) -> dict:
    cmd = [c_bin] + w.run_args + COMMON_FLAGS + ["-floatfile", "float.bin", "-intfile", "int.img"]
    res = timed_process_runs(cmd, cwd, child_env(opts.threads), opts.timeout, opts.repeat, "c")
    res["image"] = str(cwd / "float.bin")
    return res


def measure_our_process(w: Workload, dtype: str, cwd: Path, opts) -> dict:
    cmd = our_command() + w.run_args + COMMON_FLAGS + [
        "-floatfile", "float.bin", "-intfile", "int.img", "-dtype", dtype]
    if opts.device != "cpu":
        cmd += ["-device", opts.device]
    res = timed_process_runs(cmd, cwd, child_env(opts.threads), opts.timeout, opts.repeat, "ours")
    res["image"] = str(cwd / "float.bin")
    return res


def measure_our_api(w: Workload, dtype: str, cwd: Path, opts) -> dict:
    """Cold and warm sim.run() times, in a fresh subprocess (see api_worker)."""
    job = {"args": w.run_args, "dtype": dtype, "device": opts.device, "threads": opts.threads,
           "repeat": opts.repeat, "result": str(cwd / "api.json"), "image": str(cwd / "api.npy")}
    (cwd / "api_job.json").write_text(json.dumps(job))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_api-worker", str(cwd / "api_job.json")]
    r = run_process(cmd, cwd, child_env(opts.threads), opts.timeout * (1 + opts.repeat), "api.log")
    if r.timed_out or r.returncode != 0:
        return {"error": describe_failure(r, opts.timeout * (1 + opts.repeat))}
    res = json.loads((cwd / "api.json").read_text())
    res["peak_rss_mib"] = None if r.maxrss_kib is None else r.maxrss_kib / 1024.0
    res["process_wall_s"] = r.wall_s
    res["process_cpu_s"] = r.cpu_s
    res["process_other_load"] = r.other_load
    res["other_load"] = res.get("warm_other_load", r.other_load)
    res["image"] = job["image"]
    return res


def api_worker(job_path: str) -> None:
    """Runs in its own process: set up, run once cold, then time warm run(s)."""
    job = json.loads(Path(job_path).read_text())
    t_start = time.perf_counter()
    import torch
    import nanobrag_torch
    torch.set_num_threads(job["threads"])
    t_import = time.perf_counter() - t_start
    device, dtype = job["device"], job["dtype"]
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    extra = ["-dtype", dtype] + (["-device", device] if device != "cpu" else [])

    t0 = time.perf_counter()
    cfg = nanobrag_torch.config_from_args(job["args"] + extra)
    sim = nanobrag_torch.Simulator(cfg, dtype=dtype, mode="spec", device=device)
    sync()
    t_setup = time.perf_counter() - t0
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        image = sim.run().pixels
        sync()
        cold = time.perf_counter() - t0
        warm, other = [], []
        for _ in range(job["repeat"]):
            sync()
            busy0, cpu0 = busy_cpu_s(), self_cpu_s()
            t0 = time.perf_counter()
            image = sim.run().pixels
            sync()
            warm.append(time.perf_counter() - t0)
            busy1, cpu1 = busy_cpu_s(), self_cpu_s()
            if busy0 is not None and busy1 is not None:
                other.append(max(0.0, (busy1 - busy0) - (cpu1 - cpu0)) / (warm[-1] * len(our_cpus())))
    np.save(job["image"], image.detach().to("cpu").numpy())
    out = {"import_s": t_import, "setup_s": t_setup, "cold_s": cold, "warm_times_s": warm,
           "warm_s": min(warm), "warm_other_load": max(other) if other else None,
           "torch_threads": torch.get_num_threads(),
           "device": str(sim.device)}
    if cuda:
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(job["result"]).write_text(json.dumps(out))


def parity(image_path: str, w: Workload, bench: Path) -> dict:
    """max|ours - ref| / max|ref| over the rendered pixels (the ROI in quick mode)."""
    p = Path(image_path)
    if not p.exists():
        return {"error": f"no image {p}"}
    if p.suffix == ".npy":
        img = np.load(p).astype(np.float64)
    else:
        img = np.fromfile(p, dtype="<f4").astype(np.float64)
    ref = np.fromfile(bench / "cases" / w.id / "float.bin", dtype="<f4").astype(np.float64)
    n = w.spixels * w.fpixels
    if img.size != n or ref.size != n:
        return {"error": f"size mismatch: image {img.size}, reference {ref.size}, expected {n}"}
    img, ref = img.reshape(w.spixels, w.fpixels), ref.reshape(w.spixels, w.fpixels)
    if w.roi is not None:
        x0, x1, y0, y1 = w.roi
        img, ref = img[y0:y1 + 1, x0:x1 + 1], ref[y0:y1 + 1, x0:x1 + 1]
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(img - ref)))
    rel = diff / scale if scale > 0 else diff
    return {"max_abs_diff": diff, "ref_max": scale, "rel_err": rel, "source": p.name}


# --------------------------------------------------------------------------
# one workload

def bench_workload(w: Workload, opts, root: Path) -> List[dict]:
    rows = []
    c_row = None
    if opts.c_bin:
        print(f"[{w.id}] C-{opts.threads}thr: process ...", flush=True)
        d = scratch_dir(root, f"{w.id}-c", opts.bench)
        c_row = {"workload": w.id, "impl": f"C-{opts.threads}thr", "dtype": None,
                 "evals": w.evals, "process": measure_c_process(w, opts.c_bin, d, opts)}
        proc = c_row["process"]
        if not proc.get("error"):
            c_row["parity"] = parity(proc["image"], w, opts.bench)
            c_row["evals_per_s"] = w.evals / proc["wall_s"]
        rows.append(c_row)
    for dtype in opts.dtypes:
        row = {"workload": w.id, "impl": IMPL_NAME[dtype], "dtype": dtype, "evals": w.evals,
               "device": opts.device}
        if not opts.skip_process:
            print(f"[{w.id}] {row['impl']}: process ...", flush=True)
            d = scratch_dir(root, f"{w.id}-{dtype}-process", opts.bench)
            row["process"] = measure_our_process(w, dtype, d, opts)
        if not opts.skip_api:
            print(f"[{w.id}] {row['impl']}: API ...", flush=True)
            d = scratch_dir(root, f"{w.id}-{dtype}-api", opts.bench)
            row["api"] = measure_our_api(w, dtype, d, opts)
        finish_row(row, w, c_row, opts)
        rows.append(row)
    if c_row is not None:
        finish_status(c_row, "float64")
    return rows


def finish_row(row: dict, w: Workload, c_row: Optional[dict], opts) -> None:
    """Rate, ratios to the C, parity (from the process image; the API image when skipped)."""
    proc, api = row.get("process") or {}, row.get("api") or {}
    if api.get("warm_s"):
        row["evals_per_s"] = w.evals / api["warm_s"]
        row["rate_source"] = "api_warm"
    elif proc.get("wall_s"):
        row["evals_per_s"] = w.evals / proc["wall_s"]
        row["rate_source"] = "process"
    for src in (proc, api):
        if src.get("image") and not src.get("error"):
            row["parity"] = parity(src["image"], w, opts.bench)
            break
    if c_row is not None:
        cp = c_row.get("process") or {}
        if cp.get("wall_s") and proc.get("wall_s"):
            row["ratio_process"] = cp["wall_s"] / proc["wall_s"]
        if c_row.get("evals_per_s") and row.get("evals_per_s"):
            row["ratio_rate"] = row["evals_per_s"] / c_row["evals_per_s"]
    finish_status(row, row["dtype"])


def finish_status(row: dict, dtype: str) -> None:
    errors = [f"{k}: {row[k]['error']}" for k in ("process", "api", "parity")
              if isinstance(row.get(k), dict) and row[k].get("error")]
    par = row.get("parity") or {}
    row["tolerance"] = TOLERANCE[dtype]
    if errors:
        row["status"], row["errors"] = "ERROR", errors
    elif "rel_err" in par and not par["rel_err"] <= TOLERANCE[dtype]:
        row["status"] = "FAIL"
    else:
        row["status"] = "ok"


# --------------------------------------------------------------------------
# report

COLUMNS = [("workload", 24), ("impl", 9), ("process s", 10), ("API cold s", 10),
           ("API warm s", 10), ("cold-warm", 9), ("evals/s", 9), ("xC proc", 8),
           ("xC rate", 8), ("RSS MiB", 8), ("max|d|/max", 10), ("other%", 6), ("", 6)]


def row_other_load(row: dict) -> Optional[float]:
    """The largest share of our cores used by other processes during the row's timed runs."""
    vals = list((row.get("process") or {}).get("other_load") or [])
    vals.append((row.get("api") or {}).get("other_load"))
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table_line(row: dict) -> List[str]:
    proc, api = row.get("process") or {}, row.get("api") or {}
    cold, warm = api.get("cold_s"), api.get("warm_s")
    rss = proc.get("peak_rss_mib", api.get("peak_rss_mib"))
    rate = row.get("evals_per_s")
    rate_s = "-" if rate is None else f"{rate:.3g}" + ("*" if row.get("rate_source") == "process"
                                                      and row["dtype"] else "")
    return [row["workload"], row["impl"], fmt(proc.get("wall_s"), ".2f"), fmt(cold, ".2f"),
            fmt(warm, ".2f"), fmt(None if cold is None else cold - warm, ".2f"), rate_s,
            fmt(row.get("ratio_process"), ".3f"), fmt(row.get("ratio_rate"), ".3f"),
            fmt(rss, ".0f"), fmt((row.get("parity") or {}).get("rel_err"), ".2e"),
            fmt(None if row_other_load(row) is None else 100 * row_other_load(row), ".0f"),
            row.get("status", "")]


def print_table(rows: List[dict]) -> None:
    head = "  ".join(f"{name:>{w}}" if i > 1 else f"{name:<{w}}"
                     for i, (name, w) in enumerate(COLUMNS))
    print(head)
    print("-" * len(head))
    for row in rows:
        cells = table_line(row)
        print("  ".join(f"{c:>{w}}" if i > 1 else f"{c:<{w}}"
                        for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))))
    print("process s: whole process, best timed run after one warm-up; API: sim.run() in a fresh "
          "process, cold = first run, warm = best later run")
    print("evals/s: API warm for ours (* = process, API skipped), process for the C; "
          "xC proc = C s / ours s, xC rate = ours evals/s / C evals/s (> 1: ours faster)")
    print("RSS: peak of the timed process (API subprocess when skipped); max|d|/max: float image "
          f"vs the C reference, tolerance {TOLERANCE['float64']:g} (f64) / {TOLERANCE['float32']:g} (f32)")
    print("other%: the largest share of the benchmark's cores that other processes used during "
          "a timed run (whole process; for the API, the warm sim.run())")
    loads = [v for v in map(row_other_load, rows) if v is not None]
    if loads and max(loads) > 0.10:
        print(f"WARNING: other processes used up to {100 * max(loads):.0f}% of the benchmark's "
              "cores during timed runs: the timings are not reliable")
    for row in rows:
        for e in row.get("errors", []):
            print(f"  {row['workload']} {row['impl']}: {e}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(opts) -> dict:
    import torch
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_used": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "threads": opts.threads, "torch": torch.__version__, "numpy": np.__version__,
            "device": opts.device, "c_bin": opts.c_bin, "rss_method": rss_method(),
            "loadavg_at_start": os.getloadavg()}
    if opts.device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(opts.device))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        info["git_commit"], info["src_dirty"] = rev or None, bool(dirty)
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------
# main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", metavar="ID", help="workload ids (default: all)")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N for our rows (default cpu)")
    p.add_argument("--repeat", type=int, default=1, help="best of N timed runs (default 1)")
    p.add_argument("--skip-process", action="store_true", help="no whole-process runs of ours")
    p.add_argument("--skip-api", action="store_true", help="no API (steady-state) runs")
    p.add_argument("--c-bin", help="nanoBragg.c build (default: $NB_C_BIN)")
    p.add_argument("--quick", action="store_true", help="render a centred ROI of 1/16 of each detector")
    p.add_argument("--threads", type=int, default=2, help="threads and cores for every run (default 2)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per process run (default 3600)")
    p.add_argument("--bench", type=Path, default=Path(os.environ.get("NB_BENCH_DIR", DEFAULT_BENCH)),
                   help=f"the shared workloads (default $NB_BENCH_DIR or {DEFAULT_BENCH})")
    p.add_argument("--json", type=Path, help="where to write the JSON "
                   "(default benchmarks/results/<YYYYMMDD-HHMMSS>.json)")
    p.add_argument("--keep", action="store_true", help="keep the scratch run directories")
    p.add_argument("--_api-worker", dest="api_worker", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.repeat < 1:
        p.error("--repeat must be >= 1")
    return opts


def resolve_c_bin(opts) -> Optional[str]:
    path = opts.c_bin or os.environ.get("NB_C_BIN")
    if not path:
        print("note: NB_C_BIN is not set (and no --c-bin): the C columns are skipped")
        return None
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        print(f"note: C build {path!r} not found or not executable: the C columns are skipped")
        return None
    return os.path.abspath(path)


def pin_cores(threads: int) -> None:
    """Run everything (children inherit it) on the same `threads` cores."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < threads:
        print(f"note: only {len(cpus)} cores available for {threads} threads")
        return
    os.sched_setaffinity(0, cpus[:threads])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cold"]:        # the first-run table: benchmarks/cold.py
        import cold
        return cold.main(argv[1:])
    opts = parse_args(argv)
    if opts.api_worker:
        api_worker(opts.api_worker)
        return 0
    opts.bench = opts.bench.resolve()
    opts.c_bin = resolve_c_bin(opts)
    pin_cores(opts.threads)
    workloads = load_workloads(opts.bench, opts.cases, opts.quick)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    info = machine_info(opts)
    print(f"{info['cpu_model']}, cores {info['cpus_used']}, {opts.threads} threads, "
          f"torch {info['torch']}, device {opts.device}" + (", QUICK (1/16 ROI)" if opts.quick else ""))
    rows = []
    t0 = time.time()
    with scratch_root("nb-bench-", opts.keep) as root:
        for w in workloads:
            rows.extend(bench_workload(w, opts, root))
    print()
    print_table(rows)
    result = {"timestamp": stamp, "elapsed_s": time.time() - t0, "machine": info,
              "settings": {"quick": opts.quick, "repeat": opts.repeat, "dtypes": opts.dtypes,
                           "device": opts.device, "threads": opts.threads,
                           "skip_process": opts.skip_process, "skip_api": opts.skip_api,
                           "timeout_s": opts.timeout, "bench": str(opts.bench),
                           "tolerance": TOLERANCE, "argv": sys.argv[1:]},
              "workloads": [{"id": w.id, "args": w.run_args, "evals": w.evals, "roi": w.roi,
                             "c_wall_s_1thr_reference": w.c_wall_s_1thr} for w in workloads],
              "results": rows}
    path = opts.json or HERE / "results" / f"{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"\nJSON: {path}")
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
