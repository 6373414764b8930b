"""Instrument models <-> SimConfig: `-expt`, `-detector_json`, and writing an experiment back.

`config_from_expt(path)` gives the SimConfig of a DIALS experiment: the CUSTOM
convention with the file's beam, E-vector, spindle and panel vectors, pix0 = the
panel origin, the crystal's A as a -mat matrix (A * lambda, read back exactly as
-mat reads a file), the wavelength, the Kahn factor and one scan image's start
angle and width. In spec mode the panel sits exactly at the file's origin; in
c-parity mode (where nanoBragg.c ignores -pix0_vector) it is placed from the
file's distance and beam centre, as the C does with the equivalent flags (the
same point to rounding).

Only single-panel detectors render today: a multi-panel experiment raises a
ConfigError naming the panel count (the readers return every panel).
"""
from __future__ import annotations

from typing import Iterable, List, Optional

from .config import SimConfig
from .errors import ConfigError, UsageError
from .instrument import (Beam, Crystal, Detector, Experiment, Goniometer, Scan, dot, mm_for_m,
                         single_panel, um_for_m)

# which command-line flag overrides which value of an -expt file (canonical flag names)
OVERRIDES = {
    "-lambda": ("wavelength",), "-energy": ("wavelength",),
    "-polar": ("polarization",), "-nopolar": ("polarization",),
    "-polar_vector": ("polar_axis",), "-beam_vector": ("beam_direction",),
    "-mat": ("crystal",), "-cell": ("crystal",),
    "-spindle_axis": ("spindle",), "-phi": ("phi",), "-osc": ("osc",),
    "-fdet_vector": ("fdet",), "-sdet_vector": ("sdet",), "-odet_vector": ("odet",),
    "-pix0_vector": ("pix0",), "-pix0_vector_mm": ("pix0",),
    "-distance": ("distance", "placement"), "-close_distance": ("distance", "placement"),
    "-Xbeam": ("beam_center_f", "placement"), "-Ybeam": ("beam_center_s", "placement"),
    "-Xclose": ("placement",), "-Yclose": ("placement",), "-ORGX": ("placement",),
    "-ORGY": ("placement",), "-pivot": ("placement",), "-detector_rotx": ("placement",),
    "-detector_roty": ("placement",), "-detector_rotz": ("placement",),
    "-twotheta": ("placement",), "-twotheta_axis": ("placement",),
    "-pixel": ("pixel_size",),
    "-detpixels": ("size",), "-detpixels_f": ("size",), "-detpixels_s": ("size",),
    "-detsize": ("size",), "-detsize_f": ("size",), "-detsize_s": ("size",),
    "-detector_thick": ("sensor",), "-detector_abs": ("sensor",),
}
# flags that cannot be combined with -expt: they would redefine every axis the file gives
CONFLICTS = ("-mosflm", "-denzo", "-adxv", "-xds", "-dials", "-img")


def config_from_expt(path, cfg: Optional[SimConfig] = None, image: Optional[int] = None,
                     experiment: int = 0) -> SimConfig:
    """The SimConfig of experiment `experiment` of a DIALS .expt file, scan image `image`
    (default: the first). With cfg given, its instrument fields are replaced (the rest,
    e.g. structure factors, N, oversampling, stays) and cfg is returned."""
    from .io.expt import read_expt
    cfg = cfg if cfg is not None else SimConfig()
    cfg.notes.extend(apply_experiment(cfg, read_expt(path, experiment), image=image, source=str(path)))
    return cfg


def apply_experiment(cfg: SimConfig, exp: Experiment, image: Optional[int] = None,
                     keep: Iterable[str] = (), source: str = "") -> List[str]:
    """Set cfg's instrument from exp, except the items in keep (see OVERRIDES). Returns notes.
    Everything is checked before cfg is touched: a failure leaves cfg as it was."""
    keep = set(keep)
    where = source or "experiment"
    _check_detector(exp.detector, keep, where)
    start = width = None
    if exp.scan is not None:
        first, last = exp.scan.image_range
        k = image if image is not None else first
        if not first <= k <= last:
            raise ConfigError(f"{where}: no image {k} in the scan (images {first}..{last})")
        start, width = exp.scan.image_oscillation(k)
    elif image is not None:
        raise ConfigError(f"{where}: no scan in the experiment, so no image {image}")
    beam, cr = cfg.beam, cfg.crystal
    _freeze_convention(cfg)
    if "wavelength" not in keep:
        beam.wavelength_A = exp.beam.wavelength_A
    if "beam_direction" not in keep:
        beam.beam_vector = list(exp.beam.direction)
    if "polarization" not in keep:
        beam.polarization, beam.nopolar = exp.beam.polarization, False
    if "polar_axis" not in keep:
        beam.polar_vector = list(exp.beam.polar_axis)
    if exp.goniometer is not None and "spindle" not in keep:
        cr.spindle_axis = list(exp.goniometer.axis)
    if exp.crystal is not None and "crystal" not in keep:
        # -mat semantics: the matrix holds A * lambda and the reader divides lambda out again
        from .vec import value
        cr.mat = exp.crystal.mosflm_matrix(value(beam.wavelength_A))
        cr.cell, cr.mat_file = None, None
    if start is not None:
        if "phi" not in keep:
            cr.phi_deg = start
        if "osc" not in keep and width > 0:
            cr.osc_deg = width
    notes = apply_detector(cfg, exp.detector, keep=keep, source=source)
    what = [f"{len(exp.detector)} panel {exp.detector[0].fpixels}x{exp.detector[0].spixels}",
            f"wavelength {exp.beam.wavelength_A:g} A"]
    if exp.crystal is not None:
        what.append("crystal")
    if exp.scan is not None:
        k = image if image is not None else exp.scan.image_range[0]
        what.append(f"image {k} of {exp.scan.image_range[0]}..{exp.scan.image_range[1]}")
    return [f"{where}: " + ", ".join(what)] + notes


