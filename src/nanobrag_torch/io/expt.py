"""DIALS experiment lists (.expt, dxtbx JSON): read and write with the standard library.

No dxtbx needed. The reader composes the panel hierarchy and the crystal's A
matrix with dxtbx's own (scitbx) arithmetic, in its operation order, so the
lab-frame panel axes, origins and normals and A = U B, U, B, the cell and the
real-space vectors are those dxtbx computes, bit for bit (tested against
dxtbx-written files and what dxtbx computed from them). The result is an
`instrument.Experiment` in nanoBragg's lab frame (metres); see instrument.py.

File facts (dxtbx/imgCIF frame, beam along -z, lengths mm):
- beam.direction points sample -> source; s0 = -unit(direction)/lambda.
  DIALS' polarization_fraction f is the Kahn factor K = 2f - 1 and the E-vector
  is unit(unit_s0 x polarization_normal).
- detector[i].panels[k] hold each panel's *local* frame; `hierarchy` is a tree of
  groups (each with its local frame) whose leaves are {"panel": k}. With the
  parent's lab axes P = [f|s|f x s] and origin o: lab = P unit(local), origin =
  P local_origin + o. A panel origin is the outer corner of pixel (0, 0).
- crystal.real_space_a/b/c are the rows of A^-1; A = U B has a*, b*, c* as columns.
- goniometer: A(phi) = S R(axis, phi) F A; folded here into axis' = S axis and
  A' = S F A (exact for rotations S).
- scan.properties.oscillation: each image's start angle (deg); the width is the
  difference of the first two (or oscillation_width for one image).
"""
from __future__ import annotations

import json
import math
import time
from typing import List, Sequence, Union

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.instrument import (Beam, Crystal, Detector, Experiment, Goniometer, Panel, Scan,
                                       cross, dot, from_dials, matrix_from_dials, matrix_to_dials,
                                       mm_for_m, norm, to_dials, unit)
from nanobrag_torch.io._common import MiB, atomic_write, read_bytes

JSON_LIMIT = 256 * MiB       # larger experiment or layout files are refused

PI_180 = math.pi / 180.0          # scitbx: deg_as_rad(x) = x * pi_180, rad_as_deg(x) = x / pi_180
IDENTITY9 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


# --------------------------------------------------------------------------
# scitbx arithmetic (mat3 row-major 9-tuples), in its operation order

def _mul(l, r):
    return (l[0] * r[0] + l[1] * r[3] + l[2] * r[6], l[0] * r[1] + l[1] * r[4] + l[2] * r[7],
            l[0] * r[2] + l[1] * r[5] + l[2] * r[8], l[3] * r[0] + l[4] * r[3] + l[5] * r[6],
            l[3] * r[1] + l[4] * r[4] + l[5] * r[7], l[3] * r[2] + l[4] * r[5] + l[5] * r[8],
            l[6] * r[0] + l[7] * r[3] + l[8] * r[6], l[6] * r[1] + l[7] * r[4] + l[8] * r[7],
            l[6] * r[2] + l[7] * r[5] + l[8] * r[8])


def _mulv(m, v):
    return (m[0] * v[0] + m[1] * v[1] + m[2] * v[2], m[3] * v[0] + m[4] * v[1] + m[5] * v[2],
            m[6] * v[0] + m[7] * v[1] + m[8] * v[2])


def _det(m):
    return (m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
            + m[2] * (m[3] * m[7] - m[4] * m[6]))


def _inv(m):
    d = _det(m)
    if d == 0.0:
        raise ConfigError("matrix is not invertible")
    c = (m[4] * m[8] - m[5] * m[7], -m[1] * m[8] + m[2] * m[7], m[1] * m[5] - m[2] * m[4],
         -m[3] * m[8] + m[5] * m[6], m[0] * m[8] - m[2] * m[6], -m[0] * m[5] + m[2] * m[3],
         m[3] * m[7] - m[4] * m[6], -m[0] * m[7] + m[1] * m[6], m[0] * m[4] - m[1] * m[3])
    return tuple(x / d for x in c)


