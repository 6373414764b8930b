"""Command line: nanoBragg's flags -> `SimConfig`, and the console entry point.

nanoBragg.c matches every argv element that starts with '-' against all its
option patterns with ``strstr`` (a few with an exact-length guard) and takes
values positionally; unknown flags are silently ignored.  This port keeps the
positional values and the argv-order "last one wins" rules, but matches exact
flag names (plus the aliases of SPEC section 7) and stops on anything it does
not understand, with a one-line message naming the flag or file.

Where the C's substring matching changes the *meaning* of an argv (``-twotheta``
also matching ``-twotheta_axis``, ``-misset`` also matching ``-misset_seed``),
the C's reading is recorded in ``cfg.c_quirks`` for ``-mode c-parity``.

Values stay in command-line units (mm, deg, Angstrom, um, mrad, percent); the
simulator converts.  Input files are read here (so bad files fail before any
output is written); nothing is written.

The flag table (`FLAGS`) has one row per flag: its names (canonical first),
the value converters (one per value), what it sets, and its usage line.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from . import entry, inputs
from .config import SimConfig
from .instrument import mm_for_m
from .errors import ConfigError, FieldError, FileError, FlagError, UsageError
from .modes import get_mode
from .units import HC_EV_A
from .validate import validate

PROG = "nanobrag-torch"


# --------------------------------------------------------------------------
# value converters: (flag, text) -> value, raising FlagError with the flag name

_NUM_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_INF_WORDS = ("inf", "+inf", "infinity", "+infinity")


def _is_number(text: str) -> bool:
    return bool(_NUM_RE.match(text))


class _Num:
    """A finite decimal number, optionally bounded (gt: >, ge: >=)."""

    def __init__(self, gt=None, ge=None, le=None, integer=False):
        self.gt, self.ge, self.le, self.integer = gt, ge, le, integer

    def describe(self) -> str:
        what = "an integer" if self.integer else "a number"
        bounds = []
        if self.gt is not None:
            bounds.append(f"> {self.gt:g}")
        if self.ge is not None:
            bounds.append(f">= {self.ge:g}")
        if self.le is not None:
            bounds.append(f"<= {self.le:g}")
        return what + (" " + " and ".join(bounds) if bounds else "")

    def __call__(self, flag: str, text: str):
        if self.integer:
            # the C uses atoi(); we insist on integer text ("5.5" is an error, not 5)
            if not _INT_RE.match(text):
                raise FlagError(f"{flag}: expected an integer, got {text!r}")
            value = int(text)
        else:
            if not _NUM_RE.match(text):
                if text.strip().lower() in _INF_WORDS + ("-inf", "-infinity", "nan"):
                    raise FlagError(f"{flag}: expected a finite number, got {text!r}")
                raise FlagError(f"{flag}: expected a number, got {text!r}")
            value = float(text)
            if not math.isfinite(value):
                raise FlagError(f"{flag}: number out of range: {text!r}")
        if ((self.gt is not None and not value > self.gt)
                or (self.ge is not None and not value >= self.ge)
                or (self.le is not None and not value <= self.le)):
            raise FlagError(f"{flag}: expected {self.describe()}, got {text!r}")
        return value


NUM = _Num()
POS = _Num(gt=0)
NONNEG = _Num(ge=0)
INT = _Num(integer=True)
NONNEG_INT = _Num(ge=0, integer=True)
POS_INT = _Num(gt=0, integer=True)
KAHN = _Num(ge=-1, le=1)


def FILE(flag: str, text: str) -> str:
    if not text:
        raise FlagError(f"{flag}: expected a file name, got ''")
    return text


def WORKERS(flag: str, text: str):
    """-workers: a positive integer, or auto (cluster.auto_workers: sized to the machine)."""
    return "auto" if text == "auto" else POS_INT(flag, text)


def SCHEDULER(flag: str, text: str) -> str:
    """-scheduler: a Dask scheduler address, PROTOCOL://HOST:PORT (or inproc://...)."""
    if not re.fullmatch(r"(tcp|tls|ucx|ws|wss)://[^/:\s]+:\d+/?|inproc://\S+", text):
        raise FlagError(f"{flag}: expected a scheduler address such as tcp://host:8786, got {text!r}")
    return text


def LABEL(flag: str, text: str) -> str:
    if not text.strip():
        raise FlagError(f"{flag}: expected a column label, got {text!r}")
    return text


def _choice(*allowed: str, pattern: Optional[str] = None):
    def conv(flag: str, text: str) -> str:
        low = text.lower()
        if low in allowed or (pattern and re.fullmatch(pattern, low)):
            return low
        raise FlagError(f"{flag}: expected one of {'|'.join(allowed)}, got {text!r}")
    return conv


def ABSORB(flag: str, text: str) -> float:
    """-detector_abs: an attenuation depth in um, or 'inf' (0 means inf too)."""
    if text.lower() in _INF_WORDS:
        return math.inf
    value = _Num()(flag, text)
    if value < 0:
        raise FlagError(f"{flag}: expected a depth >= 0 (um) or 'inf', got {text!r}")
    return value


# --------------------------------------------------------------------------
# the flag table

@dataclass(frozen=True)
class Flag:
    names: Tuple[str, ...]            # canonical name first, then aliases
    metavar: str                      # value names for the usage listing
    convs: tuple                      # one converter per value
    apply: Callable                   # apply(state, values)
    help: str
    group: str = ""
    reader: Optional[Callable] = None  # custom value reader (-cell, -misset)
    hidden: bool = False

    @property
    def name(self) -> str:
        return self.names[0]


_T = re.compile(r"(\w+)\.(\w+)(?:\[(\d)\])?\Z")


def _put(cfg, target: str, value):
    """Assign 'section.field' or 'section.field[i]' in cfg ('.field' for SimConfig)."""
    m = _T.match(target)
    obj = cfg if m.group(1) == "sim" else getattr(cfg, m.group(1))
    if m.group(3) is None:
        setattr(obj, m.group(2), value)
    else:
        getattr(obj, m.group(2))[int(m.group(3))] = value


def _one(vals):
    return vals[0] if len(vals) == 1 else [float(v) for v in vals]


def _field(target: str) -> str:
    """'section.field[i]' -> the config field 'section.field' ('sim.x' -> 'x')."""
    m = _T.match(target)
    return m.group(2) if m.group(1) == "sim" else f"{m.group(1)}.{m.group(2)}"


def _sets(*fields):
    """Mark an action with the config fields it sets (for messages naming the flag)."""
    def mark(act):
        act.fields = tuple(fields)
        return act
    return mark


def _jitter(name):
    """-jitter_NAME AMOUNT: a per-shot jitter of a batch (shots.jitter_values)."""
    @_sets("output.jitter")
    def act(st, vals):
        kept = tuple((n, a) for n, a in st.cfg.output.jitter if n != name)
        st.cfg.output.jitter = kept + ((name, float(_one(vals))),)
    return act


def _set(*targets, cast=None, pivot=None):
    """Store the value (a list for multi-value flags) in every target."""
    @_sets(*(_field(t) for t in targets))
    def act(st, vals):
        value = _one(vals)
        if cast is not None:
            value = cast(value)
        for t in targets:
            _put(st.cfg, t, value)
        if pivot:
            st.set_pivot(pivot)
    act.targets = targets
    return act


def _const(target, value):
    @_sets(_field(target))
    def act(st, vals):
        _put(st.cfg, target, value)
    act.targets = (target,)
    return act


def _all(*acts):
    @_sets(*(f for a in acts for f in getattr(a, "fields", ())))
    def act(st, vals):
        for a in acts:
            a(st, vals)
    act.targets = tuple(t for a in acts for t in getattr(a, "targets", ()))
    return act


def _none_if_le0(n):
    # the C's "n <= 0" branch is its "unset" branch (defaults are -1)
    return None if n <= 0 else n


def _nothing(st, vals):
    pass


def _pivot(name):
    def act(st, vals):
        st.set_pivot(name)
    return act


def _convention(name, pivot):
    """-mosflm & co; the C also sets its running pivot (-dials sets BEAM here!)."""
    @_sets("detector.convention")
    def act(st, vals):
        st.cfg.detector.convention = name
        st.set_pivot(pivot)
    return act


