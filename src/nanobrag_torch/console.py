"""The C's console log (SPEC 6.6): same lines and names, so scripts that parse logs keep working."""
from __future__ import annotations

import sys

import numpy as np

from .units import RTD
from .vec import cross, dot, magnitude


def say(out, text: str) -> None:
    print(text, file=out)


def _g(*xs) -> str:
    return " ".join(f"{float(x):g}" for x in xs)


def print_setup(s, cfg, out) -> None:
    """Everything the C prints before rendering, from the resolved setup s (simulator.Setup)."""
    g = s.geom
    lat = s.lattice
    say(out, "nanoBragg nanocrystal diffraction simulator - James Holton and Ken Frankel 5-17-17")
    say(out, f"{g.convention.lower()} convention selected.")
    say(out, "pivoting detector around sample" if g.pivot == "SAMPLE"
        else "pivoting detector around direct beam spot")
    say(out, f"XDS incident beam: {_g(dot(g.beam, g.fdet), dot(g.beam, g.sdet), dot(g.beam, g.odet))}")
    if cfg.crystal.interpolate is None:
        auto = any(float(n) <= 2 for n in cfg.crystal.n_cells)
        say(out, "auto-selected tricubic interpolation of structure factors" if auto
            else "auto-selected no interpolation")
    if lat.random_misset and lat.misset_rad is not None:
        m = [float(x) * RTD for x in lat.misset_rad]
        say(out, f"random orientation misset angles: {m[0]:f} {m[1]:f} {m[2]:f} deg")
    a_A, b_A, c_A = (v * 1e10 for v in (lat.a, lat.b, lat.c))
    la, lb, lc = (float(magnitude(v)) for v in (a_A, b_A, c_A))
    ras, rbs, rcs = (float(magnitude(v)) for v in (lat.a_star, lat.b_star, lat.c_star))

    def angle(u, v):
        return float(np.degrees(np.arccos(np.clip(float(dot(u, v) / magnitude(u) / magnitude(v)), -1, 1))))
    say(out, f"Unit Cell: {la:g} {lb:g} {lc:g} {angle(b_A, c_A):g} {angle(a_A, c_A):g} {angle(a_A, b_A):g}")
    say(out, f"Recp Cell: {ras:g} {rbs:g} {rcs:g} {angle(lat.b_star, lat.c_star):g} "
             f"{angle(lat.a_star, lat.c_star):g} {angle(lat.a_star, lat.b_star):g}")
    say(out, f"volume = {float(lat.V_cell):g} A^3")
    say(out, "real-space cell vectors (Angstrom):")
    say(out, "     %-10s  %-10s  %-10s" % ("a", "b", "c"))
    for i, axis in enumerate("XYZ"):
        say(out, "%s: %11.8f %11.8f %11.8f" % (axis, float(a_A[i]), float(b_A[i]), float(c_A[i])))
    say(out, "reciprocal-space cell vectors (Angstrom^-1):")
    say(out, "     %-10s  %-10s  %-10s" % ("a_star", "b_star", "c_star"))
    for i, axis in enumerate("XYZ"):
        say(out, "%s: %11.8f %11.8f %11.8f" % (axis, float(lat.a_star[i]), float(lat.b_star[i]),
                                              float(lat.c_star[i])))
    N = [float(x) for x in lat.n_cells]
    say(out, f"crystal is {la * 1e-4 * N[0]:g} x {lb * 1e-4 * N[1]:g} x {lc * 1e-4 * N[2]:g} microns")
    print_oversample_and_mw(s, cfg, g, la, lb, lc, N, out)
    print_sources_and_rest(s, cfg, out)


def print_oversample_and_mw(s, cfg, g, la, lb, lc, N, out):
    if cfg.oversample is None or cfg.oversample <= 0:
        say(out, f"auto-selected {s.oversample}-fold oversampling")
    if s.oversample < s.recommended_oversample:
        size = max(la * N[0], lb * N[1], lc * N[2])
        say(out, f"WARNING: maximum dimension of sample is {size:g} A")
        say(out, f"         but reciprocal pixel size is "
                 f"{float(cfg.beam.wavelength_A) * float(g.distance) / g.pixel_size_m:g} A")
        say(out, "         intensity may vary significantly across a pixel!")
        say(out, f"         recommend -oversample {s.recommended_oversample} to work around this")
    # the C's rough molecular weight: crystal volume * 1.2 g/cm^3 per unit cell
    volume = (la * 1e-10 * N[0]) * (lb * 1e-10 * N[1]) * (lc * 1e-10 * N[2])
    say(out, f"approximate MW = {volume * 1.2e6 * 6.02214179e23 / (N[0] * N[1] * N[2]):g}")
    if cfg.crystal.hkl is not None and cfg.crystal.hkl_file is None:
        say(out, f"reading Fs from {cfg.crystal.dump_file}")
    elif cfg.crystal.hkl_file is not None:
        say(out, f"counting entries in {cfg.crystal.hkl_file}")
        say(out, f"re-reading {cfg.crystal.hkl_file}")


