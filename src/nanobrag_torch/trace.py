"""-trace_pixel S F: one pixel's intermediate values, under the instrumented C's names.

The instrumented nanoBragg.c used for the parity corpus prints ``TRACE_C:`` /
``TRACE:`` lines (``cases/<id>/trace_s<S>_f<F>.txt``); this module prints the
same names in the same line formats and order, so ``diff`` against a corpus
trace stops at the first value that diverges:

1. detector setup (``TRACE_C:name=...``, the C's pivot branch),
2. crystal setup (``TRACE:`` lines, ``%g``),
3. ``TRACE_CONFIG: tracing pixel (spixel=S, fpixel=F)``,
4. one block per detector layer and subpixel (C loop order: layer, slow, fast
   subpixel), for the first source, the first mosaic domain and phi step 0,
   plus one ``TRACE_C_PHI`` line per phi step (domain 0),
5. the pixel's final scalars (I_before_scaling ... floatimage_accumulated).

The values are the kernel's own: render_pixels renders the traced pixel alone
and records its intermediates (record=...), with the run-wide C-parity state
(sticky interpolation switch, the run's first phi loop) as it stood when the
simulator reached that pixel; only the per-axis lattice factors are computed
here (lattice_factor along one axis). The final value is the simulator's own
(render_pixels on that pixel), so ``floatimage_accumulated`` is the float
image's pixel.
"""
from __future__ import annotations

import dataclasses
import math
import sys

import torch

from . import beam as beam_mod
from .crystal import crystal_lattice
from .execution import StateScan
from .kernel import RunState, lattice_factor, render_pixels
from .units import R_E_SQR, RTD, deg_to_rad
from .vec import as_tensor, dot, magnitude, rotate_xyz

# how each convention turns the user's beam centre into (Fbeam, Sbeam) (SPEC 1.5, step 3)
_MAPPING = {
    "MOSFLM": "Fbeam←Ybeam_mm(+0.5px),Sbeam←Xbeam_mm(+0.5px)",
    "DENZO": "Fbeam←Ybeam_mm,Sbeam←Xbeam_mm",
    "ADXV": "Fbeam←Xbeam_mm,Sbeam←detsize_s-Ybeam_mm",
    "XDS": "Fbeam←Xbeam_mm,Sbeam←Ybeam_mm",
    "DIALS": "Fbeam←Xbeam_mm,Sbeam←Ybeam_mm",
    "CUSTOM": "Fbeam←Xbeam_mm,Sbeam←Ybeam_mm",
}


# ----------------------------------------------------------------- formatting
def _f(x) -> float:
    return float(x)


def _g15(*xs) -> str:
    """C printf("%.15g") of each value, space separated."""
    return " ".join("%.15g" % _f(x) for x in xs)


def _g(*xs, sep=", ") -> str:
    return sep.join("%g" % _f(x) for x in xs)


def _vec(v) -> list:
    return [_f(x) for x in v]


# ---------------------------------------------------------------- entry point
def trace_pixel(sim, image, s: int, f: int, out=None) -> None:
    """Print the trace of pixel (slow s, fast f) of an Image the Simulator sim rendered."""
    out = out or sys.stdout
    setup = image.setup
    geom = setup.geom
    say = lambda text: print(text, file=out)  # noqa: E731
    if not (0 <= s < geom.spixels and 0 <= f < geom.fpixels):
        say(f"TRACE_CONFIG: pixel (spixel={s}, fpixel={f}) is outside the detector "
            f"(fast 0..{geom.fpixels - 1}, slow 0..{geom.spixels - 1}): nothing to trace")
        return
    with torch.no_grad():
        _trace_detector(sim, setup, say)
        _trace_crystal(sim, setup, say)
        say(f"TRACE_CONFIG: tracing pixel (spixel={s}, fpixel={f})")
        rank = _raster_rank(setup, s, f)
        if rank is None:
            # the C skips such pixels before its trace statements: it prints nothing more
            say(f"TRACE_CONFIG: pixel (spixel={s}, fpixel={f}) is not rendered (outside -roi or "
                "masked): its value stays 0")
            return
        plan, state = setup.plan, _state_at(sim, image, rank)
        ev = _evaluate(plan, state, s, f)
        _trace_blocks(setup, plan, ev, say)
        _trace_final(sim, setup, plan, ev, say)