def _custom_vector(target, scale=1.0):
    """Any user vector switches the C to the CUSTOM convention (SPEC 1.8)."""
    @_sets(_field(target))
    def act(st, vals):
        _put(st.cfg, target, [float(v) * scale for v in vals])
        st.cfg.detector.convention = "CUSTOM"
    return act


def _nonzero_vector(flag, vals):
    if all(v == 0 for v in vals):
        raise FlagError(f"{flag}: the vector must not be (0, 0, 0)")


def _vector(target, zero_ok=False, scale=1.0):
    base = _custom_vector(target, scale)

    @_sets(_field(target))
    def act(st, vals):
        if not zero_ok:
            _nonzero_vector(st.flag, vals)
        base(st, vals)
    return act


@_sets("detector.twotheta_deg")
def _twotheta(st, vals):
    st.cfg.detector.twotheta_deg = vals[0]
    st.c_twotheta = vals[0]
    st.set_pivot("SAMPLE")


@_sets("detector.twotheta_axis")
def _twotheta_axis(st, vals):
    _nonzero_vector(st.flag, vals)
    _custom_vector("detector.twotheta_axis")(st, vals)
    # C quirk (SPEC 8.3 item 2): strstr(argv[i], "-twotheta") also fires for
    # -twotheta_axis, so the C sets 2theta = X degrees and the SAMPLE pivot.
    st.c_twotheta = vals[0]
    st.c_pivot = "SAMPLE"


@_sets("detector.pivot")
def _explicit_pivot(st, vals):
    st.cfg.detector.pivot = vals[0].upper()
    st.set_pivot(vals[0].upper())


@_sets("crystal.cell")
def _cell(st, vals):
    # a later -cell overwrites only the positions it gives, as the C's a[0], b[0] ...
    for k, v in enumerate(vals):
        st.cell[k] = v
    st.cell_given = True


@_sets("crystal.misset_deg")
def _misset(st, vals):
    cr = st.cfg.crystal
    if vals == ["random"]:
        cr.misset_random, cr.misset_deg = True, None
        st.c_misset = "random"
    else:
        cr.misset_random, cr.misset_deg = False, [float(v) for v in vals]
        st.c_misset = tuple(float(v) for v in vals)


@_sets("crystal.misset_seed")
def _misset_seed(st, vals):
    st.cfg.crystal.misset_seed = vals[0]
    # C quirk (SPEC 8.3 item 3): "-misset" also matches "-misset_seed N A B":
    # with >= 3 tokens after it the C sets an explicit misset (N, atof(A), atof(B)).
    rest = st.argv[st.index + 1:st.index + 4]
    if len(rest) == 3:
        if "rand" in rest[0]:
            st.c_misset = "random"
        else:
            from .io.cnum import c_atof
            st.c_misset = tuple(float(c_atof(t)) for t in rest)


@_sets("beam.wavelength_A")
def _energy(st, vals):
    st.cfg.beam.wavelength_A = HC_EV_A / vals[0]


@_sets("detector.mu_per_m")
def _detector_abs(st, vals):
    det = st.cfg.detector
    if vals[0] == 0 or math.isinf(vals[0]):
        # C: "inf" or 0 switch absorption off AND zero the thickness, at this point in argv
        det.mu_per_m, det.thickness_um = 0.0, 0.0
    else:
        det.mu_per_m = 1.0 / (vals[0] * 1e-6)


@_sets("detector.roi")
def _roi(st, vals):
    xmin, xmax, ymin, ymax = vals
    if xmin > xmax or ymin > ymax:
        raise FlagError(f"{st.flag}: need xmin <= xmax and ymin <= ymax, "
                        f"got {xmin} {xmax} {ymin} {ymax}")
    st.cfg.detector.roi = (xmin, xmax, ymin, ymax)


@_sets("output.printout_pixel")
def _printout_pixel(st, vals):
    st.cfg.output.printout_pixel = (vals[0], vals[1])
    st.cfg.output.printout = True        # the "-printout" pattern matches it too


@_sets("output.trace_pixel")
def _trace_pixel(st, vals):
    st.cfg.output.trace_pixel = (vals[0], vals[1])      # slow, fast


def _stol(mult):
    @_sets("background.stol_table")
    def act(st, vals):
        st.stol = (st.flag, vals[0], mult)
    return act


def _amorphous(st, vals):
    """-amorphous FILE: a new layer (read after all flags, with the mode's table rules)."""
    from .config import AmorphousLayer
    st.cfg.background.amorphous.append(AmorphousLayer(stol_file=vals[0]))


_amorphous.fields = ("background.amorphous",)


def _layer(attr, optional=False, ge=None, gt=None):
    """A flag setting the last -amorphous layer's attr; optional: before any layer the flag
    has no effect, any value accepted (nanoBragg.c's own -density and -MW), else it is an
    error. ge, gt: bounds of a layer's value."""
    @_sets("background.amorphous")
    def act(st, vals):
        layers = st.cfg.background.amorphous
        if not layers:
            if optional:
                return
            raise FlagError(f"{st.flag}: give it after -amorphous FILE (it sets that layer's value)")
        v = vals[0]
        if (ge is not None and not v >= ge) or (gt is not None and not v > gt):
            raise FlagError(f"{st.flag}: must be {'>=' if ge is not None else '>'} "
                            f"{ge if ge is not None else gt}, got {v:g}")
        setattr(layers[-1], attr, v)
        if st.flag in C_READS_OTHERWISE:
            st.c_misread.append(st.flag)
    return act


# port-only spellings that contain one of nanoBragg.c's strstr patterns (the C would read them
# as that flag): refused in c-parity mode (docs/modes.md row 19), the other spelling named
C_READS_OTHERWISE = {"-sample_thickness_mm": ("-sample_thick", "-layer_thickness_mm")}


def _response(attr):
    """A detector-response flag: sets response.attr and turns the stage on."""
    @_sets(f"response.{attr}")
    def act(st, vals):
        setattr(st.cfg.response, attr, vals[0])
        st.cfg.response.enabled = True
    return act


def _remember(attr, *fields):
    """File flags: remember the name (read after all flags; last one wins)."""
    @_sets(*fields)
    def act(st, vals):
        setattr(st, attr, (st.flag, vals[0]))
    return act


@_sets("oversample")
def _oversample(st, vals):
    st.cfg.oversample = None if vals[0] <= 0 else vals[0]


@_sets("beam.beamsize_mm")
def _beamsize(st, vals):
    if vals[0] == 0:
        raise FlagError(f"{st.flag}: the beam size must not be 0 (a negative value "
                        f"means no beam-size limit)")
    st.cfg.beam.beamsize_mm = vals[0]


def _example_only(instead, where="examples"):
    """A reader that rejects the flags nanoBragg's examples or README use but its parser
    ignores (the C skips them and their values silently)."""
    def reader(flag, name, argv, i):
        raise FlagError(f"{name} is not a nanoBragg flag (it appears only in {where}; "
                        f"nanoBragg.c ignores it); use {instead}")
    return reader


def _read_fixed(flag: Flag, name: str, argv: Sequence[str], i: int):
    """Take len(flag.convs) values positionally (so '-3' is a value)."""
    n = len(flag.convs)
    vals = []
    for k, conv in enumerate(flag.convs):
        if i + k >= len(argv) or argv[i + k] in _BY_NAME:
            raise FlagError(_needs(name, flag, argv, i + k))
        vals.append(conv(name, argv[i + k]))
    return vals, i + n


def _needs(name, flag, argv, j, what=None):
    n = len(flag.convs)
    what = what or f"{n} value{'s' if n != 1 else ''}"
    if flag.metavar:
        what += f" ({flag.metavar})"
    msg = f"flag {name} needs {what}"
    if j < len(argv) and argv[j] in _BY_NAME:
        msg += f", got flag {argv[j]!r}"
    return msg


def _read_cell(flag, name, argv, i):
    """-cell takes 1 to 6 numbers; like the C, a token starting with '-' ends the list."""
    vals = []
    while i < len(argv) and len(vals) < 6 and not argv[i].startswith("-"):
        vals.append(NONNEG(name, argv[i]))
        i += 1
    if i < len(argv) and len(vals) < 6 and _is_number(argv[i]):
        raise FlagError(f"{name}: cell lengths and angles must be positive, got {argv[i]!r}")
    if not vals:
        raise FlagError(_needs(name, flag, argv, i, "1 to 6 values"))
    return vals, i


