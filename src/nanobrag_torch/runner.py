"""The command-line run: simulate, print the C's log, write the image files.

Every file the run writes (the image files, one per panel for several panels,
CBF, NeXus, .expt, PNG and the Fdump.bin cache) is checked before the run
(io.outputs.OutputSet: folder, permissions, name length, not an input, not
twice); the writers stage each file under a temporary name and all are put in
place only when every one is complete and the log is flushed, so a failed or
interrupted run leaves no new file and no changed file.
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
from .io.outputs import OutputSet
from .simulator import Simulator, SuspiciousValueWarning
from .sweep import sweep_path  # noqa: E402 (the module, not nanobrag_torch.sweep the function)


_INPUT_FIELDS = (("-hkl", "crystal.hkl_file"), ("-model", "crystal.model_file"),
                 ("-mat", "crystal.mat_file"), ("-sourcefile", "beam.source_file"),
                 ("-stol", "background.stol_file"), ("-expt", "expt_file"),
                 ("-detector_json", "detector.layout_file"))


def output_set(cfg: SimConfig, panels: int = 1) -> OutputSet:
    """The files a run of cfg writes and the files it reads (which no output may be).

    panels > 1: one float/SMV/PGM/noise/CBF file per panel (name_p00.img, ...);
    NeXus, the .expt and PNG stay one file. The Fdump.bin cache, written after reading a
    structure-factor file, is optional (the C only warns when it cannot write it).
    A sweep (-nimages N): every file but NeXus once per image, numbered from 1
    (sweep.sweep_path: name_00001.img, then per panel name_p00_00001.img); NeXus one
    file holding the stack.
    """
    o, cr = cfg.output, cfg.crystal
    per_panel = ((lambda path: [panel_path(path, i) for i in range(panels)]) if panels > 1
                 else (lambda path: [path]))
    numbered = (lambda path: [path]) if not (o.nimages or o.shots) else (
        lambda path: [sweep_path(path, i) for i in _indices(o)])
    each = lambda path: [q for p in numbered(path) for q in per_panel(p)]  # noqa: E731
    files = [("-floatfile", o.floatfile), ("-intfile", o.intfile)]
    files += [("-pgmfile", o.pgmfile)] if o.write_pgm else []
    files += [("-noisefile", o.noisefile)] if o.write_noise else []
    files += [("-cbffile", o.cbffile)] if o.cbffile is not None else []
    paths = [(flag, p) for flag, path in files for p in each(path)]
    paths += [("-nexusfile", o.nexusfile)] if o.nexusfile is not None else []
    paths += [("-manifest", o.manifest)] if o.shots and not o.shot else []
    paths += [(flag, p) for flag, path in (("-exptfile", o.exptfile), ("-pngfile", o.pngfile),
                                           ("-labels", o.labels))
              if path is not None for p in numbered(path)]
    inputs = list(cfg.input_files)
    for flag, field in _INPUT_FIELDS:
        obj = cfg
        for name in field.split("."):
            obj = getattr(obj, name)
        inputs.append((flag, obj))
    if cr.hkl_file is None and cr.hkl is not None and cr.hkl.source == cr.dump_file:
        inputs.append(("-dump", cr.dump_file))          # F read from the cache
    dump = [("-dump", cr.dump_file)] if cr.hkl_file is not None else []
    return OutputSet(paths, inputs=inputs, optional=dump)


def _indices(o) -> list:
    """The numbers (from 0) of the files of a sweep or a batch."""
    if o.shots:
        return [o.shot - 1] if o.shot else list(range(o.shots))
    return list(range(o.nimages))


def run(cfg: SimConfig, out=None) -> int:
    """Run the simulation described by cfg as the CLI does; returns the exit status.

    The outputs are checked before anything is computed (ConfigError naming the
    flag and file) and appear together, complete, when the run ends normally.
    """
    out = out or sys.stdout
    for note in cfg.notes:
        print(note, file=out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SuspiciousValueWarning)
        o = cfg.output
        sim = Simulator(cfg, images=o.nimages or o.shots or 1)   # -shot K: the batch's kernel
    panel_geoms = sim.static.panel_geoms
    outputs = output_set(cfg, 1 if panel_geoms is None else len(panel_geoms))
    outputs.check()
    with outputs.staged():
        if cfg.output.nimages:
            _run_sweep(cfg, sim, out)
        elif cfg.output.shots:
            _run_shots(cfg, sim, out)
        else:
            _run(cfg, sim, out)
        out.flush()          # a closed or full stdout fails the run before anything is put in place
    return 0


def _prologue(cfg: SimConfig, sim: Simulator, out) -> None:
    from . import io
    for warning in sim.warnings:      # legal but suspicious values: once, on stderr
        print(f"nanobrag-torch: warning: {warning}", file=sys.stderr)
    console.print_setup(sim.static, sim.config, out)
    if cfg.crystal.hkl_file is not None:
        try:
            io.write_fdump(cfg.crystal.dump_file, cfg.crystal.hkl)
            console.say(out, f"writing dump file for next time: {cfg.crystal.dump_file}")
        except ConfigError:     # as the C: a cache that cannot be written is not fatal
            console.say(out, f"WARNING: unable to open dump file: {cfg.crystal.dump_file}")


def _run_sweep(cfg: SimConfig, sim: Simulator, out) -> None:
    """-nimages N: the sweep's images one at a time, each image's files numbered from 1,
    NeXus as one stack; one progress meter over the whole sweep."""
    import contextlib
    import dataclasses
    import time

    from .sweep import width_deg
    _prologue(cfg, sim, out)
    o, n = cfg.output, cfg.output.nimages
    width = width_deg(cfg)
    print(f"sweep of {n} images: phi {float(cfg.crystal.phi_deg):g} + i * {width:g} deg", file=out)
    show_progress = o.progress and not o.printout
    if o.write_noise and o.seed is None:     # one time-based seed for the whole sweep
        sim.config = dataclasses.replace(sim.config, output=dataclasses.replace(
            sim.config.output, seed=int(time.time())))
    with contextlib.ExitStack() as stack:
        nexus = None
        if o.nexusfile is not None:
            from .io.nexus import NexusStack
            nexus = stack.enter_context(NexusStack(o.nexusfile, n))
        images = sim.sweep(n, progress=console.progress_printer(out) if show_progress else None)
        with torch.no_grad():
            for i, image in enumerate(images):
                image.check_finite()
                _write_image(image, i, out, nexus, n)
    if o.nexusfile is not None:
        print(f"wrote {o.nexusfile} as NeXus/NXmx: {n} images", file=out)


def _run_shots(cfg: SimConfig, sim: Simulator, out) -> None:
    """-shots N: N stills of random orientation, numbered files, one NeXus stack, the
    CSV manifest; -shot K: shot K alone (its files only, no manifest).

    Restart: a batch run again with the same command renders only the missing shots. A
    shot is complete when the existing manifest has its row (same seed) and its files on
    disk have the sha256 the row records; those are skipped. The shots to render go in
    blocks of shots.BLOCK_SHOTS: each block's files and the manifest so far are put in
    place (atomically, each file) when the block ends, so an interrupted run keeps the
    blocks it finished. With -nexusfile (one file for the whole stack) every shot is
    rendered and all files appear together at the end."""
    import importlib

    _shots = importlib.import_module(__package__ + ".shots")     # the module (nb.shots is the function)
    _prologue(cfg, sim, out)
    o, n, seed = cfg.output, cfg.output.shots, cfg.output.seed
    ks = [o.shot] if o.shot else list(range(1, n + 1))
    print(f"serial batch of {n} shots, seed {seed}" + (f": shot {o.shot} alone" if o.shot else ""),
          file=out)
    show_progress = o.progress and not o.printout
    restart = not o.shot and o.nexusfile is None
    panels = 1 if sim.static.panel_geoms is None else len(sim.static.panel_geoms)
    files_of = lambda k: _shot_files(o, k, panels)  # noqa: E731
    columns = _shots.manifest_columns(cfg)
    done = _shots.complete_shots(o.manifest, seed, n, files_of, columns,
                                 lambda k: _shots.jitter_values(cfg, seed, k)) if restart else {}
    if done:
        print(f"{o.manifest}: {len(done)} of {n} shots complete (checked by sha256), "
              f"rendering the other {n - len(done)}", file=out)
    todo = [k for k in ks if k not in done]
    rows = dict(done)
    if not restart:
        blocks = [todo]
    else:
        b = _shots.BLOCK_SHOTS
        blocks = [todo[i:i + b] for i in range(0, len(todo), b)]
    progress = console.progress_printer(out) if show_progress else None
    from . import cluster
    on_dask = restart and cluster.distributed(o)
    try:
        if on_dask and todo:
            cluster.render(cfg, seed, n, todo, rows, columns, progress, out, files_of)
        elif not on_dask:
            _render_blocks(sim, seed, o, n, ks, todo, blocks, rows, restart, files_of, progress, out, columns)
    except BaseException as exc:       # Ctrl-C, SIGTERM: the finished blocks stay in place
        kept = len(rows) - len(done)
        if restart and kept and not getattr(exc, "outputs_written", False):
            try:
                exc.shots_kept = kept
            except AttributeError:
                pass
        raise
    if not o.shot and (not restart or not todo or on_dask):
        _write_manifest(o.manifest, rows, columns)
    if not o.shot:
        print(f"writing {o.manifest} as the manifest of {n} shots", file=out)


def _render_blocks(sim, seed, o, n, ks, todo, blocks, rows, restart, files_of, progress, out, columns):
    import contextlib
    import importlib

    from .io.outputs import OutputSet
    _shots = importlib.import_module(__package__ + ".shots")
    ndone = 0
    for block in blocks:
        new = {}
        stage = (OutputSet([p for k in block for p in files_of(k)] + [o.manifest]).staged()
                 if restart else contextlib.nullcontext())
        with stage, contextlib.ExitStack() as stack:
            nexus = None
            if o.nexusfile is not None:
                from .io.nexus import NexusStack
                nexus = stack.enter_context(NexusStack(o.nexusfile, len(ks)))
            cb = None if progress is None else (        # one meter over the shots rendered
                lambda d, m, j0=ndone, nb=len(block): progress(j0 * (m // nb) + d, len(todo) * (m // nb)))
            with torch.no_grad():
                for k, image in _shots.run_shots(sim, seed, block, cb):
                    image.check_finite()
                    files = _write_image(image, k - 1, out, nexus, len(ks), label=f"shot {k}/{n}",
                                         nexus_still=True)
                    new[k] = _shots.manifest_row(k, seed, image, files,
                                                 _shots.jitter_values(sim.config, seed, k))
            if restart:
                _write_manifest(o.manifest, {**rows, **new}, columns)
        rows.update(new)            # only once the block's files are in place
        ndone += len(block)


def _shot_files(o, k: int, panels: int = 1) -> list:
    """The files (not NeXus) of shot k of a batch, in the order the manifest names them."""
    paths = [o.floatfile, o.intfile] + ([o.pgmfile] if o.write_pgm else [])
    paths += [o.noisefile] if o.write_noise else []
    paths += [o.cbffile] if o.cbffile is not None else []
    files = [sweep_path(p, k - 1) for p in paths]
    if panels > 1:
        files = [panel_path(f, p) for f in files for p in range(panels)]
    return files + [sweep_path(p, k - 1) for p in (o.exptfile, o.pngfile, o.labels) if p is not None]


def _write_manifest(path, rows: dict, columns) -> None:
    import csv
    import io as _io

    from .io._common import atomic_write
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows[k] for k in sorted(rows))
    atomic_write(path, [buf.getvalue().encode()])


def _write_image(image, i: int, out, nexus, n: int, label=None, nexus_still=False) -> list:
    """Image i (from 0) of a sweep or a batch: its numbered files and one summary line;
    returns the files written (NeXus aside)."""
    from .sweep import experiment_stack
    o = image.config.output
    num = lambda path: sweep_path(path, i)  # noqa: E731
    stats = image.stats
    noise = writers.noise_counts(image) if o.write_noise else None
    writers.write_float(num(o.floatfile), image)
    scale = writers.write_smv(num(o.intfile), image)
    if o.write_pgm:
        writers.write_pgm(num(o.pgmfile), image)
    if noise is not None:
        writers.write_noise(num(o.noisefile), image, noise=noise)
    if o.cbffile is not None:
        writers.write_cbf(num(o.cbffile), image, noise=noise)
    if nexus is not None:
        exp = writers.experiment(image)
        exp = _stills(exp, n) if nexus_still else experiment_stack(exp, image.config, n)
        nexus.add(writers.detector_counts(image, noise), exp)
    if o.exptfile is not None:
        from .experiment import experiment_from_config
        from .io.expt import write_expt
        write_expt(num(o.exptfile), experiment_from_config(image.config, image.mode))
    if o.pngfile is not None:
        writers.write_png(num(o.pngfile), image, noise=noise)
    if o.labels is not None:
        from .labels import write_labels
        write_labels(num(o.labels), image, _threshold(o))
    phi = float(image.config.crystal.phi_deg)
    label = label or f"image {i + 1}/{n}: phi {phi:g} deg"
    line = (f"{label}: {num(o.floatfile)} {num(o.intfile)} "
            f"max_I = {stats.max_I:g} mean= {stats.mean:g} intfile_scale = {scale:g}")
    if noise is not None:
        line += f" {noise.photons:.0f} photons on {num(o.noisefile)}"
    print(line, file=out)
    for warning in image.warnings:
        print(warning, file=out)
    P = image.panel_count
    files = [num(o.floatfile), num(o.intfile)] + ([num(o.pgmfile)] if o.write_pgm else []) \
        + ([num(o.noisefile)] if noise is not None else []) \
        + ([num(o.cbffile)] if o.cbffile is not None else [])
    if P > 1:
        files = [panel_path(f, p) for f in files for p in range(P)]
    files += [num(f) for f in (o.exptfile, o.pngfile, o.labels) if f is not None]
    return files


def _threshold(o) -> float:
    """-label_threshold (default 1 photon)."""
    return 1.0 if o.label_threshold is None else float(o.label_threshold)


def _stills(exp, n):
    """The experiment of n stills (no scan)."""
    import dataclasses
    rep = lambda e: dataclasses.replace(e, phi_start_deg=(0.0,) * n, phi_width_deg=(0.0,) * n)  # noqa: E731
    return [rep(e) for e in exp] if isinstance(exp, list) else rep(exp)


def _run(cfg: SimConfig, sim: Simulator, out) -> None:
    _prologue(cfg, sim, out)
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
    if noise is not None and cfg.response.enabled:
        what = "ADUs of the detector-response stage"
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
        seen = "detector ADUs" if (noise is not None and cfg.response.enabled) else "photons"
        print(f"writing {o.pngfile} as PNG preview ({o.png_scale} scale, {seen})", file=out)
        writers.write_png(o.pngfile, image, noise=noise)
    if o.labels is not None:
        from .labels import write_labels
        print(f"writing {o.labels} as labels (spots, mask above {_threshold(o):g} photons)", file=out)
        write_labels(o.labels, image, _threshold(o))