def _check_detector(detector: Detector, keep, where: str) -> None:
    """What the renderer needs of a detector model: square pixels, every panel's normal
    pointing away from the sample; several panels are placed by the file alone."""
    for p in detector:
        if "pixel_size" not in keep and p.pixel_size_m[0] != p.pixel_size_m[1]:
            raise ConfigError(f"{where}: panel {p.name!r} has non-square pixels "
                              f"({p.pixel_size_m[0] * 1e3:g} x {p.pixel_size_m[1] * 1e3:g} mm)")
        centre = p.pixel_centre_m((p.fpixels - 1) / 2.0, (p.spixels - 1) / 2.0)
        if dot(p.normal, centre) <= 0:
            raise ConfigError(f"{where}: panel {p.name!r}: its normal (fast x slow) points toward "
                              f"the sample; nanoBragg needs it to point away")
    placing = set(keep) & {"pixel_size", "size", "sensor", "fdet", "sdet", "odet", "distance",
                           "beam_center_f", "beam_center_s", "pix0", "placement"}
    if len(detector) > 1 and placing:
        raise ConfigError(f"{where}: a detector of {len(detector)} panels is placed by the file: "
                          f"flags that move or resize the detector do not apply to it")


def panel_config(cfg: SimConfig, index: int) -> SimConfig:
    """A copy of cfg whose single-panel detector is panel `index` of cfg.detector.panels
    (its own vectors, origin, size, pixel size and sensor)."""
    import dataclasses
    # (the panel's vectors are final: no detector rotations or two-theta on top of them)
    det = dataclasses.replace(cfg.detector, panels=None, panel_offset_m=None,
                              panel_rotation_deg=None, roi=None, mask=None,
                              rotation_deg=[0.0, 0.0, 0.0], twotheta_deg=0.0)
    copy = dataclasses.replace(cfg, detector=det, beam=dataclasses.replace(cfg.beam),
                               crystal=dataclasses.replace(cfg.crystal))
    apply_detector(copy, Detector((cfg.detector.panels[index],)))
    return copy


def apply_detector(cfg: SimConfig, detector: Detector, keep: Iterable[str] = (),
                   source: str = "") -> List[str]:
    """Place cfg's detector at the (single) panel of detector, except the items in keep."""
    keep, det, notes = set(keep), cfg.detector, []
    where = source or "detector"
    _check_detector(detector, keep, where)
    p = detector[0]
    _freeze_convention(cfg)
    det.panels = detector if len(detector) > 1 else None
    if "pixel_size" not in keep:
        det.pixel_size_mm = mm_for_m(p.pixel_size_m[0])
    if "size" not in keep:
        det.detpixels = [p.fpixels, p.spixels]
    if "sensor" not in keep:
        if p.thickness_m > 0 and p.mu_per_m > 0:
            det.thickness_um, det.mu_per_m = um_for_m(p.thickness_m), p.mu_per_m
        else:
            if p.thickness_m > 0:
                notes.append(f"{where}: panel {p.name!r} has a thickness but no attenuation (mu 0): "
                             f"no sensor absorption is simulated")
            det.thickness_um = 0.0
    for item, target, vector in (("fdet", "fdet_vector", p.fast), ("sdet", "sdet_vector", p.slow),
                                 ("odet", "odet_vector", p.normal)):
        if item not in keep:
            setattr(det, target, list(vector))
    # distance and beam centre (CUSTOM: Xbeam, Ybeam = fast, slow mm): what places the panel
    # in c-parity mode, and when a placement flag drops the origin
    b = cfg.beam.beam_vector or [1.0, 0.0, 0.0]
    hit, t = p.beam_centre_m(b), _beam_distance_m(p, b)
    if hit is not None:
        if "distance" not in keep:
            det.distance_mm, det.close_distance_mm = mm_for_m(t), None
        centre_mm = list(det.beam_center_mm) if not _is_tensor(det.beam_center_mm) else [None, None]
        for k, item in ((0, "beam_center_f"), (1, "beam_center_s")):
            if item not in keep:
                centre_mm[k] = mm_for_m(hit[k])
        det.beam_center_mm = centre_mm
    elif cfg.mode == "c-parity":
        notes.append(f"{where}: the beam misses the plane of panel {p.name!r}: in c-parity mode "
                     f"the panel is placed by the default distance and beam centre")
    if "pix0" not in keep and "placement" not in keep:
        det.pix0_vector_m = list(p.origin_m)
    elif "placement" in keep and "pix0" not in keep:
        det.pix0_vector_m = None
        notes.append(f"{where}: the panel origin is not used: nanoBragg's rules place the detector "
                     f"from the distance and beam centre (CUSTOM convention: -Xbeam/-Ybeam are "
                     f"fast/slow mm)")
    det.convention = "CUSTOM"
    return notes


