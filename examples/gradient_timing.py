"""Forward and backward times and peak memory of gradient runs on the shared benchmark workloads.

    python examples/gradient_timing.py                      # workloads b and c at -detpixels 128
    python examples/gradient_timing.py --cases b_mosaic_phi --detpixels 256 --paths eager

For each workload and kernel path (eager; compiled = torch.compile) one fresh process
measures: the forward pass without gradients, the forward pass with gradients (cell,
misset, distance and wavelength as tensors with requires_grad) and the backward pass
(torch.autograd.grad of the image sum), warm (the best of --repeats after one untimed
run, which for the compiled path includes compiling); peak memory is the process's
peak resident set size (ru_maxrss). Workloads: ../shared/bench/cases.json, inputs
from ../shared/bench/inputs (run in a scratch folder holding an `inputs` link).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("NANOBRAGG_BENCH", REPO.parent / "shared" / "bench"))

CHILD = r'''
import json, resource, sys, time
import torch
import nanobrag_torch as nb

args, compile_, dtype, repeats = json.loads(sys.argv[1])
dtype = getattr(torch, dtype)
cfg = nb.config_from_args(args)
sim = nb.Simulator(cfg, dtype=dtype, compile=compile_)
out = {"evaluations": sim.evaluations}
with torch.no_grad():
    t = time.perf_counter(); image0 = sim.run().pixels; out["first_forward_s"] = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); sim.run().pixels; times.append(time.perf_counter() - t)
out["forward_nograd_s"] = min(times)
params = [torch.tensor([70.0, 80, 90, 75, 85, 95], dtype=torch.float64, requires_grad=True),
          torch.tensor([10.0, 20, 30], dtype=torch.float64, requires_grad=True),
          torch.tensor(100.0, dtype=torch.float64, requires_grad=True),
          torch.tensor(1.0, dtype=torch.float64, requires_grad=True)]
cfg.crystal.cell, cfg.crystal.misset_deg, cfg.detector.distance_mm, cfg.beam.wavelength_A = params
fwd, bwd = [], []
for rep in range(repeats + 1):
    t = time.perf_counter(); image = sim.run().pixels; f = time.perf_counter() - t
    t = time.perf_counter(); grads = torch.autograd.grad(image.sum(), params); b = time.perf_counter() - t
    if rep == 0:
        out["first_forward_grad_s"], out["first_backward_s"] = f, b     # compiles on the compiled path
    else:
        fwd.append(f); bwd.append(b)
    assert torch.equal(image.detach(), image0) and all(torch.isfinite(g).all() for g in grads)
    del image, grads
out["forward_grad_s"], out["backward_s"] = min(fwd), min(bwd)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
'''


def measure(args, compile_: bool, dtype: str, repeats: int, workdir: Path) -> dict:
    cmd = [sys.executable, "-c", CHILD, json.dumps([args, compile_, dtype, repeats])]
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="*", default=["b_mosaic_phi", "c_divergence_dispersion"])
    ap.add_argument("--detpixels", type=int, default=128)
    ap.add_argument("--paths", nargs="*", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--repeats", type=int, default=3)
    opts = ap.parse_args(argv)
    cases = {c["id"]: c for c in json.loads((BENCH / "cases.json").read_text())["cases"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "inputs").symlink_to((BENCH / "inputs").resolve())
        for case in opts.cases:
            args = list(cases[case]["args"])
            args[args.index("-detpixels") + 1] = str(opts.detpixels)
            for path in opts.paths:
                r = measure(args, path == "compiled", opts.dtype, opts.repeats, work)
                r.update(case=case, path=path, ratio=r["backward_s"] / r["forward_grad_s"])
                rows.append(r)
                print(f"{case:24s} {path:8s} {r['evaluations'] / 1e6:6.1f}M evals"
                      f"  forward {r['forward_nograd_s']:.3f} s"
                      f" (with grad {r['forward_grad_s']:.3f} s)  backward {r['backward_s']:.3f} s"
                      f"  backward/forward {r['ratio']:.2f}  peak RSS {r['peak_rss_mb']:.0f} MB"
                      f"  first run with grad {r['first_forward_grad_s'] + r['first_backward_s']:.1f} s",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