def _read_misset(flag, name, argv, i):
    if i < len(argv) and argv[i].lower() == "random":
        return ["random"], i + 1
    if i + 3 > len(argv) or any(t in _BY_NAME for t in argv[i:i + 3]):
        raise FlagError(f"flag {name} needs 3 values (RX RY RZ) or 'random'")
    return _read_fixed(flag, name, argv, i)


def _g(group, rows):
    return [Flag(names=tuple(r[0].split()), metavar=r[1], convs=r[2], apply=r[3],
                 help=r[4], group=group, **(r[5] if len(r) > 5 else {})) for r in rows]


C, D, B, S, O = "crystal.", "detector.", "beam.", "sim.", "output."

FLAGS: List[Flag] = (
    _g("Crystal and structure factors", [
        ("-hkl", "FILE", (FILE,), _remember("hkl", "crystal.hkl"),
         "h k l F text file (P1), or MTZ / mmCIF structure factors (expanded to P1, "
         "cell from the file); without it Fdump.bin is read if present"),
        ("-mtz_column", "LABEL", (LABEL,), _set(C + "mtz_column"),
         "MTZ column (or mmCIF _refln tag) holding F or I (default: F, FP, FOBS, ..., "
         "else F(+)/F(-), else sqrt of I, IMEAN, ...)"),
        ("-model", "FILE", (FILE,), _remember("model", "crystal.hkl"),
         "atomic model (PDB/mmCIF): F computed by gemmi to the detector's edge or -dmin, "
         "expanded to P1; cell from the model"),
        ("-dump", "FILE", (FILE,), _all(_set(C + "dump_file"), _remember("dump")),
         "structure-factor cache file (default Fdump.bin)"),
        ("-default_F", "F", (NUM,), _set(C + "default_F"),
         "F for reflections not in the -hkl file (default 0)"),
        ("-mat -matrix", "FILE", (FILE,), _remember("mat", "crystal.mat"),
         "MOSFLM orientation matrix (reciprocal axes x wavelength)"),
        ("-cell", "A B C AL BE GA", (NONNEG,) * 6, _cell,
         "unit cell (Angstrom, deg); b, c default to a, angles to 90",
         dict(reader=_read_cell)),
        ("-misset", "RX RY RZ|random", (NUM, NUM, NUM), _misset,
         "crystal rotations about x, y, z (deg), or 'random'",
         dict(reader=_read_misset)),
        ("-misset_seed", "N", (NONNEG_INT,), _misset_seed,
         "random-number seed for -misset random (default: time)"),
        ("-N", "N", (NONNEG_INT,), _set(C + "n_cells[0]", C + "n_cells[1]", C + "n_cells[2]",
                                        cast=float),
         "number of unit cells along a, b and c"),
        ("-Na", "N", (NONNEG_INT,), _set(C + "n_cells[0]", cast=float), "unit cells along a"),
        ("-Nb", "N", (NONNEG_INT,), _set(C + "n_cells[1]", cast=float), "unit cells along b"),
        ("-Nc", "N", (NONNEG_INT,), _set(C + "n_cells[2]", cast=float), "unit cells along c"),
        ("-samplesize -sample_size -xtalsize -xtal_size", "MM", (NONNEG,),
         _set(C + "sample_size_mm[0]", C + "sample_size_mm[1]", C + "sample_size_mm[2]"),
         "crystal size in x, y and z (mm); sets N from the cell"),
        ("-sample_thick -sample_x -xtal_thick -xtal_x", "MM", (NONNEG,),
         _set(C + "sample_size_mm[0]"), "crystal size along x (mm)"),
        ("-sample_width -sample_y -xtal_width -xtal_y -width", "MM", (NONNEG,),
         _set(C + "sample_size_mm[1]"), "crystal size along y (mm)"),
        ("-sample_height -sample_z -xtal_height -xtal_z -height", "MM", (NONNEG,),
         _set(C + "sample_size_mm[2]"), "crystal size along z (mm)"),
        ("-square_xtal", "", (), _const(C + "shape", "square"),
         "parallelepiped crystal: sinc lattice transform (default)"),
        ("-round_xtal", "", (), _const(C + "shape", "round"), "ellipsoidal crystal"),
        ("-gauss_xtal", "", (), _const(C + "shape", "gauss"),
         "Gaussian spots: no inter-Bragg maxima"),
        ("-tophat_spots -binary_spots", "", (), _const(C + "shape", "tophat"),
         "spots clipped at their FWHM: no inter-Bragg maxima"),
        ("-fudge", "X", (POS,), _set(C + "fudge"), "scale of the spot-shape argument (default 1)"),
        ("-mosaic -mosaici -mosaic_spr -mosaic_spread", "DEG", (NONNEG,),
         _set(C + "mosaic_spread_deg"), "isotropic mosaic spread (deg)"),
        ("-mosaic_domains -mosaic_dom", "N", (NONNEG_INT,),
         _set(C + "mosaic_domains", cast=_none_if_le0),
         "number of mosaic domains (default 10 with a spread; 0 = auto)"),
        ("-mosaic_seed", "N", (NONNEG_INT,), _set(C + "mosaic_seed"),
         "random-number seed for the mosaic domains (default 12345678)"),
        ("-phi", "DEG", (NUM,), _set(C + "phi_deg"), "starting spindle angle (deg)"),
        ("-osc", "DEG", (NONNEG,), _set(C + "osc_deg"), "oscillation range (deg)"),
        ("-phistep", "DEG", (NONNEG,), _set(C + "phistep_deg"), "spindle step (deg)"),
        ("-phisteps", "N", (NONNEG_INT,), _set(C + "phisteps"),
         "number of spindle steps (0 counts as 1)"),
        ("-spindle_axis", "X Y Z", (NUM,) * 3, _vector(C + "spindle_axis"),
         "right-handed phi rotation axis (selects the CUSTOM convention)"),
        ("-interpolate", "", (), _const(C + "interpolate", True),
         "interpolate F between Bragg peaks (default: if any N <= 2)"),
        ("-nointerpolate", "", (), _const(C + "interpolate", False),
         "no interpolation of structure factors"),
    ])
    + _g("Detector", [
        ("-pixel", "MM", (POS,), _set(D + "pixel_size_mm"), "pixel size (mm, default 0.1)"),
        ("-detpixels", "N", (POS_INT,), _set(D + "detpixels[0]", D + "detpixels[1]"),
         "detector size in pixels, both axes (default 1024)"),
        ("-detpixels_f -detpixels_x", "N", (POS_INT,), _set(D + "detpixels[0]"),
         "pixels along the fast axis"),
        ("-detpixels_s -detpixels_y", "N", (POS_INT,), _set(D + "detpixels[1]"),
         "pixels along the slow axis"),
        ("-detsize", "MM", (POS,), _set(D + "detsize_mm[0]", D + "detsize_mm[1]"),
         "detector size, both axes (mm, default 102.4); pixel counts win"),
        ("-detsize_f", "MM", (POS,), _set(D + "detsize_mm[0]"), "detector size along fast (mm)"),
        ("-detsize_s", "MM", (POS,), _set(D + "detsize_mm[1]"), "detector size along slow (mm)"),
        ("-distance", "MM", (POS,), _set(D + "distance_mm", pivot="BEAM"),
         "crystal to direct-beam spot distance (mm, default 100)"),
        ("-close_distance", "MM", (POS,), _set(D + "close_distance_mm", pivot="SAMPLE"),
         "crystal to detector plane distance (mm); overrides -distance"),
        ("-Xbeam", "MM", (NUM,), _set(D + "beam_center_mm[0]", pivot="BEAM"),
         "direct-beam position, header X (mm; MOSFLM: slow axis)"),
        ("-Ybeam", "MM", (NUM,), _set(D + "beam_center_mm[1]", pivot="BEAM"),
         "direct-beam position, header Y (mm; MOSFLM: fast axis)"),
        ("-Xclose", "MM", (NUM,), _set(D + "close_center_mm[0]", pivot="SAMPLE"),
         "point of the detector nearest the crystal, X (mm)"),
        ("-Yclose", "MM", (NUM,), _set(D + "close_center_mm[1]", pivot="SAMPLE"),
         "point of the detector nearest the crystal, Y (mm)"),
        ("-ORGX", "PX", (NUM,), _set(D + "org_px[0]", pivot="SAMPLE"), "XDS-style origin, fast (pixels)"),
        ("-ORGY", "PX", (NUM,), _set(D + "org_px[1]", pivot="SAMPLE"), "XDS-style origin, slow (pixels)"),
        ("-pivot", "beam|sample", (_choice("beam", "sample"),), _explicit_pivot,
         "rotate the detector about the direct-beam spot or the sample"),
        ("-mosflm", "", (), _convention("MOSFLM", "BEAM"), "MOSFLM axes and beam centre (default)"),
        ("-denzo", "", (), _convention("DENZO", "BEAM"), "DENZO axes and beam centre"),
        ("-adxv", "", (), _convention("ADXV", "BEAM"), "ADXV axes and beam centre"),
        ("-xds", "", (), _convention("XDS", "SAMPLE"), "XDS axes and origin"),
        ("-dials", "", (), _convention("DIALS", "BEAM"), "DIALS axes and origin"),
        ("-fdet_vector", "X Y Z", (NUM,) * 3, _vector(D + "fdet_vector"),
         "fast detector axis (selects the CUSTOM convention)"),
        ("-sdet_vector", "X Y Z", (NUM,) * 3, _vector(D + "sdet_vector"),
         "slow detector axis (CUSTOM)"),
        ("-odet_vector", "X Y Z", (NUM,) * 3, _vector(D + "odet_vector", zero_ok=True),
         "detector normal (CUSTOM; length != 1: fast x slow)"),
        ("-twotheta_axis", "X Y Z", (NUM,) * 3, _twotheta_axis,
         "detector two-theta swing axis (CUSTOM)"),
        ("-pix0_vector", "X Y Z", (NUM,) * 3, _vector(D + "pix0_vector_m", zero_ok=True),
         "position of the first pixel's outer corner (m; CUSTOM)"),
        ("-pix0_vector_mm", "X Y Z", (NUM,) * 3,
         _vector(D + "pix0_vector_m", zero_ok=True, scale=1e-3),
         "as -pix0_vector, in mm"),
        ("-detector_rotx", "DEG", (NUM,), _set(D + "rotation_deg[0]"), "detector rotation about x (deg)"),
        ("-detector_roty", "DEG", (NUM,), _set(D + "rotation_deg[1]"), "detector rotation about y (deg)"),
        ("-detector_rotz", "DEG", (NUM,), _set(D + "rotation_deg[2]"), "detector rotation about z (deg)"),
        ("-twotheta", "DEG", (NUM,), _twotheta, "detector swing about the two-theta axis (deg)"),
        ("-curved_det", "", (), _const(D + "curved", True), "spherical detector: every pixel at the same distance"),
        ("-point_pixel", "", (), _const(D + "point_pixel", True), "solid angle 1/R^2 (no pixel obliquity)"),
        ("-detector_thick", "UM", (NONNEG,), _set(D + "thickness_um"), "sensor thickness (um)"),
        ("-detector_thicksteps -thicksteps", "N", (NONNEG_INT,),
         _set(D + "thicksteps", cast=_none_if_le0), "number of sensor layers (0 = auto)"),
        ("-detector_abs -detector_absorb", "UM|inf", (ABSORB,), _detector_abs,
         "sensor attenuation depth (um); inf or 0: off, thickness 0"),
        ("-roi", "XMIN XMAX YMIN YMAX", (NONNEG_INT,) * 4, _roi,
         "render only these pixels (inclusive; fast, then slow)"),
        ("-img", "FILE", (FILE,), _nothing, "take detector and beam values from an SMV header"),
        ("-mask", "FILE", (FILE,), _nothing, "SMV image: pixels that are 0 are not rendered"),
        ("-detector_json", "FILE", (FILE,), _set(D + "layout_file"),
         "detector layout file (docs/detectors.md); flags override its values"),
    ])
    + _g("Beam", [
        ("-lambda -wave -wavelength", "A", (POS,), _set(B + "wavelength_A"),
         "wavelength (Angstrom, default 1)"),
        ("-energy", "EV", (POS,), _energy, "photon energy (eV): lambda = 12398.42/E"),
        ("-dispersion", "PCT", (NONNEG,), _set(B + "dispersion_pct"),
         "spectral width delta-lambda/lambda (percent)"),
        ("-dispsteps", "N", (NONNEG_INT,), _set(B + "dispsteps", cast=_none_if_le0),
         "number of wavelengths (0 = auto)"),
        ("-divergence", "MRAD", (NONNEG,), _set(B + "hdivrange_mrad", B + "vdivrange_mrad"),
         "horizontal and vertical divergence range (mrad)"),
        ("-hdivrange", "MRAD", (NONNEG,), _set(B + "hdivrange_mrad"), "horizontal divergence range (mrad)"),
        ("-vdivrange", "MRAD", (NONNEG,), _set(B + "vdivrange_mrad"), "vertical divergence range (mrad)"),
        ("-hdivstep", "MRAD", (NONNEG,), _set(B + "hdivstep_mrad"), "horizontal divergence step (mrad)"),
        ("-vdivstep", "MRAD", (NONNEG,), _set(B + "vdivstep_mrad"), "vertical divergence step (mrad)"),
        ("-hdivsteps", "N", (NONNEG_INT,), _set(B + "hdivsteps", cast=_none_if_le0),
         "number of horizontal source points (0 = auto)"),
        ("-vdivsteps", "N", (NONNEG_INT,), _set(B + "vdivsteps", cast=_none_if_le0),
         "number of vertical source points (0 = auto)"),
        ("-divsteps", "N", (NONNEG_INT,), _set(B + "hdivsteps", B + "vdivsteps", cast=_none_if_le0),
         "source points in both directions"),
        ("-round_div", "", (), _const(B + "round_div", True), "trim the divergence grid to an ellipse (default)"),
        ("-square_div", "", (), _const(B + "round_div", False), "full divergence grid"),
        ("-sourcefile", "FILE", (FILE,), _remember("sourcefile", "beam.sources"),
         "sources, one per line: X Y Z (m) weight lambda (m)"),
        ("-beam_vector", "X Y Z", (NUM,) * 3, _vector(B + "beam_vector"),
         "beam propagation direction (CUSTOM)"),
        ("-polar_vector", "X Y Z", (NUM,) * 3, _vector(B + "polar_vector"),
         "E-vector polarisation axis (CUSTOM)"),
        ("-polar", "K", (KAHN,), _all(_set(B + "polarization"), _const(B + "nopolar", False)),
         "Kahn polarisation factor (default 0: unpolarised)"),
        ("-nopolar", "", (), _const(B + "nopolar", True), "no polarisation correction"),
        ("-fluence", "PH/M2", (NONNEG,), _set(B + "fluence"), "incident photons per m^2 (default 1.26e29)"),
        ("-flux", "PH/S", (NONNEG,), _set(B + "flux"), "photons per second (with -exposure and -beamsize)"),
        ("-exposure", "S", (NONNEG,), _set(B + "exposure_s"), "exposure time (s, default 1)"),
        ("-beamsize", "MM", (NUM,), _beamsize,
         "beam size (mm, default 0.1), clips the crystal; < 0: none"),
    ])
    + _g("Sampling and background", [
        ("-oversample", "N", (INT,), _oversample, "sub-pixels per pixel edge (<= 0: auto)"),
        ("-oversample_thick", "", (), _const(S + "oversample_thick", True),
         "recompute sensor absorption for every sub-pixel"),
        ("-oversample_polar", "", (), _const(S + "oversample_polar", True),
         "recompute polarisation for every sub-pixel"),
        ("-oversample_omega", "", (), _const(S + "oversample_omega", True),
         "recompute the solid angle for every sub-pixel"),
        ("-dmin", "A", (NONNEG,), _set(S + "dmin_A"), "skip scattering beyond this resolution (Angstrom)"),
        ("-water", "UM", (NONNEG,), _set("background.water_um"),
         "add scattering of this much water around the crystal (um)"),
        ("-stol", "FILE", (FILE,), _stol(1e10), "-water F(stol) table: stol (1/A), F (c-parity: unused)"),
        ("-4stol", "FILE", (FILE,), _stol(1e10 / 4), "as -stol with 4 sin(theta)/lambda"),
        ("-Q", "FILE", (FILE,), _stol(1e10 / math.pi / 4), "as -stol with Q = 4 pi sin(theta)/lambda"),
        ("-stolout", "FILE", (FILE,), _nothing, "accepted for compatibility, no effect"),
        ("-amorphous", "FILE", (FILE,), _amorphous,
         "add an amorphous layer (water, air, ...) with this F(stol) table (stol in 1/A, F); "
         "repeatable: each starts a new layer, set by the -layer_thickness_mm, -density and "
         "-MW after it (nonBragg's physics on this run's detector and sources)"),
        ("-layer_thickness_mm -sample_thickness_mm", "MM", (NONNEG,), _layer("thickness_mm"),
         "the current -amorphous layer's thickness along the beam (mm, default 0.1; "
         "-sample_thickness_mm: spec mode only, nanoBragg.c reads that word as -sample_thick)"),
        ("-density -sample_den -sample_density", "G/CM3", (NUM,), _layer("density_g_cm3", optional=True, ge=0),
         "the current -amorphous layer's density (g/cm^3, default 1); before any -amorphous: "
         "no effect, as nanoBragg.c"),
        ("-MW -molec", "G/MOL", (NUM,), _layer("molecular_weight", optional=True, gt=0),
         "the current -amorphous layer's molecular weight (g/mol, default 18); before any "
         "-amorphous: no effect, as nanoBragg.c"),
        ("-coherent", "", (), _nothing, "accepted for compatibility, no effect"),
    ])
    + _g("Detector response (noisify's stages; port-only)", [
        ("-psf", "gauss|fiber", (_choice("gauss", "fiber"),), _response("psf"),
         "point-spread function applied to the photon counts of the noise image"),
        ("-psf_fwhm", "UM", (NONNEG,), _response("psf_fwhm_um"), "PSF full width (um, default 46)"),
        ("-psf_radius", "PX", (NONNEG_INT,), _response("psf_radius"),
         "PSF rendering radius (pixels, 0: automatic)"),
        ("-readout_noise -readout -readnoise", "ADU", (NONNEG,), _response("readout_noise"),
         "read-out noise of the noise image (rms ADU)"),
        ("-flicker", "FRAC", (NONNEG,), _response("flicker"), "beam flicker per pixel (rms fraction)"),
        ("-calibration", "FRAC", (NONNEG,), _response("calibration"),
         "static per-pixel gain error (rms fraction; noisify's default 0.03 once any response flag "
         "is given)"),
        ("-gain", "ADU/PH", (NUM,), _response("gain"), "ADU per photon of the noise image (default 1)"),
        ("-calib_seed", "N", (INT,), _response("calib_seed"),
         "calibration-error seed (default: noisify's fixed one)"),
    ])
    + _g("Output", [
        ("-floatfile -floatimage", "FILE", (FILE,), _set(O + "floatfile"),
         "raw 4-byte float image (default floatimage.bin)"),
        ("-intfile -intimage", "FILE", (FILE,), _set(O + "intfile"),
         "noiseless SMV image (default intimage.img)"),
        ("-noisefile -noiseimage", "FILE", (FILE,),
         _all(_set(O + "noisefile"), _const(O + "write_noise", True)),
         "SMV image with Poisson noise (default noiseimage.img)"),
        ("-pgmfile -pgmimage", "FILE", (FILE,), _all(_set(O + "pgmfile"), _const(O + "write_pgm", True)),
         "8-bit PGM image (default image.pgm)"),
        ("-nonoise", "", (), _const(O + "write_noise", False), "do not write the noise image"),
        ("-nopgm", "", (), _const(O + "write_pgm", False), "do not write the PGM image"),
        ("-cbffile", "FILE", (FILE,), _set(O + "cbffile"),
         "miniCBF image of photon counts for DIALS (detector facing the beam; "
         "name it like image_00001.cbf)"),
        ("-nexusfile", "FILE", (FILE,), _set(O + "nexusfile"),
         "NeXus/NXmx image of photon counts with the full geometry (any detector)"),
        ("-pngfile", "FILE", (FILE,), _set(O + "pngfile"), "PNG preview (inverted grey scale)"),
        ("-png_scale", "linear|log", (_choice("linear", "log"),), _set(O + "png_scale"),
         "PNG contrast: linear, clipped at the 99.9th percentile (default), or log"),
        ("-scale", "X", (NUM,), _set(O + "scale"), "scale of the int image (<= 0: 55000/max)"),
        ("-pgmscale", "X", (NUM,), _all(_set(O + "pgmscale"), _const(O + "write_pgm", True)),
         "scale of the PGM image (<= 0: auto)"),
        ("-adc -adcoffset", "COUNTS", (NUM,), _set(O + "adc"),
         "offset added to image pixels (default 40)"),
        ("-seed", "N", (NONNEG_INT,), _set(O + "seed"), "noise random-number seed (default: time)"),
        ("-printout", "", (), _const(O + "printout", True), "print per-pixel details"),
        ("-printout_pixel", "F S", (NONNEG_INT,) * 2, _printout_pixel,
         "print details for this pixel only (fast, slow)"),
        ("-progress", "", (), _const(O + "progress", True), "show the progress meter (default)"),
        ("-noprogress", "", (), _const(O + "progress", False), "no progress meter"),
    ])
    + _g("Port-only", [
        ("-mode", "spec|c-parity", (_choice("spec", "c-parity"),), _set(S + "mode"),
         "spec (default): corrected; c-parity: nanoBragg.c's quirks too"),
        ("-dtype", "float32|float64", (_choice("float32", "float64"),), _set(S + "dtype"),
         "floating-point precision (default float64)"),
        ("-device", "cpu|cuda|auto", (_choice("cpu", "cuda", "auto", pattern=r"cuda:\d+"),),
         _set(S + "device"), "where to compute (default cpu)"),
        ("-warmup", "", (), _nothing,
         "build the compiled kernels of everyday runs now (once per machine), then exit"),
        ("-trace_pixel", "S F", (NONNEG_INT,) * 2, _trace_pixel,
         "print TRACE lines for this pixel (slow, fast)"),
        ("-max_hours", "H", (POS,), _set(S + "max_hours"),
         "refuse a run estimated to take longer than this (default 24)"),
        ("-pixel_batch_size", "N", (POS_INT,), _set(S + "pixel_batch_size"),
         "pixels per batch (bounds memory)"),
        ("-debug", "", (), _nothing, "show Python tracebacks", dict(hidden=True)),
        ("-exptfile", "FILE", (FILE,), _set(O + "exptfile"),
         "write the run's detector, beam, crystal, goniometer and scan as a DIALS .expt"),
        ("-expt", "FILE", (FILE,), _set(S + "expt_file"),
         "DIALS experiment list: beam, detector, crystal, spindle, scan; flags override it"),
        ("-expt_image", "K", (POS_INT,), _set(S + "expt_image"),
         "simulate image K of the -expt scan (default: its first)"),
        ("-nimages", "N", (POS_INT,), _set(O + "nimages"),
         "a rotation sweep: N images, image i at -phi START + i * (its -osc), numbered files"),
        ("-shots", "N", (POS_INT,), _set(O + "shots"),
         "a serial batch: N stills, each a uniformly random orientation from -seed S, "
         "numbered files and a manifest"),
        ("-shot", "K", (POS_INT,), _set(O + "shot"),
         "with -shots: render shot K alone (the batch's file, bit for bit)"),
        ("-manifest", "FILE", (FILE,), _set(O + "manifest"),
         "the batch's CSV manifest (default shots.csv)"),
        ("-jitter_N", "FRAC", (NONNEG,), _jitter("N"),
         "with -shots: each shot's Na, Nb, Nc times 1 + u * FRAC (u uniform in -1..1), rounded, at least 1"),
        ("-jitter_mosaic", "FRAC", (NONNEG,), _jitter("mosaic"),
         "with -shots: each shot's mosaic spread times 1 + u * FRAC"),
        ("-jitter_fluence", "FRAC", (NONNEG,), _jitter("fluence"),
         "with -shots: each shot's fluence times 1 + u * FRAC"),
        ("-jitter_lambda", "FRAC", (NONNEG,), _jitter("lambda"),
         "with -shots: each shot's wavelength times 1 + u * FRAC"),
        ("-jitter_distance_mm", "MM", (NONNEG,), _jitter("distance"),
         "with -shots: each shot's detector distance plus u * MM"),
        ("-labels", "FILE.h5", (FILE,), _set(O + "labels"),
         "labels for learning: per image an HDF5 file of its spots (h k l, predicted fast/slow "
         "pixel, summed photons) and its mask of pixels above -label_threshold (numbered as the images)"),
        ("-label_threshold", "PHOTONS", (NONNEG,), _set(O + "label_threshold"),
         "with -labels: the mask holds the pixels whose float photons exceed this (default 1)"),
        ("-workers", "N|auto", (WORKERS,), _set(O + "workers"),
         "with -shots: render the batch on N local Dask worker processes (pip extra [cluster]); "
         "auto: one per GPU with -device cuda, else one per 8 CPU cores (at least 1)"),
        ("-scheduler", "ADDR", (SCHEDULER,), _set(O + "scheduler"),
         "with -shots: render the batch on the Dask scheduler at ADDR, e.g. tcp://host:8786 "
         "(default $DASK_SCHEDULER_ADDRESS when -workers is not given)"),
        ("-version --version", "", (), _nothing, "print the version and exit"),
    ])
    + _g("Not supported", [
        ("-dispstep", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-dispsteps N (count) or -dispersion PCT (range)"))),
        ("-hdiv", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-hdivrange MRAD, -hdivstep MRAD or -hdivsteps N", "examples and its README"))),
        ("-vdiv", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-vdivrange MRAD, -vdivstep MRAD or -vdivsteps N", "examples and its README"))),
        # spelled in nanoBragg's README, never read by its parser
        ("-detsize_x", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-detsize_f MM (fast axis) or -detpixels_x N", "its README"))),
        ("-detsize_y", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-detsize_s MM (slow axis) or -detpixels_y N", "its README"))),
        ("-xdet_vector", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-fdet_vector X Y Z (fast axis)", "its README"))),
        ("-ydet_vector", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-sdet_vector X Y Z (slow axis)", "its README"))),
        ("-zdet_vector", "", (), _nothing, "", dict(hidden=True, reader=_example_only(
            "-odet_vector X Y Z (detector normal)", "its README"))),
    ])
)

_BY_NAME = {name: flag for flag in FLAGS for name in flag.names}
assert len(_BY_NAME) == sum(len(f.names) for f in FLAGS), "duplicate flag name"


def _check_targets() -> dict:
    """Every field a flag sets exists in SimConfig (a misspelt target fails at import,
    not silently at run time); returns field -> the first flag that sets it."""
    cfg = SimConfig()
    field_flag = {"detector.mask": "-mask", "crystal.hkl.F": "-hkl"}
    for flag in FLAGS:
        for target in getattr(flag.apply, "targets", ()):
            m = _T.match(target)
            obj = cfg if m.group(1) == "sim" else getattr(cfg, m.group(1), None)
            if obj is None or m.group(2) not in {f.name for f in dataclasses.fields(obj)}:
                raise AssertionError(f"flag {flag.name}: no config field {target!r}")
        for field in getattr(flag.apply, "fields", ()):
            section, _, name = field.rpartition(".")
            obj = getattr(cfg, section) if section else cfg
            if name not in {f.name for f in dataclasses.fields(obj)}:
                raise AssertionError(f"flag {flag.name}: no config field {field!r}")
            field_flag.setdefault(field, flag.name)
    return field_flag


_FIELD_FLAG = _check_targets()
_HELP = ("-h", "--help", "-help")


# --------------------------------------------------------------------------
# parsing

@dataclass
class _Use:
    flag: Flag
    name: str          # as typed (an alias maybe)
    index: int         # argv position of the flag
    values: list


def _tokenize(argv: Sequence[str]) -> List[_Use]:
    uses, i = [], 0
    while i < len(argv):
        tok = argv[i]
        flag = _BY_NAME.get(tok)
        if flag is None:
            raise _unknown(tok)
        values, j = (flag.reader or _read_fixed)(flag, tok, argv, i + 1)
        uses.append(_Use(flag, tok, i, values))
        i = j
    return uses


def _unknown(tok: str) -> ConfigError:
    if tok in _HELP:
        return UsageError("usage:")
    if not tok.startswith("-") or _is_number(tok):
        return FlagError(f"unexpected argument {tok!r} (no flag takes it as a value)")
    names = [n for n in _BY_NAME if not _BY_NAME[n].hidden]
    # --distance, -XBEAM, -Lambda: the same name with one dash / another case
    key = "-" + tok.lstrip("-").lower()
    close = [n for n in names if n.lower() == key]
    if not close:
        close = difflib.get_close_matches(tok, names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see -h for the list"
    return FlagError(f"unknown flag {tok!r}{hint}")


class _State:
    """The config being filled plus the C's running values that are not config."""

    def __init__(self, argv):
        self.argv = list(argv)
        self.cfg = SimConfig()
        cr = self.cfg.crystal
        cr.n_cells = [float(x) for x in cr.n_cells]
        self.cell = [0.0] * 6              # the C's a b c alpha beta gamma (0: unset)
        self.cell_given = False
        self.pivot = self.cfg.detector.pivot_from_flags    # the C starts with BEAM
        self.c_pivot = self.pivot
        self.c_twotheta = float(self.cfg.detector.twotheta_deg)
        self.c_misset = None
        self.hkl = self.mat = self.sourcefile = self.stol = self.dump = None   # (flag, file[, mult])
        self.model = None
        self.implicit_dump = False
        self.mask_file = None
        self.c_misread = []                 # port-only words the C reads as another flag
        self.flag = ""
        self.index = -1

    def set_pivot(self, name):
        self.pivot = self.c_pivot = name


def config_from_args(argv: Sequence[str], *, implicit_dump: bool = False) -> SimConfig:
    """Parse nanoBragg flags (argv without the program name) into a validated SimConfig.

    Reads the input files named by the flags; writes nothing. implicit_dump: read the
    structure-factor cache (Fdump.bin, or -dump FILE) when no -hkl is given, as the C
    and the command line do; the library default reads a dump file only when -dump
    names it. Raises `ConfigError` (FlagError / FileError) for bad input, naming the
    flag or file, and `UsageError` where nanoBragg.c prints its usage and exits 9.
    """
    argv = [str(a) for a in argv]
    uses = _tokenize(argv)
    st = _State(argv)
    cfg = st.cfg
    st.implicit_dump = implicit_dump

    # SMV headers first (SPEC 6.7): the mask, then -img, whatever their argv order
    last = {u.flag.name: u for u in uses if u.flag.name in ("-mask", "-img")}
    for name in ("-mask", "-img"):
        if name in last:
            _ingest_header(st, name, last[name].values[0])

    for use in uses:
        st.flag, st.index = use.name, use.index
        use.flag.apply(st, use.values)

    _finish_crystal(st)
    _finish_quirks(st)
    _check_c_spellings(st)
    _check_usage(st)
    _read_inputs(st)
    _validated(st, uses)
    _check_outputs(st)
    cfg.argv = list(argv)
    cfg.input_files = _input_files(uses, cfg)
    return cfg


def _validated(st, uses) -> None:
    """The library's validation, its messages naming the flag the user typed (or the file)."""
    try:
        validate(st.cfg)
    except FieldError as err:
        if err.field == "detector.mask" and st.mask_file is not None:
            raise FileError(f"-mask {st.mask_file}: {err.reason}") from err
        raise FlagError(f"{flag_for_field(err.field, uses)}: {err.reason}") from err


def flag_for_field(field: str, uses=()) -> str:
    """The flag that set a config field: the last one typed, else the table's first."""
    base = field.split("[")[0]
    while True:
        typed = [u.name for u in uses if base in getattr(u.flag.apply, "fields", ())]
        if typed:
            return typed[-1]
        if base in _FIELD_FLAG:
            return _FIELD_FLAG[base]
        if "." not in base:
            return field
        base = base.rsplit(".", 1)[0]         # 'crystal.hkl.F' -> 'crystal.hkl'


_INPUT_FLAGS = ("-hkl", "-model", "-mat", "-sourcefile", "-stol", "-4stol", "-Q", "-img", "-mask", "-amorphous",
                "-expt", "-detector_json")


def _input_files(uses, cfg) -> list:
    """(flag, file) of every file the argv names as an input (no output may overwrite one)."""
    files = [(u.name, u.values[0]) for u in uses if u.flag.name in _INPUT_FLAGS]
    if cfg.crystal.hkl_file is None and cfg.crystal.hkl is not None:
        files.append(("-dump", cfg.crystal.dump_file))     # F read from Fdump.bin
    return files


# --------------------------------------------------------------------------
# after the flags

def _finish_crystal(st):
    """-cell takes 1 to 6 numbers: the C's defaults for what it left out or gave as <= 0."""
    if not st.cell_given:
        return
    a, b, c, al, be, ga = st.cell
    b = b if b > 0 else a
    c = c if c > 0 else a
    al, be, ga = (x if x > 0 else 90.0 for x in (al, be, ga))
    st.cfg.crystal.cell = [float(x) for x in (a, b, c, al, be, ga)]


def _finish_quirks(st):
    det, cq, cr = st.cfg.detector, st.cfg.c_quirks, st.cfg.crystal
    det.pivot_from_flags = st.pivot
    cq.pivot_from_flags = st.c_pivot
    cq.twotheta_deg = None if st.c_twotheta == det.twotheta_deg else st.c_twotheta
    spec_misset = ("random" if cr.misset_random
                   else tuple(cr.misset_deg) if cr.misset_deg is not None else None)
    cq.misset = "same" if st.c_misset == spec_misset else st.c_misset


def _dump_available(st) -> bool:
    return (st.implicit_dump or st.dump is not None) and os.path.exists(st.cfg.crystal.dump_file)


def _check_c_spellings(st):
    """c-parity: a port-only word that nanoBragg.c reads as another of its flags is refused
    (modes.md row 19), naming the spelling to use."""
    if get_mode(st.cfg.mode).port_spellings_kept:
        return
    for flag in st.c_misread:
        c_flag, instead = C_READS_OTHERWISE[flag]
        raise FlagError(f"{flag}: nanoBragg.c reads this word as {c_flag} (the crystal's thickness); "
                        f"in c-parity mode write {instead} for the layer")


def _check_usage(st):
    cr = st.cfg.crystal
    if st.hkl is None and st.model is None and not _dump_available(st) and cr.default_F == 0:
        raise UsageError("ERROR: no hkl file and no dump file to read.")
    if st.mat is None and not st.cell_given and not _cell_in_file(st) and st.cfg.expt_file is None:
        raise UsageError("ERROR: no crystal: give -cell a b c alpha beta gamma or -mat FILE.")


def _cell_in_file(st) -> bool:
    """MTZ / mmCIF structure factors (-hkl) and atomic models (-model) carry the cell."""
    from .io.sf import file_kind
    if st.model is not None:
        return True
    # (a model given to -hkl counts too: reading it then says to use -model)
    return st.hkl is not None and file_kind(st.hkl[1]) != "text"


def _read_inputs(st):
    cfg, cr = st.cfg, st.cfg.crystal
    mode = get_mode(cfg.mode)
    cfg.inputs_read_as = mode.name
    if cfg.expt_file is not None or cfg.expt_image is not None or cfg.detector.layout_file is not None:
        from .experiment import apply_cli
        apply_cli(st)      # -expt / -detector_json (flags given override the files)
    if st.mat is not None:
        cr.mat_file = st.mat[1]
        inputs.read_matrix(cfg, st.mat[0])
    if st.hkl is not None and st.model is not None:
        raise FlagError("-hkl and -model both give structure factors: use one of them")
    if st.hkl is not None or st.model is not None:
        _read_structure_factors(st, st.hkl or st.model, mode)
    else:
        inputs.read_structure_factors(cfg, mode, implicit_dump=st.implicit_dump,
                                      dump_named=st.dump is not None and os.path.exists(cr.dump_file))
    if st.sourcefile is not None:
        cfg.beam.source_file = st.sourcefile[1]
        inputs.read_sources(cfg, mode, st.sourcefile[0])
    if st.stol is not None:
        flag, path, mult = st.stol
        cfg.background.stol_file = path
        inputs.read_stol(cfg, flag, mode)
        cfg.background.stol_mult = mult
    for layer in cfg.background.amorphous:
        inputs.read_layer_table(layer, mode)


def _read_structure_factors(st, flag_file, mode):
    """-hkl (text, MTZ, mmCIF) or -model: the P1 grid, its messages, the cell when not given."""
    from .io.sf import file_kind, read_structure_factors
    cfg, cr = st.cfg, st.cfg.crystal
    flag, path = flag_file
    kind = file_kind(path)
    if flag == "-hkl" and kind in ("pdb", "cif-model"):
        raise FileError(f"-hkl {path}: an atomic model, not structure factors: "
                        f"use -model {path}")
    if flag == "-model" and kind not in ("pdb", "cif-model"):
        raise FileError(f"-model {path}: not a PDB or mmCIF atomic model"
                        + (": use -hkl for structure factors" if kind in ("mtz", "cif-sf")
                           else ""))
    if cr.mtz_column is not None and kind not in ("mtz", "cif-sf"):
        raise FlagError(f"-mtz_column {cr.mtz_column}: {path} is not an MTZ or mmCIF "
                        f"structure-factor file")
    dmin = None
    if flag == "-model":
        dmin = float(cfg.dmin_A) if float(cfg.dmin_A) > 0 else _model_dmin(st, path)
    cr.hkl_file = path
    if flag == "-model":
        cr.model_file = path
    cr.hkl, messages = inputs.read_file(flag, path, read_structure_factors, column=cr.mtz_column,
                                        default_F=cr.default_F, dmin_A=dmin,
                                        strict=mode.strict_hkl_lines, kind=kind)
    cfg.notes.extend(messages)
    _cell_from_file(st, path, cr.hkl.cell)


def _model_dmin(st, path) -> float:
    """The resolution F from a model must reach: the detector's edge plus a spot width."""
    from .io.model import model_cell
    from .resolution import detector_dmin_A, plus_spot_width
    cfg = st.cfg
    cell = cfg.crystal.cell if cfg.crystal.cell is not None else inputs.read_file(
        "-model", path, model_cell)
    edge = detector_dmin_A(cfg, cfg.mode)
    dmin = plus_spot_width(edge, cell, cfg.crystal.n_cells)
    cfg.notes.append(f"-model: the detector reaches d = {edge:.4g} A; F to {dmin:.4g} A "
                     f"(one spot width further; -dmin sets it)")
    return dmin


def _cell_from_file(st, path, file_cell):
    """The file's cell when neither -cell nor -mat gave one; a warning when they disagree."""
    from .io.sf import cell_mismatch, cell_text
    cfg, cr = st.cfg, st.cfg.crystal
    if file_cell is None:
        return
    if cr.cell is None and cr.mat is None:
        cr.cell = [float(x) for x in file_cell]
        cfg.notes.append(f"cell from {path}: {cell_text(file_cell)}")
        return
    if cr.cell is not None:
        given, src = [float(x) for x in cr.cell], "-cell"
    else:
        given, src = _mat_cell(cr.mat, float(cfg.beam.wavelength_A)), f"-mat {cr.mat_file}"
    if cell_mismatch(given, file_cell):
        cfg.notes.append(f"WARNING: the cell of {src} ({cell_text(given)}) differs from the "
                         f"cell in {path} ({cell_text(file_cell)}) by more than 1 %; "
                         f"using {src.split()[0]}")


def _mat_cell(mat, wavelength_A) -> list:
    """a b c alpha beta gamma of a MOSFLM matrix (columns a*, b*, c* times lambda)."""
    import numpy as np
    real = np.linalg.inv(np.asarray(mat, dtype=np.float64) / wavelength_A).T   # columns a, b, c
    a, b, c = real[:, 0], real[:, 1], real[:, 2]
    angle = lambda u, v: math.degrees(math.acos(float(u @ v) / float(  # noqa: E731
        np.linalg.norm(u) * np.linalg.norm(v))))
    return [float(np.linalg.norm(a)), float(np.linalg.norm(b)), float(np.linalg.norm(c)),
            angle(b, c), angle(a, c), angle(a, b)]


def _check_outputs(st):
    """Optional packages and geometry limits of the requested image formats, before any run."""
    from .io._optional import require
    cfg, o = st.cfg, st.cfg.output
    if o.nimages:
        from .sweep import width_deg
        width_deg(cfg)              # a sweep needs the oscillation of one image
        if o.shots:
            raise FlagError("-shots: a batch of stills, not with -nimages (a sweep)")
    if o.shot and not o.shots:
        raise FlagError("-shot: renders one shot of a batch: give -shots N too")
    if o.jitter and not o.shots:
        raise FlagError(f"-jitter_{o.jitter[0][0]}: jitters the shots of a batch: give -shots N too")
    if o.labels is not None:
        require("h5py")
    elif o.label_threshold is not None:
        raise FlagError("-label_threshold: the threshold of the -labels mask: give -labels FILE.h5 too")
    for flag, value in (("-workers", o.workers), ("-scheduler", o.scheduler)):
        if value is not None:
            if not o.shots:
                raise FlagError(f"{flag}: distributes the shots of a batch: give -shots N too")
            if o.nexusfile is not None:
                raise FlagError(f"{flag}: each worker writes its own files; -nexusfile is one file "
                                f"for the whole batch (leave it out, or run without {flag})")
            require("dask.distributed")
    if o.workers is not None and o.scheduler is not None:
        raise FlagError("-workers: starts a local cluster; not with -scheduler (an existing one)")
    if o.shots:
        if o.seed is None:
            raise FlagError("-shots: a batch needs a seed (-seed S), which fixes every shot")
        if o.shot and o.shot > o.shots:
            raise FlagError(f"-shot: {o.shot} is not a shot of the batch (1..{o.shots})")
    if o.cbffile is not None:
        require("fabio.cbfimage")
        from .io.cbf import geometry_problem
        from .io.experiment import from_config
        problem = geometry_problem(from_config(cfg))
        if problem is not None:
            raise FlagError(f"-cbffile {o.cbffile}: miniCBF cannot describe this detector: "
                            f"{problem}; write NeXus instead (-nexusfile NAME.nxs), which "
                            f"records any geometry")
        if not (o.nimages or o.shots) and not re.search(r"\d\.cbf$", o.cbffile, re.IGNORECASE):
            cfg.notes.append(f"note: DIALS finds miniCBF images by a numbered name "
                             f"(image_00001.cbf); {o.cbffile} has no number")
    if o.nexusfile is not None:
        require("h5py")
        require("hdf5plugin")
        if cfg.detector.curved:
            raise FlagError(f"-nexusfile {o.nexusfile}: NeXus cannot describe a curved "
                            f"detector (-curved_det)")
    if o.pngfile is not None:
        require("PIL.Image")


def _ingest_header(st, flag, path):
    """Detector/beam values from an SMV header, as the C (SPEC 6.7)."""
    from .io.smv import checked_header_value, read_smv
    smv = inputs.read_file(flag, path, read_smv)
    cfg, det = st.cfg, st.cfg.detector

    def value(key):
        # the C's ValueOf (last occurrence of the substring); garbage, nan, and zero or
        # negative distances and sizes are refused naming the file and key
        return inputs.read_file(flag, path, lambda p: checked_header_value(p, smv.header, key))

    det.detpixels = [int(smv.width), int(smv.height)]
    v = value("PIXEL_SIZE")
    if v is not None:
        det.pixel_size_mm = v
    # "DISTANCE" also matches CLOSE_DISTANCE: the last one in the header wins (the C)
    for key, target in (("DISTANCE", "detector.distance_mm"),
                        ("CLOSE_DISTANCE", "detector.close_distance_mm"),
                        ("WAVELENGTH", "beam.wavelength_A"),
                        ("BEAM_CENTER_X", "detector.beam_center_mm[0]")):
        v = value(key)
        if v is not None:
            _put(cfg, target, v)
    v = value("BEAM_CENTER_Y")
    if v is not None:
        if flag == "-mask":
            # C: Ybeam = detsize_s - value/1000 (metres), detsize_s = pixel_size*SIZE2 now
            detsize_s = det.pixel_size_mm / 1000.0 * smv.height
            det.beam_center_mm[1] = mm_for_m(detsize_s - v / 1000.0)
        else:
            det.beam_center_mm[1] = v
    for key, target in (("ORGX", "detector.org_px[0]"), ("ORGY", "detector.org_px[1]"),
                        ("PHI", "crystal.phi_deg"), ("OSC_RANGE", "crystal.osc_deg")):
        v = value(key)
        if v is not None:
            _put(cfg, target, v)
    # TWOTHETA: the C stores it in a variable it never uses
    if flag == "-mask":
        if smv.data is None:
            raise FileError(f"-mask {path}: no pixel data in the file")
        det.mask = smv.data
        st.mask_file = path


# --------------------------------------------------------------------------
# usage and entry points

def usage_text() -> str:
    return flag_listing([f"usage: {PROG} -mat auto.mat -hkl Fs.hkl [options]",
                         f"       {PROG} -cell a b c alpha beta gamma -default_F F [options]"], FLAGS)


def flag_listing(head: List[str], flags) -> str:
    """The -h listing of every command: its usage lines, then the flags by group."""
    lines = head + ["Flags take their values positionally (so negative numbers are values);",
                    "later flags override earlier ones.  -h, --help: this listing."]
    group = None
    for flag in flags:
        if getattr(flag, "hidden", False):
            continue
        if flag.group != group:
            group = flag.group
            lines += ["", f"{group}:"]
        head_text = ", ".join(flag.names) + (f" {flag.metavar}" if flag.metavar else "")
        if len(head_text) <= 30:
            lines.append(f"  {head_text:<30} {flag.help}")
        else:
            lines += [f"  {head_text}", f"  {'':<30} {flag.help}"]
    return "\n".join(lines) + "\n"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _error(message: str) -> None:
    entry.say_error(PROG, message)


def main(argv: Sequence[str]) -> int:
    """The command line in-process: returns the exit status, prints one line on any failure.

    0 done; 1 a bad file, stdout closed or full, out of memory; 2 a bad flag;
    9 no crystal or structure factors (the C's usage exit); 130 Ctrl-C; 143 SIGTERM
    (with main_cli's handler). Failed or interrupted runs leave no output files
    (entry.guarded, io.outputs).
    """
    argv = [str(a) for a in argv]
    return entry.guarded(PROG, lambda: _main(argv, "-debug" in argv))


def _main(argv: list, debug: bool) -> int:
    if any(a in _HELP for a in argv):
        sys.stdout.write(usage_text())
        return 0
    if any(a in entry.VERSION_FLAGS for a in argv):
        return entry.print_version(PROG)
    if "-warmup" in argv:
        if len(argv) > 1:
            _error("error: -warmup: takes no other flags (it builds kernels and exits)")
            return 2
        from .warmup import run as warmup
        return warmup()
    try:
        cfg = config_from_args(argv, implicit_dump=True)
    except UsageError as err:
        msg = str(err).strip()
        if msg and msg != "usage:":
            print(msg)
        sys.stdout.write(usage_text())
        return 9
    except ConfigError as err:
        if debug:
            raise
        _error(f"error: {_one_line(err)}")
        return 2 if isinstance(err, FlagError) else 1
    from .runner import run
    try:
        return int(run(cfg) or 0)
    except ConfigError as err:
        if debug:
            raise
        if isinstance(err, FieldError):
            err = FlagError(f"{flag_for_field(err.field)}: {err.reason}")
        _error(f"error: {_one_line(err)}")
        return 2 if isinstance(err, FlagError) else 1


def main_cli() -> None:
    """The console entry point (entry.console_exit: SIGTERM handled, fast exit)."""
    entry.console_exit(PROG, main)
