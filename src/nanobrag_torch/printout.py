"""-printout / -printout_pixel F S: the C's per-pixel console lines (SPEC 6.6).

For each rendered pixel (or only the one named) the C prints, after the
pixel is done, the values its loop variables hold at that moment: those of
the last evaluation (last layer, subpixel, source, phi step and mosaic
domain), the accumulated I, and the factors applied. The kernel records its
intermediates in the C's order, so "last" is the final element.
"""
from __future__ import annotations

import math

import torch

from .kernel import RunState, render_pixels

CHUNK = 256          # pixels per recording pass: the record holds every evaluation


def print_pixels(image, out) -> None:
    """Print the C's -printout block for the requested pixels of an Image."""
    setup = image.setup
    cfg = image.config
    s_all, f_all = setup.pixels_s, setup.pixels_f
    if cfg.output.printout_pixel is not None:
        f_want, s_want = cfg.output.printout_pixel
        keep = (s_all == s_want) & (f_all == f_want)
        s_all, f_all = s_all[keep], f_all[keep]
    pixels = image.pixels
    lambda0 = float(cfg.beam.wavelength_A)
    # the sticky run state is settled by the full run; record with it as it ended
    state = image.state if image.state is not None else RunState()
    with torch.no_grad():
        for start in range(0, s_all.numel(), CHUNK):
            s_idx, f_idx = s_all[start:start + CHUNK], f_all[start:start + CHUNK]
            rec = render_pixels(s_idx, f_idx, setup.plan, state, record=True).record
            for i in range(s_idx.numel()):
                # the C prints the stored float32 pixel
                pixel = float(pixels[s_idx[i], f_idx[i]].to(torch.float32))
                _print_one(out, rec, i, int(s_idx[i]), int(f_idx[i]), pixel, setup, lambda0)


def _print_one(out, rec, i, s, f, pixel, setup, lambda0):
    P = rec["P"][i].reshape(-1, 3)[-1]                          # last layer and subpixel
    q = rec["q"][i].reshape(-1, 3)[-1]                          # ... and last source
    stol = 0.5 * float(torch.sqrt((q * q).sum()))               # 1/m, as the C prints it
    twotheta = math.atan2(math.sqrt(float(P[1]) ** 2 + float(P[2]) ** 2), float(P[0]))
    hkl = rec["hkl"][i].reshape(-1, 3)[-1]
    hkl0 = rec["hkl0"][i].reshape(-1, 3)[-1]
    F_latt = float(rec["F_latt"][i].reshape(-1)[-1])
    F_cell = float(rec["F_cell"][i].reshape(-1)[-1])
    I = float(rec["I"][i])
    polar = float(rec["held_polar"].reshape(-1)[i if rec["held_polar"].numel() > 1 else 0])
    omega = float(rec["omega"][i].reshape(-1)[0])
    capture = float(rec["capture"][i].reshape(-1)[-1])
    cell = setup.plan.cells[-1] * 1e10                          # rows a, b, c of the last rotation
    say = lambda text: print(text, file=out)  # noqa: E731
    say("%4d %4d : stol = %g or %g" % (f, s, stol, math.sin(twotheta / 2.0) / lambda0))
    say("at %g %g %g" % tuple(float(x) for x in P))
    say("hkl= %f %f %f  hkl0= %d %d %d" % (tuple(float(x) for x in hkl) + tuple(int(x) for x in hkl0)))
    say(" F_cell=%g  F_latt=%g   I = %g" % (F_cell, F_latt, I))
    say("I/steps %15.10g" % (I / setup.steps))
    say("polar   %15.10g" % polar)
    say("omega   %15.10g" % omega)
    say("capfrac %15.10g" % capture)
    say("pixel   %15.10g" % pixel)
    say("real-space cell vectors (Angstrom):")
    say("     %-10s  %-10s  %-10s" % ("a", "b", "c"))
    for j, axis in enumerate("XYZ"):
        say("%s: %11.8f %11.8f %11.8f" % (axis, float(cell[0, j]), float(cell[1, j]), float(cell[2, j])))