def _transpose(m):
    return (m[0], m[3], m[6], m[1], m[4], m[7], m[2], m[5], m[8])


# vec3 dot, cross, length, normalize: instrument's helpers have scitbx's operation order
_dot, _cross, _length, _normalize = dot, cross, norm, unit


def _angle_deg(a, b):
    return math.acos(_dot(a, b) / (_length(a) * _length(b))) / PI_180


# --------------------------------------------------------------------------
# dxtbx models from their dict values (dxtbx frame, mm)

def compose_frame(parent, local):
    """dxtbx's VirtualPanelFrame.update_global_frame: (fast, slow, origin) of a node in the
    lab from its parent's lab frame and its own local frame (both (fast, slow, origin))."""
    pf, ps = _normalize(parent[0]), _normalize(parent[1])
    pn = _cross(pf, ps)
    lf, ls, lo = _normalize(local[0]), _normalize(local[1]), local[2]
    P = (pf[0], ps[0], pn[0], pf[1], ps[1], pn[1], pf[2], ps[2], pn[2])
    L = (lf[0], ls[0], lo[0], lf[1], ls[1], lo[1], lf[2], ls[2], lo[2])
    d = list(_mul(P, L))
    po = parent[2]
    d[2] += po[0]
    d[5] += po[1]
    d[8] += po[2]
    return (d[0], d[3], d[6]), (d[1], d[4], d[7]), (d[2], d[5], d[8])


LAB_FRAME = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))


def dxtbx_crystal(real_a, real_b, real_c) -> dict:
    """dxtbx's Crystal(real_space_a, b, c): A = U B, U, B (row-major 9-tuples), unit cell
    (a b c alpha beta gamma) and real-space vectors (rows of A^-1), as dxtbx computes them."""
    A0 = _inv(tuple(real_a) + tuple(real_b) + tuple(real_c))
    cell = (_length(real_a), _length(real_b), _length(real_c),
            _angle_deg(real_b, real_c), _angle_deg(real_c, real_a), _angle_deg(real_a, real_b))
    B = _transpose(_fractionalization(cell))
    U = _mul(A0, _inv(B))
    A = _mul(U, B)
    R = _inv(A)
    return {"A": A, "U": U, "B": B, "unit_cell": cell, "real_space": (R[0:3], R[3:6], R[6:9])}


def _fractionalization(p):
    """cctbx uctbx::unit_cell fractionalization matrix (row-major) from a b c al be ga."""
    cos = [math.cos(p[3 + i] * PI_180) for i in range(3)]
    sin = [math.sin(p[3 + i] * PI_180) for i in range(3)]
    rc = [(cos[(i + 1) % 3] * cos[(i + 2) % 3] - cos[i]) / (sin[(i + 1) % 3] * sin[(i + 2) % 3])
          for i in range(3)]
    if not -1.0 <= rc[0] <= 1.0:
        raise ConfigError("the real-space vectors do not form a unit cell")
    rc0 = math.cos(math.acos(rc[0]))
    s1rca2 = math.sqrt(1.0 - rc0 * rc0)
    return (1.0 / p[0], -cos[2] / (sin[2] * p[0]),
            -(cos[2] * sin[1] * rc0 + cos[1] * sin[2]) / (sin[1] * s1rca2 * sin[2] * p[0]),
            0.0, 1.0 / (sin[2] * p[1]), rc0 / (s1rca2 * sin[2] * p[1]),
            0.0, 0.0, 1.0 / (sin[1] * s1rca2 * p[2]))


# --------------------------------------------------------------------------
# validation helpers: every failure names the field

