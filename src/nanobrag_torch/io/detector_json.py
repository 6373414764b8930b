"""Hand-written detector layouts: a small JSON format of our own (docs/detectors.md).

    {"format": "nanobrag-torch detector", "version": 1,
     "frame": "nanobragg",                     (or "dxtbx": beam along -z)
     "defaults": {"pixel_size_mm": 0.1, "size_px": [128, 128]},
     "detector": {"fast": [0, 0, 1], "slow": [0, -1, 0], "origin_mm": [100, 13.3, -13.3],
                  "children": [{"name": "p0"}, {"name": "p1", "origin_mm": [13.8, 0, 0]}]}}

A node with "children" is a group, any other node a panel. Every node has a
local frame in its parent's: "fast"/"slow" axes (or "rotation_deg": [rx, ry, rz],
axes = first two columns of Rz Ry Rx) and "origin_mm"; the root's parent is the
lab. Composition is dxtbx's (io/expt.py): lab = P unit(local), origin = P o + o_p
with P = [f|s|f x s] of the parent. Panel fields: "size_px" [fast, slow],
"pixel_size_mm" (a number or [fast, slow]), "thickness_um",
"attenuation_depth_um" (as -detector_thick / -detector_abs), "name"; missing ones
come from "defaults". Every field is checked: a bad file fails with one line
naming the file, the field and the reason.
"""
from __future__ import annotations

import json
import math

from nanobrag_torch.errors import ConfigError
from nanobrag_torch.instrument import (Detector, Panel, exact_inverse, from_dials, mm_for_m,
                                       to_dials, um_for_m)
from nanobrag_torch.io._common import atomic_write
from nanobrag_torch.io.expt import LAB_FRAME, _Doc, _load_json, _show, compose_frame, guarded

FORMAT = "nanobrag-torch detector"
VERSION = 1
FRAMES = ("nanobragg", "dxtbx")
TOP_KEYS = ("format", "version", "frame", "defaults", "detector", "comment")
FRAME_KEYS = ("name", "fast", "slow", "rotation_deg", "origin_mm", "comment")
PANEL_KEYS = ("size_px", "pixel_size_mm", "thickness_um", "attenuation_depth_um")
GROUP_KEYS = ("children",)
MAX_DEPTH = 32


def read_detector_json(path) -> Detector:
    """The Detector of a layout file, in nanoBragg's lab frame (metres)."""
    return guarded(path, _read_detector_json)


def _read_detector_json(path) -> Detector:
    doc = _Doc(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        doc.fail("top level", f"expected an object, got {_show(data)}")
    _known(doc, data, TOP_KEYS, "top level")
    if data.get("format") != FORMAT:
        doc.fail("format", f"expected {FORMAT!r}, got {_show(data.get('format'))}")
    if data.get("version") != VERSION:
        doc.fail("version", f"expected {VERSION}, got {_show(data.get('version'))}")
    frame = data.get("frame", "nanobragg")
    if frame not in FRAMES:
        doc.fail("frame", f"expected one of {'|'.join(FRAMES)}, got {_show(frame)}")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        doc.fail("defaults", f"expected an object, got {_show(defaults)}")
    _known(doc, defaults, PANEL_KEYS, "defaults")
    root = doc.get(data, "detector", "")
    panels = []
    _walk(doc, root, LAB_FRAME, "detector", defaults, panels, 0)
    if not panels:
        doc.fail("detector", "the layout has no panels")
    names = [p["name"] for p in panels]
    for k, name in enumerate(names):
        if name in names[:k]:
            doc.fail(panels[k]["where"] + ".name", f"panel name {name!r} is used twice")
    convert = from_dials if frame == "dxtbx" else (lambda v: tuple(float(x) for x in v))
    out = []
    for p in panels:
        try:
            out.append(Panel(fast=convert(p["fast"]), slow=convert(p["slow"]),
                             origin_m=tuple(x / 1000.0 for x in convert(p["origin"])),
                             size_px=p["size_px"], pixel_size_m=p["pixel_size_m"],
                             thickness_m=p["thickness_m"], mu_per_m=p["mu_per_m"], name=p["name"]))
        except ConfigError as err:
            doc.fail(p["where"], str(err))
    return Detector(tuple(out))


def _known(doc, obj, allowed, where):
    for key in obj:
        if key not in allowed:
            doc.fail(f"{where}.{key}" if where != "top level" else key,
                     f"unknown field (expected one of {', '.join(allowed)})")


def _walk(doc, node, parent, where, defaults, panels, depth):
    if depth > MAX_DEPTH:
        doc.fail(where, f"groups nested more than {MAX_DEPTH} levels deep")
    if not isinstance(node, dict):
        doc.fail(where, f"expected an object (a panel or a group), got {_show(node)}")
    group = "children" in node
    _known(doc, node, FRAME_KEYS + (GROUP_KEYS if group else PANEL_KEYS), where)
    frame = compose_frame(parent, _local_frame(doc, node, where))
    if group:
        children = doc.list(node["children"], f"{where}.children")
        if not children:
            doc.fail(f"{where}.children", "a group needs at least one child")
        for c, child in enumerate(children):
            _walk(doc, child, frame, f"{where}.children[{c}]", defaults, panels, depth + 1)
        return
    value = lambda key: node[key] if key in node else defaults.get(key)  # noqa: E731
    origin_of = lambda key: f"{where}.{key}" if key in node else f"defaults.{key}"  # noqa: E731
    size = value("size_px")
    if size is None:
        doc.fail(f"{where}.size_px", "missing field (give it here or in defaults)")
    if not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size)):
        doc.fail(origin_of("size_px"), f"expected 2 integers >= 1 (fast, slow), got {_show(size)}")
    px = value("pixel_size_mm")
    if px is None:
        doc.fail(f"{where}.pixel_size_mm", "missing field (give it here or in defaults)")
    px = (doc.nums(px, 2, origin_of("pixel_size_mm"), gt=0) if isinstance(px, list)
          else (doc.num(px, origin_of("pixel_size_mm"), gt=0),) * 2)
    thick = value("thickness_um")
    thick = 0.0 if thick is None else doc.num(thick, origin_of("thickness_um"), ge=0)
    depth_um = value("attenuation_depth_um")
    if depth_um is not None:
        depth_um = doc.num(depth_um, origin_of("attenuation_depth_um"), gt=0)
    elif thick > 0:
        doc.fail(origin_of("thickness_um"), "a sensor thickness needs attenuation_depth_um")
    name = node.get("name", f"panel_{len(panels):02d}")
    if not isinstance(name, str) or not name:
        doc.fail(f"{where}.name", f"expected a non-empty string, got {_show(name)}")
    panels.append({"where": where, "name": name, "fast": frame[0], "slow": frame[1],
                   "origin": frame[2], "size_px": tuple(size),
                   "pixel_size_m": (px[0] / 1000.0, px[1] / 1000.0), "thickness_m": thick * 1e-6,
                   "mu_per_m": 1.0 / (depth_um * 1e-6) if depth_um is not None else 0.0})


