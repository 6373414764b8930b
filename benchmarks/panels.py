"""Cost of a multi-panel render against one panel of the same pixel count (issue 14).

    python benchmarks/panels.py [--pixels 512] [--panels 16] [--repeats 5]

One panel of N x N pixels, and a sqrt(P) x sqrt(P) grid of P panels of N/sqrt(P) pixels
each with 1 mm gaps, at the same distance; the same crystal. Both are rendered alternately
(warm, without gradients, the same kernel path), best of `repeats`; the ratio is what the
panels cost.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import nanobrag_torch as nb
from nanobrag_torch.experiment import apply_detector
from nanobrag_torch.instrument import Detector, Panel

ARGS = ["-cell", "70", "80", "90", "75", "85", "95", "-misset", "10", "20", "30", "-default_F", "100",
        "-N", "8", "-lambda", "1", "-distance", "100", "-pixel", "0.1", "-oversample", "2",
        "-mosaic", "0.2", "-mosaic_domains", "5", "-noprogress"]


def grid(n_side: int, pixels: int, px_m: float, gap_m: float, distance_m: float) -> Detector:
    pitch = pixels * px_m + gap_m
    half = n_side * pitch / 2
    return Detector(tuple(
        Panel(fast=(0.0, 0.0, 1.0), slow=(0.0, -1.0, 0.0),
              origin_m=(distance_m, half - r * pitch, c * pitch - half), size_px=(pixels, pixels),
              pixel_size_m=(px_m, px_m), name=f"panel_{r}_{c}")
        for r in range(n_side) for c in range(n_side)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixels", type=int, default=512)
    ap.add_argument("--panels", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    side = int(round(math.sqrt(a.panels)))
    one = nb.config_from_args(ARGS + ["-detpixels", str(a.pixels)])
    many = nb.config_from_args(ARGS + ["-detpixels", str(a.pixels)])
    apply_detector(many, grid(side, a.pixels // side, 1e-4, 1e-3, 0.1))
    sims = {"1 panel": nb.Simulator(one), f"{side * side} panels": nb.Simulator(many)}
    best = {k: math.inf for k in sims}
    with torch.no_grad():
        for sim in sims.values():
            sim.run()                                  # warm-up
        for _ in range(a.repeats):
            for name, sim in sims.items():
                t = time.perf_counter()
                sim.run()
                best[name] = min(best[name], time.perf_counter() - t)
    for name, t in best.items():
        print(f"{name:>10}: {t:.3f} s ({sims[name].evaluations / t:.3g} evaluations/s)")
    names = list(best)
    print(f"ratio {names[1]} / {names[0]}: {best[names[1]] / best[names[0]]:.3f} "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