# ------------------------------------------------------------ detector setup
def _trace_detector(sim, setup, say) -> None:
    """The instrumented C's detector lines, in the order of its pivot branch."""
    cfg, g = sim.config, setup.geom
    vec = g.vectors
    dtype, dev = g.pix0.dtype, g.pix0.device
    rot = as_tensor(cfg.detector.rotation_deg, dtype, dev)
    rx, ry, rz = deg_to_rad(rot[0]), deg_to_rad(rot[1]), deg_to_rad(rot[2])
    px = g.pixel_size_m
    tv = lambda tag, v: say(f"TRACE_C:{tag}={_g15(*_vec(v))}")  # noqa: E731
    ts = lambda tag, x: say(f"TRACE_C:{tag}={_g15(x)}")  # noqa: E731
    rotated = [rotate_xyz(v, rx, ry, rz) for v in (vec.fdet, vec.sdet, vec.odet)]
    # ratio and distance as the detector computes them before placing pix0 (SPEC 1.6 steps 1-2)
    ratio = _f(dot(g.beam, rotated[2]))
    ratio = ratio if ratio != 0.0 else 2.2250738585072014e-308

    def after_rotations():
        tv("fdet_after_rotz", rotated[0])
        tv("sdet_after_rotz", rotated[1])
        tv("odet_after_rotz", rotated[2])
        tv("twotheta_axis", g.twotheta_axis)
        tv("fdet_after_twotheta", g.fdet)
        tv("sdet_after_twotheta", g.sdet)
        tv("odet_after_twotheta", g.odet)

    def header(x_label, x, y_label, y):
        say(f"TRACE_C:detector_convention={g.convention}")
        say(f"TRACE_C:angles_rad=rotx:{_g15(rx)} roty:{_g15(ry)} rotz:{_g15(rz)} "
            f"twotheta:{_g15(g.twotheta_rad)}")
        # C-LOGGING-BUG-001: the C divides the (metre) beam centre by 1000 once more; the
        # value is reproduced so that a diff against a C trace stays quiet here
        say(f"TRACE_C:beam_center_m={x_label}:{_g15(_f(x) / 1000.0)} {y_label}:{_g15(_f(y) / 1000.0)} "
            f"pixel_mm:{_g15(px * 1000.0)}")
        # (the C's beam-pivot branch prints MOSFLM and MOSFLM's initial vectors whatever the
        # convention; these are the run's own)
        tv("initial_fdet", vec.fdet)
        tv("initial_sdet", vec.sdet)
        tv("initial_odet", vec.odet)

    if g.pivot == "SAMPLE":
        header("Xclose", g.Xclose, "Yclose", g.Yclose)
        # near point after the detector is placed (-pix0 . fdet, -pix0 . sdet): the value the
        # C used, up to rounding
        Fclose, Sclose, close = _f(g.Fclose), _f(g.Sclose), _f(g.close_distance)
        ts("Fclose_m", Fclose)
        ts("Sclose_m", Sclose)
        ts("close_distance_m", close)
        ts("ratio", ratio)
        ts("distance_m", close / ratio)
        terms = (-Fclose * vec.fdet, -Sclose * vec.sdet, close * vec.odet)
        tv("term_fast_before_rot", terms[0])
        tv("term_slow_before_rot", terms[1])
        tv("term_close_before_rot", terms[2])
        pix0 = terms[0] + terms[1] + terms[2]
        tv("pix0_before_rotation", pix0)
        tv("pix0_after_rotz", rotate_xyz(pix0, rx, ry, rz))
        tv("pix0_after_twotheta", g.pix0)
        after_rotations()
        return
    after_rotations()
    header("X", g.Xbeam, "Y", g.Ybeam)
    c = [math.cos(_f(a)) for a in (rx, ry, rz)]
    sn = [math.sin(_f(a)) for a in (rx, ry, rz)]
    Rx = [[1.0, 0.0, 0.0], [0.0, c[0], -sn[0]], [0.0, sn[0], c[0]]]
    Ry = [[c[1], 0.0, sn[1]], [0.0, 1.0, 0.0], [-sn[1], 0.0, c[1]]]
    Rz = [[c[2], -sn[2], 0.0], [sn[2], c[2], 0.0], [0.0, 0.0, 1.0]]
    total = _matmul(Rz, _matmul(Ry, Rx))
    for tag, m in (("Rx", Rx), ("Ry", Ry), ("Rz", Rz), ("R_total", total)):
        say(f"TRACE_C:{tag}=[" + "; ".join(_g15(*row) for row in m) + "]")
    after_rotations()
    say(f"TRACE_C:convention_mapping={_MAPPING.get(g.convention, g.convention)},"
        f"beam_vec=[{_g(*_vec(g.beam), sep=' ')}]")
    # direct-beam position after the detector is placed: the C's values up to rounding
    Fbeam, Sbeam, distance = _f(g.Fbeam), _f(g.Sbeam), _f(g.distance)
    ts("Fbeam_m", Fbeam)
    ts("Sbeam_m", Sbeam)
    ts("distance_m", distance)
    tv("term_fast", -Fbeam * g.fdet)
    tv("term_slow", -Sbeam * g.sdet)
    tv("term_beam", distance * g.beam)
    tv("pix0_vector", g.pix0)