def _local_frame(doc, node, where):
    if "rotation_deg" in node:
        if "fast" in node or "slow" in node:
            doc.fail(f"{where}.rotation_deg", "give either rotation_deg or fast/slow, not both")
        rx, ry, rz = (math.radians(a) for a in doc.nums(node["rotation_deg"], 3, f"{where}.rotation_deg"))
        R = _rz_ry_rx(rx, ry, rz)
        fast, slow = (R[0][0], R[1][0], R[2][0]), (R[0][1], R[1][1], R[2][1])
    else:
        fast = doc.vec(node.get("fast", [1.0, 0.0, 0.0]), f"{where}.fast")
        slow = doc.vec(node.get("slow", [0.0, 1.0, 0.0]), f"{where}.slow")
        nf, ns = math.sqrt(sum(x * x for x in fast)), math.sqrt(sum(x * x for x in slow))
        if abs(sum(a * b for a, b in zip(fast, slow))) / (nf * ns) > 1e-6:
            doc.fail(where, "fast and slow are not perpendicular")
    origin = doc.nums(node.get("origin_mm", [0.0, 0.0, 0.0]), 3, f"{where}.origin_mm")
    return fast, slow, origin


def _rz_ry_rx(rx, ry, rz):
    cx, sx, cy, sy, cz, sz = (math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry),
                              math.cos(rz), math.sin(rz))
    return ((cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx),
            (sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx),
            (-sy, cy * sx, cy * cx))


def write_detector_json(path, detector: Detector, frame: str = "nanobragg") -> None:
    """Write detector as a flat layout (every panel in the lab frame), atomically."""
    if frame not in FRAMES:
        raise ConfigError(f"frame must be one of {'|'.join(FRAMES)}, got {frame!r}")
    convert = to_dials if frame == "dxtbx" else (lambda v: tuple(float(x) for x in v))
    children = []
    for p in detector:
        px = [mm_for_m(x) for x in p.pixel_size_m]
        node = {"name": p.name, "fast": list(convert(p.fast)), "slow": list(convert(p.slow)),
                "origin_mm": [mm_for_m(x) for x in convert(p.origin_m)], "size_px": list(p.size_px),
                "pixel_size_mm": px[0] if px[0] == px[1] else px}
        if p.thickness_m > 0:
            node["thickness_um"] = um_for_m(p.thickness_m)
        if p.mu_per_m > 0:
            node["attenuation_depth_um"] = exact_inverse(p.mu_per_m, lambda d: 1.0 / (d * 1e-6),
                                                         1e6 / p.mu_per_m)
        children.append(node)
    data = {"format": FORMAT, "version": VERSION, "frame": frame,
            "detector": {"name": "detector", "children": children}}
    atomic_write(path, [(json.dumps(data, indent=2) + "\n").encode("utf-8")])
