"""Rotation sweeps: N images of one crystal turning about the spindle (-nimages N).

    import nanobrag_torch as nb
    cfg = nb.config_from_args(["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100",
                               "-N", "5", "-detpixels", "64", "-phi", "10", "-osc", "0.5",
                               "-phisteps", "4"])
    for i, image in enumerate(nb.sweep(cfg, 90)):    # one Image at a time
        nb.write_cbf(nb.sweep_path("image.cbf", i), image)   # image_00001.cbf, ...

Image i (from 0) is the image of a single run with `-phi START + i*WIDTH`, bit for bit,
in both modes: WIDTH is the oscillation of one image (-osc, as in nanoBragg.c, or
-phistep x -phisteps when -osc is not given) and -phisteps stays the number of steps
within each image. Every image is rendered afresh by one Simulator (the static plan,
structure factors and compiled kernel are made once), so c-parity's phi carryover
(docs/modes.md row 1) starts anew in every image exactly as in its own single run.

The images are yielded one at a time: a 3,600-image sweep never holds more than one.
Files are numbered from 1 (name_00001.ext), the template DIALS and XDS expect.

Noise: image i draws from seed + i (-seed S, or the time when -seed is not given, fixed
once for the whole sweep), so image i's noise file equals that of a single run with
`-phi START + i*WIDTH -seed S+i`.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterator

from .config import SimConfig
from .errors import ConfigError

DIGITS = 5          # name_00001.ext


def sweep_path(path, i: int, digits: int = DIGITS) -> str:
    """The file of image i (from 0) of a sweep: name_00001.ext for i = 0.

    A name that already ends in a number (image_00000.cbf) is numbered in its place
    (image_00001.cbf), so a DIALS template given as the name is kept."""
    p = Path(path)
    m = re.fullmatch(r"(.*?[_.-])(\d+)", p.stem)
    stem = f"{m.group(1)}{i + 1:0{len(m.group(2))}d}" if m else f"{p.stem}_{i + 1:0{digits}d}"
    return str(p.with_name(stem + p.suffix))


def width_deg(cfg: SimConfig) -> float:
    """The oscillation of one image (deg): -osc, else -phistep x -phisteps."""
    cr = cfg.crystal
    if cr.osc_deg is not None:
        width = float(cr.osc_deg)
    elif cr.phistep_deg is not None and cr.phisteps is not None:
        width = float(cr.phistep_deg) * max(int(cr.phisteps), 1)
    else:
        width = 0.0
    if not width > 0.0:
        raise ConfigError("-nimages: a sweep needs the oscillation of one image: "
                          "-osc WIDTH (deg, > 0)")
    return width


def phi_deg(cfg: SimConfig, i: int) -> float:
    """The start angle of image i (from 0): -phi START + i * WIDTH (deg)."""
    return float(cfg.crystal.phi_deg) + i * width_deg(cfg)


def image_config(cfg: SimConfig, i: int) -> SimConfig:
    """The config of image i (from 0): cfg with -phi START + i*WIDTH and its noise seed."""
    out = cfg.output
    seed = None if out.seed is None else out.seed + i
    return dataclasses.replace(
        cfg, crystal=dataclasses.replace(cfg.crystal, phi_deg=phi_deg(cfg, i)),
        output=dataclasses.replace(out, seed=seed, nimages=None))


def check(nimages) -> int:
    if isinstance(nimages, bool) or not isinstance(nimages, int) or nimages <= 0:
        raise ConfigError(f"-nimages: must be a positive integer, got {nimages!r}")
    return nimages


def run_sweep(sim, nimages: int, progress=None) -> Iterator:
    """The images of a sweep by one Simulator (see Simulator.sweep)."""
    check(nimages)
    base = sim.config
    width_deg(base)

    def report(i):
        if progress is None:
            return None
        return lambda done, n: progress(i * n + done, nimages * n)
    for i in range(nimages):
        cfg = image_config(base, i)
        yield sim._run_one(cfg, report(i), None)


def sweep(config: SimConfig, nimages: int | None = None, *, mode=None, dtype=None, device=None,
          compile=None, progress=None) -> Iterator:
    """The N images of a rotation sweep, one at a time (a generator of Images).

    nimages: None takes the config's (-nimages). One Simulator renders them all;
    progress: callback(done, total) over the whole sweep.
    """
    from .simulator import Simulator
    nimages = config.output.nimages if nimages is None else nimages
    check(nimages)
    width_deg(config)
    sim = Simulator(config, mode=mode, dtype=dtype, device=device, compile=compile, images=nimages)
    yield from sim.sweep(nimages, progress=progress)


def experiment_stack(images_exp, cfg: SimConfig, nimages: int):
    """An io.experiment.Experiment (or one per panel) describing all N images of the sweep."""
    w = width_deg(cfg)
    starts = tuple(phi_deg(cfg, i) for i in range(nimages))
    widths = (w,) * nimages
    rep = lambda e: dataclasses.replace(e, phi_start_deg=starts, phi_width_deg=widths)  # noqa: E731
    return [rep(e) for e in images_exp] if isinstance(images_exp, list) else rep(images_exp)


__all__ = ["sweep", "sweep_path", "image_config", "width_deg", "phi_deg"]