def _matmul(A, B):
    """3x3 product summed left to right (as the C's trace builds R_total)."""
    return [[sum((A[i][k] * B[k][j] for k in range(3)), 0.0) for j in range(3)] for i in range(3)]


# ------------------------------------------------------------- crystal setup
def _trace_crystal(sim, setup, say) -> None:
    """The C's crystal-setup TRACE lines (SPEC 2.1-2.4), step by step: crystal_lattice's
    own intermediates (record=True).

    |v| is the vector's length; the C prints the length it stored with the
    vector, which for a* b* c* built from a triclinic cell is the textbook one,
    not that of its c* (C-IMPL-BUG-001): those lengths differ from the C's.
    """
    lat = setup.lattice
    g = setup.geom
    lambda0 = beam_mod.wavelength_m(sim.config, g.pix0.dtype, g.pix0.device)
    st = crystal_lattice(sim.config, sim.mode, lambda0, g.pix0.dtype, g.pix0.device, record=True).steps
    vs = lambda v: _g(*_vec(v))  # noqa: E731
    mag = lambda v: _g(magnitude(v))  # noqa: E731
    names = ("a_star", "b_star", "c_star")

    def vectors(prefix, vs3, names=names, with_mag=True):
        for name, v in zip(names, vs3):
            say(f"TRACE:   {prefix}{name} = [{vs(v)}]" + (f" |{name}| = {mag(v)}" if with_mag else ""))
    if "mat" in st:
        say("TRACE: Raw matrix values from file:")
        for name, i in zip(names, range(3)):
            say(f"TRACE:   {name} (raw) = [{vs(st['mat'][:, i])}]")
        say(f"TRACE:   lambda0 = {_g(st['lambda0'] * 1e10)} Angstroms")
        say(f"TRACE:   scaling factor = 1e-10/lambda0 = {_g(st['scale'])}")
        say("TRACE: After wavelength correction:")
        vectors("", st["after_wavelength"])
    if "before_misset" in st:
        say("TRACE: Before misset rotation:")
        vectors("", st["before_misset"])
        say(f"TRACE:   misset angles = [{_g(*(_f(x) * RTD for x in lat.misset_rad))}] degrees")
        say("TRACE: After misset rotation:")
        vectors("", st["after_misset"])
    say("TRACE: Computing cross products of reciprocal vectors:")
    say("TRACE:   Input vectors for cross products:")
    for name, v in zip(names, st["reciprocal"]):
        say(f"TRACE:     {name} = [{vs(v)}]")
    axb, bxc, cxa = st["cross"]
    say("TRACE:   Cross product results:")
    say(f"TRACE:     a_star x b_star = [{vs(axb)}]")
    say(f"TRACE:     b_star x c_star = [{vs(bxc)}]")
    say(f"TRACE:     c_star x a_star = [{vs(cxa)}]")
    say("TRACE: Reciprocal cell volume calculation:")
    say(f"TRACE:   V_star = a_star . (b_star x c_star) = {_g(st['V_star_raw'])}")
    say(f"TRACE: Direct-space cell volume: V_cell = 1/V_star = {_g(st['V_cell'])}")
    say("TRACE: Before computing real-space vectors:")
    bxc, cxa, axb = st["rescaled"]
    say(f"TRACE:   b_star_cross_c_star = [{vs(bxc)}]")
    say(f"TRACE:   c_star_cross_a_star = [{vs(cxa)}]")
    say(f"TRACE:   a_star_cross_b_star = [{vs(axb)}]")
    say(f"TRACE:   V_cell = {_g(st['V_cell'])}, V_star = {_g(st['V_star'])}")
    say("TRACE: After computing real-space vectors:")
    vectors("", st["real_A"], names=("a", "b", "c"))
    say("TRACE: Re-generating reciprocal vectors from real-space vectors:")
    vectors("Before re-generation: ", st["reciprocal"])
    for name, v in zip(("b_cross_c", "c_cross_a", "a_cross_b"), st["regen_cross"]):
        say(f"TRACE:   Cross products: {name} = [{vs(v)}]")
    vectors("After re-generation: ", (lat.a_star, lat.b_star, lat.c_star))
    say("TRACE: Converting real-space vectors from Angstroms to meters:")
    for name, v in (("a", lat.a), ("b", lat.b), ("c", lat.c)):
        say(f"TRACE:   Before conversion: {name} = [{vs(v * 1e10)}] |{name}| = {mag(v * 1e10)} Angstroms")
    for name, v in (("a", lat.a), ("b", lat.b), ("c", lat.c)):
        say(f"TRACE:   After conversion: {name} = [{vs(v)}] |{name}| = {mag(v)} meters")
    say("TRACE: Copying vectors to a0, b0, c0 (phi=0 mosaic=0 reference):")
    for name, v in (("a0", lat.a), ("b0", lat.b), ("c0", lat.c)):
        say(f"TRACE:   {name} = [{vs(v)}] |{name}| = {mag(v)} meters")
    say("TRACE: Copying vectors to ap, bp, cp (phi=0 working copy):")
    for name, v in (("ap", lat.a), ("bp", lat.b), ("cp", lat.c)):
        say(f"TRACE:   {name} = [{vs(v)}] |{name}| = {mag(v)} meters")
    # (the C's "Phi rotation" / "Mosaic rotation" TRACE lines are printed for pixel (512, 512)
    # whatever pixel is traced, a leftover of its debugging; they are not reproduced)


