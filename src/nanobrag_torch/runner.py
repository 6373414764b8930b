"""The command-line run: simulate, print the C's log, write the image files.

Nothing is written until the image is computed, and each file is written
whole (io writes to a temporary name, then renames), so a failed run leaves
no half-written outputs.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

from . import console, writers
from .config import SimConfig
from .errors import ConfigError
from .image import panel_path
from .simulator import Simulator, SuspiciousValueWarning


def run(cfg: SimConfig, out=None) -> int:
    """Run the simulation described by cfg as the CLI does; returns the exit status."""
    from . import io
    out = out or sys.stdout
    for note in cfg.notes:
        print(note, file=out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SuspiciousValueWarning)
        sim = Simulator(cfg)
    for warning in sim.warnings:      # legal but suspicious values: once, on stderr
        print(f"nanobrag-torch: warning: {warning}", file=sys.stderr)
    console.print_setup(sim.static, sim.config, out)
    if cfg.crystal.hkl_file is not None:
        try:
            io.write_fdump(cfg.crystal.dump_file, cfg.crystal.hkl)
            console.say(out, f"writing dump file for next time: {cfg.crystal.dump_file}")
        except ConfigError:     # as the C: a cache that cannot be written is not fatal
            console.say(out, f"WARNING: unable to open dump file: {cfg.crystal.dump_file}")

    o = cfg.output
    show_progress = o.progress and not o.printout
    with torch.no_grad():
        image = sim.run(progress=console.progress_printer(out) if show_progress else None)
    image.check_finite()            # nothing is written from an image that overflowed
    for warning in image.warnings:
        print(warning, file=out)
    if o.printout:
        from .printout import print_pixels
        print_pixels(image, out)
    stats = image.stats
    omega = image.solid_angle_sr
    print(file=out)
    print(f"solid angle subtended by detector = {omega:g} steradian ( {100 * omega / 4 / np.pi:g}% sphere)",
          file=out)
    if o.trace_pixel is not None:
        from .trace import trace_pixel
        trace_pixel(sim, image, *o.trace_pixel, out=out)

    S, F = image.shape[-2:]
    P = image.panel_count
    files = (lambda path: [panel_path(path, i) for i in range(P)]) if P > 1 else (lambda path: [path])
    for path in files(o.floatfile):
        print(f"writing {path} as {S * F} 4-byte floats", file=out)
    writers.write_float(o.floatfile, image)
    print(f"max_I = {stats.max_I:g}  at {stats.max_I_x:g} {stats.max_I_y:g}", file=out)
    print(f"mean= {stats.mean:g} rms= {stats.rms:g} rmsd= {stats.rmsd:g}", file=out)
    if P > 1:
        for i, panel in enumerate(cfg.detector.panels):
            st = image.panel(i).stats
            print(f"panel {i:02d} ({panel.name}): max_I= {st.max_I:g} mean= {st.mean:g} "
                  f"rms= {st.rms:g} rmsd= {st.rmsd:g}", file=out)
    print(f"intfile_scale = {writers.int_scale(image):g}", file=out)
    for path in files(o.intfile):
        print(f"writing {path} as 2-byte integers", file=out)
    writers.write_smv(o.intfile, image)
    if o.write_pgm:
        print(f"pgm_scale = {writers.pgm_scale(image):g}", file=out)
        for path in files(o.pgmfile):
            print(f"writing {path} as 1-byte integers", file=out)
        writers.write_pgm(o.pgmfile, image)
    noise = None
    if o.write_noise:
        noise = writers.noise_counts(image)
        print(f"{noise.photons:.0f} photons on noise image ({noise.overloads} overloads)", file=out)
        for path in files(o.noisefile):
            print(f"writing {path} as 2-byte integers", file=out)
        writers.write_noise(o.noisefile, image, noise=noise)
    # CBF, NeXus and PNG (port-only): after the C's files, from the same image and noise
    what = "photon counts with Poisson noise" if noise is not None else "photon counts (no noise)"
    if o.cbffile is not None:
        print(f"writing {o.cbffile} as miniCBF ({what})", file=out)
        writers.write_cbf(o.cbffile, image, noise=noise)
    if o.nexusfile is not None:
        print(f"writing {o.nexusfile} as NeXus/NXmx ({what})", file=out)
        writers.write_nexus(o.nexusfile, image, noise=noise)
    if o.exptfile is not None:
        from .experiment import experiment_from_config
        from .io.expt import write_expt
        print(f"writing {o.exptfile} as a DIALS experiment list", file=out)
        write_expt(o.exptfile, experiment_from_config(image.config, image.mode))
    if o.pngfile is not None:
        print(f"writing {o.pngfile} as PNG preview ({o.png_scale} scale)", file=out)
        writers.write_png(o.pngfile, image)
    return 0
