"""Input files named by a config: read into it, by the rules of a mode.

The files a config names (crystal.hkl_file, crystal.mat_file, crystal.dump_file,
beam.source_file, background.stol_file) are read when the config is parsed, so
bad files fail before anything is written. Four of the reading rules differ
between the modes (docs/modes.md rows 8-10 and 15); `for_mode` re-reads what a config
read under the other mode's rules, so `Simulator(cfg, mode=...)` renders what
parsing with that -mode would have given.

Reading Fdump.bin when no -hkl is given is the command line's habit (the C's):
the library reads a dump file only when it is named explicitly (crystal.dump_file
set by -dump) or when asked to (implicit_dump=True).
"""
from __future__ import annotations

import dataclasses
import os

from .config import SimConfig, SourceList
from .errors import ConfigError, FileError
from .modes import Mode, get_mode


def read_file(flag: str, path, reader, *args, **kw):
    """Call an io reader; any failure becomes a one-line FileError naming flag and file."""
    try:
        return reader(path, *args, **kw)
    except ConfigError as err:
        msg = str(err).strip().replace("\n", " ")
        if str(path) not in msg:
            msg = f"{path}: {msg}"
        raise FileError(f"{flag} {msg}") from err
    except OSError as err:
        raise FileError(f"{flag} {path}: {err.strerror or err}") from err
    except (ValueError, IndexError, UnicodeError) as err:
        raise FileError(f"{flag} {path}: malformed file ({err})") from err


def read_structure_factors(cfg: SimConfig, mode: Mode, *, implicit_dump: bool,
                           dump_named: bool = False, flag: str = "-hkl") -> list[str]:
    """crystal.hkl from crystal.hkl_file, else from the dump file (when named or
    implicit_dump and present); returns the reader's warnings."""
    cr = cfg.crystal
    if cr.hkl_file is not None:
        from .io.hkl import read_hkl_with_messages
        cr.hkl, messages = read_file(flag, cr.hkl_file, read_hkl_with_messages, cr.default_F,
                                     mode.strict_hkl_lines)
        return messages
    if dump_named or (implicit_dump and os.path.exists(cr.dump_file)):
        from .io.hkl import read_fdump
        cr.hkl = read_file("-dump", cr.dump_file, read_fdump, c_quirk=not mode.fdump_exact_separator)
    return []


def read_sources(cfg: SimConfig, mode: Mode, flag: str = "-sourcefile") -> None:
    """beam.sources from beam.source_file."""
    from .io.sourcefile import read_sourcefile
    path = cfg.beam.source_file
    arr = read_file(flag, path, read_sourcefile, strict=mode.strict_source_file)
    if len(arr) == 0:
        raise FileError(f"{flag} {path}: no sources in the file")
    cfg.beam.sources = SourceList(position_m=arr[:, :3].copy(), weight=arr[:, 3].copy(),
                                  wavelength_m=arr[:, 4].copy())


def read_matrix(cfg: SimConfig, flag: str = "-mat") -> None:
    from .io.matfile import read_mat
    cfg.crystal.mat = read_file(flag, cfg.crystal.mat_file, read_mat)


def read_stol(cfg: SimConfig, flag: str = "-stol", mode=None) -> None:
    """background.stol_table from background.stol_file, by `mode`'s rules (default cfg.mode)."""
    from .io.stol import read_stol as read
    strict = get_mode(cfg.mode if mode is None else mode).strict_stol_table
    cfg.background.stol_table = read_file(flag, cfg.background.stol_file, read, strict=strict)


def read_layer_table(layer, mode) -> None:
    """An -amorphous layer's F(stol) table (config.AmorphousLayer), by `mode`'s rules."""
    from .io.stol import read_stol as read
    layer.stol_table = read_file("-amorphous", layer.stol_file, read, strict=get_mode(mode).strict_stol_table)


def for_mode(cfg: SimConfig, mode) -> SimConfig:
    """cfg, or a copy whose mode-dependent inputs are re-read by `mode`'s rules when cfg's
    were read by the other mode's (structure factors, source file)."""
    mode = get_mode(mode)
    if cfg.inputs_read_as is None or cfg.inputs_read_as == mode.name:
        return cfg
    read_as = get_mode(cfg.inputs_read_as)
    hkl_differs = (read_as.strict_hkl_lines != mode.strict_hkl_lines
                   or read_as.fdump_exact_separator != mode.fdump_exact_separator)
    sources_differ = read_as.strict_source_file != mode.strict_source_file
    hkl_from_file = cfg.crystal.hkl is not None and cfg.crystal.hkl.source in (
        cfg.crystal.hkl_file, cfg.crystal.dump_file) and cfg.crystal.model_file is None
    if hkl_from_file and cfg.crystal.hkl_file is not None:
        from .io.sf import file_kind          # (MTZ and mmCIF are read the same in both modes)
        hkl_from_file = file_kind(cfg.crystal.hkl_file) == "text"
    reread_hkl = hkl_differs and hkl_from_file
    reread_sources = sources_differ and cfg.beam.source_file is not None
    tables_differ = read_as.strict_stol_table != mode.strict_stol_table
    reread_stol = tables_differ and cfg.background.stol_file is not None
    reread_layers = tables_differ and any(layer.stol_file is not None for layer in cfg.background.amorphous)
    if not (reread_hkl or reread_sources or reread_stol or reread_layers):
        return cfg
    crystal = dataclasses.replace(cfg.crystal)
    beam = dataclasses.replace(cfg.beam)
    background = dataclasses.replace(cfg.background)
    copy = dataclasses.replace(cfg, crystal=crystal, beam=beam, background=background,
                               inputs_read_as=mode.name)
    if reread_hkl:
        read_structure_factors(copy, mode, implicit_dump=False,
                               dump_named=cfg.crystal.hkl_file is None)
    if reread_sources:
        read_sources(copy, mode)
    if reread_stol:
        read_stol(copy, mode=mode)
    if reread_layers:
        background.amorphous = [dataclasses.replace(layer) for layer in cfg.background.amorphous]
        for layer in background.amorphous:
            if layer.stol_file is not None:
                read_layer_table(layer, mode)
    return copy