# ------------------------------------------------------- run-wide C state
def _raster_rank(setup, s: int, f: int):
    """Position of (s, f) among the rendered pixels (raster order), or None if not rendered."""
    hit = torch.nonzero((setup.pixels_s == s) & (setup.pixels_f == f))
    return int(hit[0, 0]) if hit.numel() else None


def _state_at(sim, image, rank: int) -> RunState:
    """The run state the image had on reaching its rank-th rendered pixel.

    Two pieces of C state carry from pixel to pixel: the interpolation switch
    (off for good after the first out-of-range evaluation) and, in c-parity,
    whether the run's first phi loop (unrotated cell) has happened. Where the
    end-of-run state does not settle the question, the pixels before this one
    are rendered again (only then does tracing cost a partial re-run).
    """
    plan = image.setup.plan
    never_switched = image.state is not None and image.state.interpolating
    if never_switched and not (plan.cells_first is not None and plan.culling):
        # (without culling the first phi loop is the first rendered pixel's)
        first_loop = 0 if plan.cells_first is not None else None
        return StateScan(None, first_loop, None).state_at(rank)
    return sim.renderer(image.setup).scan(stop_rank=rank).state_at(rank)


# -------------------------------------------------------- the pixel itself
def _evaluate(plan, state: RunState, s: int, f: int) -> dict:
    """Every intermediate of render_pixels for the single pixel (s, f).

    They are render_pixels' own, recorded by it (record=...) in the C's order
    and reshaped here to per-subpixel axes: (T, O, O[, S[, R]]) (layer, slow
    and fast subpixel, source, rotated cell); polar stays flat over the groups
    ((T*O*O*S,), or (1,) where only the first group's is computed). Only the
    per-axis lattice factors (square shape), which the kernel never forms, are
    computed here.
    """
    dev = plan.incident.device
    s_idx = torch.tensor([s], device=dev)
    f_idx = torch.tensor([f], device=dev)
    res = render_pixels(s_idx, f_idx, plan, state, record=True)
    rec = res.record
    T, O = rec["P"].shape[1], rec["P"].shape[2]
    S, R = plan.incident.shape[0], plan.cells.shape[0]
    groups = (T, O, O, S)
    evals = groups + (R,)
    culled = None if rec["culled"] is None else rec["culled"][0].reshape(groups)

    first_group = None
    if res.first_loop_pixel is not None:
        # C-PARITY-001: this pixel held the run's first phi loop, at its first unculled group
        alive = torch.ones(S * T * O * O, dtype=torch.bool, device=dev) if culled is None \
            else ~culled.reshape(-1)
        first_group = int(torch.argmax(alive.to(torch.int8)))

    per_axis = None
    if plan.shape == "square":
        # sincg along one axis: the same lattice_factor with the other two N set to 1
        hkl, hkl0 = rec["hkl"].unbind(-1), rec["hkl0"].unbind(-1)
        frac = tuple((x - x0).to(plan.dtype) for x, x0 in zip(hkl, hkl0))
        one = torch.ones_like(plan.n_cells)
        per_axis = []
        for axis in range(3):
            n = torch.where(torch.arange(3, device=one.device) == axis, plan.n_cells, one)
            F = lattice_factor(hkl, frac, dataclasses.replace(plan, n_cells=n))
            per_axis.append(F[0].reshape(evals))
    held_polar = rec["held_polar"]
    if held_polar.dim() > 0:
        held_polar = held_polar[0]
    # the pixel's value as the simulator renders it: the recording run lays the evaluations
    # out in the C's order, which may sum them in another order than the simulator's layout
    value = render_pixels(s_idx, f_idx, plan, state).value[0]
    return dict(P=rec["P"][0], airpath=rec["airpath"][0], d=rec["d"][0], omega=rec["omega"][0],
                capture=rec["capture"][0], q=rec["q"][0].reshape(groups + (3,)), culled=culled,
                hkl=rec["hkl"][0].reshape(evals + (3,)), hkl0=rec["hkl0"][0].reshape(evals + (3,)),
                F_latt=rec["F_latt"][0].reshape(evals), per_axis=per_axis,
                evaluated=rec["evaluated"][0].reshape(evals), F_cell=rec["F_cell"][0].reshape(evals),
                term=rec["term"][0].reshape(evals),
                polar=None if rec["polar"] is None else rec["polar"][0],
                held_polar=held_polar, I=rec["I"][0], value=value, first_group=first_group)