def print_sources_and_rest(s, cfg, out):
    g = s.geom
    N = [float(x) for x in s.lattice.n_cells]
    for note in s.notes:
        say(out, note)
    for t in range(s.thicksteps):
        say(out, f"thick{t} = {float(s.thickstep_m) * t * 1e6:g} um")
    for i in range(s.phi.phisteps):
        phi = float(s.phi.phi0_rad) + float(s.phi.phistep_rad) * i
        say(out, f"phi{i} = {phi * RTD:g}")
    src = s.sources
    if cfg.beam.sources is None:
        for hdiv, vdiv in src.deviations:
            say(out, f"divergence deviation: {hdiv:g} {vdiv:g}")
        dn, dr, ds = src.disp
        lam0 = float(cfg.beam.wavelength_A) / 1e10
        for j in range(dn):
            say(out, f"lambda{j} = {lam0 * (1.0 + float(ds) * j - float(dr) / 2.0):.15g}")
    say(out, f"  created a total of {src.incident.shape[0]} sources:")
    w = [1.0 / src.incident.shape[0]] * src.incident.shape[0]
    if cfg.beam.sources is not None:
        w = [1.0 if np.isnan(x) else float(x) for x in cfg.beam.sources.weight]
    for i in range(src.incident.shape[0]):
        p = src.position[i]
        say(out, f"{_g(*p)}   {w[i]:g} {float(src.wavelength[i]):g}")
    say(out, f"  created a total of {s.mosaic_domains} mosaic domains")
    hk = cfg.crystal.hkl
    say(out, f"  {hk.hkls if hk is not None else 0} initialized hkls (all others ={float(cfg.crystal.default_F):g})")
    shape = {"round": "ellipsoidal", "square": "parallelpiped", "gauss": "gaussian", "tophat": "tophat-spot"}
    say(out, f"  {shape[cfg.crystal.shape]} xtal: {N[0]:.0f}x{N[1]:.0f}x{N[2]:.0f} cells")
    dn, dr, _ = src.disp
    lam0 = float(cfg.beam.wavelength_A) / 1e10
    say(out, f"  wave={lam0:g} meters +/- {float(dr) * 100:g}% in {dn} steps")
    if cfg.beam.nopolar:
        say(out, "  polarization effect disabled")
    else:
        say(out, f"  Kahn polarization factor: {float(cfg.beam.polarization):f}")
    if g.curved:
        say(out, "  curved detector: all pixels same distance from origin")
    if g.point_pixel:
        say(out, "  pixel obliquity effect disabled")
    say(out, f"  incident fluence: {float(s.fluence):g} photons/m^2")
    say(out, f"  distance={float(g.distance):g} detsize={g.detsize_f_m:g}x{g.detsize_s_m:g}  "
             f"pixel={g.pixel_size_m:g} meters ({g.fpixels}x{g.spixels} pixels)")
    say(out, f"  sensor is {float(s.thick_m):g} m thick in {s.thicksteps} layers with mu= {float(s.mu):g}")
    say(out, f"  Xbeam={float(g.Xbeam):g} Ybeam={float(g.Ybeam):g}")
    say(out, f"  Fbeam={float(g.Fbeam):g} Sbeam={float(g.Sbeam):g}")
    say(out, f"  Xclose={float(g.Xclose):g} Yclose={float(g.Yclose):g}")
    say(out, f"  Fclose={float(g.Fclose):g} Sclose={float(g.Sclose):g}")
    say(out, f"  DIRECTION_OF_DETECTOR_X-AXIS= {_g(*g.fdet)}")
    say(out, f"  DIRECTION_OF_DETECTOR_Y-AXIS= {_g(*g.sdet)}")
    say(out, f"  DIRECTION_OF_DETECTOR_Z-AXIS= {_g(*g.odet)}")
    say(out, f"  INCIDENT_BEAM_DIRECTION= {_g(*g.beam)}")
    say(out, f"  spindle ROTATION_AXIS= {_g(*g.vectors.spindle)}")
    say(out, f"  POLARIZATION_PLANE_NORMAL= {_g(*cross(g.beam, g.vectors.polar))}")
    say(out, f"  dials origin= {_g(*g.dials_origin_mm)}")
    xmin, xmax, ymin, ymax = s.roi
    say(out, f"  roi: {xmin} < x < {xmax} && {ymin} < y < {ymax}")
    hn, hr, hs = src.hdiv
    vn, vr, vs = src.vdiv
    say(out, f"  hdivrange={float(hr):g} hdivstep={float(hs):g}  radians")
    say(out, f"  vdivrange={float(vr):g} vdivstep={float(vs):g}  radians")
    say(out, f"  {src.divsteps} divergence steps")
    say(out, f"  {src.incident.shape[0]} sources")
    say(out, f"  {s.mosaic_domains} mosaic domains over mosaic spread of {float(s.mosaic_spread_deg):g} degrees")
    say(out, f"  {s.phi.phisteps} phi steps from {float(s.phi.phi0_rad) * RTD:g} to "
             f"{(float(s.phi.phi0_rad) + float(s.phi.osc_rad)) * RTD:g} degrees")
    flags = "".join(f" +{n}" for n, on in (("thick", cfg.oversample_thick), ("polar", cfg.oversample_polar),
                                            ("omega", cfg.oversample_omega)) if on)
    say(out, f"  {s.oversample}x{s.oversample} pixel oversample steps{flags}")
    if cfg.detector.mask is not None:
        say(out, "  skipping zero-flagged pixels in mask")
    if cfg.output.write_noise:
        seed = cfg.output.seed
        say(out, "\n  noise image paramters:")
        say(out, f"  seed: {-seed if seed is not None else 'time-based'}")
        say(out, f"  water droplet size: {float(cfg.background.water_um) / 1e6:g} m")


def progress_printer(stream=None):
    """A progress callback printing 'NN% done' lines as the C does (every 5 %)."""
    stream = stream or sys.stdout
    state = {"last": -1}

    def report(done, total):
        pct = done * 100 // max(total, 1)
        step = pct // 5 * 5
        if step > state["last"]:
            state["last"] = step
            print(f"{step}% done", file=stream, flush=True)
    return report