class _Doc:
    """Typed access to a JSON document; errors read '<path>: <field>: <reason>'."""

    def __init__(self, path):
        self.path = str(path)

    def fail(self, where, reason):
        raise ConfigError(f"{self.path}: {where}: {reason}")

    def get(self, obj, key, where, default=KeyError):
        if not isinstance(obj, dict):
            self.fail(where, f"expected an object, got {_show(obj)}")
        if key not in obj or (obj[key] is None and default is not KeyError):
            if default is KeyError:
                self.fail(f"{where}.{key}" if where else key, "missing field")
            return default
        return obj[key]

    def num(self, x, where, gt=None, ge=None):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            self.fail(where, f"expected a finite number, got {_show(x)}")
        if gt is not None and not x > gt:
            self.fail(where, f"expected a number > {gt:g}, got {_show(x)}")
        if ge is not None and not x >= ge:
            self.fail(where, f"expected a number >= {ge:g}, got {_show(x)}")
        return float(x)

    def int(self, x, where, ge=None):
        if isinstance(x, bool) or not isinstance(x, int):
            self.fail(where, f"expected an integer, got {_show(x)}")
        if ge is not None and x < ge:
            self.fail(where, f"expected an integer >= {ge}, got {x}")
        return x

    def nums(self, x, n, where, **bounds):
        if not isinstance(x, list) or len(x) != n:
            self.fail(where, f"expected {n} numbers, got {_show(x)}")
        return tuple(self.num(v, f"{where}[{i}]", **bounds) for i, v in enumerate(x))

    def vec(self, x, where):
        v = self.nums(x, 3, where)
        if v == (0.0, 0.0, 0.0):
            self.fail(where, "the vector must not be (0, 0, 0)")
        return v

    def list(self, x, where):
        if not isinstance(x, list):
            self.fail(where, f"expected a list, got {_show(x)}")
        return x


def _show(x) -> str:
    text = json.dumps(x) if not isinstance(x, float) or math.isfinite(x) else repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_json(path):
    raw = read_bytes(path, JSON_LIMIT, "a JSON file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} "
                          f"column {err.colno})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply") from None


# --------------------------------------------------------------------------
# reading

def read_expt(path, experiment: int = 0) -> Experiment:
    """Experiment number `experiment` (0-based) of a DIALS experiment list."""
    exps = read_experiments(path)
    if not -len(exps) <= experiment < len(exps):
        raise ConfigError(f"{path}: no experiment {experiment} (the file holds {len(exps)})")
    return exps[experiment]


def read_experiments(path) -> List[Experiment]:
    """Every experiment of a DIALS experiment list (.expt JSON), nanoBragg frame."""
    return guarded(path, _read_experiments)