def _trace_blocks(setup, plan, ev, say) -> None:
    """One block per (layer, slow subpixel, fast subpixel) for source 0, as the C's trace
    (and the C's extra lines for source 2 where there are more than two sources)."""
    geom = plan.geom
    T, O = ev["P"].shape[0], ev["P"].shape[1]
    S = plan.incident.shape[0]
    M = setup.mosaic_domains
    # nominal phi of each step (what the C prints, also where C-PARITY-001 reuses a rotation)
    phis = [_f(setup.phi.phi0_rad) + _f(setup.phi.phistep_rad) * i for i in range(setup.phi.phisteps)]
    line = lambda name, *xs: say(f"TRACE_C: {name} {_g15(*xs)}")  # noqa: E731
    inc0 = _vec(plan.incident[0])
    lam0 = _f(plan.wavelength[0])
    for t in range(T):
        for i in range(O):
            for j in range(O):
                # held omega: the C computes it at the pixel's first subpixel (unless -oversample_omega)
                omega = ev["omega"][t, i, j] if plan.oversample_omega else ev["omega"][0, 0, 0]
                airpath = _f(ev["airpath"][t, i, j])
                line("pix0_vector_meters", *_vec(geom.pix0))
                line("fdet_vec", *_vec(geom.fdet))
                line("sdet_vec", *_vec(geom.sdet))
                line("pixel_pos_meters", *_vec(ev["P"][t, i, j]))
                line("R_distance_meters", airpath)
                line("omega_pixel_sr", omega)
                line("close_distance_meters", geom.close_distance)
                line("obliquity_factor", _f(geom.close_distance) / airpath)
                line("diffracted_vec", *_vec(ev["d"][t, i, j]))
                line("incident_vec", *inc0)
                line("lambda_meters", lam0)
                line("lambda_angstroms", lam0 * 1e10)
                # (named A_inv by the C, but 1/m: (d - i) / lambda with lambda in m)
                line("scattering_vec_A_inv", *_vec(ev["q"][t, i, j, 0]))
                if ev["culled"] is None or not bool(ev["culled"][t, i, j, 0]):
                    # (-dmin: the C leaves the source loop before the lattice)
                    _trace_lattice(plan, ev, (t, i, j), ((t * O + i) * O + j) * S, M, phis, say)
                if S > 2:
                    _trace_source2(plan, ev, (t, i, j), ((t * O + i) * O + j) * S + 2, say)