def _beam_distance_m(panel, direction) -> Optional[float]:
    """Sample to the point where the beam meets the panel plane (m), or None."""
    d = [float(x) for x in direction]
    denom = dot(d, panel.normal)
    t = dot(panel.origin_m, panel.normal) / denom if denom != 0 else -1.0
    return t * dot(d, d) ** 0.5 if t > 0 else None


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def _freeze_convention(cfg: SimConfig) -> None:
    """Before switching to CUSTOM: keep the named convention's beam, E-vector, spindle and
    2theta axis where the user gave none (CUSTOM would otherwise fall back to MOSFLM's)."""
    from .detector import CONVENTIONS
    conv = cfg.detector.convention
    if conv == "CUSTOM":
        return
    beam, _, _, _, axis, polar, spindle = CONVENTIONS[conv]
    b, d, c = cfg.beam, cfg.detector, cfg.crystal
    b.beam_vector = b.beam_vector if b.beam_vector is not None else [float(x) for x in beam]
    b.polar_vector = b.polar_vector if b.polar_vector is not None else [float(x) for x in polar]
    c.spindle_axis = c.spindle_axis if c.spindle_axis is not None else [float(x) for x in spindle]
    d.twotheta_axis = d.twotheta_axis if d.twotheta_axis is not None else [float(x) for x in axis]


# --------------------------------------------------------------------------
# SimConfig -> Experiment (for write_expt)

def experiment_from_config(cfg: SimConfig, mode: Optional[str] = None, identifier: str = "") -> Experiment:
    """The experiment cfg simulates (float64): its panels, beam, crystal at phi = 0 (the
    reciprocal axes the simulator uses, after misset), spindle and one scan image."""
    import torch
    from .beam import wavelength_m
    from .crystal import crystal_lattice, phi_plan
    from .detector import lab_vectors
    from .units import RTD
    from .vec import value
    mode = mode or cfg.mode
    if cfg.beam.nopolar:
        raise ConfigError("-nopolar (no polarisation factor at all) has no DIALS equivalent")
    f64, cpu = torch.float64, torch.device("cpu")
    vec = lab_vectors(cfg, f64, cpu)
    floats = lambda t: tuple(float(x) for x in t.detach().reshape(-1).tolist())  # noqa: E731
    beam = Beam(direction=floats(vec.beam), wavelength_A=value(cfg.beam.wavelength_A),
                polarization=value(cfg.beam.polarization), polar_axis=floats(vec.polar))
    crystal = None
    if cfg.crystal.cell is not None or cfg.crystal.mat is not None:
        lat = crystal_lattice(cfg, mode, wavelength_m(cfg, f64, cpu), f64, cpu)
        if lat.a_star.dim() != 1:
            raise ConfigError("a batch of orientations cannot be written as one experiment")
        cols = [floats(v) for v in (lat.a_star, lat.b_star, lat.c_star)]
        crystal = Crystal(A=tuple(tuple(cols[j][i] for j in range(3)) for i in range(3)))
    plan = phi_plan(cfg)
    phi0, osc = value(cfg.crystal.phi_deg), value(plan.osc_rad) * RTD
    scan = Scan(image_range=(1, 1), osc_start_deg=phi0, osc_width_deg=osc,
                exposure_s=float(cfg.beam.exposure_s)) if (osc > 0 or phi0 != 0) else None
    detector = cfg.detector.panels if cfg.detector.panels is not None else single_panel(cfg, mode)
    return Experiment(detector=detector, beam=beam, crystal=crystal,
                      goniometer=Goniometer(axis=floats(vec.spindle)), scan=scan, identifier=identifier)