def guarded(path, reader):
    """reader(path); a malformed structure the checks missed still fails in one line."""
    try:
        return reader(path)
    except (TypeError, AttributeError, KeyError, IndexError, OverflowError, ZeroDivisionError,
            ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: malformed file ({type(err).__name__}: {err})") from None


def _read_experiments(path) -> List[Experiment]:
    doc = _Doc(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        doc.fail("top level", f"expected an object (an ExperimentList), got {_show(data)}")
    kind = data.get("__id__", "ExperimentList")
    if kind != "ExperimentList":
        doc.fail("__id__", f"expected 'ExperimentList', got {_show(kind)}")
    entries = doc.list(doc.get(data, "experiment", ""), "experiment")
    if not entries:
        doc.fail("experiment", "the list is empty")
    cache = {}
    out = []
    for n, entry in enumerate(entries):
        where = f"experiment[{n}]"
        if not isinstance(entry, dict):
            doc.fail(where, f"expected an object, got {_show(entry)}")

        def model(name, reader, required=False):
            ref = entry.get(name)
            if ref is None:
                if required:
                    doc.fail(f"{where}.{name}", "missing field")
                return None
            if isinstance(ref, bool) or not isinstance(ref, int):
                doc.fail(f"{where}.{name}", f"expected an index into '{name}', got {_show(ref)}")
            models = doc.list(doc.get(data, name, ""), name)
            if not 0 <= ref < len(models):
                doc.fail(f"{where}.{name}", f"index {ref} is outside the '{name}' list "
                                            f"({len(models)} entries)")
            if not isinstance(models[ref], dict):
                doc.fail(f"{name}[{ref}]", f"expected an object, got {_show(models[ref])}")
            key = (name, ref)
            if key not in cache:
                try:
                    cache[key] = reader(doc, models[ref], f"{name}[{ref}]")
                except ConfigError as err:      # a model's own check: name the file and field
                    if str(err).startswith(doc.path):
                        raise
                    doc.fail(f"{name}[{ref}]", str(err))
            return cache[key]

        beam = model("beam", _read_beam, required=True)
        detector = model("detector", _read_detector, required=True)
        gonio = model("goniometer", _read_goniometer)
        scan = model("scan", _read_scan)
        crystal = None
        if entry.get("crystal") is not None:
            setting = gonio[1] if gonio is not None else None
            raw = model("crystal", lambda d, c, w: (d, c, w))
            crystal = _read_crystal(*raw, setting)
        identifier = entry.get("identifier", "")
        out.append(Experiment(detector=detector, beam=beam, crystal=crystal,
                              goniometer=gonio[0] if gonio is not None else None,
                              scan=scan, identifier=str(identifier)))
    return out


def _read_beam(doc, b, where) -> Beam:
    kind = b.get("__id__", "monochromatic")
    if kind != "monochromatic":
        doc.fail(f"{where}.__id__", f"only monochromatic beams are supported, got {_show(kind)}")
    direction = _normalize(doc.vec(doc.get(b, "direction", where), f"{where}.direction"))
    lam = doc.num(doc.get(b, "wavelength", where), f"{where}.wavelength", gt=0)
    # dxtbx's Beam() defaults where the file omits them
    normal = b.get("polarization_normal")
    normal = (0.0, 1.0, 0.0) if normal is None else doc.vec(normal, f"{where}.polarization_normal")
    frac = b.get("polarization_fraction")
    frac = 0.999 if frac is None else doc.num(frac, f"{where}.polarization_fraction")
    if not 0.0 <= frac <= 1.0:
        doc.fail(f"{where}.polarization_fraction", f"expected a number in [0, 1], got {frac!r}")
    unit_s0 = (-direction[0], -direction[1], -direction[2])
    e_vector = _cross(unit_s0, normal)
    if _length(e_vector) < 1e-12:
        doc.fail(f"{where}.polarization_normal", "is parallel to the beam")
    return Beam(direction=from_dials(unit_s0), wavelength_A=lam, polarization=2.0 * frac - 1.0,
                polar_axis=from_dials(_normalize(e_vector)))


def flatten_detector(doc, det, where) -> list:
    """Every panel of a detector dict in the lab frame (dxtbx frame, mm), in panel order:
    dicts with name, fast, slow, origin, path (group names) and the panel dict itself."""
    panels = doc.list(doc.get(det, "panels", where), f"{where}.panels")
    if not panels:
        doc.fail(f"{where}.panels", "the detector has no panels")
    frames = [_local_frame(doc, p, f"{where}.panels[{k}]") for k, p in enumerate(panels)]
    out = [None] * len(panels)
    hierarchy = det.get("hierarchy")
    if hierarchy is None:
        for k, frame in enumerate(frames):
            out[k] = (compose_frame(LAB_FRAME, frame), [panels[k].get("name", f"panel_{k:02d}")])
    else:
        def walk(node, parent, node_where, path, depth):
            if depth > 64:
                doc.fail(node_where, "the hierarchy is nested more than 64 levels deep")
            frame = compose_frame(parent, _local_frame(doc, node, node_where))
            path = path + [str(node.get("name", ""))]
            children = doc.list(doc.get(node, "children", node_where, []), f"{node_where}.children")
            for c, child in enumerate(children):
                child_where = f"{node_where}.children[{c}]"
                if isinstance(child, dict) and "panel" in child:
                    k = child["panel"]
                    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(panels):
                        doc.fail(f"{child_where}.panel", f"expected a panel index 0..{len(panels) - 1}, "
                                                         f"got {_show(k)}")
                    if out[k] is not None:
                        doc.fail(f"{child_where}.panel", f"panel {k} appears twice in the hierarchy")
                    name = panels[k].get("name", f"panel_{k:02d}")
                    out[k] = (compose_frame(frame, frames[k]), path + [str(name)])
                else:
                    walk(child, frame, child_where, path, depth + 1)
        walk(hierarchy, LAB_FRAME, f"{where}.hierarchy", [], 0)
        missing = [k for k, v in enumerate(out) if v is None]
        if missing:
            doc.fail(f"{where}.hierarchy", f"panel {missing[0]} is not in the hierarchy")
    return [{"name": str(panels[k].get("name", f"panel_{k:02d}")), "fast": f, "slow": s, "origin": o,
             "normal": _cross(f, s), "path": path, "panel": panels[k]}
            for k, ((f, s, o), path) in enumerate(out)]


def _local_frame(doc, node, where):
    f = doc.vec(doc.get(node, "fast_axis", where), f"{where}.fast_axis")
    s = doc.vec(doc.get(node, "slow_axis", where), f"{where}.slow_axis")
    o = doc.nums(doc.get(node, "origin", where), 3, f"{where}.origin")
    if abs(_dot(_normalize(f), _normalize(s))) > 1e-6:
        doc.fail(where, "fast_axis and slow_axis are not perpendicular")
    return f, s, o


def _read_detector(doc, det, where) -> Detector:
    panels = []
    for k, flat in enumerate(flatten_detector(doc, det, where)):
        p, pw = flat["panel"], f"{where}.panels[{k}]"
        size = doc.get(p, "image_size", pw)
        if not (isinstance(size, list) and len(size) == 2):
            doc.fail(f"{pw}.image_size", f"expected 2 positive integers, got {_show(size)}")
        size = tuple(doc.int(n, f"{pw}.image_size[{i}]", ge=1) for i, n in enumerate(size))
        px = doc.nums(doc.get(p, "pixel_size", pw), 2, f"{pw}.pixel_size", gt=0)
        thick = doc.num(p.get("thickness", 0.0), f"{pw}.thickness", ge=0)
        mu = doc.num(p.get("mu", 0.0), f"{pw}.mu", ge=0)
        origin = from_dials(flat["origin"])
        panels.append(Panel(fast=from_dials(flat["fast"]), slow=from_dials(flat["slow"]),
                            origin_m=tuple(x / 1000.0 for x in origin), size_px=size,
                            pixel_size_m=(px[0] / 1000.0, px[1] / 1000.0), thickness_m=thick / 1000.0,
                            mu_per_m=mu * 1000.0, name=flat["name"]))
    return Detector(tuple(panels))


def _read_goniometer(doc, g, where):
    if isinstance(g, dict) and "axes" in g:
        doc.fail(f"{where}.axes", "multi-axis goniometers are not supported (one rotation_axis only)")
    axis = doc.vec(doc.get(g, "rotation_axis", where), f"{where}.rotation_axis")
    F = doc.nums(g.get("fixed_rotation", list(IDENTITY9)), 9, f"{where}.fixed_rotation")
    S = doc.nums(g.get("setting_rotation", list(IDENTITY9)), 9, f"{where}.setting_rotation")
    for name, m in (("fixed_rotation", F), ("setting_rotation", S)):
        if not _is_rotation(m):
            doc.fail(f"{where}.{name}", "is not a rotation matrix")
    axis = _normalize(axis)
    if S != IDENTITY9:
        axis = _mulv(S, axis)
    return Goniometer(axis=from_dials(axis)), (S, F)


def _is_rotation(m) -> bool:
    rtr = _mul(_transpose(m), m)
    err = sum((rtr[i] - IDENTITY9[i]) ** 2 for i in range(9))
    return math.sqrt(err) < 1e-8 and abs(1.0 - _det(m)) < 1e-8


def _read_scan(doc, s, where) -> Scan:
    rng = doc.get(s, "image_range", where)
    if not (isinstance(rng, list) and len(rng) == 2):
        doc.fail(f"{where}.image_range", f"expected 2 integers, got {_show(rng)}")
    first = doc.int(rng[0], f"{where}.image_range[0]")
    last = doc.int(rng[1], f"{where}.image_range[1]", ge=first)
    n = last - first + 1
    if "properties" in s:
        props = doc.get(s, "properties", where)
        osc = doc.list(doc.get(props, "oscillation", f"{where}.properties"),
                       f"{where}.properties.oscillation")
        if len(osc) != n:
            doc.fail(f"{where}.properties.oscillation", f"expected {n} angles (one per image), "
                                                        f"got {len(osc)}")
        starts = [doc.num(x, f"{where}.properties.oscillation[{i}]") for i, x in enumerate(osc)]
        r0 = starts[0] * PI_180       # dxtbx keeps radians
        if n > 1:
            width_r = starts[1] * PI_180 - r0
        else:
            w = doc.list(doc.get(props, "oscillation_width", f"{where}.properties"),
                         f"{where}.properties.oscillation_width")
            width_r = doc.num(w[0] if w else None, f"{where}.properties.oscillation_width[0]") * PI_180
        exposure = props.get("exposure_time") or [0.0]
        exposure = doc.num(exposure[0] if isinstance(exposure, list) else exposure,
                           f"{where}.properties.exposure_time", ge=0)
    else:   # older files: "oscillation": [start, width] (deg)
        start, width = doc.nums(doc.get(s, "oscillation", where), 2, f"{where}.oscillation")
        r0, width_r = start * PI_180, width * PI_180
        exposure = s.get("exposure_time") or [0.0]
        exposure = doc.num(exposure[0] if isinstance(exposure, list) else exposure,
                           f"{where}.exposure_time", ge=0)
    if width_r < 0:
        doc.fail(f"{where}", "the oscillation width is negative")
    return Scan(image_range=(first, last), osc_start_deg=r0 / PI_180, osc_width_deg=width_r / PI_180,
                exposure_s=exposure)


def _read_crystal(doc, c, where, setting) -> Crystal:
    kind = c.get("__id__", "crystal")
    if not isinstance(kind, str) or "rystal" not in kind:
        doc.fail(f"{where}.__id__", f"expected a crystal model, got {_show(kind)}")
    vecs = [doc.vec(doc.get(c, k, where), f"{where}.{k}")
            for k in ("real_space_a", "real_space_b", "real_space_c")]
    if abs(_det(vecs[0] + vecs[1] + vecs[2])) <= 1e-9 * _length(vecs[0]) * _length(vecs[1]) * _length(vecs[2]):
        doc.fail(where, "the real-space vectors are coplanar")
    try:
        A = dxtbx_crystal(*vecs)["A"]
    except (ConfigError, ValueError, ZeroDivisionError):
        doc.fail(where, "the real-space vectors do not form a unit cell")
    if setting is not None:
        S, F = setting
        if F != IDENTITY9:
            A = _mul(F, A)
        if S != IDENTITY9:
            A = _mul(S, A)
    hall = c.get("space_group_hall_symbol", " P 1")
    rows = (A[0:3], A[3:6], A[6:9])
    return Crystal(A=matrix_from_dials(rows), space_group_hall=str(hall))


# --------------------------------------------------------------------------
# writing

def write_expt(path, experiments: Union[Experiment, Sequence[Experiment]]) -> None:
    """Write experiments as a DIALS experiment list (dxtbx JSON, dxtbx frame, mm), atomically.

    Each panel is written in the lab frame under a flat hierarchy (an identity root
    group), as dxtbx writes a detector that has no groups.
    """
    if isinstance(experiments, Experiment):
        experiments = [experiments]
    data = experiment_list_dict(experiments)
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, [text.encode("utf-8")])


def experiment_list_dict(experiments: Sequence[Experiment]) -> dict:
    """The dxtbx JSON object (a dict) of an experiment list."""
    lists = {k: [] for k in ("beam", "detector", "goniometer", "scan", "crystal")}
    entries = []
    for exp in experiments:
        entry = {"__id__": "Experiment", "identifier": exp.identifier}
        for name, model, to_dict in (("beam", exp.beam, _beam_dict),
                                     ("detector", exp.detector, _detector_dict),
                                     ("goniometer", exp.goniometer, _goniometer_dict),
                                     ("scan", exp.scan, _scan_dict),
                                     ("crystal", exp.crystal, _crystal_dict)):
            if model is not None:
                entry[name] = len(lists[name])
                lists[name].append(to_dict(model))
        entries.append(entry)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"__id__": "ExperimentList", "experiment": entries,
            "history": [f"{stamp}|nanobrag-torch|write_expt"], "imageset": [], **lists,
            "profile": [], "scaling_model": []}