def _trace_lattice(plan, ev, tij, group, M, phis, say) -> None:
    """Source 0 of one subpixel: the cell, Miller indices and lattice factors of mosaic domain 0
    at phi step 0, then one TRACE_C_PHI line per phi step (the C's loop order)."""
    t, i, j = tij
    line = lambda name, *xs: say(f"TRACE_C: {name} {_g15(*xs)}")  # noqa: E731
    per_axis = ev["per_axis"]
    cells = plan.cells
    if ev["first_group"] == group:
        cells = plan.cells_first              # C-PARITY-001: the run's first phi loop
    for p, phi in enumerate(phis):
        r = p * M                             # mosaic domain 0 of phi step p
        hkl = ev["hkl"][t, i, j, 0, r]
        F_latt = ev["F_latt"][t, i, j, 0, r]
        if p == 0:
            for name, row in (("a", 0), ("b", 1), ("c", 2)):
                line(f"rot_{name}_angstroms", *(x * 1e10 for x in _vec(cells[r, row])))
            # the C prints its global a*, b*, c*: those of the phi=0, unrotated cell, which is
            # also what the kernel uses (gauss/tophat shapes)
            for name, row in (("a", 0), ("b", 1), ("c", 2)):
                line(f"rot_{name}_star_A_inv", *_vec(plan.reciprocal[row]))
            line("hkl_frac", *_vec(hkl))
            say("TRACE_C: hkl_rounded " + " ".join(str(int(x)) for x in _vec(ev["hkl0"][t, i, j, 0, r])))
            if per_axis is not None:
                for name, k in (("a", 0), ("b", 1), ("c", 2)):
                    line(f"F_latt_{name}", per_axis[k][t, i, j, 0, r])
                line("F_latt", F_latt)
        head = f"TRACE_C_PHI phi_tic={p} phi_deg={_g15(phi * RTD)} k_frac={_g15(hkl[1])}"
        if per_axis is not None:
            say(f"{head} F_latt_b={_g15(per_axis[1][t, i, j, 0, r])} F_latt={_g15(F_latt)}")
        else:
            # round/gauss/tophat have no per-axis factor (the C prints neither F_latt_a/b/c
            # nor this line for them); F_latt alone is still worth a line per phi step
            say(f"{head} F_latt={_g15(F_latt)}")
        if p == 0 and bool(ev["evaluated"][t, i, j, 0, r]):
            # (the C skips F_cell where F_latt == 0 and there is no background)
            line("F_cell", ev["F_cell"][t, i, j, 0, r])