# --------------------------------------------------------------------------
# the command line: -expt FILE, -expt_image K, -detector_json FILE (called from cli._read_inputs)

def apply_cli(st) -> None:
    """Apply -expt / -detector_json to the parser state st; flags given override the files."""
    from . import cli, inputs
    cfg = st.cfg
    uses = cli._tokenize(st.argv)
    given = []
    for use in uses:
        if use.flag.name not in given:
            given.append(use.flag.name)
    keep = {item for flag in given for item in OVERRIDES.get(flag, ())}
    expt_file = cfg.expt_file
    layout = cfg.detector.layout_file
    if expt_file is None:
        if cfg.expt_image is not None:
            raise cli.FlagError("-expt_image needs -expt FILE")
    else:
        for flag in CONFLICTS:
            if flag in given:
                raise cli.FlagError(f"{flag} cannot be combined with -expt (the file defines "
                                    f"the detector and beam)")
        from .io.expt import read_experiments
        exps = inputs.read_file("-expt", expt_file, read_experiments)
        if len(exps) != 1:
            raise cli.FileError(f"-expt {expt_file}: the file holds {len(exps)} experiments; "
                                f"give one (dials.split_experiments)")
        exp = exps[0]
        image = cfg.expt_image
        if image is not None and (exp.scan is None or not
                                  exp.scan.image_range[0] <= image <= exp.scan.image_range[1]):
            scan = (f"images {exp.scan.image_range[0]}..{exp.scan.image_range[1]}"
                    if exp.scan is not None else "no scan")
            raise cli.FlagError(f"-expt_image {image}: not an image of {expt_file} ({scan})")
        if exp.crystal is None and st.mat is None and not st.cell_given:
            raise UsageError(f"ERROR: no crystal in {expt_file}: give -cell a b c alpha beta gamma "
                             f"or -mat FILE.")
        try:
            notes = apply_experiment(cfg, exp, image=cfg.expt_image, keep=keep,
                                     source=f"-expt {expt_file}")
        except ConfigError as err:
            raise cli.FileError(str(err)) from err
        cfg.notes.extend(notes[:1] + _override_notes(exp, given, f"-expt {expt_file}",
                                                     layout is not None) + notes[1:])
    if layout is not None:
        from .io.detector_json import read_detector_json
        detector = inputs.read_file("-detector_json", layout, read_detector_json)
        if expt_file is not None:
            cfg.notes.append(f"-detector_json {layout}: replaces the detector of -expt {expt_file}")
        try:
            cfg.notes.extend(apply_detector(cfg, detector, keep=keep, source=f"-detector_json {layout}"))
        except ConfigError as err:
            raise cli.FileError(str(err)) from err


def _override_notes(exp: Experiment, given, where: str, detector_replaced: bool) -> List[str]:
    """One line per flag that overrides a value the file gives (argv order)."""
    p, b = exp.detector[0], exp.beam
    hit, t = p.beam_centre_m(b.direction), _beam_distance_m(p, b.direction)
    values = {
        "wavelength": f"wavelength ({b.wavelength_A:g} A)",
        "polarization": f"polarisation (Kahn factor {b.polarization:g})",
        "polar_axis": "E-vector axis", "beam_direction": "beam direction",
        "crystal": "crystal" if exp.crystal is not None else None,
        "spindle": "rotation axis" if exp.goniometer is not None else None,
        "phi": None, "osc": None,
    }
    if exp.scan is not None:
        values["phi"] = f"start angle ({exp.scan.osc_start_deg:g} deg)"
        values["osc"] = f"oscillation width ({exp.scan.osc_width_deg:g} deg)"
    if not detector_replaced:
        values.update({
            "fdet": "fast axis", "sdet": "slow axis", "odet": "panel normal", "pix0": "panel origin",
            "distance": f"distance ({t * 1e3:g} mm)" if t else "distance",
            "beam_center_f": f"beam centre along fast ({hit[0] * 1e3:g} mm)" if hit else None,
            "beam_center_s": f"beam centre along slow ({hit[1] * 1e3:g} mm)" if hit else None,
            "placement": "panel origin",
            "pixel_size": f"pixel size ({p.pixel_size_m[0] * 1e3:g} mm)",
            "size": f"panel size ({p.fpixels}x{p.spixels} pixels)",
            "sensor": "sensor thickness and attenuation"})
    notes = []
    for flag in given:
        items = [values.get(item) for item in OVERRIDES.get(flag, ())[:1]]
        items = [x for x in items if x]
        if items:
            notes.append(f"{where}: {flag} overrides the file's {items[0]}")
    return notes