def _beam_dict(b: Beam) -> dict:
    unit_s0 = to_dials(b.direction)
    e_vector = to_dials(b.polar_axis)
    normal = _normalize(_cross(e_vector, unit_s0))      # unit(unit_s0 x normal) = E (projected)
    return {"__id__": "monochromatic", "direction": [-x for x in unit_s0],
            "wavelength": b.wavelength_A, "divergence": 0.0, "sigma_divergence": 0.0,
            "polarization_normal": list(normal), "polarization_fraction": (b.polarization + 1.0) / 2.0,
            "flux": 0.0, "transmission": 1.0, "probe": "x-ray", "sample_to_source_distance": 0.0}


def _frame_dict(name, kind, fast, slow, origin) -> dict:
    return {"name": name, "type": kind, "fast_axis": list(fast), "slow_axis": list(slow),
            "origin": list(origin)}


def _detector_dict(d: Detector) -> dict:
    panels = []
    for p in d.panels:
        parallax = p.thickness_m > 0 and p.mu_per_m > 0
        entry = _frame_dict(p.name, "SENSOR_PAD", to_dials(p.fast), to_dials(p.slow),
                            [mm_for_m(x) for x in to_dials(p.origin_m)])
        entry.update({
            "raw_image_offset": [0, 0], "image_size": list(p.size_px),
            "pixel_size": [mm_for_m(x) for x in p.pixel_size_m], "trusted_range": [-1.0, 1000000.0],
            "thickness": mm_for_m(p.thickness_m), "material": "Si", "mu": p.mu_per_m / 1000.0,
            "identifier": "", "mask": [], "gain": 1.0, "pedestal": 0.0,
            "px_mm_strategy": {"type": "ParallaxCorrectedPxMmStrategy" if parallax
                               else "SimplePxMmStrategy"}})
        panels.append(entry)
    root = _frame_dict("detector", "", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0))
    root.update({"raw_image_offset": [0, 0], "image_size": [0, 0], "pixel_size": [0.0, 0.0],
                 "trusted_range": [0.0, 0.0], "thickness": 0.0, "material": "", "mu": 0.0,
                 "identifier": "", "mask": [], "gain": 1.0, "pedestal": 0.0,
                 "px_mm_strategy": {"type": "SimplePxMmStrategy"},
                 "children": [{"panel": k} for k in range(len(panels))]})
    return {"panels": panels, "hierarchy": root}


def _goniometer_dict(g: Goniometer) -> dict:
    return {"rotation_axis": list(to_dials(g.axis)), "fixed_rotation": list(IDENTITY9),
            "setting_rotation": list(IDENTITY9)}


def _scan_dict(s: Scan) -> dict:
    n = s.num_images
    props = {"epochs": [s.exposure_s * i for i in range(n)], "exposure_time": [s.exposure_s] * n,
             "oscillation": [s.osc_start_deg + s.osc_width_deg * i for i in range(n)]}
    if n == 1:
        props["oscillation_width"] = [s.osc_width_deg]
    return {"image_range": list(s.image_range), "batch_offset": 0, "properties": props,
            "valid_image_ranges": {}}


def _crystal_dict(c: Crystal) -> dict:
    rows = matrix_to_dials(c.A)
    R = _inv(rows[0] + rows[1] + rows[2])      # dxtbx: real-space vectors = rows of A^-1
    return {"__id__": "crystal", "real_space_a": list(R[0:3]), "real_space_b": list(R[3:6]),
            "real_space_c": list(R[6:9]), "space_group_hall_symbol": c.space_group_hall}