def _trace_source2(plan, ev, tij, group, say) -> None:
    """The C's extra lines for source 2 (phi step 0, domain 0), where it is evaluated;
    group: its flat (layer, subpixel, source) index."""
    t, i, j = tij
    if ev["culled"] is not None and bool(ev["culled"][t, i, j, 2]):
        return
    if not bool(ev["evaluated"][t, i, j, 2, 0]):
        return
    line = lambda name, x: say(f"TRACE_C_SOURCE2: {name} {_g15(x)}")  # noqa: E731
    F_cell, F_latt = ev["F_cell"][t, i, j, 2, 0], ev["F_latt"][t, i, j, 2, 0]
    if plan.nopolar and not plan.oversample_polar:
        polar = 1.0
    elif plan.oversample_polar:
        polar = ev["polar"][group]
    else:
        polar = _held_polar_so_far(ev, group)
    line("F_cell", F_cell)
    line("F_latt", F_latt)
    line("F_cell_squared", F_cell * F_cell)
    line("F_latt_squared", F_latt * F_latt)
    # what the kernel adds to I (source weight included, spec mode with a -sourcefile)
    line("I_contribution", ev["term"][t, i, j, 2, 0])
    line("polar", polar)
    line("cos2theta", dot(plan.incident[2], ev["d"][t, i, j]))
    line("lambda_angstroms", _f(plan.wavelength[2]) * 1e10)
    say("TRACE_C_SOURCE2: source_index 2")


def _held_polar_so_far(ev, group):
    """The C's cached polarisation factor when it reaches the flat (layer, subpixel, source)
    index group: the value at the pixel's first unculled group up to there."""
    polar = ev["polar"]
    alive = torch.ones(group + 1, dtype=torch.bool) if ev["culled"] is None else \
        ~ev["culled"].reshape(-1)[:group + 1].cpu()
    first = torch.nonzero(alive)
    # (without culling the kernel computes the factor of the first group only)
    return polar[int(first[0, 0])] if first.numel() else 0.0


def _trace_final(sim, setup, plan, ev, say) -> None:
    """The pixel's final scalars; the factors are the ones the kernel applied."""
    T, O = ev["P"].shape[0], ev["P"].shape[1]
    line = lambda name, x: say(f"TRACE_C: {name} {_g15(x)}")  # noqa: E731
    # the C's held/last values: capture of the last layer (first subpixel; last subpixel with
    # -oversample_thick), polar at the first unculled source (last evaluation with
    # -oversample_polar), omega at the first subpixel (last one with -oversample_omega)
    capture = ev["capture"][T - 1, O - 1, O - 1] if plan.oversample_thick else ev["capture"][T - 1, 0, 0]
    if plan.nopolar and not plan.oversample_polar:
        polar = 1.0
    elif plan.oversample_polar:
        polar = _last_unculled(ev["polar"], ev["culled"])
    else:
        polar = ev["held_polar"]
    omega = ev["omega"][T - 1, O - 1, O - 1] if plan.oversample_omega else ev["omega"][0, 0, 0]
    value = _f(ev["value"])
    line("I_before_scaling", ev["I"])
    line("r_e_meters", math.sqrt(R_E_SQR))
    line("r_e_sqr", R_E_SQR)
    line("fluence_photons_per_m2", setup.fluence)
    say(f"TRACE_C: steps {plan.steps}")
    say(f"TRACE_C: oversample_thick {int(plan.oversample_thick)}")
    say(f"TRACE_C: oversample_polar {int(plan.oversample_polar)}")
    say(f"TRACE_C: oversample_omega {int(plan.oversample_omega)}")
    line("capture_fraction", capture)
    line("polar", polar)
    line("omega_pixel", omega)
    # the C's incident and diffracted vectors are those of the last source and subpixel
    line("cos_2theta", dot(plan.incident[-1], ev["d"][T - 1, O - 1, O - 1]))
    line("I_pixel_final", value)
    line("floatimage_accumulated", torch.tensor(value, dtype=torch.float32))
    # the intermediates above are a re-evaluation; say so if they do not give the pixel's value
    recomputed = _f(plan.scale) * _f(ev["I"]) / plan.steps
    if not plan.oversample_thick:
        recomputed *= _f(capture)
    if not plan.oversample_polar:
        recomputed *= _f(polar)
    if not plan.oversample_omega:
        recomputed *= _f(omega)
    tol = 1e-5 if plan.dtype == torch.float32 else 1e-9
    if not math.isclose(recomputed, value, rel_tol=tol, abs_tol=1e-300):
        say(f"TRACE_NOTE: the traced intermediates give {recomputed:.15g}, the kernel {value:.15g}")


def _last_unculled(polar, culled):
    flat = polar.reshape(-1)
    if culled is None:
        return flat[-1]
    alive = torch.nonzero(~culled.reshape(-1))
    return flat[int(alive[-1, 0])] if alive.numel() else 0.0
